// The loss study's statistics against published tables, hand-worked examples, brute-force
// enumeration written here, and reference values pasted from scipy 1.10.1 and statsmodels 0.13.5
// (each with the call that made it), so no Python runs at test time.
#include "apps/pipeline/study_statistics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "engine/error.h"

namespace {

namespace stats = voxgrad::pipeline::stats;

TEST(StudyStatistics, MeanAndSampleSd) {
  const std::vector<double> values = {2, 4, 4, 4, 5, 5, 7, 9};
  EXPECT_DOUBLE_EQ(stats::mean(values), 5.0);
  EXPECT_DOUBLE_EQ(stats::sample_sd(values), std::sqrt(32.0 / 7.0));  // sum of squares 32, n - 1 = 7
  EXPECT_THROW(stats::sample_sd({1.0}), voxgrad::InputError);
  EXPECT_THROW(stats::mean({}), voxgrad::InputError);
}

TEST(StudyStatistics, MidRanksShareTies) {
  EXPECT_EQ(stats::mid_ranks({3, 1, 4, 1, 5, 4, 4}), (std::vector<double>{3, 1.5, 5, 1.5, 7, 5, 5}));
}

// ---- Wilcoxon signed-rank ------------------------------------------------------------------

TEST(StudyStatistics, WilcoxonFourPositiveDifferencesGiveOneEighth) {
  // Classical table: with n = 4 the smallest two-sided p is 2 / 2^4 = 0.125.
  const stats::WilcoxonResult r = stats::wilcoxon_signed_rank({1.5, 0.5, 2.0, 3.0});
  EXPECT_EQ(r.n, 4);
  EXPECT_DOUBLE_EQ(r.w_plus, 10);
  EXPECT_DOUBLE_EQ(r.w_minus, 0);
  EXPECT_DOUBLE_EQ(r.statistic, 0);
  EXPECT_DOUBLE_EQ(r.p_value, 0.125);
}

TEST(StudyStatistics, WilcoxonMatchesTheCriticalValueForTenPairs) {
  // Published table: n = 10, two-sided alpha 0.05, reject when W <= 8. Exact values:
  // P(W <= 8) = 25/1024, P(W <= 9) = 33/1024 (scipy.stats.wilcoxon(d, method="exact") agrees).
  const stats::WilcoxonResult at8 = stats::wilcoxon_signed_rank({-1, 2, 3, 4, 5, 6, -7, 8, 9, 10});
  EXPECT_DOUBLE_EQ(at8.statistic, 8);
  EXPECT_DOUBLE_EQ(at8.p_value, 0.048828125);
  EXPECT_LE(at8.p_value, 0.05);
  const stats::WilcoxonResult at9 = stats::wilcoxon_signed_rank({1, -2, 3, 4, 5, 6, -7, 8, 9, 10});
  EXPECT_DOUBLE_EQ(at9.statistic, 9);
  EXPECT_DOUBLE_EQ(at9.p_value, 0.064453125);
  EXPECT_GT(at9.p_value, 0.05);
}

// Twenty paired Dice-like scores with distinct |x - y|.
const std::vector<double> kX20 = {0.8,   0.815, 0.786, 0.755, 0.777, 0.75,  0.803, 0.867, 0.775, 0.769,
                                  0.824, 0.818, 0.805, 0.753, 0.799, 0.835, 0.733, 0.777, 0.705, 0.736};
const std::vector<double> kY20 = {0.771, 0.783, 0.773, 0.738, 0.796, 0.745, 0.801, 0.878, 0.768, 0.744,
                                  0.798, 0.787, 0.768, 0.718, 0.772, 0.849, 0.711, 0.801, 0.704, 0.739};

TEST(StudyStatistics, WilcoxonMatchesScipyExact) {
  // scipy.stats.wilcoxon(x, y, method="exact") -> statistic 39.0, pvalue 0.012079238891601562;
  // with alternative="greater" the statistic is W+ = 171.0.
  const stats::WilcoxonResult r = stats::wilcoxon_signed_rank(kX20, kY20);
  EXPECT_EQ(r.n, 20);
  EXPECT_DOUBLE_EQ(r.statistic, 39.0);
  EXPECT_DOUBLE_EQ(r.w_plus, 171.0);
  EXPECT_DOUBLE_EQ(r.w_minus, 39.0);
  EXPECT_NEAR(r.p_value, 0.012079238891601562, 1e-15);

  // Swapping the samples swaps W+ and W- and keeps the two-sided p.
  const stats::WilcoxonResult swapped = stats::wilcoxon_signed_rank(kY20, kX20);
  EXPECT_DOUBLE_EQ(swapped.w_plus, 39.0);
  EXPECT_DOUBLE_EQ(swapped.p_value, r.p_value);

  // scipy.stats.wilcoxon(d60, method="exact") -> statistic 588.0, pvalue 0.015474267743996427.
  const std::vector<double> d60 = {7,  14, 60,  2,   37,  -34, 51,  15,  20,  30, 25,  52, -13, 41, 36,
                                   56, 23, -18, 8,   -26, -16, 49,  -1,  55,  47, 24,  53, -48, 3,  38,
                                   35, 21, -29, -17, -59, 39,  54,  40,  -43, 57, -58, 44, -50, 19, 11,
                                   4,  12, 42,  45,  -32, 9,   -27, -46, -28, 22, 31,  5,  -10, 6,  -33};
  const stats::WilcoxonResult r60 = stats::wilcoxon_signed_rank(d60);
  EXPECT_EQ(r60.n, 60);
  EXPECT_DOUBLE_EQ(r60.statistic, 588.0);
  EXPECT_NEAR(r60.p_value, 0.015474267743996427, 1e-14);
}

TEST(StudyStatistics, WilcoxonAtTwoHundredPairsMatchesScipyExact) {
  // d_i = (i + 1) * sign with every third (resp. the 0th and 3rd of every five) negative, i < 200;
  // scipy.stats.wilcoxon(d, method="exact") -> (6700.0, 3.6125716716466785e-05) and (8000.0, 0.012178229704149399).
  struct Case {
    int period;
    std::vector<int> negative_residues;
    double statistic, p;
  };
  const Case cases[] = {{3, {0}, 6700.0, 3.6125716716466785e-05}, {5, {0, 3}, 8000.0, 0.012178229704149399}};
  for (const Case& c : cases) {
    std::vector<double> d;
    for (int i = 0; i < 200; ++i) {
      bool negative = false;
      for (int residue : c.negative_residues) negative = negative || i % c.period == residue;
      d.push_back((i + 1) * (negative ? -1.0 : 1.0));
    }
    const stats::WilcoxonResult r = stats::wilcoxon_signed_rank(d);
    EXPECT_DOUBLE_EQ(r.statistic, c.statistic);
    EXPECT_NEAR(r.p_value, c.p, 1e-10 * c.p);
  }
}

TEST(StudyStatistics, WilcoxonDropsZeroDifferences) {
  std::vector<double> x = kX20, y = kY20;
  for (double v : {0.5, 0.61, 0.9}) {
    x.push_back(v);
    y.push_back(v);
  }
  const stats::WilcoxonResult with_zeros = stats::wilcoxon_signed_rank(x, y);
  const stats::WilcoxonResult without = stats::wilcoxon_signed_rank(kX20, kY20);
  EXPECT_EQ(with_zeros.n, 20);
  EXPECT_DOUBLE_EQ(with_zeros.w_plus, without.w_plus);
  EXPECT_DOUBLE_EQ(with_zeros.p_value, without.p_value);

  const stats::WilcoxonResult nothing = stats::wilcoxon_signed_rank({0.0, 0.0, 0.0});
  EXPECT_EQ(nothing.n, 0);
  EXPECT_DOUBLE_EQ(nothing.p_value, 1.0);
}

// The two-sided exact p of W+ found by trying all 2^n sign flips of the nonzero differences' mid-ranks,
// with ranks computed here by counting (independently of mid_ranks).
double brute_force_wilcoxon_p(const std::vector<double>& differences) {
  std::vector<double> nonzero;
  for (double d : differences)
    if (d != 0) nonzero.push_back(d);
  const std::size_t n = nonzero.size();
  std::vector<double> ranks(n);
  double observed = 0;
  for (std::size_t i = 0; i < n; ++i) {
    double below = 0, equal = 0;
    for (std::size_t j = 0; j < n; ++j) {
      below += std::fabs(nonzero[j]) < std::fabs(nonzero[i]);
      equal += std::fabs(nonzero[j]) == std::fabs(nonzero[i]);
    }
    ranks[i] = below + (equal + 1) / 2;
    if (nonzero[i] > 0) observed += ranks[i];
  }
  std::int64_t at_most = 0, at_least = 0;
  for (std::uint32_t signs = 0; signs < (1u << n); ++signs) {
    double w_plus = 0;
    for (std::size_t i = 0; i < n; ++i)
      if (signs >> i & 1u) w_plus += ranks[i];
    at_most += w_plus <= observed + 1e-9;
    at_least += w_plus >= observed - 1e-9;
  }
  const double total = std::ldexp(1.0, static_cast<int>(n));
  return std::min(1.0, 2.0 * std::min(at_most, at_least) / total);
}

TEST(StudyStatistics, WilcoxonWithTiesMatchesEnumerationOfAllSignFlips) {
  const std::vector<std::vector<double>> samples = {
      {0.02, -0.02, 0.03, 0.03, 0.03, -0.01, 0.05, 0.05, 0.04, 0.02},
      {1, 1, 1, 1, -1, 2, 2, -2, 3, 3, 3, 3},
      {0.5, 0.5, 0.5, 0.5, 0.5, 0.5},
      {-0.1, 0.2, -0.2, 0.3, 0.1, 0, 0.4, 0.4, -0.4, 0.2, 0.2},
      {3, -1, 4, 1, -5, 9, 2, 6, -5, 3, 5, 8},                           // a handful of ties among distinct values
      {0.7, -0.3, 1.1, 0.2, -0.9, 1.6, 0.4, 0.8, 1.3, -0.6, 1.9, 0.05},  // no ties: the classical table
  };
  for (const std::vector<double>& d : samples) {
    const double expected = brute_force_wilcoxon_p(d);
    EXPECT_NEAR(stats::wilcoxon_signed_rank(d).p_value, expected, 1e-12) << "sample of " << d.size();
  }
}

// ---- Holm ---------------------------------------------------------------------------------------

TEST(StudyStatistics, HolmMatchesStatsmodels) {
  // By hand: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max
  // 0.02, 0.03, 0.06, 0.06. statsmodels multipletests(p, method="holm")[1] -> [0.03, 0.06, 0.06, 0.02].
  const std::vector<double> adjusted = stats::holm_adjust({0.01, 0.04, 0.03, 0.005});
  const std::vector<double> expected = {0.03, 0.06, 0.06, 0.02};
  ASSERT_EQ(adjusted.size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) EXPECT_NEAR(adjusted[i], expected[i], 1e-15) << i;

  // Ties and the cap at 1: multipletests([0.2, 0.01, 0.5, 0.01, 0.04, 0.3], method="holm")[1]
  // -> [0.6, 0.06, 0.6, 0.06, 0.16, 0.6].
  const std::vector<double> capped = stats::holm_adjust({0.2, 0.01, 0.5, 0.01, 0.04, 0.3});
  const std::vector<double> expected_capped = {0.6, 0.06, 0.6, 0.06, 0.16, 0.6};
  for (std::size_t i = 0; i < expected_capped.size(); ++i) EXPECT_NEAR(capped[i], expected_capped[i], 1e-15) << i;
  EXPECT_EQ(stats::holm_adjust({0.6, 0.9}), (std::vector<double>{1.0, 1.0}));
  EXPECT_TRUE(stats::holm_adjust({}).empty());
}

// ---- bootstrap ----------------------------------------------------------------------------------

TEST(StudyStatistics, PercentileIntervalInterpolatesLikeNumpy) {
  // numpy.percentile([1, 4, 9, ..., 100], [2.5, 97.5]) -> [1.675, 95.725].
  std::vector<double> squares;
  for (int k = 10; k >= 1; --k) squares.push_back(k * k);  // unsorted on purpose
  const stats::Interval interval = stats::percentile_interval(squares, 0.95);
  EXPECT_NEAR(interval.low, 1.675, 1e-12);
  EXPECT_NEAR(interval.high, 95.725, 1e-12);
}

TEST(StudyStatistics, BootstrapOfConstantDifferencesIsThatValue) {
  const stats::Interval one = stats::bootstrap_mean_interval(std::vector<double>(17, 0.125), {1000, 3, 0.95});
  EXPECT_EQ(one.low, 0.125);
  EXPECT_EQ(one.high, 0.125);
  const std::vector<std::vector<double>> matrix(4, std::vector<double>(9, -0.25));
  const stats::Interval two = stats::bootstrap_mean_interval_two_level(matrix, {1000, 3, 0.95});
  EXPECT_EQ(two.low, -0.25);
  EXPECT_EQ(two.high, -0.25);
}

TEST(StudyStatistics, BootstrapIsDeterministicForASeed) {
  const stats::Interval a = stats::bootstrap_mean_interval(kX20, {2000, 42, 0.95});
  const stats::Interval b = stats::bootstrap_mean_interval(kX20, {2000, 42, 0.95});
  const stats::Interval c = stats::bootstrap_mean_interval(kX20, {2000, 43, 0.95});
  EXPECT_EQ(a.low, b.low);
  EXPECT_EQ(a.high, b.high);
  EXPECT_NE(a.low, c.low);
  EXPECT_LT(a.low, stats::mean(kX20));
  EXPECT_GT(a.high, stats::mean(kX20));
}

TEST(StudyStatistics, BootstrapReplicatesSpreadLikeTheMean) {
  // The bootstrap distribution of a mean has the sample's mean and sd * sqrt((n - 1) / n) / sqrt(n).
  const std::vector<double> replicates = stats::bootstrap_means(kX20, 20000, 5);
  const double n = static_cast<double>(kX20.size());
  const double expected_sd = stats::sample_sd(kX20) * std::sqrt((n - 1) / n) / std::sqrt(n);
  EXPECT_NEAR(stats::mean(replicates), stats::mean(kX20), 0.05 * expected_sd);
  EXPECT_NEAR(stats::sample_sd(replicates), expected_sd, 0.03 * expected_sd);
}

TEST(StudyStatistics, BootstrapIntervalCoversTheTrueMeanAboutNinetyFivePercent) {
  std::mt19937_64 data_rng(2019);
  std::normal_distribution<double> normal(0.3, 1.0);
  const int repetitions = 400;
  int covered = 0;
  for (int rep = 0; rep < repetitions; ++rep) {
    std::vector<double> sample(40);
    for (double& v : sample) v = normal(data_rng);
    const stats::Interval interval =
        stats::bootstrap_mean_interval(sample, {2000, static_cast<std::uint64_t>(rep), 0.95});
    covered += interval.low <= 0.3 && 0.3 <= interval.high;
  }
  const double coverage = static_cast<double>(covered) / repetitions;
  EXPECT_GE(coverage, 0.92);  // 0.9375 with these seeds
  EXPECT_LE(coverage, 0.98);
}

TEST(StudyStatistics, TwoLevelBootstrapWithOneSeedIsTheCaseBootstrap) {
  EXPECT_EQ(stats::bootstrap_means_two_level({kX20}, 500, 9), stats::bootstrap_means(kX20, 500, 9));
}

TEST(StudyStatistics, TwoLevelBootstrapWidensWhenSeedsDisagree) {
  // Five seeds that shift every case by their own offset: resampling seeds must widen the interval
  // beyond the one over cases of the seed-averaged differences.
  const std::vector<double> offsets = {-0.04, 0.03, 0.0, 0.05, -0.02};
  std::vector<std::vector<double>> matrix;
  for (double offset : offsets) {
    std::vector<double> row;
    for (std::size_t c = 0; c < kX20.size(); ++c) row.push_back(kX20[c] - kY20[c] + offset);
    matrix.push_back(row);
  }
  std::vector<double> averaged(kX20.size(), 0.0);
  for (const std::vector<double>& row : matrix)
    for (std::size_t c = 0; c < row.size(); ++c) averaged[c] += row[c] / static_cast<double>(matrix.size());
  const stats::Interval over_cases = stats::bootstrap_mean_interval(averaged, {4000, 1, 0.95});
  const stats::Interval two_level = stats::bootstrap_mean_interval_two_level(matrix, {4000, 1, 0.95});
  EXPECT_GT(two_level.high - two_level.low, 1.5 * (over_cases.high - over_cases.low));
  EXPECT_LT(two_level.low, stats::mean(averaged));
  EXPECT_GT(two_level.high, stats::mean(averaged));
  EXPECT_THROW(stats::bootstrap_means_two_level({{1.0, 2.0}, {1.0}}, 10, 0), voxgrad::InputError);
}

// ---- Student's t and TOST -----------------------------------------------------------------------

TEST(StudyStatistics, IncompleteBetaMatchesScipy) {
  struct Case {
    double a, b, x, expected;  // scipy.special.betainc(a, b, x)
  };
  const Case cases[] = {
      {0.5, 0.5, 0.3, 0.3690101195655454},
      {2.0, 3.0, 0.4, 0.5247999999999999},
      {5.0, 0.5, 0.9, 0.316642915020012},
      {0.5, 5.0, 0.05, 0.515208786901603},
      {10.0, 20.0, 0.35, 0.592386663663905},
      {50.0, 0.5, 0.98, 0.15624350786681956},
      {1.5, 2.5, 0.999, 0.9999999356016206},
      {3.0, 3.0, 0.5, 0.5},
      {2.0, 3.0, 0.0, 0.0},
      {2.0, 3.0, 1.0, 1.0},
  };
  for (const Case& c : cases)
    EXPECT_NEAR(stats::regularized_incomplete_beta(c.a, c.b, c.x), c.expected, 1e-13)
        << "a=" << c.a << " b=" << c.b << " x=" << c.x;
}

TEST(StudyStatistics, StudentTCdfMatchesScipy) {
  struct Case {
    double t, df, expected;  // scipy.stats.t.cdf(t, df)
  };
  const Case cases[] = {
      {0.0, 3, 0.5},
      {0.5, 1, 0.6475836176504333},
      {-1.3, 2, 0.16162351590802027},
      {2.1, 5, 0.9551233750577007},
      {-2.5, 10, 0.015723422118304388},
      {1.7, 29, 0.9500831042557654},
      {3.2, 7.5, 0.9931324230687959},
      {-4.0, 100, 6.076182215038079e-05},
      {0.25, 1000, 0.5986806518694199},
      {6.0, 4, 0.9980587314765198},
      {-8.0, 30, 3.132911237850386e-09},
      // Near t = 0 the CDF rests on 1 - df / (df + t^2), which a subtraction would lose
      // (mpmath's betainc at 40 digits agrees).
      {1e-7, 10, 0.5000000389108384},
      {1e-6, 1e6, 0.5000003989421806},
      {-3e-5, 4, 0.4999887500000021},
      // Large df, where lgamma's cancellation costs digits, and far out in the tails.
      {2.0, 1e6, 0.9772497330743404},
      {-1.5, 1e5, 0.0668087797614153},
      {-30, 1.0, 0.010606402405535424},
      {1e3, 2.5, 0.9999999772525361},
  };
  for (const Case& c : cases) {
    const double cdf = stats::student_t_cdf(c.t, c.df);
    EXPECT_NEAR(cdf, c.expected, 1e-10) << "t=" << c.t << " df=" << c.df;
    EXPECT_NEAR(cdf, c.expected, 1e-9 * c.expected) << "relative, t=" << c.t << " df=" << c.df;
  }
  EXPECT_EQ(stats::student_t_cdf(-INFINITY, 4), 0.0);
  EXPECT_EQ(stats::student_t_cdf(INFINITY, 4), 1.0);
}

TEST(StudyStatistics, TostMatchesStatsmodels) {
  const std::vector<double> a = {0.837,  0.8047, 0.7919, 0.7684, 0.838,  0.7925, 0.8192, 0.7445,
                                 0.8151, 0.88,   0.7884, 0.832,  0.8014, 0.8442, 0.8427};
  const std::vector<double> b = {0.8334, 0.8073, 0.786,  0.765, 0.8412, 0.7849, 0.8119, 0.7504,
                                 0.8132, 0.8478, 0.7772, 0.828, 0.7733, 0.8458, 0.8645};
  std::vector<double> differences;
  for (std::size_t i = 0; i < a.size(); ++i) differences.push_back(a[i] - b[i]);
  struct Case {
    double margin, p, t_lower, p_lower, t_upper, p_upper;
  };
  // statsmodels.stats.weightstats.ttost_paired(a, b, -margin, margin)
  //   -> (p, (t_lower, p_lower, 14.0), (t_upper, p_upper, 14.0)).
  const Case cases[] = {
      {0.01, 0.06658346911836918, 4.392076334332274, 0.0003070550093487498, -1.5943975425404318, 0.06658346911836918},
      {0.005, 0.4617469140600649, 2.895457865114097, 0.005873504588672717, -0.09777907332225531, 0.4617469140600649},
  };
  for (const Case& c : cases) {
    const stats::TostResult r = stats::tost_paired(differences, c.margin);
    EXPECT_DOUBLE_EQ(r.df, 14.0);
    EXPECT_NEAR(r.t_lower, c.t_lower, 1e-11) << c.margin;
    EXPECT_NEAR(r.t_upper, c.t_upper, 1e-11) << c.margin;
    EXPECT_NEAR(r.p_lower, c.p_lower, 1e-11) << c.margin;
    EXPECT_NEAR(r.p_upper, c.p_upper, 1e-11) << c.margin;
    EXPECT_NEAR(r.p_value, c.p, 1e-11) << c.margin;
  }
}

TEST(StudyStatistics, TostWithoutSpreadDecidesByTheMean) {
  const stats::TostResult inside = stats::tost_paired({0.004, 0.004, 0.004}, 0.01);
  EXPECT_EQ(inside.p_value, 0.0);
  const stats::TostResult outside = stats::tost_paired({0.02, 0.02, 0.02}, 0.01);
  EXPECT_EQ(outside.p_lower, 0.0);
  EXPECT_EQ(outside.p_upper, 1.0);
  EXPECT_EQ(outside.p_value, 1.0);
  const stats::TostResult below = stats::tost_paired({-0.02, -0.02}, 0.01);
  EXPECT_EQ(below.p_lower, 1.0);
  EXPECT_EQ(below.p_upper, 0.0);
  EXPECT_THROW(stats::tost_paired({0.1, 0.2}, 0.0), voxgrad::InputError);
}

// ---- Kendall's tau-b and rankings of arms -------------------------------------------------------

TEST(StudyStatistics, KendallTauBMatchesScipyWithTies) {
  // scipy.stats.kendalltau(x, y).statistic (variant "b").
  EXPECT_NEAR(stats::kendall_tau_b({0.81, 0.79, 0.81, 0.75, 0.90, 0.79, 0.62, 0.75, 0.88, 0.70},
                                   {0.70, 0.65, 0.72, 0.65, 0.80, 0.66, 0.50, 0.70, 0.80, 0.61}),
              0.8333333333333333, 1e-14);
  EXPECT_NEAR(stats::kendall_tau_b({1, 2, 2, 3, 3, 3, 4}, {3, 1, 2, 2, 3, 1, 4}), 0.2286647801900118, 1e-14);
  EXPECT_DOUBLE_EQ(stats::kendall_tau_b({1, 2, 3, 4}, {4, 3, 2, 1}), -1.0);
  EXPECT_TRUE(std::isnan(stats::kendall_tau_b({1, 1, 1}, {1, 2, 3})));
}

TEST(StudyStatistics, ArmsRankByMeanAndRankingsCompare) {
  // Four arms; the second is best, the first and third tie.
  const std::vector<std::vector<double>> dice = {{0.75, 0.75}, {0.875, 0.875}, {0.625, 0.875}, {0.5, 0.5}};
  const stats::ArmRanking by_dice = stats::rank_arms_by_mean(dice);
  EXPECT_EQ(by_dice.rank, (std::vector<double>{2.5, 1, 2.5, 4}));
  EXPECT_EQ(by_dice.order, (std::vector<std::int64_t>{1, 0, 2, 3}));
  EXPECT_EQ(by_dice.means[2], 0.75);  // binary fractions: the tie is exact

  // Jaccard = D / (2 - D) is monotone in Dice, so per-arm means of it rank the arms alike here.
  std::vector<std::vector<double>> jaccard = dice;
  for (std::vector<double>& arm : jaccard)
    for (double& d : arm) d = d / (2 - d);
  const stats::ArmRanking by_jaccard = stats::rank_arms_by_mean(jaccard);
  EXPECT_DOUBLE_EQ(stats::ranking_agreement(by_dice, by_dice), 1.0);
  EXPECT_EQ(by_jaccard.order, (std::vector<std::int64_t>{1, 2, 0, 3}));  // convexity breaks the tie
  const stats::ArmRanking reversed = stats::rank_arms_by_mean({{0.1}, {0.2}, {0.3}, {0.4}});
  const stats::ArmRanking forward = stats::rank_arms_by_mean({{0.4}, {0.3}, {0.2}, {0.1}});
  EXPECT_DOUBLE_EQ(stats::ranking_agreement(forward, reversed), -1.0);
  // Dice ranks 1, 2.5, 2.5, 4 against Jaccard's 1, 3, 2, 4: one tied pair in x, no discordant pair,
  // tau-b = 5 / sqrt(5 * 6).
  EXPECT_NEAR(stats::ranking_agreement(by_dice, by_jaccard), 5.0 / std::sqrt(30.0), 1e-15);
}

}  // namespace
