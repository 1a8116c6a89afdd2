// The statements of Bertels, Eelbode et al. (MICCAI 2019, IEEE TMI 2020) on Dice, Jaccard, their soft
// and Lovász surrogates and weighted Hamming/cross-entropy, checked by computation through the
// engine's own losses and metrics, in float64 on the CPU. What `voxgrad theory` prints.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "engine/json.h"

namespace voxgrad::pipeline {

// What a check measured: one number (min == max), or the range [min, max] of a statement about a range.
struct TheoryMeasure {
  double min = 0.0, max = 0.0;
  bool is_range = false;
  static TheoryMeasure number(double v) { return {v, v, false}; }
  static TheoryMeasure range(double lo, double hi) { return {lo, hi, true}; }
};

// Where the measure must lie for the statement to hold: [lo, hi] (an open side is infinite). `value` is
// the number the statement names (the bound reported in JSON for a number; a range reports {lo, hi}).
struct TheoryBound {
  double value = 0.0;
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  static TheoryBound at_most(double v) { return {v, -std::numeric_limits<double>::infinity(), v}; }
  static TheoryBound at_least(double v) { return {v, v, std::numeric_limits<double>::infinity()}; }
  static TheoryBound within(double lo, double hi) { return {lo, lo, hi}; }
  static TheoryBound near(double v, double lo, double hi) { return {v, lo, hi}; }
};

struct TheoryCheck {
  std::string name;
  std::string statement;  // one plain sentence
  TheoryMeasure measured;
  TheoryBound bound;
  bool pass = false;
  std::string detail;  // the supporting numbers, for the table
};

// Whether `m` lies in the bound; NaN never does.
bool theory_holds(const TheoryMeasure& m, const TheoryBound& b);
TheoryCheck make_theory_check(std::string name, std::string statement, TheoryMeasure measured, TheoryBound bound,
                              std::string detail = "");

// The identities the checks test, as parameters so that a wrong one can be fed and seen to fail.
// D = 2J / (1 + J) on hard sets and on soft sets at ε = 0.
double dice_of_jaccard(double jaccard);
// Δ_J = 2 Δ_D / (1 + Δ_D) (the same identity in losses), so ∂Δ_J/∂Δ_D = 2 / (1 + Δ_D)².
double jaccard_loss_slope(double dice_loss);

inline constexpr std::uint64_t kDefaultTheorySeed = 2019;

// Each check on its own; `seed` draws its random label maps, predictions and probabilities.
TheoryCheck check_dice_jaccard_identity(std::uint64_t seed,
                                        const std::function<double(double)>& identity = dice_of_jaccard);
TheoryCheck check_loss_ratio_bounds(std::uint64_t seed, double lo = 1.0, double hi = 2.0);
TheoryCheck check_absolute_gap(double bound);  // every configuration in a 4x4x4 image; no randomness
TheoryCheck check_soft_identity(std::uint64_t seed, const std::function<double(double)>& identity = dice_of_jaccard,
                                const std::function<double(double)>& slope = jaccard_loss_slope);
TheoryCheck check_soft_identity_default_eps(std::uint64_t seed);
// `vertex_loss` maps a hard Jaccard index to the loss the Lovász extension must equal at the vertices.
TheoryCheck check_lovasz_extension(
    std::uint64_t seed,
    const std::function<double(double)>& vertex_loss = [](double jaccard) { return 1.0 - jaccard; });
// Weighted Hamming against Δ_J: the bound on the spread is N / (G + 1) unless another is given.
TheoryCheck check_weighted_hamming(std::uint64_t seed, double spread_bound = 0.0);
TheoryCheck check_weighted_hamming_ranking(std::uint64_t seed);
TheoryCheck check_dice_jaccard_spread(std::uint64_t seed, double spread_bound = 2.0);
TheoryCheck check_aggregation(double relative_tolerance = 1e-4);

// Every check, in the order `voxgrad theory` prints them.
std::vector<TheoryCheck> run_theory_checks(std::uint64_t seed = kDefaultTheorySeed);

// {"checks": [{"name", "statement", "measured", "bound", "pass"}...], "all_pass"}: measured is a number or
// {"min", "max"}, bound a number or {"min", "max"}.
Json theory_json(const std::vector<TheoryCheck>& checks);
// A Markdown table, one row per check, ending in a newline.
std::string theory_markdown(const std::vector<TheoryCheck>& checks);

}  // namespace voxgrad::pipeline
