// The loss study's statistics: exact Wilcoxon, Holm, bootstrap intervals, TOST on Student's t and
// Kendall's tau-b. Everything is computed here from plain arithmetic, so the study's numbers rest on
// code the test suite checks against published tables and reference implementations.
#include "apps/pipeline/study_statistics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "engine/error.h"

namespace voxgrad::pipeline::stats {

namespace {

void require_no_nan(const std::vector<double>& values, const char* what) {
  for (double v : values) VG_INPUT_CHECK(!std::isnan(v), what << " got a NaN value");
}

// Indices of `values` sorted ascending, equal values keeping their given order.
std::vector<std::size_t> ascending_order(const std::vector<double>& values) {
  std::vector<std::size_t> order(values.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return values[a] < values[b]; });
  return order;
}

// An index in [0, n), every one equally likely: draws below 2^64 mod n are rejected so the kept range
// is a whole number of blocks of n. std::uniform_int_distribution is not used because its algorithm
// differs between standard libraries, and a seed must give the same replicates everywhere. n = 1
// draws nothing, which keeps a one-seed two-level bootstrap in step with the one-level one.
std::size_t draw_index(std::mt19937_64& rng, std::size_t n) {
  if (n == 1) return 0;
  const std::uint64_t bound = n;
  const std::uint64_t rejected_below = (0 - bound) % bound;
  for (;;) {
    const std::uint64_t draw = rng();
    if (draw >= rejected_below) return static_cast<std::size_t>(draw % bound);
  }
}

// Linear interpolation at the 0-based position `position` of sorted values.
double quantile_of_sorted(const std::vector<double>& sorted, double position) {
  const double floor_position = std::floor(position);
  const auto below = static_cast<std::size_t>(floor_position);
  if (below + 1 >= sorted.size()) return sorted.back();
  const double fraction = position - floor_position;
  return sorted[below] + fraction * (sorted[below + 1] - sorted[below]);
}

// The continued fraction of I_x(a, b) (without its front factor x^a (1-x)^b / (a B(a, b))),
// evaluated by the modified Lentz method. It converges quickly for x < (a + 1) / (a + b + 2).
double incomplete_beta_fraction(double a, double b, double x) {
  constexpr double kTiny = 1e-300;  // keeps Lentz's running ratios away from a division by zero
  constexpr double kTolerance = 1e-16;
  constexpr int kMaxTerms = 10000;
  auto away_from_zero = [](double v) { return std::fabs(v) < kTiny ? kTiny : v; };
  double numerator_ratio = 1.0;
  double denominator_ratio = 1.0 / away_from_zero(1.0 - (a + b) * x / (a + 1.0));
  double fraction = denominator_ratio;
  for (int m = 1; m <= kMaxTerms; ++m) {
    // Each m contributes an even and an odd partial numerator of the fraction.
    const double even = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
    denominator_ratio = 1.0 / away_from_zero(1.0 + even * denominator_ratio);
    numerator_ratio = away_from_zero(1.0 + even / numerator_ratio);
    fraction *= denominator_ratio * numerator_ratio;
    const double odd = -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0));
    denominator_ratio = 1.0 / away_from_zero(1.0 + odd * denominator_ratio);
    numerator_ratio = away_from_zero(1.0 + odd / numerator_ratio);
    const double step = denominator_ratio * numerator_ratio;
    fraction *= step;
    if (std::fabs(step - 1.0) < kTolerance) return fraction;
  }
  VG_FAIL("the incomplete beta fraction did not converge for a=" << a << " b=" << b << " x=" << x);
}

// I_x(a, b) given x and 1 - x separately, so a caller that knows 1 - x more precisely than the
// subtraction would give (Student's t near zero) keeps those digits.
double incomplete_beta(double a, double b, double x, double one_minus_x) {
  if (x <= 0) return 0.0;
  if (one_minus_x <= 0) return 1.0;
  const double log_front =
      std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) + b * std::log(one_minus_x);
  const double front = std::exp(log_front);
  if (x < (a + 1.0) / (a + b + 2.0)) return front * incomplete_beta_fraction(a, b, x) / a;
  // I_x(a, b) = 1 - I_{1-x}(b, a), whose fraction converges on this side.
  return 1.0 - front * incomplete_beta_fraction(b, a, one_minus_x) / b;
}

}  // namespace

double mean(const std::vector<double>& values) {
  VG_INPUT_CHECK(!values.empty(), "a mean needs at least one value");
  double sum = 0;
  for (double v : values) sum += v;
  return sum / static_cast<double>(values.size());
}

double sample_sd(const std::vector<double>& values) {
  VG_INPUT_CHECK(values.size() >= 2, "a standard deviation needs at least two values, got " << values.size());
  const double centre = mean(values);
  double squares = 0;
  for (double v : values) squares += (v - centre) * (v - centre);
  return std::sqrt(squares / static_cast<double>(values.size() - 1));
}

std::vector<double> mid_ranks(const std::vector<double>& values) {
  require_no_nan(values, "ranking");
  const std::vector<std::size_t> order = ascending_order(values);
  std::vector<double> ranks(values.size());
  for (std::size_t first = 0; first < order.size();) {
    std::size_t end = first + 1;
    while (end < order.size() && values[order[end]] == values[order[first]]) ++end;
    // Positions first..end-1 hold ranks first+1..end; their mean is shared.
    const double shared = 0.5 * static_cast<double>(first + 1 + end);
    for (std::size_t k = first; k < end; ++k) ranks[order[k]] = shared;
    first = end;
  }
  return ranks;
}

WilcoxonResult wilcoxon_signed_rank(const std::vector<double>& x, const std::vector<double>& y) {
  VG_CHECK(x.size() == y.size(), "paired samples of " << x.size() << " and " << y.size() << " values");
  std::vector<double> differences(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) differences[i] = x[i] - y[i];
  return wilcoxon_signed_rank(differences);
}

WilcoxonResult wilcoxon_signed_rank(const std::vector<double>& differences) {
  require_no_nan(differences, "the Wilcoxon signed-rank test");
  std::vector<double> nonzero;
  for (double d : differences)
    if (d != 0) nonzero.push_back(d);
  WilcoxonResult result;
  result.n = static_cast<std::int64_t>(nonzero.size());
  if (nonzero.empty()) return result;

  std::vector<double> magnitudes(nonzero.size());
  for (std::size_t i = 0; i < nonzero.size(); ++i) magnitudes[i] = std::fabs(nonzero[i]);
  const std::vector<double> ranks = mid_ranks(magnitudes);
  // Mid-ranks are whole or halves, so doubled ranks are exact integers and the null distribution
  // lives on integer sums.
  std::vector<std::int64_t> doubled(ranks.size());
  std::int64_t observed_doubled = 0;
  for (std::size_t i = 0; i < ranks.size(); ++i) {
    doubled[i] = std::llround(2.0 * ranks[i]);
    if (nonzero[i] > 0) {
      result.w_plus += ranks[i];
      observed_doubled += doubled[i];
    } else {
      result.w_minus += ranks[i];
    }
  }
  result.statistic = std::min(result.w_plus, result.w_minus);

  // probability[s]: the chance that the ranks given a + sign so far sum (doubled) to s, each sign a
  // fair coin. Halving at every step keeps the values probabilities, so nothing overflows at any n.
  std::int64_t reachable = 0;
  for (std::int64_t r : doubled) reachable += r;
  std::vector<double> probability(static_cast<std::size_t>(reachable) + 1, 0.0);
  probability[0] = 1.0;
  std::int64_t top = 0;
  for (std::int64_t r : doubled) {
    top += r;
    for (std::int64_t s = top; s >= r; --s) probability[s] = 0.5 * (probability[s] + probability[s - r]);
    for (std::int64_t s = r - 1; s >= 0; --s) probability[s] *= 0.5;
  }
  double at_most = 0, at_least = 0;
  for (std::int64_t s = 0; s <= observed_doubled; ++s) at_most += probability[s];
  for (std::int64_t s = observed_doubled; s <= reachable; ++s) at_least += probability[s];
  result.p_value = std::min(1.0, 2.0 * std::min(at_most, at_least));
  return result;
}

std::vector<double> holm_adjust(const std::vector<double>& p_values) {
  for (double p : p_values) VG_INPUT_CHECK(p >= 0 && p <= 1, "Holm's correction got the p-value " << p);
  const std::vector<std::size_t> order = ascending_order(p_values);
  const std::size_t m = p_values.size();
  std::vector<double> adjusted(m);
  double running = 0;
  for (std::size_t k = 0; k < m; ++k) {
    // The k-th smallest is tested against alpha / (m - k); its adjusted value never falls below
    // an earlier one's, which is what makes the procedure step down.
    running = std::max(running, std::min(1.0, static_cast<double>(m - k) * p_values[order[k]]));
    adjusted[order[k]] = running;
  }
  return adjusted;
}

std::vector<double> bootstrap_means(const std::vector<double>& differences, std::int64_t resamples,
                                    std::uint64_t seed) {
  VG_INPUT_CHECK(!differences.empty(), "a bootstrap needs at least one difference");
  VG_INPUT_CHECK(resamples >= 1, "a bootstrap needs at least one resample, got " << resamples);
  std::mt19937_64 rng(seed);
  const std::size_t n = differences.size();
  std::vector<double> replicates(static_cast<std::size_t>(resamples));
  for (double& replicate : replicates) {
    double sum = 0;
    for (std::size_t k = 0; k < n; ++k) sum += differences[draw_index(rng, n)];
    replicate = sum / static_cast<double>(n);
  }
  return replicates;
}

std::vector<double> bootstrap_means_two_level(const std::vector<std::vector<double>>& differences,
                                              std::int64_t resamples, std::uint64_t seed) {
  VG_INPUT_CHECK(!differences.empty() && !differences[0].empty(),
                 "a two-level bootstrap needs at least one seed and one case");
  const std::size_t seeds = differences.size();
  const std::size_t cases = differences[0].size();
  for (const std::vector<double>& row : differences)
    VG_INPUT_CHECK(row.size() == cases, "a two-level bootstrap needs every seed on the same cases: rows of "
                                            << cases << " and " << row.size() << " values");
  VG_INPUT_CHECK(resamples >= 1, "a bootstrap needs at least one resample, got " << resamples);
  std::mt19937_64 rng(seed);
  std::vector<std::size_t> drawn_seeds(seeds);
  std::vector<double> case_sums(cases);  // (cases,) each case summed over the drawn seeds
  std::vector<double> replicates(static_cast<std::size_t>(resamples));
  for (double& replicate : replicates) {
    for (std::size_t& s : drawn_seeds) s = draw_index(rng, seeds);
    std::fill(case_sums.begin(), case_sums.end(), 0.0);
    for (std::size_t s : drawn_seeds)
      for (std::size_t c = 0; c < cases; ++c) case_sums[c] += differences[s][c];
    double sum = 0;
    for (std::size_t k = 0; k < cases; ++k) sum += case_sums[draw_index(rng, cases)];
    replicate = sum / static_cast<double>(seeds * cases);
  }
  return replicates;
}

Interval percentile_interval(std::vector<double> replicates, double confidence) {
  VG_INPUT_CHECK(!replicates.empty(), "a percentile interval needs at least one replicate");
  VG_INPUT_CHECK(confidence > 0 && confidence < 1, "a confidence level must lie between 0 and 1, got " << confidence);
  require_no_nan(replicates, "a percentile interval");
  std::sort(replicates.begin(), replicates.end());
  const double tail = 0.5 * (1.0 - confidence);
  const double last = static_cast<double>(replicates.size() - 1);
  return {quantile_of_sorted(replicates, tail * last), quantile_of_sorted(replicates, (1.0 - tail) * last)};
}

Interval bootstrap_mean_interval(const std::vector<double>& differences, const BootstrapOptions& options) {
  return percentile_interval(bootstrap_means(differences, options.resamples, options.seed), options.confidence);
}

Interval bootstrap_mean_interval_two_level(const std::vector<std::vector<double>>& differences,
                                           const BootstrapOptions& options) {
  return percentile_interval(bootstrap_means_two_level(differences, options.resamples, options.seed),
                             options.confidence);
}

double regularized_incomplete_beta(double a, double b, double x) {
  VG_CHECK(a > 0 && b > 0 && x >= 0 && x <= 1, "I_x(a, b) with a=" << a << " b=" << b << " x=" << x);
  return incomplete_beta(a, b, x, 1.0 - x);
}

double student_t_cdf(double t, double df) {
  VG_CHECK(df > 0 && !std::isnan(t), "Student's t CDF at t=" << t << " with df=" << df);
  if (t == 0) return 0.5;
  // P(|T| > |t|) = I_{df/(df+t^2)}(df/2, 1/2); 1 - x is formed directly so small |t| keeps its digits.
  const double t_squared = t * t;
  const double x = std::isinf(t_squared) ? 0.0 : df / (df + t_squared);
  const double one_minus_x = std::isinf(t_squared) ? 1.0 : t_squared / (df + t_squared);
  const double tail = 0.5 * incomplete_beta(0.5 * df, 0.5, x, one_minus_x);
  return t > 0 ? 1.0 - tail : tail;
}

TostResult tost_paired(const std::vector<double>& differences, double margin) {
  VG_INPUT_CHECK(margin > 0, "an equivalence margin must be positive, got " << margin);
  VG_INPUT_CHECK(differences.size() >= 2,
                 "an equivalence test needs at least two paired differences, got " << differences.size());
  require_no_nan(differences, "the equivalence test");
  TostResult result;
  result.mean_difference = mean(differences);
  result.sd = sample_sd(differences);
  result.df = static_cast<double>(differences.size() - 1);
  if (result.sd == 0) {
    // No spread: each one-sided hypothesis is decided by where the mean lies.
    const double inf = std::numeric_limits<double>::infinity();
    result.t_lower = result.mean_difference > -margin ? inf : -inf;
    result.t_upper = result.mean_difference < margin ? -inf : inf;
    result.p_lower = result.mean_difference > -margin ? 0.0 : 1.0;
    result.p_upper = result.mean_difference < margin ? 0.0 : 1.0;
  } else {
    const double standard_error = result.sd / std::sqrt(static_cast<double>(differences.size()));
    result.t_lower = (result.mean_difference + margin) / standard_error;
    result.t_upper = (result.mean_difference - margin) / standard_error;
    result.p_lower = student_t_cdf(-result.t_lower, result.df);  // P(T >= t_lower), by symmetry
    result.p_upper = student_t_cdf(result.t_upper, result.df);
  }
  result.p_value = std::max(result.p_lower, result.p_upper);
  return result;
}

double kendall_tau_b(const std::vector<double>& x, const std::vector<double>& y) {
  VG_CHECK(x.size() == y.size(), "paired scores of " << x.size() << " and " << y.size() << " values");
  require_no_nan(x, "Kendall's tau");
  require_no_nan(y, "Kendall's tau");
  std::int64_t concordant = 0, discordant = 0, tied_x = 0, tied_y = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    for (std::size_t j = i + 1; j < x.size(); ++j) {
      const bool same_x = x[i] == x[j], same_y = y[i] == y[j];
      tied_x += same_x;
      tied_y += same_y;
      if (same_x || same_y) continue;
      if ((x[i] < x[j]) == (y[i] < y[j]))
        ++concordant;
      else
        ++discordant;
    }
  }
  const auto n = static_cast<std::int64_t>(x.size());
  const std::int64_t pairs = n * (n - 1) / 2;
  const double denominator =
      std::sqrt(static_cast<double>(pairs - tied_x)) * std::sqrt(static_cast<double>(pairs - tied_y));
  if (denominator == 0) return std::numeric_limits<double>::quiet_NaN();
  return static_cast<double>(concordant - discordant) / denominator;
}

ArmRanking rank_arms_by_mean(const std::vector<std::vector<double>>& scores_per_arm) {
  ArmRanking ranking;
  for (const std::vector<double>& scores : scores_per_arm) ranking.means.push_back(mean(scores));
  std::vector<double> negated(ranking.means.size());
  for (std::size_t a = 0; a < negated.size(); ++a) negated[a] = -ranking.means[a];
  ranking.rank = mid_ranks(negated);
  for (std::size_t a : ascending_order(negated)) ranking.order.push_back(static_cast<std::int64_t>(a));
  return ranking;
}

double ranking_agreement(const ArmRanking& a, const ArmRanking& b) {
  VG_CHECK(a.rank.size() == b.rank.size(), "rankings of " << a.rank.size() << " and " << b.rank.size() << " arms");
  return kendall_tau_b(a.rank, b.rank);
}

}  // namespace voxgrad::pipeline::stats
