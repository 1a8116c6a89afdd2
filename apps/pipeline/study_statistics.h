// The statistics of a loss study: paired tests between training arms over test cases (exact Wilcoxon
// signed-rank, Holm's correction, TOST equivalence), bootstrap intervals over cases and over seeds and
// cases, Kendall's tau-b between rankings of arms, and the means, spreads and ranks they share. Plain vectors in.
#pragma once

#include <cstdint>
#include <vector>

namespace voxgrad::pipeline::stats {

// Arithmetic mean; needs at least one value.
double mean(const std::vector<double>& values);

// Sample standard deviation (divisor n - 1); needs at least two values.
double sample_sd(const std::vector<double>& values);

// Ranks 1..n of `values` in ascending order; tied values share the mean of the ranks they span
// (scipy.stats.rankdata's "average"). Ties are exact equality.
std::vector<double> mid_ranks(const std::vector<double>& values);

// The exact two-sided Wilcoxon signed-rank test of paired samples.
// Differences d = x - y that are exactly zero are dropped (scipy's zero_method="wilcox"); the rest are
// ranked by |d| with mid-ranks for exact ties. The null distribution is the exact permutation
// distribution of W+ given those (mid-)ranks: every sign flip equally likely, counted by dynamic
// programming over sums of doubled ranks (integers), so with no ties it is the classical table.
// p = 2 * min(P(W+ <= observed), P(W+ >= observed)), capped at 1. With no nonzero difference the
// test has nothing to say: n = 0, the statistics are 0 and p = 1. Time grows as n^3 (n = 1000 takes a
// quarter of a second), memory as n^2.
struct WilcoxonResult {
  double w_plus = 0;     // sum of the ranks of the positive differences
  double w_minus = 0;    // sum of the ranks of the negative differences
  double statistic = 0;  // min(w_plus, w_minus), scipy's two-sided statistic
  std::int64_t n = 0;    // pairs used: the nonzero differences
  double p_value = 1;    // two-sided, exact
};
WilcoxonResult wilcoxon_signed_rank(const std::vector<double>& x, const std::vector<double>& y);
WilcoxonResult wilcoxon_signed_rank(const std::vector<double>& differences);

// Holm's step-down adjusted p-values, in the order given: with p sorted ascending as p_(1..m),
// adjusted_(i) = min(1, max over j <= i of (m - j + 1) * p_(j)) (statsmodels multipletests "holm").
std::vector<double> holm_adjust(const std::vector<double>& p_values);

// A two-sided percentile interval.
struct Interval {
  double low = 0, high = 0;
};

struct BootstrapOptions {
  std::int64_t resamples = 10000;
  std::uint64_t seed = 0;  // std::mt19937_64's seed: the same seed gives the same replicates everywhere
  double confidence = 0.95;
};

// Bootstrap replicates of the mean of `differences`, resampling the values with replacement.
std::vector<double> bootstrap_means(const std::vector<double>& differences, std::int64_t resamples, std::uint64_t seed);

// Two-level replicates for a crossed design: differences[s][c] is seed s on case c (every row the
// same length). Each replicate draws seeds with replacement, then cases with replacement, and
// takes the mean of differences[s][c] over every drawn (s, c) pair. With one seed it gives the same
// replicates as bootstrap_means over that row.
std::vector<double> bootstrap_means_two_level(const std::vector<std::vector<double>>& differences,
                                              std::int64_t resamples, std::uint64_t seed);

// The percentile interval of replicates: with q = (1 - confidence) / 2, low and high are the
// q and 1 - q quantiles of the sorted replicates r_0 <= ... <= r_{B-1}, each read at the 0-based
// position q * (B - 1) (resp. (1 - q) * (B - 1)) and interpolated linearly between the two order
// statistics around it (numpy.percentile's default "linear" method).
Interval percentile_interval(std::vector<double> replicates, double confidence);

// 95% (options.confidence) percentile interval of the paired mean difference, over cases.
Interval bootstrap_mean_interval(const std::vector<double>& differences, const BootstrapOptions& options = {});
// The same over seeds, then cases (differences[seed][case]).
Interval bootstrap_mean_interval_two_level(const std::vector<std::vector<double>>& differences,
                                           const BootstrapOptions& options = {});

// The regularized incomplete beta function I_x(a, b), a, b > 0, 0 <= x <= 1, by its continued
// fraction (evaluated with the modified Lentz method) on the side of x where it converges fast.
double regularized_incomplete_beta(double a, double b, double x);

// Student's t distribution's CDF P(T <= t) with df > 0 degrees of freedom (df need not be whole).
double student_t_cdf(double t, double df);

// Two one-sided paired t-tests for equivalence of the mean difference within (-margin, margin):
// H0a: mean <= -margin, rejected by a small p_lower = P(T >= (mean + margin) / se);
// H0b: mean >= +margin, rejected by a small p_upper = P(T <= (mean - margin) / se);
// se = sd / sqrt(n), df = n - 1, p_value = max(p_lower, p_upper) (statsmodels ttost_paired).
// With sd = 0 each one-sided p is 0 when the mean lies strictly on its side of the bound, else 1.
struct TostResult {
  double mean_difference = 0, sd = 0;
  double t_lower = 0, t_upper = 0;
  double df = 0;
  double p_lower = 1, p_upper = 1, p_value = 1;
};
TostResult tost_paired(const std::vector<double>& differences, double margin);

// Kendall's tau-b between paired scores, accounting for ties in either vector:
// (concordant - discordant) / sqrt((n0 - ties_x) * (n0 - ties_y)), n0 = n (n - 1) / 2.
// NaN when either vector is constant (scipy.stats.kendalltau does the same).
double kendall_tau_b(const std::vector<double>& x, const std::vector<double>& y);

// Arms ranked by their mean score, higher first. rank[a] is arm a's rank (1 = best, tied means share
// their mid-rank); order lists the arms best first (ties keep their given order).
struct ArmRanking {
  std::vector<double> means;
  std::vector<double> rank;
  std::vector<std::int64_t> order;
};
ArmRanking rank_arms_by_mean(const std::vector<std::vector<double>>& scores_per_arm);

// How far two rankings of the same arms agree (e.g. by Dice and by Jaccard): Kendall's tau-b of
// their ranks, 1 for the same order, -1 for the reverse.
double ranking_agreement(const ArmRanking& a, const ArmRanking& b);

}  // namespace voxgrad::pipeline::stats
