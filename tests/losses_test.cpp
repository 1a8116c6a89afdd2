// The segmentation losses, from one table of cases: forward values against plain host references
// of the losses' definitions, float64 gradients against central differences, CUDA against the CPU
// (skipped without a GPU), and the exact properties: one-hot predictions, ignored voxels, empty
// classes and sets, ties in Lovász-softmax, outputs a loss has no part for, exact class counts.
#include "engine/losses.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "engine/autograd.h"
#include "engine/metrics.h"
#include "kernels/losses.h"
#include "tests/op_harness.h"
#include "tests/test_support.h"

namespace voxgrad {
namespace {

using test::as_doubles;
using test::HostInputs;
using test::OpCase;
using test::Values;
using Labels = std::vector<std::int32_t>;

constexpr std::int32_t kIgnore = 255;

// One batch on the host: logits (N, K, S) and labels (N, S), S the voxels of a (D, H, W) image.
struct Batch {
  Shape shape;  // (N, K, D, H, W)
  std::int64_t N = 0, K = 0, S = 0;
  Values logits;
  Labels labels;
  Shape label_shape() const {
    Shape s{shape[0]};
    s.insert(s.end(), shape.begin() + 2, shape.end());
    return s;
  }
  double& z(std::int64_t n, std::int64_t c, std::int64_t s) { return logits[(n * K + c) * S + s]; }
  double z(std::int64_t n, std::int64_t c, std::int64_t s) const { return logits[(n * K + c) * S + s]; }
  std::int32_t y(std::int64_t n, std::int64_t s) const { return labels[n * S + s]; }
};

// ---- host references, written from the losses' definitions -------------------------------------

// Options with every default resolved, as engine/losses.h states them.
struct Spec {
  LossKind kind;
  ClassSelection classes;
  Aggregate aggregate;
  std::optional<std::int32_t> ignore;
  double eps;
  Values weights;
  double ce_weight, dice_weight;
};

Spec resolve(LossKind kind, const LossOptions& o) {
  ClassSelection classes = ClassSelection::All;
  Aggregate aggregate = Aggregate::Batch;
  if (kind == LossKind::Dice || kind == LossKind::Jaccard || kind == LossKind::DiceCrossEntropy) {
    classes = ClassSelection::Foreground;
    aggregate = Aggregate::PerImage;
  } else if (kind == LossKind::LovaszSoftmax) {
    classes = ClassSelection::Present;
  } else if (kind == LossKind::LovaszHinge) {
    aggregate = Aggregate::PerImage;
  }
  return {kind,
          o.classes.value_or(classes),
          o.aggregate.value_or(aggregate),
          o.ignore_label,
          o.eps,
          o.class_weights,
          o.ce_weight,
          o.dice_weight};
}

bool is_ignored(const Spec& r, std::int32_t y) { return r.ignore && y == *r.ignore; }

// Max-subtracted, so that logits equal up to a shift give exactly equal probabilities (exact
// ties), as they do in the kernels.
Values softmax_ref(const Batch& b) {
  Values p(b.logits.size());
  for (std::int64_t n = 0; n < b.N; ++n) {
    for (std::int64_t s = 0; s < b.S; ++s) {
      double m = b.z(n, 0, s), z = 0;
      for (std::int64_t c = 1; c < b.K; ++c) m = std::max(m, b.z(n, c, s));
      for (std::int64_t c = 0; c < b.K; ++c) z += std::exp(b.z(n, c, s) - m);
      for (std::int64_t c = 0; c < b.K; ++c) p[(n * b.K + c) * b.S + s] = std::exp(b.z(n, c, s) - m) / z;
    }
  }
  return p;
}

// Σ_i w_{y_i} (-log p_{i,y_i}) / Σ_i w_{y_i}; w = 1 for ce.
double cross_entropy_ref(const Batch& b, const Spec& r, bool weighted) {
  const Values p = softmax_ref(b);
  Values w(b.K, 1.0);
  if (weighted && !r.weights.empty()) w = r.weights;
  if (weighted && r.weights.empty()) {
    Values count(b.K, 0.0);
    double total = 0;
    for (std::int64_t i = 0; i < b.N * b.S; ++i) {
      if (is_ignored(r, b.labels[i])) continue;
      count[b.labels[i]] += 1;
      total += 1;
    }
    for (std::int64_t c = 0; c < b.K; ++c) w[c] = count[c] > 0 ? total / count[c] : 0.0;
  }
  double num = 0, den = 0;
  for (std::int64_t n = 0; n < b.N; ++n) {
    for (std::int64_t s = 0; s < b.S; ++s) {
      const std::int32_t y = b.y(n, s);
      if (is_ignored(r, y)) continue;
      num += w[y] * -std::log(p[(n * b.K + y) * b.S + s]);
      den += w[y];
    }
  }
  return den > 0 ? num / den : 0.0;
}

// Lovász of one segment, literally: errors sorted decreasing by a stable sort, J_k = 1 - I_k/U_k,
// grad_1 = J_1, grad_k = J_k - J_{k-1}. Returns the loss and each element's grad (input order).
struct LovaszRef {
  double loss = 0;
  Values grad;
};
LovaszRef lovasz_ref(const Values& errors, const std::vector<int>& truth, bool hinge) {
  const std::size_t n = errors.size();
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return errors[a] > errors[b]; });
  double G = 0;
  for (int g : truth) G += g;
  Values J(n);
  double cum_g = 0, cum_not = 0;
  for (std::size_t k = 0; k < n; ++k) {
    cum_g += truth[order[k]];
    cum_not += 1 - truth[order[k]];
    J[k] = 1.0 - (G - cum_g) / (G + cum_not);
  }
  LovaszRef r;
  r.grad.assign(n, 0.0);
  for (std::size_t k = 0; k < n; ++k) {
    const double grad = k == 0 ? J[0] : J[k] - J[k - 1];
    const double e = errors[order[k]];
    r.loss += (hinge ? std::max(e, 0.0) : e) * grad;
    r.grad[order[k]] = grad;
  }
  return r;
}

// The sets of a region loss: lists of valid (n, s) in voxel order.
std::vector<std::vector<std::pair<std::int64_t, std::int64_t>>> sets_ref(const Batch& b, const Spec& r) {
  std::vector<std::vector<std::pair<std::int64_t, std::int64_t>>> sets(r.aggregate == Aggregate::Batch ? 1 : b.N);
  for (std::int64_t n = 0; n < b.N; ++n)
    for (std::int64_t s = 0; s < b.S; ++s)
      if (!is_ignored(r, b.y(n, s))) sets[r.aggregate == Aggregate::Batch ? 0 : n].push_back({n, s});
  return sets;
}

// Region losses: (sets, K) terms (NaN where not chosen) and the loss.
struct RegionRef {
  Values terms;
  double loss = 0;
  std::int64_t sets = 0;
};
RegionRef region_ref(const Batch& b, const Spec& r) {
  const bool hinge = r.kind == LossKind::LovaszHinge;
  const Values p = hinge ? Values() : softmax_ref(b);
  const auto sets = sets_ref(b, r);
  RegionRef out;
  out.sets = static_cast<std::int64_t>(sets.size());
  out.terms.assign(sets.size() * b.K, std::nan(""));
  double total = 0;
  for (std::size_t set = 0; set < sets.size(); ++set) {
    double set_sum = 0;
    int chosen = 0;
    for (std::int64_t c = 0; c < b.K; ++c) {
      double P = 0, G = 0, I = 0;
      Values errors;
      std::vector<int> truth;
      for (auto [n, s] : sets[set]) {
        const int g = b.y(n, s) == (hinge ? 1 : c) ? 1 : 0;
        const double x = hinge ? b.z(n, 0, s) : p[(n * b.K + c) * b.S + s];
        P += x;
        G += g;
        I += x * g;
        errors.push_back(hinge ? 1.0 - x * (2 * g - 1) : std::fabs(g - x));
        truth.push_back(g);
      }
      bool take = true;
      if (hinge)
        take = !sets[set].empty();
      else if (r.classes == ClassSelection::Foreground)
        take = c >= 1;
      else if (r.classes == ClassSelection::Present)
        take = G > 0;
      if (!take) continue;
      double term = 0;
      if (r.kind == LossKind::Dice || r.kind == LossKind::DiceCrossEntropy) {
        term = 1.0 - (2 * I + r.eps) / (P + G + r.eps);
      } else if (r.kind == LossKind::Jaccard) {
        term = 1.0 - (I + r.eps) / (P + G - I + r.eps);
      } else {
        term = lovasz_ref(errors, truth, hinge).loss;
      }
      out.terms[set * b.K + c] = term;
      set_sum += term;
      ++chosen;
    }
    total += chosen > 0 ? set_sum / chosen : 0.0;  // a set with no chosen class counts as 0
  }
  out.loss = total / static_cast<double>(sets.size());
  return out;
}

double loss_ref(const Batch& b, const Spec& r) {
  switch (r.kind) {
    case LossKind::CrossEntropy:
      return cross_entropy_ref(b, r, false);
    case LossKind::WeightedCrossEntropy:
      return cross_entropy_ref(b, r, true);
    case LossKind::DiceCrossEntropy:
      return r.ce_weight * cross_entropy_ref(b, r, false) + r.dice_weight * region_ref(b, r).loss;
    default:
      return region_ref(b, r).loss;
  }
}

// ∂(Lovász-softmax)/∂z by the reference: sign(p - g) * grad at the element's sorted place, times
// 1 / (sets * chosen), through the softmax Jacobian.
Values lovasz_softmax_grad_ref(const Batch& b, const Spec& r) {
  const Values p = softmax_ref(b);
  const auto sets = sets_ref(b, r);
  Values dp(b.logits.size(), 0.0), dz(b.logits.size(), 0.0);
  for (const auto& set : sets) {
    std::vector<std::int64_t> chosen;
    for (std::int64_t c = 0; c < b.K; ++c) {
      bool present = false;
      for (auto [n, s] : set) present = present || b.y(n, s) == c;
      if (r.classes == ClassSelection::All || (r.classes == ClassSelection::Foreground && c >= 1) ||
          (r.classes == ClassSelection::Present && present))
        chosen.push_back(c);
    }
    for (std::int64_t c : chosen) {
      Values errors;
      std::vector<int> truth;
      for (auto [n, s] : set) {
        truth.push_back(b.y(n, s) == c ? 1 : 0);
        errors.push_back(std::fabs(truth.back() - p[(n * b.K + c) * b.S + s]));
      }
      const LovaszRef l = lovasz_ref(errors, truth, false);
      for (std::size_t i = 0; i < set.size(); ++i) {
        const auto [n, s] = set[i];
        dp[(n * b.K + c) * b.S + s] = (truth[i] ? -1.0 : 1.0) * l.grad[i] / (sets.size() * chosen.size());
      }
    }
  }
  for (std::int64_t n = 0; n < b.N; ++n) {
    for (std::int64_t s = 0; s < b.S; ++s) {
      double inner = 0;
      for (std::int64_t c = 0; c < b.K; ++c) inner += p[(n * b.K + c) * b.S + s] * dp[(n * b.K + c) * b.S + s];
      for (std::int64_t c = 0; c < b.K; ++c) {
        const std::int64_t i = (n * b.K + c) * b.S + s;
        dz[i] = p[i] * (dp[i] - inner);
      }
    }
  }
  return dz;
}

// ---- inputs --------------------------------------------------------------------------------------

enum class LogitStyle { Continuous, Tied, OneHot };

// Random labels in [0, K) (0/1 for K = 1); image 1 has no voxel of the last class, so "present"
// differs from "all"; with `ignored`, about one voxel in seven carries the ignore label.
Batch make_batch(const Shape& shape, std::uint32_t seed, LogitStyle style = LogitStyle::Continuous,
                 bool ignored = false) {
  Batch b;
  b.shape = shape;
  b.N = shape[0];
  b.K = shape[1];
  b.S = shape_numel(Shape(shape.begin() + 2, shape.end()));
  std::mt19937 rng(seed);
  const std::int32_t label_count = b.K == 1 ? 2 : static_cast<std::int32_t>(b.K);
  std::uniform_int_distribution<std::int32_t> label(0, label_count - 1);
  std::uniform_real_distribution<double> any(-2.0, 2.0);
  std::bernoulli_distribution drop(1.0 / 7.0);
  b.labels.resize(b.N * b.S);
  for (std::int64_t n = 0; n < b.N; ++n) {
    for (std::int64_t s = 0; s < b.S; ++s) {
      std::int32_t y = label(rng);
      if (n == 1 && b.K > 2 && y == b.K - 1) y = 0;
      if (ignored && drop(rng)) y = kIgnore;
      b.labels[n * b.S + s] = y;
    }
  }
  b.logits.resize(b.N * b.K * b.S);
  if (style == LogitStyle::Tied) {
    // Each voxel takes one of a few random logit vectors: voxels with the same vector tie exactly
    // on every device (same inputs, same arithmetic), and different vectors stay far apart.
    std::vector<Values> palette(6, Values(b.K));
    for (auto& entry : palette)
      for (auto& v : entry) v = any(rng);
    std::uniform_int_distribution<std::size_t> pick(0, palette.size() - 1);
    for (std::int64_t n = 0; n < b.N; ++n) {
      for (std::int64_t s = 0; s < b.S; ++s) {
        const Values& entry = palette[pick(rng)];
        for (std::int64_t c = 0; c < b.K; ++c) b.z(n, c, s) = entry[c];
      }
    }
  } else {
    for (auto& v : b.logits) v = any(rng);
  }
  return b;
}

template <class T>
Tensor logits_of(const Batch& b, Device d, bool requires_grad = false) {
  Tensor t = from_vector(std::vector<T>(b.logits.begin(), b.logits.end()), b.shape, d);
  if (requires_grad) t.requires_grad_();
  return t;
}

Tensor labels_of(const Batch& b, Device d) { return from_vector(b.labels, b.label_shape(), d); }

// ---- the table -----------------------------------------------------------------------------------

struct LossCase {
  std::string name;
  LossKind kind;
  LossOptions options;
  bool ignored = false;  // labels carry the ignore label kIgnore (the options name it)
  Shape shape{2, 3, 2, 3, 4};
  LogitStyle style = LogitStyle::Continuous;
};

LossOptions opts(std::optional<ClassSelection> classes, std::optional<Aggregate> aggregate, bool ignore = false) {
  LossOptions o;
  o.classes = classes;
  o.aggregate = aggregate;
  if (ignore) o.ignore_label = kIgnore;
  return o;
}

// Small enough for finite differences over every logit.
std::vector<LossCase> loss_cases() {
  using A = Aggregate;
  using C = ClassSelection;
  const Shape binary{2, 1, 2, 3, 4};
  LossOptions weights = opts({}, {});
  weights.class_weights = {0.2, 1.0, 3.0};
  LossOptions eps0 = opts(C::Present, A::PerImage);
  eps0.eps = 0;
  LossOptions ignore_class0 = opts(C::All, A::Batch);
  ignore_class0.ignore_label = 0;
  LossOptions mixed = opts(C::Present, A::Batch, true);
  mixed.ce_weight = 0.5;
  mixed.dice_weight = 2.0;
  return {
      {"ce", LossKind::CrossEntropy, opts({}, {})},
      {"ce_ignore", LossKind::CrossEntropy, opts({}, {}, true), true},
      {"wce_default_weights", LossKind::WeightedCrossEntropy, opts({}, {})},
      {"wce_given_weights", LossKind::WeightedCrossEntropy, weights},
      {"wce_default_weights_ignore", LossKind::WeightedCrossEntropy, opts({}, {}, true), true},
      {"dice_default", LossKind::Dice, opts({}, {})},
      {"dice_all_batch", LossKind::Dice, opts(C::All, A::Batch)},
      {"dice_present_per_image", LossKind::Dice, opts(C::Present, A::PerImage)},
      {"dice_present_eps0", LossKind::Dice, eps0},
      {"dice_fg_batch_ignore", LossKind::Dice, opts(C::Foreground, A::Batch, true), true},
      {"dice_all_ignore_class0", LossKind::Dice, ignore_class0},
      {"jaccard_default", LossKind::Jaccard, opts({}, {})},
      {"jaccard_all_batch", LossKind::Jaccard, opts(C::All, A::Batch)},
      {"jaccard_present_per_image_ignore", LossKind::Jaccard, opts(C::Present, A::PerImage, true), true},
      {"lovasz_default", LossKind::LovaszSoftmax, opts({}, {})},
      {"lovasz_all_per_image", LossKind::LovaszSoftmax, opts(C::All, A::PerImage)},
      {"lovasz_fg_batch", LossKind::LovaszSoftmax, opts(C::Foreground, A::Batch)},
      {"lovasz_present_per_image_ignore", LossKind::LovaszSoftmax, opts(C::Present, A::PerImage, true), true},
      {"lovasz_hinge_default", LossKind::LovaszHinge, opts({}, {}), false, binary},
      {"lovasz_hinge_batch", LossKind::LovaszHinge, opts({}, A::Batch), false, binary},
      {"lovasz_hinge_ignore", LossKind::LovaszHinge, opts({}, {}, true), true, binary},
      {"dice_ce_default", LossKind::DiceCrossEntropy, opts({}, {})},
      {"dice_ce_weighted_present_batch_ignore", LossKind::DiceCrossEntropy, mixed, true},
  };
}

HostInputs inputs_of(const Batch& b) {
  return {{b.logits, b.shape}, {Values(b.labels.begin(), b.labels.end()), b.label_shape(), true}};
}

Batch batch_of(const HostInputs& in) {
  Batch b;
  b.shape = in[0].shape;
  b.N = b.shape[0];
  b.K = b.shape[1];
  b.S = shape_numel(b.shape) / (b.N * b.K);
  b.logits = in[0].values;
  b.labels.assign(in[1].values.begin(), in[1].values.end());
  return b;
}

// Outputs: the loss (differentiated), the region terms and the CE terms (NaN where not chosen); the
// reference gives the loss and, for losses with a region part, the region terms.
OpCase loss_row(const LossCase& c, unsigned checks) {
  OpCase row;
  row.name = c.name;
  row.inputs = [c](std::uint32_t seed) { return inputs_of(make_batch(c.shape, seed, c.style, c.ignored)); };
  row.fn = [c](const std::vector<Tensor>& t) {
    const LossOutput out = segmentation_loss_terms(c.kind, t[0], t[1], c.options);
    return test::Outputs{out.loss, out.region_terms, out.ce_terms};
  };
  row.reference = [c](const HostInputs& in) {
    const Batch b = batch_of(in);
    const Spec spec = resolve(c.kind, c.options);
    std::vector<Values> expected{{loss_ref(b, spec)}};
    if (kernels::loss_has_region(c.kind)) {
      Spec region = spec;
      if (c.kind == LossKind::DiceCrossEntropy) region.kind = LossKind::Dice;
      expected.push_back(region_ref(b, region).terms);
    }
    return expected;
  };
  row.checks = checks;
  row.forward_f64 = {1e-12, 0};
  // Lovász is piecewise linear in p: random logits keep the errors apart by far more than the step.
  row.gradcheck = {1e-8, 1e-5};
  row.parity_outputs = {{1e-5, 1e-4}};
  row.parity_gradients = {1e-4, 1e-3, true};  // the gradients of a mean over voxels are all small
  row.nan_outputs = true;
  return row;
}

std::vector<OpCase> loss_table() {
  using A = Aggregate;
  using C = ClassSelection;
  std::vector<OpCase> table;
  for (const LossCase& c : loss_cases()) table.push_back(loss_row(c, test::kForward | test::kGradcheck));

  // Inputs large enough for the threaded CPU loops (the small cases run serially).
  const Shape large{2, 4, 8, 16, 40};  // 5120 voxels per image: several reduction chunks per row
  for (const LossCase& c : std::vector<LossCase>{
           {"large_wce", LossKind::WeightedCrossEntropy, opts({}, {}, true), true, large},
           {"large_dice", LossKind::Dice, opts(C::Present, A::Batch, true), true, large},
           {"large_jaccard", LossKind::Jaccard, opts({}, {}), false, large},
           {"large_lovasz", LossKind::LovaszSoftmax, opts(C::All, A::PerImage, true), true, large},
           {"large_lovasz_hinge", LossKind::LovaszHinge, opts({}, A::Batch), false, {3, 1, 16, 16, 40}},
       }) {
    OpCase row = loss_row(c, test::kForward);
    row.forward_f64 = {1e-11, 0};
    table.push_back(row);
  }

  // CUDA against the CPU: every small case on fresh inputs, then large ones.
  for (LossCase c : loss_cases()) {
    c.name += "_small";
    table.push_back(loss_row(c, test::kCudaParity));
  }
  LossOptions segmented = opts({}, {});
  segmented.lovasz_sort = LovaszSort::SegmentedSort;
  LossOptions segmented_per_image = opts(C::All, A::PerImage, true);
  segmented_per_image.lovasz_sort = LovaszSort::SegmentedSort;
  const LogitStyle tied = LogitStyle::Tied;  // many exactly equal errors, which the stable sorts must order alike
  for (const LossCase& c : std::vector<LossCase>{
           {"ce", LossKind::CrossEntropy, opts({}, {}), false, large},
           {"wce_ignore", LossKind::WeightedCrossEntropy, opts({}, {}, true), true, large},
           {"dice_default", LossKind::Dice, opts({}, {}), false, large},
           {"dice_all_batch_ignore", LossKind::Dice, opts(C::All, A::Batch, true), true, large},
           {"jaccard_present_batch", LossKind::Jaccard, opts(C::Present, A::Batch), false, large},
           {"dice_ce_default", LossKind::DiceCrossEntropy, opts({}, {}), false, large},
           {"lovasz_default_ties", LossKind::LovaszSoftmax, opts({}, {}), false, large, tied},
           {"lovasz_all_per_image_ignore_ties", LossKind::LovaszSoftmax, opts(C::All, A::PerImage, true), true, large,
            tied},
           {"lovasz_segmented_sort_ties", LossKind::LovaszSoftmax, segmented, false, large, tied},
           {"lovasz_segmented_sort_per_image_ignore_ties", LossKind::LovaszSoftmax, segmented_per_image, true, large,
            tied},
           {"lovasz_hinge_ties", LossKind::LovaszHinge, opts({}, {}, true), true, {2, 1, 8, 16, 40}, tied},
           {"lovasz_hinge_batch", LossKind::LovaszHinge, opts({}, A::Batch), false, {3, 1, 8, 16, 40}},
       })
    table.push_back(loss_row(c, test::kCudaParity));
  return table;
}

class LossForward : public ::testing::TestWithParam<OpCase> {};
class LossGradcheck : public ::testing::TestWithParam<OpCase> {};
class LossCudaParity : public ::testing::TestWithParam<OpCase> {};

TEST_P(LossForward, MatchesReference) { test::expect_forward_matches_reference(GetParam()); }
TEST_P(LossGradcheck, Float64MatchesFiniteDifferences) { test::expect_gradients_match_finite_differences(GetParam()); }
TEST_P(LossCudaParity, CudaMatchesCpu) { test::expect_cuda_matches_cpu(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Losses, LossForward, ::testing::ValuesIn(test::rows(loss_table(), test::kForward)),
                         test::row_name);
INSTANTIATE_TEST_SUITE_P(Losses, LossGradcheck, ::testing::ValuesIn(test::rows(loss_table(), test::kGradcheck)),
                         test::row_name);
INSTANTIATE_TEST_SUITE_P(Losses, LossCudaParity, ::testing::ValuesIn(test::rows(loss_table(), test::kCudaParity)),
                         test::row_name);

// ---- exact properties ----------------------------------------------------------------------------

// Logits 50 * onehot(prediction) in float64: the softmax is one-hot to within e^-50.
struct OneHot {
  Batch batch;
  Labels prediction;
};
OneHot one_hot_batch() {
  OneHot o;
  o.batch = make_batch({2, 4, 5, 6, 7}, 5);
  Batch& b = o.batch;
  std::mt19937 rng(6);
  std::uniform_int_distribution<std::int32_t> label(0, 3);
  o.prediction.resize(b.N * b.S);
  for (std::int64_t n = 0; n < b.N; ++n) {
    for (std::int64_t s = 0; s < b.S; ++s) {
      // Image 1: class 3 in neither map (absent from both), class 2 predicted only where true.
      std::int32_t a = label(rng);
      if (n == 1 && a == 3) a = 0;
      if (n == 1 && a == 2 && b.y(n, s) != 2) a = 1;
      o.prediction[n * b.S + s] = a;
      for (std::int64_t c = 0; c < b.K; ++c) b.z(n, c, s) = c == a ? 50.0 : 0.0;
    }
  }
  return o;
}

// Soft terms (1 - D_c, 1 - J_c, Lovász loss_c) per (image, class) next to the hard metric.
void expect_region_terms_match_hard(LossKind kind, bool jaccard) {
  const OneHot o = one_hot_batch();
  LossOptions options = opts(ClassSelection::All, Aggregate::PerImage);
  options.eps = 0;
  const LossOutput out = segmentation_loss_terms(kind, logits_of<double>(o.batch, Device::cpu()),
                                                 labels_of(o.batch, Device::cpu()), options);
  const Values terms = as_doubles(out.region_terms);
  const SegmentationMetrics m = segmentation_metrics(from_vector(o.prediction, o.batch.label_shape()),
                                                     labels_of(o.batch, Device::cpu()), o.batch.K);
  int compared = 0;
  for (std::int64_t n = 0; n < o.batch.N; ++n) {
    for (std::int64_t c = 0; c < o.batch.K; ++c) {
      const double hard = jaccard ? m.jaccard_at(n, c) : m.dice_at(n, c);
      if (std::isnan(hard)) continue;  // absent from both: no hard value to equal
      EXPECT_NEAR(1.0 - terms[n * o.batch.K + c], hard, 1e-12) << "image " << n << " class " << c;
      ++compared;
    }
  }
  EXPECT_EQ(compared, 7);  // every (image, class) but class 3 of image 1
}

TEST(LossProperties, OneHotSoftDiceEqualsHardDicePerClass) { expect_region_terms_match_hard(LossKind::Dice, false); }

TEST(LossProperties, OneHotSoftJaccardEqualsHardJaccardPerClass) {
  expect_region_terms_match_hard(LossKind::Jaccard, true);
}

// The Lovász extension agrees with the set function on the vertices: on a one-hot prediction
// each class's term is that class's Jaccard loss 1 - J_c.
TEST(LossProperties, OneHotLovaszTermEqualsJaccardLossPerClass) {
  expect_region_terms_match_hard(LossKind::LovaszSoftmax, true);
}

// Changing the logits of ignored voxels changes neither the loss nor any gradient, and the
// gradient at ignored voxels is 0.
TEST(LossProperties, IgnoredVoxelsAreIgnored) {
  for (const LossCase& c : loss_cases()) {
    if (!c.ignored) continue;
    SCOPED_TRACE(c.name);
    const Batch b = make_batch(c.shape, 7, LogitStyle::Continuous, true);
    Batch changed = b;
    std::mt19937 rng(8);
    std::uniform_real_distribution<double> wild(-6.0, 6.0);
    int ignored = 0;
    for (std::int64_t n = 0; n < b.N; ++n) {
      for (std::int64_t s = 0; s < b.S; ++s) {
        if (b.y(n, s) != kIgnore) continue;
        ++ignored;
        for (std::int64_t k = 0; k < b.K; ++k) changed.z(n, k, s) = wild(rng);
      }
    }
    ASSERT_GT(ignored, 0);
    Tensor z1 = logits_of<double>(b, Device::cpu(), true), z2 = logits_of<double>(changed, Device::cpu(), true);
    const Tensor l1 = segmentation_loss(c.kind, z1, labels_of(b, Device::cpu()), c.options);
    const Tensor l2 = segmentation_loss(c.kind, z2, labels_of(b, Device::cpu()), c.options);
    EXPECT_EQ(l1.item(), l2.item());
    l1.backward();
    l2.backward();
    const Values g1 = as_doubles(z1.grad()), g2 = as_doubles(z2.grad());
    EXPECT_EQ(g1, g2);
    for (std::int64_t n = 0; n < b.N; ++n) {
      for (std::int64_t s = 0; s < b.S; ++s) {
        if (b.y(n, s) != kIgnore) continue;
        for (std::int64_t k = 0; k < b.K; ++k) EXPECT_EQ(g1[(n * b.K + k) * b.S + s], 0.0);
      }
    }
  }
}

// A set with no chosen class (here: an image whose voxels are all ignored, under "present") has
// loss 0 and still counts in the mean, so the batch loss is half that of image 0 alone.
TEST(LossProperties, EmptySetCountsAsZeroInTheMean) {
  for (LossKind kind : {LossKind::Dice, LossKind::Jaccard, LossKind::LovaszSoftmax, LossKind::LovaszHinge}) {
    SCOPED_TRACE(loss_kind_name(kind));
    Batch b = make_batch({2, kind == LossKind::LovaszHinge ? 1 : 3, 2, 3, 4}, 9);
    for (std::int64_t s = 0; s < b.S; ++s) b.labels[b.S + s] = kIgnore;
    const LossOptions options = opts(ClassSelection::Present, Aggregate::PerImage, true);
    Tensor z = logits_of<double>(b, Device::cpu(), true);
    const LossOutput both = segmentation_loss_terms(kind, z, labels_of(b, Device::cpu()), options);
    Batch first = b;
    first.shape[0] = first.N = 1;
    first.logits.resize(b.K * b.S);
    first.labels.resize(b.S);
    const double alone =
        segmentation_loss(kind, logits_of<double>(first, Device::cpu()), labels_of(first, Device::cpu()), options)
            .item();
    EXPECT_GT(alone, 0.0);
    EXPECT_NEAR(both.loss.item(), alone / 2, 1e-15);
    const Values terms = as_doubles(both.region_terms);
    for (std::int64_t c = 0; c < b.K; ++c) EXPECT_TRUE(std::isnan(terms[b.K + c])) << "class " << c;
    both.loss.backward();
    const Values g = as_doubles(z.grad());
    for (std::int64_t i = b.K * b.S; i < 2 * b.K * b.S; ++i) EXPECT_EQ(g[i], 0.0);
  }
}

// Empty classes: "present" leaves out a class without ground truth in the set (NaN term), "fg"
// keeps it with D = ε / (P + ε), and a class never chosen is NaN in the report.
TEST(LossProperties, EmptyClassesFollowTheSelection) {
  const Batch b = make_batch({2, 3, 2, 3, 4}, 10);  // image 1 has no voxel of class 2
  const Tensor z = logits_of<double>(b, Device::cpu()), y = labels_of(b, Device::cpu());
  const LossOutput present =
      segmentation_loss_terms(LossKind::Dice, z, y, opts(ClassSelection::Present, Aggregate::PerImage));
  const Values tp = as_doubles(present.region_terms);
  EXPECT_FALSE(std::isnan(tp[0 * 3 + 2]));
  EXPECT_TRUE(std::isnan(tp[1 * 3 + 2]));
  const LossOutput fg =
      segmentation_loss_terms(LossKind::Dice, z, y, opts(ClassSelection::Foreground, Aggregate::PerImage));
  const Values tf = as_doubles(fg.region_terms);
  const Values p = softmax_ref(b);
  double P = 0;
  for (std::int64_t s = 0; s < b.S; ++s) P += p[(1 * 3 + 2) * b.S + s];
  EXPECT_NEAR(tf[1 * 3 + 2], 1.0 - 1e-5 / (P + 1e-5), 1e-12);
  EXPECT_TRUE(std::isnan(tf[1 * 3 + 0]));  // fg never chooses the background

  const LossReport r = loss_report(fg);
  EXPECT_TRUE(std::isnan(r.per_class[0]));
  EXPECT_EQ(r.sets_chosen[0], 0);
  EXPECT_EQ(r.sets_chosen[2], 2);
  EXPECT_NEAR(r.per_class[2], (tf[2] + tf[5]) / 2, 1e-15);
  const LossReport rp = loss_report(present);
  EXPECT_EQ(rp.sets_chosen[2], 1);
  EXPECT_NEAR(rp.per_class[2], tp[2], 1e-15);
  EXPECT_EQ(r.sets, 2);
}

// Heavily tied logits: reordering the voxels of each image (logits and labels together) keeps
// the Lovász loss, although it changes how ties are ordered.
TEST(LossProperties, LovaszValueDoesNotDependOnTieOrder) {
  for (LossKind kind : {LossKind::LovaszSoftmax, LossKind::LovaszHinge}) {
    for (Aggregate aggregate : {Aggregate::PerImage, Aggregate::Batch}) {
      SCOPED_TRACE(loss_kind_name(kind) + " " + aggregate_name(aggregate));
      const Batch b = make_batch({2, kind == LossKind::LovaszHinge ? 1 : 3, 4, 5, 6}, 11, LogitStyle::Tied);
      Batch shuffled = b;
      std::mt19937 rng(12);
      for (std::int64_t n = 0; n < b.N; ++n) {
        std::vector<std::int64_t> perm(b.S);
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), rng);
        for (std::int64_t s = 0; s < b.S; ++s) {
          shuffled.labels[n * b.S + s] = b.y(n, perm[s]);
          for (std::int64_t c = 0; c < b.K; ++c) shuffled.z(n, c, s) = b.z(n, c, perm[s]);
        }
      }
      const LossOptions options = opts(ClassSelection::All, aggregate);
      const double v1 =
          segmentation_loss(kind, logits_of<double>(b, Device::cpu()), labels_of(b, Device::cpu()), options).item();
      const double v2 = segmentation_loss(kind, logits_of<double>(shuffled, Device::cpu()),
                                          labels_of(shuffled, Device::cpu()), options)
                            .item();
      EXPECT_NEAR(v1, v2, 1e-13);
      EXPECT_NEAR(v1, loss_ref(b, resolve(kind, options)), 1e-13);
    }
  }
}

// At ties the gradient is the one of the stable order (ties keep voxel order): large tie blocks,
// against the reference's std::stable_sort. This is what makes CPU and GPU gradients agree.
TEST(LossProperties, LovaszGradientAtTiesFollowsVoxelOrder) {
  for (Aggregate aggregate : {Aggregate::PerImage, Aggregate::Batch}) {
    SCOPED_TRACE(aggregate_name(aggregate));
    const Batch b = make_batch({2, 3, 8, 10, 12}, 13, LogitStyle::Tied, true);
    const LossOptions options = opts(ClassSelection::Present, aggregate, true);
    Tensor z = logits_of<double>(b, Device::cpu(), true);
    lovasz_softmax_loss(z, labels_of(b, Device::cpu()), options).backward();
    EXPECT_TRUE(test::all_close(as_doubles(z.grad()),
                                lovasz_softmax_grad_ref(b, resolve(LossKind::LovaszSoftmax, options)), 1e-14, 1e-8));
  }
}

TEST(LossProperties, CrossEntropyIsMeanNegativeLogSoftmax) {
  // Two voxels, two classes: logits (1, 3) with label 1 and (2, 0) with label 0.
  const Tensor z = from_vector(Values{1.0, 2.0, 3.0, 0.0}, {1, 2, 2});
  const Tensor y = from_vector(Labels{1, 0}, {1, 2});
  const double expected = 0.5 * (std::log(std::exp(1.0) + std::exp(3.0)) - 3.0 + std::log(std::exp(2.0) + 1.0) - 2.0);
  EXPECT_NEAR(cross_entropy_loss(z, y).item(), expected, 1e-15);
}

// PyTorch's weighted mean by hand: Σ w_{y_i} nll_i / Σ w_{y_i}; by default w_c = n / n_c.
TEST(LossProperties, WeightedCrossEntropyIsPytorchsWeightedMean) {
  // Three voxels, two classes, labels (0, 1, 1).
  const Values logits{0.5, -1.0, 2.0, 1.5, 0.0, 0.25};  // (1, 2, 3)
  const Tensor z = from_vector(logits, {1, 2, 3});
  const Tensor y = from_vector(Labels{0, 1, 1}, {1, 3});
  auto nll = [&](int s, int label) {
    const double a = logits[s], b = logits[3 + s];
    return std::log(std::exp(a) + std::exp(b)) - (label == 0 ? a : b);
  };
  const double n0 = nll(0, 0), n1 = nll(1, 1), n2 = nll(2, 1);
  LossOptions given;
  given.class_weights = {2.0, 0.5};
  EXPECT_NEAR(weighted_cross_entropy_loss(z, y, given).item(), (2.0 * n0 + 0.5 * n1 + 0.5 * n2) / (2.0 + 0.5 + 0.5),
              1e-15);
  // Default: w_0 = 3 / 1, w_1 = 3 / 2, which makes the loss the mean of the class means.
  EXPECT_NEAR(weighted_cross_entropy_loss(z, y).item(), (3.0 * n0 + 1.5 * n1 + 1.5 * n2) / (3.0 + 1.5 + 1.5), 1e-15);
  EXPECT_NEAR(weighted_cross_entropy_loss(z, y).item(), 0.5 * (n0 + 0.5 * (n1 + n2)), 1e-15);
}

TEST(LossProperties, DefaultsAreTheIssuesDefaults) {
  const Batch b = make_batch({2, 3, 2, 3, 4}, 14);
  const Tensor z = logits_of<double>(b, Device::cpu()), y = labels_of(b, Device::cpu());
  using A = Aggregate;
  using C = ClassSelection;
  const auto same = [&](LossKind kind, const LossOptions& explicit_options) {
    EXPECT_EQ(segmentation_loss(kind, z, y).item(), segmentation_loss(kind, z, y, explicit_options).item())
        << loss_kind_name(kind);
  };
  same(LossKind::Dice, opts(C::Foreground, A::PerImage));
  same(LossKind::Jaccard, opts(C::Foreground, A::PerImage));
  same(LossKind::DiceCrossEntropy, opts(C::Foreground, A::PerImage));
  same(LossKind::LovaszSoftmax, opts(C::Present, A::Batch));
  EXPECT_NE(segmentation_loss(LossKind::Dice, z, y).item(),
            segmentation_loss(LossKind::Dice, z, y, opts(C::All, A::Batch)).item());
  const Batch h = make_batch({2, 1, 2, 3, 4}, 15);
  EXPECT_EQ(lovasz_hinge_loss(logits_of<double>(h, Device::cpu()), labels_of(h, Device::cpu())).item(),
            lovasz_hinge_loss(logits_of<double>(h, Device::cpu()), labels_of(h, Device::cpu()), opts({}, A::PerImage))
                .item());
  EXPECT_EQ(default_aggregate(LossKind::LovaszHinge), A::PerImage);
  // dice_ce = 1 * ce + 1 * dice, the Dice part taking the region options.
  EXPECT_NEAR(dice_ce_loss(z, y).item(), cross_entropy_loss(z, y).item() + dice_loss(z, y).item(), 1e-15);
}

// ce and wce have no region part: the CPU twin writes NaN into every region term (and the region
// part) over whatever the output buffers held before.
template <class T>
void expect_cross_entropy_region_terms_are_nan() {
  const Batch b = make_batch({2, 3, 2, 2, 3}, 23);
  const std::vector<T> logits(b.logits.begin(), b.logits.end());
  for (LossKind kind : {LossKind::CrossEntropy, LossKind::WeightedCrossEntropy}) {
    for (Aggregate aggregate : {Aggregate::PerImage, Aggregate::Batch}) {
      SCOPED_TRACE(std::string(loss_kind_name(kind)) + " " + aggregate_name(aggregate));
      kernels::LossConfig cfg;
      cfg.kind = kind;
      cfg.aggregate = aggregate;
      cfg.images = b.N;
      cfg.classes = b.K;
      cfg.voxels = b.S;
      const std::int64_t sets = kernels::loss_sets(cfg);
      std::vector<T> probs(logits.size()), region(sets * b.K, T(42)), ce(b.K, T(42)), parts(2, T(42));
      std::vector<T> coefs(kernels::loss_coefficient_count(cfg), T(42));
      T loss = T(42);
      kernels::LossForwardArgs<T> a;
      a.logits = logits.data();
      a.labels = b.labels.data();
      a.probs = probs.data();
      a.loss = &loss;
      a.region_terms = region.data();
      a.ce_terms = ce.data();
      a.parts = parts.data();
      a.coefs = coefs.data();
      kernels::cpu::loss_forward(cfg, a);
      for (T term : region) EXPECT_TRUE(std::isnan(term)) << term;
      EXPECT_TRUE(std::isnan(parts[1])) << parts[1];
      EXPECT_EQ(parts[0], loss);
      for (T term : ce) EXPECT_NE(term, T(42));  // written: a class mean, or NaN for an absent class
    }
  }
}

TEST(LossProperties, CrossEntropyRegionTermsAreNan) {
  expect_cross_entropy_region_terms_are_nan<double>();
  expect_cross_entropy_region_terms_are_nan<float>();
}

// The CUDA forward writes the same NaNs: small blocks that held 42 are freed to the caching
// allocator first, so any output left unwritten would read 42.
TEST(LossProperties, CudaCrossEntropyRegionTermsAreNan) {
  VG_REQUIRE_CUDA();
  const Batch b = make_batch({2, 3, 2, 2, 3}, 24);
  for (LossKind kind : {LossKind::CrossEntropy, LossKind::WeightedCrossEntropy}) {
    SCOPED_TRACE(loss_kind_name(kind));
    {
      std::vector<Tensor> primed;
      for (int i = 0; i < 32; ++i) primed.push_back(full({2, 3}, 42.0, DType::Float32, Device::cuda()));
    }
    const LossOutput out =
        segmentation_loss_terms(kind, logits_of<float>(b, Device::cuda()), labels_of(b, Device::cuda()));
    for (double term : as_doubles(out.region_terms)) EXPECT_TRUE(std::isnan(term)) << term;
    EXPECT_TRUE(std::isnan(as_doubles(out.parts)[1]));
  }
}

// Both devices sum class statistics in kernels::ClassStatSum: a class's label count and the set's
// voxel count stay exact past 2^24 voxels, where float sums stop counting.
TEST(LossProperties, ClassCountsStayExactPastFloatPrecision) {
  const std::int64_t voxels = (std::int64_t{1} << 25) + 3;
  kernels::ClassStatSum acc[kernels::kClassStats] = {};
  std::int64_t labelled = 0;
  for (std::int64_t i = 0; i < voxels; ++i) {
    const bool g = i % 4 != 0;
    labelled += g ? 1 : 0;
    kernels::accumulate_class_stats(0.5f, g, 0.25f, acc);
  }
  ASSERT_GT(labelled, std::int64_t{1} << 24);
  EXPECT_EQ(acc[kernels::kValidCount], static_cast<double>(voxels));
  EXPECT_EQ(acc[kernels::kLabelCount], static_cast<double>(labelled));
  EXPECT_EQ(acc[kernels::kProbSum], 0.5 * static_cast<double>(voxels));
  EXPECT_EQ(acc[kernels::kOverlap], 0.5 * static_cast<double>(labelled));
  EXPECT_EQ(acc[kernels::kNllSum], 0.25 * static_cast<double>(labelled));
}

// ---- the op's shape in the graph, dtypes, errors -------------------------------------------------

TEST(LossOp, EachLossIsOneAutogradNode) {
  for (const LossCase& c : loss_cases()) {
    SCOPED_TRACE(c.name);
    const Batch b = make_batch(c.shape, 16, LogitStyle::Continuous, c.ignored);
    Tensor z = logits_of<double>(b, Device::cpu(), true);
    const Tensor loss = segmentation_loss(c.kind, z, labels_of(b, Device::cpu()), c.options);
    ASSERT_TRUE(loss.grad_fn());
    EXPECT_EQ(loss.grad_fn()->name, loss_kind_name(c.kind));
    ASSERT_EQ(loss.grad_fn()->inputs.size(), 1u);
    EXPECT_EQ(loss.grad_fn()->inputs[0].leaf, z.impl_ptr());  // straight into the logits: no inner nodes
    EXPECT_EQ(loss.dim(), 0);
  }
}

TEST(LossOp, Uint8LabelsEqualInt32Labels) {
  const Batch b = make_batch({2, 3, 2, 3, 4}, 17);
  std::vector<std::uint8_t> small(b.labels.begin(), b.labels.end());
  const Tensor z = logits_of<double>(b, Device::cpu());
  for (LossKind kind : {LossKind::CrossEntropy, LossKind::Dice, LossKind::LovaszSoftmax}) {
    EXPECT_EQ(segmentation_loss(kind, z, from_vector(small, b.label_shape())).item(),
              segmentation_loss(kind, z, labels_of(b, Device::cpu())).item());
  }
}

// The float32 CPU twin (training without a GPU) agrees with float64.
TEST(LossOp, Float32MatchesFloat64OnTheCpu) {
  for (const LossCase& c : loss_cases()) {
    SCOPED_TRACE(c.name);
    const Batch b = make_batch(c.shape, 18, LogitStyle::Continuous, c.ignored);
    Tensor zd = logits_of<double>(b, Device::cpu(), true), zf = logits_of<float>(b, Device::cpu(), true);
    const Tensor ld = segmentation_loss(c.kind, zd, labels_of(b, Device::cpu()), c.options);
    const Tensor lf = segmentation_loss(c.kind, zf, labels_of(b, Device::cpu()), c.options);
    EXPECT_NEAR(lf.item(), ld.item(), 1e-5);
    ld.backward();
    lf.backward();
    EXPECT_TRUE(test::all_close(as_doubles(zf.grad()), as_doubles(zd.grad()), 1e-6, 1e-4));
  }
}

TEST(LossOp, ReportAveragesClassTermsOverSetsWhereChosen) {
  const Batch b = make_batch({2, 3, 2, 3, 4}, 19);
  const Tensor z = logits_of<double>(b, Device::cpu()), y = labels_of(b, Device::cpu());
  const LossReport ce = loss_report(segmentation_loss_terms(LossKind::CrossEntropy, z, y));
  const Values p = softmax_ref(b);
  for (std::int64_t c = 0; c < b.K; ++c) {
    double sum = 0, count = 0;
    for (std::int64_t n = 0; n < b.N; ++n)
      for (std::int64_t s = 0; s < b.S; ++s)
        if (b.y(n, s) == c) {
          sum -= std::log(p[(n * b.K + c) * b.S + s]);
          ++count;
        }
    EXPECT_NEAR(ce.per_class[c], sum / count, 1e-12);
    EXPECT_EQ(ce.sets_chosen[c], 1);
  }
  EXPECT_TRUE(std::isnan(ce.region_part));
  LossOptions o;
  o.ce_weight = 0.25;
  o.dice_weight = 3.0;
  const LossOutput out = segmentation_loss_terms(LossKind::DiceCrossEntropy, z, y, o);
  const LossReport r = loss_report(out);
  EXPECT_NEAR(r.loss, 0.25 * r.ce_part + 3.0 * r.region_part, 1e-15);
  EXPECT_NEAR(r.per_class[0], 0.25 * r.ce_per_class[0], 1e-15);  // background: in the CE part only
  EXPECT_NEAR(r.per_class[1], 0.25 * r.ce_per_class[1] + 3.0 * r.region_per_class[1], 1e-15);
}

TEST(LossErrors, InvalidInputsAreRefusedClearly) {
  Batch b = make_batch({1, 3, 2, 2, 2}, 20);
  b.labels[5] = 7;
  try {
    dice_loss(logits_of<double>(b, Device::cpu()), labels_of(b, Device::cpu()));
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("label 7 at voxel 5 of image 0 is outside 0..2"), std::string::npos) << what;
    EXPECT_NE(what.find("ignore-label"), std::string::npos) << what;
  }
  LossOptions ignore7;
  ignore7.ignore_label = 7;
  EXPECT_NO_THROW(dice_loss(logits_of<double>(b, Device::cpu()), labels_of(b, Device::cpu()), ignore7));
  b.labels[5] = -1;
  EXPECT_THROW(cross_entropy_loss(logits_of<double>(b, Device::cpu()), labels_of(b, Device::cpu())), Error);
  b.labels[5] = 0;
  const Tensor z = logits_of<double>(b, Device::cpu()), y = labels_of(b, Device::cpu());
  EXPECT_THROW(lovasz_hinge_loss(z, y), Error);                      // three channels
  EXPECT_THROW(dice_loss(z, from_vector(b.labels, {1, 8})), Error);  // labels' shape
  EXPECT_THROW(dice_loss(z, y.to(DType::Float64)), Error);           // labels' dtype
  EXPECT_THROW(dice_loss(z.to(DType::Int32), y), Error);             // logits' dtype
  LossOptions bad_weights;
  bad_weights.class_weights = {1.0, 2.0};
  EXPECT_THROW(weighted_cross_entropy_loss(z, y, bad_weights), Error);  // two weights, three classes
  bad_weights.class_weights = {1.0, 2.0, 3.0};
  EXPECT_THROW(dice_loss(z, y, bad_weights), Error);  // weights on a loss without them
  LossOptions negative_eps;
  negative_eps.eps = -1;
  EXPECT_THROW(dice_loss(z, y, negative_eps), Error);
  Batch h = make_batch({1, 1, 2, 2, 2}, 21);
  h.labels[0] = 2;
  EXPECT_THROW(lovasz_hinge_loss(logits_of<double>(h, Device::cpu()), labels_of(h, Device::cpu())), Error);
  EXPECT_THROW(parse_loss_kind("focal"), Error);
  EXPECT_EQ(parse_loss_kind("lovasz_hinge"), LossKind::LovaszHinge);
  EXPECT_EQ(parse_class_selection("present"), ClassSelection::Present);
  EXPECT_EQ(parse_aggregate("per-image"), Aggregate::PerImage);
  EXPECT_THROW(parse_aggregate("image"), Error);
}

TEST(LossErrors, CudaInvalidLabelIsReportedFromTheDevice) {
  VG_REQUIRE_CUDA();
  Batch b = make_batch({2, 3, 4, 4, 4}, 22);
  b.labels[70] = 9;
  try {
    lovasz_softmax_loss(logits_of<float>(b, Device::cuda()), labels_of(b, Device::cuda()));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("label 9 at voxel 6 of image 1"), std::string::npos) << e.what();
  }
}

// Of several invalid labels, every device names the first in (image, voxel) order: here the
// last chunk of image 0, while every voxel of image 1 (many blocks on a GPU) is invalid too.
void expect_first_invalid_label_reported(Device d) {
  Batch b = make_batch({2, 2, 16, 32, 32}, 25);  // 16384 voxels per image: several reduction chunks
  for (std::int64_t s = 0; s < b.S; ++s) b.labels[b.S + s] = 9;
  b.labels[16000] = 7;
  b.labels[16300] = 8;
  for (LossKind kind : {LossKind::CrossEntropy, LossKind::Dice, LossKind::LovaszSoftmax}) {
    SCOPED_TRACE(loss_kind_name(kind));
    const Tensor z = d.is_cpu() ? logits_of<double>(b, d) : logits_of<float>(b, d);
    try {
      segmentation_loss(kind, z, labels_of(b, d));
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("label 7 at voxel 16000 of image 0"), std::string::npos) << e.what();
    }
  }
}

TEST(LossErrors, FirstInvalidLabelIsReported) { expect_first_invalid_label_reported(Device::cpu()); }

TEST(LossErrors, CudaFirstInvalidLabelIsReported) {
  VG_REQUIRE_CUDA();
  expect_first_invalid_label_reported(Device::cuda());
}

}  // namespace
}  // namespace voxgrad
