// The paper's statements on Dice, Jaccard and their surrogates, each checked by computation: label
// maps and probabilities are drawn here, every score, loss and gradient comes from engine/metrics.h
// and engine/losses.h (float64, CPU), and only the arithmetic around them is written here.
#include "apps/pipeline/theory_checks.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numbers>
#include <numeric>
#include <sstream>
#include <utility>

#include "engine/autograd.h"
#include "engine/losses.h"
#include "engine/metrics.h"
#include "engine/tensor.h"

namespace voxgrad::pipeline {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Identities that hold in exact arithmetic and hold to rounding in float64.
constexpr double kExactTolerance = 1e-12;

// SplitMix64: a few lines, the same numbers on every platform and compiler for a seed.
class Draws {
 public:
  explicit Draws(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }         // [0, 1)
  double positive() { return static_cast<double>((next() >> 11) + 1) * 0x1.0p-53; }  // (0, 1]
  std::int64_t below(std::int64_t n) { return static_cast<std::int64_t>(uniform() * static_cast<double>(n)); }
  double normal() { return std::sqrt(-2.0 * std::log(positive())) * std::cos(2.0 * std::numbers::pi * uniform()); }
  // 0..n-1 in random order.
  std::vector<std::int64_t> permutation(std::int64_t n) {
    std::vector<std::int64_t> p(static_cast<std::size_t>(n));
    std::iota(p.begin(), p.end(), 0);
    for (std::int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[below(i + 1)]);
    return p;
  }

 private:
  std::uint64_t state_;
};

// Each check draws from its own stream, so adding or changing one check leaves the others' numbers as they were.
Draws draws_for(std::uint64_t seed, std::uint64_t check) { return Draws(seed ^ (check * 0xD1B54A32D192ED03ull)); }

// The larger of the two, NaN when either is NaN (a NaN measure must fail its check, not vanish in a max).
double nan_max(double a, double b) { return (std::isnan(a) || std::isnan(b)) ? kNaN : std::max(a, b); }
double nan_min(double a, double b) { return (std::isnan(a) || std::isnan(b)) ? kNaN : std::min(a, b); }

std::string format_number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

// Cubic images of `side` voxels per edge: (N, D, H, W) labels and (N, K, D, H, W) logits.
Shape label_shape(std::int64_t images, std::int64_t side) { return {images, side, side, side}; }
Shape logit_shape(std::int64_t images, std::int64_t classes, std::int64_t side) {
  return {images, classes, side, side, side};
}

Tensor labels_tensor(const std::vector<std::int32_t>& labels, std::int64_t images, std::int64_t side) {
  return from_vector<std::int32_t>(labels, label_shape(images, side));
}

// Hard predictions as logits the losses can take: +L/2 on the predicted class and -L/2 on the others.
// With L = 100 the softmax puts exactly 1.0 (float64) on the predicted class and e^-100 ≈ 4e-44 on
// each other one, and -log p is exactly 0 where the prediction is right and exactly L where it is
// wrong: the losses see the vertex of the probability simplex the label map names.
constexpr double kHardLogitGap = 100.0;
Tensor hard_logits(const std::vector<std::int32_t>& prediction, std::int64_t images, std::int64_t classes,
                   std::int64_t side) {
  const std::int64_t voxels = side * side * side;
  std::vector<double> z(static_cast<std::size_t>(images * classes * voxels), -kHardLogitGap / 2);
  for (std::int64_t n = 0; n < images; ++n)
    for (std::int64_t i = 0; i < voxels; ++i)
      z[(n * classes + prediction[n * voxels + i]) * voxels + i] = kHardLogitGap / 2;
  return from_vector<double>(z, logit_shape(images, classes, side));
}

// Given probabilities as logits: z = log p, whose softmax gives p back (to float64 rounding).
Tensor probability_logits(const std::vector<double>& p, std::int64_t images, std::int64_t classes, std::int64_t side) {
  std::vector<double> z(p.size());
  for (std::size_t i = 0; i < p.size(); ++i) z[i] = std::log(p[i]);
  return from_vector<double>(z, logit_shape(images, classes, side));
}

std::vector<double> host_values(const Tensor& t) { return t.cpu().to(DType::Float64).to_vector<double>(); }

// Random label maps of `classes` classes with per-image class proportions drawn at random; with
// `every_class`, voxel c holds class c so that every class has at least one voxel in every image.
std::vector<std::int32_t> random_labels(Draws& draws, std::int64_t images, std::int64_t classes, std::int64_t voxels,
                                        bool every_class) {
  std::vector<std::int32_t> labels(static_cast<std::size_t>(images * voxels));
  for (std::int64_t n = 0; n < images; ++n) {
    std::vector<double> cumulative(static_cast<std::size_t>(classes));
    double total = 0;
    for (std::int64_t c = 0; c < classes; ++c) cumulative[c] = total += 0.05 + draws.uniform();
    for (std::int64_t i = 0; i < voxels; ++i) {
      const double u = draws.uniform() * total;
      std::int32_t c = 0;
      while (c + 1 < classes && u >= cumulative[c]) ++c;
      labels[n * voxels + i] = c;
    }
    if (every_class)
      for (std::int64_t c = 0; c < classes && c < voxels; ++c) labels[n * voxels + c] = static_cast<std::int32_t>(c);
  }
  return labels;
}

// The labels with each voxel replaced by a random class at a per-image rate from 0 to 1: predictions
// from perfect to unrelated.
std::vector<std::int32_t> corrupted(Draws& draws, const std::vector<std::int32_t>& labels, std::int64_t images,
                                    std::int64_t classes, std::int64_t voxels) {
  std::vector<std::int32_t> prediction = labels;
  for (std::int64_t n = 0; n < images; ++n) {
    const double rate = n == 0 ? 0.0 : draws.uniform();
    for (std::int64_t i = 0; i < voxels; ++i)
      if (draws.uniform() < rate) prediction[n * voxels + i] = static_cast<std::int32_t>(draws.below(classes));
  }
  return prediction;
}

// Random probability vectors per voxel (N, K, S): normalised exponential draws (a flat Dirichlet),
// never exactly 0.
std::vector<double> random_probabilities(Draws& draws, std::int64_t images, std::int64_t classes, std::int64_t voxels) {
  std::vector<double> p(static_cast<std::size_t>(images * classes * voxels));
  for (std::int64_t n = 0; n < images; ++n)
    for (std::int64_t i = 0; i < voxels; ++i) {
      double total = 0;
      for (std::int64_t c = 0; c < classes; ++c)
        total += p[(n * classes + c) * voxels + i] = -std::log(draws.positive());
      for (std::int64_t c = 0; c < classes; ++c) p[(n * classes + c) * voxels + i] /= total;
    }
  return p;
}

std::vector<double> column(const std::vector<double>& per_set_class, std::int64_t classes, std::int64_t c) {
  std::vector<double> out;
  for (std::size_t i = static_cast<std::size_t>(c); i < per_set_class.size(); i += static_cast<std::size_t>(classes))
    out.push_back(per_set_class[i]);
  return out;
}

}  // namespace

// ---- verdicts and the identities ---------------------------------------------------------------

bool theory_holds(const TheoryMeasure& m, const TheoryBound& b) {
  if (std::isnan(m.min) || std::isnan(m.max)) return false;
  return m.min >= b.lo && m.max <= b.hi;
}

TheoryCheck make_theory_check(std::string name, std::string statement, TheoryMeasure measured, TheoryBound bound,
                              std::string detail) {
  TheoryCheck check{std::move(name), std::move(statement), measured, bound, false, std::move(detail)};
  check.pass = theory_holds(check.measured, check.bound);
  return check;
}

// With I = |A∩B| and U = |A∪B|, |A| + |B| = U + I, so D = 2I / (U + I) = 2(I/U) / (1 + I/U) = 2J / (1 + J).
// The soft scores keep the same algebra with I = Σ p g, P + G in place of |A| + |B| and U = P + G - I.
double dice_of_jaccard(double jaccard) { return 2.0 * jaccard / (1.0 + jaccard); }

// J = D / (2 - D) gives Δ_J = 1 - J = 2(1 - D) / (2 - D) = 2 Δ_D / (1 + Δ_D), whose derivative in Δ_D
// is 2 / (1 + Δ_D)²: by the chain rule ∇Δ_J = 2 / (1 + Δ_D)² ∇Δ_D for any parameters of the prediction.
double jaccard_loss_slope(double dice_loss) { return 2.0 / ((1.0 + dice_loss) * (1.0 + dice_loss)); }

// ---- hard sets ---------------------------------------------------------------------------------

TheoryCheck check_dice_jaccard_identity(std::uint64_t seed, const std::function<double(double)>& identity) {
  Draws draws = draws_for(seed, 1);
  const std::int64_t images = 32, classes = 4, side = 16, voxels = side * side * side;
  const std::vector<std::int32_t> labels = random_labels(draws, images, classes, voxels, false);
  const std::vector<std::int32_t> prediction = corrupted(draws, labels, images, classes, voxels);
  const SegmentationMetrics m =
      segmentation_metrics(labels_tensor(prediction, images, side), labels_tensor(labels, images, side), classes);
  double deviation = 0, j_min = 1, j_max = 0;
  std::int64_t pairs = 0;
  for (std::int64_t n = 0; n < images; ++n)
    for (std::int64_t c = 0; c < classes; ++c) {
      const double j = m.jaccard_at(n, c), d = m.dice_at(n, c);
      if (std::isnan(j) && std::isnan(d)) continue;  // the class is absent from both: neither is defined
      deviation = nan_max(deviation, std::fabs(d - identity(j)));
      j_min = nan_min(j_min, j);
      j_max = nan_max(j_max, j);
      ++pairs;
    }
  std::ostringstream detail;
  detail << pairs << " (image, class) pairs of random 4-class 16^3 label maps and predictions, J from "
         << format_number(j_min) << " to " << format_number(j_max);
  return make_theory_check("dice_jaccard_identity",
                           "On hard sets the Dice score is a function of the Jaccard index: D = 2J/(1+J).",
                           TheoryMeasure::number(deviation), TheoryBound::at_most(kExactTolerance), detail.str());
}

// Δ_D = 1 - D = (1 - J) / (1 + J) by the identity, so Δ_J / Δ_D = 1 + J, which runs from 1 (disjoint
// sets, J = 0) towards 2 (J → 1; Δ_D > 0 keeps J < 1): Δ_D <= Δ_J <= 2 Δ_D, each loss approximates the
// other within a factor 2. Predictions are swept from disjoint to one voxel away from the reference.
TheoryCheck check_loss_ratio_bounds(std::uint64_t seed, double lo, double hi) {
  Draws draws = draws_for(seed, 2);
  const std::int64_t images = 48, side = 16, voxels = side * side * side;
  std::vector<std::int32_t> labels(static_cast<std::size_t>(images * voxels)), prediction(labels.size());
  for (std::int64_t n = 0; n < images; ++n) {
    const double fraction = 0.05 + 0.45 * draws.uniform();
    std::int32_t* y = labels.data() + n * voxels;
    std::int32_t* a = prediction.data() + n * voxels;
    for (std::int64_t i = 0; i < voxels; ++i) y[i] = draws.uniform() < fraction ? 1 : 0;
    if (n == 0) {  // the complement: disjoint in both classes
      for (std::int64_t i = 0; i < voxels; ++i) a[i] = 1 - y[i];
    } else if (n == 1) {  // some background voxels only: disjoint from the foreground
      for (std::int64_t i = 0; i < voxels; ++i) a[i] = y[i] == 0 && draws.uniform() < 0.3 ? 1 : 0;
    } else {  // the reference with k voxels flipped, k from 1 to every voxel on a log scale
      const double t = static_cast<double>(n - 2) / static_cast<double>(images - 3);
      const auto flips = std::max<std::int64_t>(1, std::llround(std::pow(static_cast<double>(voxels), t)));
      std::copy(y, y + voxels, a);
      const std::vector<std::int64_t> order = draws.permutation(voxels);
      for (std::int64_t k = 0; k < flips; ++k) a[order[k]] = 1 - a[order[k]];
    }
  }
  const SegmentationMetrics m =
      segmentation_metrics(labels_tensor(prediction, images, side), labels_tensor(labels, images, side), 2);
  double ratio_min = std::numeric_limits<double>::infinity(), ratio_max = -ratio_min;
  std::int64_t pairs = 0;
  for (std::int64_t n = 0; n < images; ++n)
    for (std::int64_t c = 0; c < 2; ++c) {
      const double dice_loss = 1.0 - m.dice_at(n, c), jaccard_loss = 1.0 - m.jaccard_at(n, c);
      if (!(dice_loss > 0)) continue;  // a perfect prediction: 0/0
      const double ratio = jaccard_loss / dice_loss;
      ratio_min = nan_min(ratio_min, ratio);
      ratio_max = nan_max(ratio_max, ratio);
      ++pairs;
    }
  std::ostringstream detail;
  detail << pairs << " (image, class) pairs of 16^3 images, from disjoint to one voxel flipped";
  return make_theory_check("loss_ratio_bounds",
                           "On hard sets the Jaccard loss is at least the Dice loss and at most twice it: "
                           "Δ_J/Δ_D = 1 + J lies in [1, 2].",
                           TheoryMeasure::range(ratio_min, ratio_max), TheoryBound::within(lo, hi), detail.str());
}

// D - J = 2J/(1+J) - J = J(1-J)/(1+J), whose derivative (1 - 2J - J²)/(1+J)² vanishes at J = √2 - 1,
// where D - J = (√2-1)(2-√2)/√2 = (√2-1)² = 3 - 2√2 ≈ 0.1716. Dice and Jaccard only depend on
// (|A|, |B|, |A∩B|), so enumerating those triples covers every pair of sets in the image; in 64
// voxels J = 12/29 and J = 17/41 both give 204/1189, 1.3e-7 below 3 - 2√2.
TheoryCheck check_absolute_gap(double bound) {
  const std::int64_t side = 4, voxels = side * side * side;
  std::vector<std::int32_t> labels, prediction;
  std::int64_t images = 0;
  for (std::int64_t a = 0; a <= voxels; ++a)
    for (std::int64_t b = 0; b <= voxels; ++b)
      for (std::int64_t i = std::max<std::int64_t>(0, a + b - voxels); i <= std::min(a, b); ++i) {
        if (a == 0 && b == 0) continue;  // both empty: neither score is defined
        // A = [0, a), B = [a - i, a - i + b): they share [a - i, a), i voxels.
        for (std::int64_t v = 0; v < voxels; ++v) {
          prediction.push_back(v < a ? 1 : 0);
          labels.push_back(v >= a - i && v < a - i + b ? 1 : 0);
        }
        ++images;
      }
  const SegmentationMetrics m =
      segmentation_metrics(labels_tensor(prediction, images, side), labels_tensor(labels, images, side), 2);
  double gap = 0, at_jaccard = 0;
  for (std::int64_t n = 0; n < images; ++n)
    for (std::int64_t c = 0; c < 2; ++c) {
      const double d = m.dice_at(n, c), j = m.jaccard_at(n, c);
      if (std::isnan(d) && std::isnan(j)) continue;
      if (std::isnan(d - j) || d - j > gap) {
        gap = nan_max(gap, d - j);
        at_jaccard = j;
      }
    }
  std::ostringstream detail;
  detail << "every configuration of two sets in a 4x4x4 image (" << images
         << " triples |A|, |B|, |A∩B|), largest at J = " << format_number(at_jaccard)
         << "; 3 - 2√2 = " << format_number(3.0 - 2.0 * std::sqrt(2.0));
  return make_theory_check("absolute_gap",
                           "The Dice score exceeds the Jaccard index by at most 3 - 2√2 ≈ 0.1716, reached near "
                           "J = √2 - 1 (here within 1e-4).",
                           TheoryMeasure::number(gap), TheoryBound::near(bound, bound - 1e-4, bound + kExactTolerance),
                           detail.str());
}

// ---- soft Dice and Jaccard ---------------------------------------------------------------------

namespace {

// Random logits around random labels, from flat to confidently right or wrong per image, so the soft
// scores span their range; every class has voxels in every image.
struct SoftSample {
  std::int64_t images = 0, classes = 0, side = 0;
  std::vector<std::int32_t> labels;  // (N, S)
  std::vector<double> logits;        // (N, K, S)
};

SoftSample soft_sample(Draws& draws, std::int64_t images, std::int64_t classes, std::int64_t side) {
  const std::int64_t voxels = side * side * side;
  SoftSample s{images, classes, side, random_labels(draws, images, classes, voxels, true), {}};
  s.logits.resize(static_cast<std::size_t>(images * classes * voxels));
  for (std::int64_t n = 0; n < images; ++n) {
    const double spread = 0.2 + 4.0 * draws.uniform(), pull = -3.0 + 9.0 * draws.uniform();
    for (std::int64_t c = 0; c < classes; ++c)
      for (std::int64_t i = 0; i < voxels; ++i)
        s.logits[(n * classes + c) * voxels + i] =
            spread * draws.normal() + (s.labels[n * voxels + i] == c ? pull : 0.0);
  }
  return s;
}

// Each (image, class) term of a region loss: its region_terms, one set per image, every class.
std::vector<double> per_image_terms(LossKind kind, const SoftSample& s, double eps) {
  LossOptions options;
  options.eps = eps;
  options.classes = ClassSelection::All;
  options.aggregate = Aggregate::PerImage;
  NoGradGuard no_grad;
  const Tensor z = from_vector<double>(s.logits, logit_shape(s.images, s.classes, s.side));
  return host_values(segmentation_loss_terms(kind, z, labels_tensor(s.labels, s.images, s.side), options).region_terms);
}

}  // namespace

TheoryCheck check_soft_identity(std::uint64_t seed, const std::function<double(double)>& identity,
                                const std::function<double(double)>& slope) {
  Draws draws = draws_for(seed, 4);
  // Values: every (image, class) of a 4-class batch at ε = 0.
  const SoftSample values = soft_sample(draws, 8, 4, 8);
  const std::vector<double> dice_loss = per_image_terms(LossKind::Dice, values, 0.0);
  const std::vector<double> jaccard_loss = per_image_terms(LossKind::Jaccard, values, 0.0);
  double value_deviation = 0;
  for (std::size_t i = 0; i < dice_loss.size(); ++i)
    value_deviation = nan_max(value_deviation, std::fabs((1.0 - dice_loss[i]) - identity(1.0 - jaccard_loss[i])));

  // Gradients: two classes, the foreground's term per image. The per-image loss is the mean of the
  // images' terms, and image n's logits reach only its own term, so ∂loss/∂z on image n is that
  // term's gradient over N for both losses, and the identity holds image by image.
  const SoftSample grads = soft_sample(draws, 8, 2, 8);
  LossOptions options;
  options.eps = 0.0;
  options.classes = ClassSelection::Foreground;
  options.aggregate = Aggregate::PerImage;
  const Tensor y = labels_tensor(grads.labels, grads.images, grads.side);
  auto loss_and_grad = [&](LossKind kind) {
    Tensor z = from_vector<double>(grads.logits, logit_shape(grads.images, 2, grads.side));
    z.requires_grad_(true);
    const LossOutput out = segmentation_loss_terms(kind, z, y, options);
    out.loss.backward();
    return std::pair{column(host_values(out.region_terms), 2, 1), host_values(z.grad())};
  };
  const auto [dice_terms, dice_grad] = loss_and_grad(LossKind::Dice);
  const auto [jaccard_terms, jaccard_grad] = loss_and_grad(LossKind::Jaccard);
  const std::int64_t per_image = 2 * grads.side * grads.side * grads.side;
  double grad_deviation = 0;
  for (std::int64_t n = 0; n < grads.images; ++n) {
    const double factor = slope(dice_terms[n]);
    double scale = 0, worst = 0;
    for (std::int64_t i = n * per_image; i < (n + 1) * per_image; ++i) {
      scale = std::max(scale, std::fabs(jaccard_grad[i]));
      worst = nan_max(worst, std::fabs(jaccard_grad[i] - factor * dice_grad[i]));
    }
    grad_deviation = nan_max(grad_deviation, worst / scale);
  }
  std::ostringstream detail;
  detail << "values: " << format_number(value_deviation) << " over " << dice_loss.size()
         << " (image, class) terms; gradients (relative to each image's largest): " << format_number(grad_deviation)
         << " over " << grads.images << " images; float64";
  return make_theory_check("soft_identity",
                           "At ε = 0 soft Dice and soft Jaccard obey sD = 2sJ/(1+sJ) per (image, class), and their "
                           "losses' gradients ∇Δ_sJ = 2/(1+Δ_sD)² ∇Δ_sD.",
                           TheoryMeasure::number(nan_max(value_deviation, grad_deviation)),
                           TheoryBound::at_most(kExactTolerance), detail.str());
}

// With smoothing, sD = (2I + ε)/(P + G + ε) and sJ = (I + ε)/(P + G - I + ε), so 2sJ/(1+sJ) = (2I + 2ε)/(P + G + 2ε)
// and sD - 2sJ/(1+sJ) = -ε (P + G - 2I) / ((P + G + ε)(P + G + 2ε)). As 0 <= P + G - 2I <= P + G, the
// miss is at most ε/(P + G) <= ε/G, G >= 1 the class's voxels in the image.
TheoryCheck check_soft_identity_default_eps(std::uint64_t seed) {
  Draws draws = draws_for(seed, 4);
  const SoftSample values = soft_sample(draws, 8, 4, 8);
  const double eps = LossOptions{}.eps;
  const std::vector<double> dice_loss = per_image_terms(LossKind::Dice, values, eps);
  const std::vector<double> jaccard_loss = per_image_terms(LossKind::Jaccard, values, eps);
  double deviation = 0;
  for (std::size_t i = 0; i < dice_loss.size(); ++i)
    deviation = nan_max(deviation, std::fabs((1.0 - dice_loss[i]) - dice_of_jaccard(1.0 - jaccard_loss[i])));
  const std::int64_t voxels = values.side * values.side * values.side;
  std::int64_t smallest_class = voxels;
  for (std::int64_t n = 0; n < values.images; ++n)
    for (std::int64_t c = 0; c < values.classes; ++c)
      smallest_class = std::min<std::int64_t>(
          smallest_class, std::count(values.labels.begin() + n * voxels, values.labels.begin() + (n + 1) * voxels, c));
  std::ostringstream detail;
  detail << "ε = " << format_number(eps) << ", smallest class " << smallest_class << " voxels";
  std::ostringstream statement;
  statement << "At the default ε = " << format_number(eps)
            << " soft Dice misses 2sJ/(1+sJ) by at most ε/G per (image, class), G the class's voxels.";
  return make_theory_check("soft_identity_default_eps", statement.str(), TheoryMeasure::number(deviation),
                           TheoryBound::at_most(eps / static_cast<double>(smallest_class)), detail.str());
}

// ---- the Lovász extension ----------------------------------------------------------------------

namespace {

// The Lovász-softmax loss of given probabilities p (N, K, S): one set per image, every class.
double lovasz_of(const std::vector<double>& p, const std::vector<std::int32_t>& labels, std::int64_t images,
                 std::int64_t classes, std::int64_t side) {
  LossOptions options;
  options.classes = ClassSelection::All;
  options.aggregate = Aggregate::PerImage;
  NoGradGuard no_grad;
  return lovasz_softmax_loss(probability_logits(p, images, classes, side), labels_tensor(labels, images, side), options)
      .item();
}

}  // namespace

// Per class, Lovász-softmax is the Lovász extension of the set function Δ_J(M) = |M| / |B ∪ M| (M the
// mispredicted voxels, B the class's) applied to the errors m_i = |g_i - p_i|. An extension agrees with
// its set function on 0/1 vectors, and hard predictions give 0/1 errors with M = A Δ B and B ∪ M = A ∪ B,
// so it equals 1 - J there. Δ_J is submodular, so its extension is convex and positively homogeneous in
// m, and m is affine in p along a segment (g fixed): convex along segments of p. Shrinking p towards
// the one-hot g, p' = g + λ(p - g), scales every error by λ, so the loss scales by λ.
TheoryCheck check_lovasz_extension(std::uint64_t seed, const std::function<double(double)>& vertex_loss) {
  Draws draws = draws_for(seed, 6);
  const std::int64_t classes = 3, side = 8, voxels = side * side * side;

  // Vertices: hard predictions against random labels, class 2 missing from every fourth image.
  const std::int64_t images = 16;
  std::vector<std::int32_t> labels = random_labels(draws, images, classes, voxels, false);
  for (std::int64_t n = 0; n < images; n += 4)
    for (std::int64_t i = 0; i < voxels; ++i)
      if (labels[n * voxels + i] == 2) labels[n * voxels + i] = 0;
  const std::vector<std::int32_t> prediction = corrupted(draws, labels, images, classes, voxels);
  LossOptions options;
  options.classes = ClassSelection::All;
  options.aggregate = Aggregate::PerImage;
  std::vector<double> terms;
  {
    NoGradGuard no_grad;
    terms = host_values(segmentation_loss_terms(LossKind::LovaszSoftmax, hard_logits(prediction, images, classes, side),
                                                labels_tensor(labels, images, side), options)
                            .region_terms);
  }
  const SegmentationMetrics m =
      segmentation_metrics(labels_tensor(prediction, images, side), labels_tensor(labels, images, side), classes);
  double vertex_deviation = 0;
  for (std::int64_t n = 0; n < images; ++n)
    for (std::int64_t c = 0; c < classes; ++c) {
      const double j = m.jaccard_at(n, c);
      // A class absent from both has no errors: Δ_J(∅) = 0.
      const double expected = std::isnan(j) ? 0.0 : vertex_loss(j);
      vertex_deviation = nan_max(vertex_deviation, std::fabs(terms[n * classes + c] - expected));
    }

  // Convexity: f((1-t) p0 + t p1) on a grid of t; on a convex function each grid value is at most the
  // mean of its neighbours.
  const std::int64_t pair = 2, segments = 6, steps = 12;
  double convexity_violation = 0;
  for (std::int64_t s = 0; s < segments; ++s) {
    const std::vector<std::int32_t> y = random_labels(draws, pair, classes, voxels, false);
    const std::vector<double> p0 = random_probabilities(draws, pair, classes, voxels);
    const std::vector<double> p1 = random_probabilities(draws, pair, classes, voxels);
    std::vector<double> f(static_cast<std::size_t>(steps + 1));
    for (std::int64_t k = 0; k <= steps; ++k) {
      const double t = static_cast<double>(k) / static_cast<double>(steps);
      std::vector<double> p(p0.size());
      for (std::size_t i = 0; i < p.size(); ++i) p[i] = (1.0 - t) * p0[i] + t * p1[i];
      f[k] = lovasz_of(p, y, pair, classes, side);
    }
    for (std::int64_t k = 1; k < steps; ++k)
      convexity_violation = nan_max(convexity_violation, f[k] - 0.5 * (f[k - 1] + f[k + 1]));
  }

  // Positive homogeneity: f(g + λ(p - g)) = λ f(p).
  double homogeneity_deviation = 0;
  {
    const std::vector<std::int32_t> y = random_labels(draws, pair, classes, voxels, false);
    const std::vector<double> p = random_probabilities(draws, pair, classes, voxels);
    const double f1 = lovasz_of(p, y, pair, classes, side);
    for (const double lambda : {0.1, 0.3, 0.5, 0.9}) {
      std::vector<double> q(p.size());
      for (std::int64_t n = 0; n < pair; ++n)
        for (std::int64_t c = 0; c < classes; ++c)
          for (std::int64_t i = 0; i < voxels; ++i) {
            const std::size_t at = static_cast<std::size_t>((n * classes + c) * voxels + i);
            const double g = y[n * voxels + i] == c ? 1.0 : 0.0;
            q[at] = g + lambda * (p[at] - g);
          }
      homogeneity_deviation =
          nan_max(homogeneity_deviation, std::fabs(lovasz_of(q, y, pair, classes, side) - lambda * f1));
    }
  }
  std::ostringstream detail;
  detail << "at the vertices " << format_number(vertex_deviation) << " (" << images * classes
         << " (image, class) terms); worst convexity excess " << format_number(convexity_violation) << " on "
         << segments << " segments; homogeneity " << format_number(homogeneity_deviation);
  return make_theory_check(
      "lovasz_extension",
      "Lovász-softmax equals the Jaccard loss 1 - J on hard predictions, is convex along segments of probabilities "
      "and positively homogeneous in the errors.",
      TheoryMeasure::number(nan_max(vertex_deviation, nan_max(convexity_violation, homogeneity_deviation))),
      TheoryBound::at_most(kExactTolerance), detail.str());
}

// ---- weighted Hamming (the hard counterpart of weighted cross-entropy) -------------------------

namespace {

// One binary reference of G voxels in a 16^3 image, and predictions of it of every kind: only false
// positives (1, 2, 4, ... up to every background voxel), only false negatives (1, 2, 4, ... up to the
// whole object), and random mixtures.
struct HammingSample {
  static constexpr std::int64_t kSide = 16, kVoxels = kSide * kSide * kSide, kForeground = 100;
  std::vector<std::int32_t> reference;                 // (S)
  std::vector<std::int64_t> foreground, background;    // voxel indices, in random order
  std::vector<std::vector<std::int32_t>> predictions;  // each (S)
  std::vector<double> jaccard_loss, dice_loss;         // per prediction, foreground class
};

std::vector<std::int32_t> with_errors(const HammingSample& s, std::int64_t false_negatives,
                                      std::int64_t false_positives) {
  std::vector<std::int32_t> a = s.reference;
  for (std::int64_t k = 0; k < false_negatives; ++k) a[s.foreground[k]] = 0;
  for (std::int64_t k = 0; k < false_positives; ++k) a[s.background[k]] = 1;
  return a;
}

// Δ_J and Δ_D of the foreground of each (reference, prediction) pair, from the engine's metrics.
std::pair<std::vector<double>, std::vector<double>> foreground_losses(
    const std::vector<std::vector<std::int32_t>>& references, const std::vector<std::vector<std::int32_t>>& predictions,
    std::int64_t side) {
  std::vector<std::int32_t> y, a;
  for (const auto& r : references) y.insert(y.end(), r.begin(), r.end());
  for (const auto& p : predictions) a.insert(a.end(), p.begin(), p.end());
  const auto images = static_cast<std::int64_t>(predictions.size());
  const SegmentationMetrics m = segmentation_metrics(labels_tensor(a, images, side), labels_tensor(y, images, side), 2);
  std::vector<double> jaccard_loss, dice_loss;
  for (std::int64_t n = 0; n < images; ++n) {
    jaccard_loss.push_back(1.0 - m.jaccard_at(n, 1));
    dice_loss.push_back(1.0 - m.dice_at(n, 1));
  }
  return {jaccard_loss, dice_loss};
}

HammingSample hamming_sample(std::uint64_t seed) {
  Draws draws = draws_for(seed, 7);
  HammingSample s;
  const std::int64_t voxels = HammingSample::kVoxels, fg = HammingSample::kForeground;
  s.reference.assign(static_cast<std::size_t>(voxels), 0);
  const std::vector<std::int64_t> order = draws.permutation(voxels);
  for (std::int64_t k = 0; k < voxels; ++k) {
    if (k < fg) s.reference[order[k]] = 1;
    (k < fg ? s.foreground : s.background).push_back(order[k]);
  }
  for (std::int64_t b = 1;; b *= 2) {
    s.predictions.push_back(with_errors(s, 0, std::min(b, voxels - fg)));
    if (b >= voxels - fg) break;
  }
  for (std::int64_t a = 1;; a *= 2) {
    s.predictions.push_back(with_errors(s, std::min(a, fg), 0));
    if (a >= fg) break;
  }
  for (int k = 0; k < 16; ++k) {
    const auto a = static_cast<std::int64_t>(draws.below(fg + 1));
    const auto b = static_cast<std::int64_t>(std::pow(static_cast<double>(voxels - fg), draws.uniform()));
    s.predictions.push_back(with_errors(s, a, a == 0 ? std::max<std::int64_t>(b, 1) : b));
  }
  const std::vector<std::vector<std::int32_t>> references(s.predictions.size(), s.reference);
  std::tie(s.jaccard_loss, s.dice_loss) = foreground_losses(references, s.predictions, HammingSample::kSide);
  return s;
}

// Foreground-to-background weight ratios r = w_1 / w_0 from 1e-4 to 1e4, and inverse class frequency.
std::vector<double> weight_ratios() {
  std::vector<double> r;
  for (int k = -12; k <= 12; ++k) r.push_back(std::pow(10.0, k / 3.0));
  r.push_back(static_cast<double>(HammingSample::kVoxels - HammingSample::kForeground) /
              static_cast<double>(HammingSample::kForeground));
  return r;
}

// The weighted Hamming loss (1/S) Σ_i w_{y_i} [a_i != y_i], class weights (1, r), from the engine's
// weighted cross-entropy of the hard prediction: on those logits -log p is exactly L where the
// prediction is wrong and 0 where it is right, and wce = Σ_i w_{y_i} (-log p_i) / Σ_i w_{y_i}.
double weighted_hamming(const std::vector<std::int32_t>& reference, const std::vector<std::int32_t>& prediction,
                        double ratio) {
  const std::int64_t side = HammingSample::kSide, voxels = HammingSample::kVoxels;
  LossOptions options;
  options.class_weights = {1.0, ratio};
  NoGradGuard no_grad;
  const double wce =
      weighted_cross_entropy_loss(hard_logits(prediction, 1, 2, side), labels_tensor(reference, 1, side), options)
          .item();
  double weight_total = 0;
  for (const std::int32_t y : reference) weight_total += y == 1 ? ratio : 1.0;
  return wce * weight_total / kHardLogitGap / static_cast<double>(voxels);
}

}  // namespace

// R = H_w / Δ_J over predictions of one reference (N voxels, G foreground), class weights (w_0, w_1).
// One false positive: H = w_0/N, Δ_J = 1/(G+1), R = w_0 (G+1)/N. Every background voxel false positive:
// H = w_0 (N-G)/N, Δ_J = (N-G)/N, R = w_0. Both predictions only err on background voxels, so whatever
// the weights max R / min R >= N/(G+1): no weighting makes H_w a relative approximation of Δ_J (an
// α-approximation needs a spread of at most α²), and N/(G+1) grows with the image.
TheoryCheck check_weighted_hamming(std::uint64_t seed, double spread_bound) {
  const HammingSample s = hamming_sample(seed);
  const double voxels = static_cast<double>(HammingSample::kVoxels),
               fg = static_cast<double>(HammingSample::kForeground);
  if (spread_bound == 0.0) spread_bound = voxels / (fg + 1.0);
  double smallest_spread = std::numeric_limits<double>::infinity(), at_ratio = 0;
  for (const double r : weight_ratios()) {
    double lo = std::numeric_limits<double>::infinity(), hi = 0;
    for (std::size_t k = 0; k < s.predictions.size(); ++k) {
      const double ratio = weighted_hamming(s.reference, s.predictions[k], r) / s.jaccard_loss[k];
      lo = nan_min(lo, ratio);
      hi = nan_max(hi, ratio);
    }
    const double spread = hi / lo;
    if (std::isnan(spread) || spread < smallest_spread) {
      smallest_spread = nan_min(smallest_spread, spread);
      at_ratio = r;
    }
  }
  std::ostringstream detail;
  detail << "N = " << HammingSample::kVoxels << ", G = " << HammingSample::kForeground << ", " << s.predictions.size()
         << " predictions, " << weight_ratios().size()
         << " weight ratios w1/w0 from 1e-4 to 1e4 and inverse class frequency; smallest spread at w1/w0 = "
         << format_number(at_ratio);
  return make_theory_check(
      "weighted_hamming",
      "For every foreground/background weight ratio, weighted Hamming / Δ_J varies across "
      "predictions of one image by a factor of at least N/(G+1).",
      TheoryMeasure::number(smallest_spread),
      // Some ratios reach the bound exactly: allow the rounding of the two losses.
      TheoryBound::near(spread_bound, spread_bound * (1 - kExactTolerance), std::numeric_limits<double>::infinity()),
      detail.str());
}

// Pairs that weighted Hamming and Δ_J rank in opposite orders. Δ_J = (FN + FP)/(G + FP) grows with FN and
// with FP, so one pair of predictions of one reference cannot serve every ratio r = w_1/w_0 (H_w would
// have to grow with both counts too); for each r a pair built from r does:
//   r < 1: one FP (H = 1/N, Δ_J = 1/(G+1)) against one FN (H = r/N, Δ_J = 1/G);
//   G r + 1 <= N - G: b = ⌊G r⌋ + 1 FPs (H = b/N > G r/N, Δ_J = b/(G+b) < 1) against the empty prediction;
//   otherwise (r >= (N-G)/G > 2): one FN (H = r/N, Δ_J = 1/G) against two FPs (H = 2/N, Δ_J = 2/(G+2)).
// Across images one fixed pair does serve every r: a large object with two voxels missed and two added
// (H = (2r + 2)/N, Δ_J = 4/(G+2)) against a one-voxel object missed (H = r/N, Δ_J = 1).
TheoryCheck check_weighted_hamming_ranking(std::uint64_t seed) {
  const HammingSample s = hamming_sample(seed);
  const std::int64_t voxels = HammingSample::kVoxels, fg = HammingSample::kForeground;
  // The fixed pair across images, on the same grid: 400 voxels with 2 + 2 wrong, and 1 voxel missed.
  std::vector<std::int32_t> large_reference(static_cast<std::size_t>(voxels), 0), small_reference = large_reference;
  for (std::int64_t k = 0; k < 400; ++k) large_reference[s.background[k]] = 1;
  std::vector<std::int32_t> large_prediction = large_reference;
  large_prediction[s.background[0]] = large_prediction[s.background[1]] = 0;
  large_prediction[s.background[400]] = large_prediction[s.background[401]] = 1;
  small_reference[s.foreground[0]] = 1;
  const std::vector<std::int32_t> small_prediction(static_cast<std::size_t>(voxels), 0);
  const auto [fixed_jaccard, fixed_dice] =
      foreground_losses({large_reference, small_reference}, {large_prediction, small_prediction}, HammingSample::kSide);

  const std::vector<double> ratios = weight_ratios();
  std::int64_t opposite = 0;
  for (const double r : ratios) {
    std::int64_t fn1 = 0, fp1 = 0, fn2 = 0, fp2 = 0;  // the first of the pair has the larger H_w
    const auto false_positives = static_cast<std::int64_t>(std::floor(static_cast<double>(fg) * r)) + 1;
    if (r < 1) {
      fp1 = 1, fn2 = 1;
    } else if (false_positives <= voxels - fg) {
      fp1 = false_positives, fn2 = fg;
    } else {
      fn1 = 1, fp2 = 2;
    }
    const std::vector<std::vector<std::int32_t>> pair = {with_errors(s, fn1, fp1), with_errors(s, fn2, fp2)};
    const auto [jaccard, dice] = foreground_losses({s.reference, s.reference}, pair, HammingSample::kSide);
    const bool same_image_opposite =
        weighted_hamming(s.reference, pair[0], r) > weighted_hamming(s.reference, pair[1], r) &&
        jaccard[0] < jaccard[1];
    const bool fixed_pair_opposite = weighted_hamming(large_reference, large_prediction, r) >
                                         weighted_hamming(small_reference, small_prediction, r) &&
                                     fixed_jaccard[0] < fixed_jaccard[1];
    if (same_image_opposite && fixed_pair_opposite) ++opposite;
  }
  std::ostringstream detail;
  detail << "weight ratios w1/w0 from 1e-4 to 1e4 and inverse class frequency; fixed pair: Δ_J "
         << format_number(fixed_jaccard[0]) << " vs " << format_number(fixed_jaccard[1]);
  return make_theory_check(
      "weighted_hamming_ranking",
      "For every weight ratio, weighted Hamming and Δ_J rank two predictions of one image, and a fixed pair of "
      "images (a large object slightly wrong, a one-voxel object missed), in opposite orders.",
      TheoryMeasure::number(static_cast<double>(opposite)), TheoryBound::at_least(static_cast<double>(ratios.size())),
      detail.str());
}

// The same predictions as weighted_hamming: Δ_J/Δ_D = 1 + J, so across any predictions its largest value over
// its smallest is at most 2/1: Dice is a relative approximation of Jaccard, where weighted Hamming is not.
TheoryCheck check_dice_jaccard_spread(std::uint64_t seed, double spread_bound) {
  const HammingSample s = hamming_sample(seed);
  double lo = std::numeric_limits<double>::infinity(), hi = 0;
  for (std::size_t k = 0; k < s.predictions.size(); ++k) {
    const double ratio = s.jaccard_loss[k] / s.dice_loss[k];
    lo = nan_min(lo, ratio);
    hi = nan_max(hi, ratio);
  }
  std::ostringstream detail;
  detail << "Δ_J/Δ_D from " << format_number(lo) << " to " << format_number(hi) << " over the " << s.predictions.size()
         << " predictions of weighted_hamming";
  return make_theory_check("dice_jaccard_spread", "Over the same predictions, Δ_J/Δ_D varies by a factor of at most 2.",
                           TheoryMeasure::number(hi / lo), TheoryBound::at_most(spread_bound), detail.str());
}

// ---- per-image against batch Dice --------------------------------------------------------------

// Soft Dice's gradient in p on class voxel i of set s is -w (2 - D_s)/(P_s + G_s + ε), w the set's weight in
// the mean, so an object's total gradient is proportional to G_obj (2 - D_s)/(P_s + G_s + ε). Two images,
// each object predicted alike (p = q inside, ≈ 0 outside): per image, S_n ≈ (1 + q) G_n and each object's
// total is about the same, whatever its size; over the batch the denominator is shared and each object's
// total is proportional to its size. So (small/large per image) / (small/large batch) = G_large/G_small.
TheoryCheck check_aggregation(double relative_tolerance) {
  const std::int64_t side = 16, voxels = side * side * side, large_edge = 10, small_edge = 2;
  const double inside = std::log(0.7 / 0.3), outside = -30.0;  // p = 0.7 on the objects, ≈ 1e-13 elsewhere
  std::vector<std::int32_t> labels(static_cast<std::size_t>(2 * voxels), 0);
  std::vector<double> logits(static_cast<std::size_t>(2 * 2 * voxels), 0.0);  // class 0's logit stays 0
  for (std::int64_t n = 0; n < 2; ++n) {
    const std::int64_t edge = n == 0 ? large_edge : small_edge;
    for (std::int64_t i = 0; i < voxels; ++i) {
      const std::int64_t z = i / (side * side), y = (i / side) % side, x = i % side;
      const bool object = z >= 3 && z < 3 + edge && y >= 3 && y < 3 + edge && x >= 3 && x < 3 + edge;
      labels[n * voxels + i] = object ? 1 : 0;
      logits[(n * 2 + 1) * voxels + i] = object ? inside : outside;
    }
  }
  auto object_totals = [&](Aggregate aggregate) {
    LossOptions options;
    options.aggregate = aggregate;
    Tensor z = from_vector<double>(logits, logit_shape(2, 2, side));
    z.requires_grad_(true);
    dice_loss(z, labels_tensor(labels, 2, side), options).backward();
    const std::vector<double> g = host_values(z.grad());
    std::vector<double> total(2, 0.0);
    for (std::int64_t n = 0; n < 2; ++n)
      for (std::int64_t i = 0; i < voxels; ++i)
        if (labels[n * voxels + i] == 1) total[n] += std::fabs(g[(n * 2 + 1) * voxels + i]);
    return total[1] / total[0];  // small object over large
  };
  const double per_image = object_totals(Aggregate::PerImage), batch = object_totals(Aggregate::Batch);
  const double size_ratio = std::pow(static_cast<double>(large_edge) / static_cast<double>(small_edge), 3);
  std::ostringstream detail;
  detail << "objects of " << large_edge * large_edge * large_edge << " and " << small_edge * small_edge * small_edge
         << " voxels; small/large total gradient: per image " << format_number(per_image) << ", batch "
         << format_number(batch);
  return make_theory_check(
      "aggregation",
      "Per-image Dice gives a small and a large object the same total gradient where batch Dice gives each in "
      "proportion to its size: the small/large ratios differ by G_large/G_small.",
      TheoryMeasure::number(per_image / batch),
      TheoryBound::near(size_ratio, size_ratio * (1 - relative_tolerance), size_ratio * (1 + relative_tolerance)),
      detail.str());
}

// ---- all of them, and their output -------------------------------------------------------------

std::vector<TheoryCheck> run_theory_checks(std::uint64_t seed) {
  return {
      check_dice_jaccard_identity(seed),
      check_loss_ratio_bounds(seed),
      check_absolute_gap(3.0 - 2.0 * std::sqrt(2.0)),
      check_soft_identity(seed),
      check_soft_identity_default_eps(seed),
      check_lovasz_extension(seed),
      check_weighted_hamming(seed),
      check_weighted_hamming_ranking(seed),
      check_dice_jaccard_spread(seed),
      check_aggregation(),
  };
}

namespace {

Json number_json(double v) { return std::isfinite(v) ? Json(v) : Json(nullptr); }

std::string bound_text(const TheoryBound& b, bool range) {
  const bool open_lo = std::isinf(b.lo), open_hi = std::isinf(b.hi);
  std::ostringstream text;
  if (open_lo && !open_hi) {
    text << "≤ " << format_number(b.hi);
  } else if (!open_lo && open_hi) {
    text << "≥ " << format_number(b.lo);
  } else {
    const std::string interval = "[" + format_number(b.lo).append(", ").append(format_number(b.hi)).append("]");
    if (range)
      text << "in " << interval;
    else
      text << format_number(b.value) << " (" << interval << ")";
  }
  return text.str();
}

// A table cell: a '|' would end the cell.
std::string cell(std::string s) {
  for (std::size_t at = s.find('|'); at != std::string::npos; at = s.find('|', at + 2)) s.replace(at, 1, "\\|");
  return s;
}

}  // namespace

Json theory_json(const std::vector<TheoryCheck>& checks) {
  Json list = Json::array();
  bool all_pass = true;
  for (const TheoryCheck& c : checks) {
    Json measured = c.measured.is_range
                        ? Json{{"min", number_json(c.measured.min)}, {"max", number_json(c.measured.max)}}
                        : number_json(c.measured.min);
    Json bound = c.measured.is_range ? Json{{"min", number_json(c.bound.lo)}, {"max", number_json(c.bound.hi)}}
                                     : number_json(c.bound.value);
    list.push_back({{"name", c.name},
                    {"statement", c.statement},
                    {"measured", std::move(measured)},
                    {"bound", std::move(bound)},
                    {"pass", c.pass}});
    all_pass = all_pass && c.pass;
  }
  return {{"checks", std::move(list)}, {"all_pass", all_pass}};
}

std::string theory_markdown(const std::vector<TheoryCheck>& checks) {
  std::ostringstream out;
  out << "| check | statement | measured | bound | holds | details |\n";
  out << "| --- | --- | --- | --- | --- | --- |\n";
  for (const TheoryCheck& c : checks) {
    std::string measured = format_number(c.measured.min);
    if (c.measured.is_range) measured = "[" + measured.append(", ").append(format_number(c.measured.max)).append("]");
    out << "| `" << c.name << "` | " << cell(c.statement) << " | " << measured << " | "
        << bound_text(c.bound, c.measured.is_range) << " | " << (c.pass ? "yes" : "**no**") << " | " << cell(c.detail)
        << " |\n";
  }
  return out.str();
}

}  // namespace voxgrad::pipeline
