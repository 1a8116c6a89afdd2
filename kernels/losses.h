// Segmentation losses on logits (N, K, S) and integer labels (N, S), S the voxels of one image:
// cross-entropy, weighted cross-entropy, soft Dice, soft Jaccard, Lovász-softmax, Lovász hinge and
// Dice + CE. Each is one forward and one backward pass; the math shared by both devices lives here.
#pragma once

#include <cmath>

#include "common.h"
#include "lovasz.h"

namespace voxgrad::kernels {

#if !defined(__CUDACC__)
using std::exp;
using std::log;
#endif

enum class LossKind : std::uint8_t {
  CrossEntropy,          // ce
  WeightedCrossEntropy,  // wce
  Dice,                  // dice
  Jaccard,               // jaccard
  LovaszSoftmax,         // lovasz
  LovaszHinge,           // lovasz_hinge (binary, K = 1)
  DiceCrossEntropy,      // dice_ce
};

// Which classes a region loss averages over in each set: all, all but 0, or those with at least
// one ground-truth voxel in the set.
enum class ClassSelection : std::uint8_t { All, Foreground, Present };

// One set per image (the loss is the mean of the images' losses), or one set over the batch.
enum class Aggregate : std::uint8_t { PerImage, Batch };

// Everything a loss kernel needs to know besides its buffers. Trivially copyable: CUDA kernels
// take it by value.
struct LossConfig {
  LossKind kind = LossKind::CrossEntropy;
  ClassSelection class_selection = ClassSelection::All;
  Aggregate aggregate = Aggregate::PerImage;
  bool has_ignore_label = false;
  std::int32_t ignore_label = 0;
  double eps = 1e-5;       // Dice and Jaccard smoothing
  double ce_weight = 1.0;  // dice_ce = ce_weight * ce + dice_weight * dice
  double dice_weight = 1.0;
  LovaszSort lovasz_sort = LovaszSort::CompositeKeys;  // CUDA only; the CPU has one stable sort
  std::int64_t images = 0;                             // N
  std::int64_t classes = 0;                            // K
  std::int64_t voxels = 0;                             // S = D * H * W
};

VG_HD bool loss_uses_softmax(LossKind k) { return k != LossKind::LovaszHinge; }
VG_HD bool loss_has_cross_entropy(LossKind k) {
  return k == LossKind::CrossEntropy || k == LossKind::WeightedCrossEntropy || k == LossKind::DiceCrossEntropy;
}
VG_HD bool loss_has_region(LossKind k) { return k != LossKind::CrossEntropy && k != LossKind::WeightedCrossEntropy; }
VG_HD bool loss_uses_lovasz(LossKind k) { return k == LossKind::LovaszSoftmax || k == LossKind::LovaszHinge; }
VG_HD std::int64_t loss_sets(const LossConfig& cfg) { return cfg.aggregate == Aggregate::Batch ? 1 : cfg.images; }
// Labels a voxel may carry: 0..K-1, or 0/1 for the hinge's single logit channel.
VG_HD std::int64_t loss_label_limit(const LossConfig& cfg) {
  return cfg.kind == LossKind::LovaszHinge ? 2 : cfg.classes;
}
VG_HD bool loss_label_ignored(const LossConfig& cfg, std::int32_t y) {
  return cfg.has_ignore_label && y == cfg.ignore_label;
}
VG_HD bool loss_label_valid(const LossConfig& cfg, std::int32_t y) {
  return loss_label_ignored(cfg, y) || (y >= 0 && y < loss_label_limit(cfg));
}

// The Lovász sort-and-gradient problem of a loss: probabilities (or the hinge's logits), labels
// and the output buffer, shaped and configured from `cfg`. Shared by both devices' forwards.
template <class T>
LovaszProblem<T> lovasz_problem(const LossConfig& cfg, const T* x, const std::int32_t* labels, T* grad) {
  LovaszProblem<T> pb;
  pb.x = x;
  pb.labels = labels;
  pb.grad = grad;
  pb.images = cfg.images;
  pb.classes = cfg.classes;
  pb.voxels = cfg.voxels;
  pb.per_image = cfg.aggregate == Aggregate::PerImage;
  pb.hinge = cfg.kind == LossKind::LovaszHinge;
  pb.has_ignore_label = cfg.has_ignore_label;
  pb.ignore_label = cfg.ignore_label;
  return pb;
}

// Size of the backward coefficients the forward leaves for the backward: per (set, class) a and b
// of the region part, then per class the cross-entropy weight (see loss_voxel_backward).
inline std::int64_t loss_coefficient_count(const LossConfig& cfg) {
  return 2 * loss_sets(cfg) * cfg.classes + cfg.classes;
}

// ---- per (set, class) sums over the set's voxels, ignored voxels left out ----------------------

enum ClassStat : int {
  kProbSum = 0,     // Σ p_ic
  kLabelCount = 1,  // Σ g_ic
  kOverlap = 2,     // Σ p_ic g_ic
  kNllSum = 3,      // Σ g_ic (-log p_ic): the cross-entropy of the class's voxels
  kValidCount = 4,  // voxels in the set
  kClassStats = 5,
};

// What both devices sum the class statistics in, voxel by voxel and across blocks or images: the
// label and voxel counts stay exact far beyond float's 2^24, and the sums keep double precision
// until the finalize reads them in T.
using ClassStatSum = double;

template <class T>
VG_HD void accumulate_class_stats(T p, bool g, T nll, ClassStatSum* acc) {
  using Acc = ClassStatSum;
  acc[kProbSum] += static_cast<Acc>(p);
  acc[kLabelCount] += g ? Acc(1) : Acc(0);
  acc[kOverlap] += g ? static_cast<Acc>(p) : Acc(0);
  acc[kNllSum] += g ? static_cast<Acc>(nll) : Acc(0);
  acc[kValidCount] += Acc(1);
}

// ---- per voxel --------------------------------------------------------------------------------

// Softmax of one voxel's K logits (`stride` apart) into p, and -log p_label computed as
// log-sum-exp minus the label's logit, which stays finite where p_label underflows.
// `label` outside [0, K) (ignored, or invalid and reported elsewhere) gives 0.
template <class T>
VG_HD T softmax_nll_position(const T* z, T* p, std::int64_t classes, std::int64_t stride, std::int32_t label) {
  T m = z[0];
  for (std::int64_t c = 1; c < classes; ++c) m = z[c * stride] > m ? z[c * stride] : m;
  T sum = T(0);
  for (std::int64_t c = 0; c < classes; ++c) {
    const T e = exp(z[c * stride] - m);
    p[c * stride] = e;
    sum += e;
  }
  const T inv = T(1) / sum;
  for (std::int64_t c = 0; c < classes; ++c) p[c * stride] *= inv;
  if (label < 0 || label >= classes) return T(0);
  return log(sum) + m - z[label * stride];
}

// Whether class c takes part in set s, from the set's sums of that class.
template <class T>
VG_HD bool class_chosen(const LossConfig& cfg, std::int64_t c, const T* stats) {
  if (cfg.kind == LossKind::LovaszHinge) return stats[kValidCount] > T(0);
  switch (cfg.class_selection) {
    case ClassSelection::All:
      return true;
    case ClassSelection::Foreground:
      return c >= 1;
    case ClassSelection::Present:
      return stats[kLabelCount] > T(0);
  }
  return true;
}

// One chosen class's loss term in one set, and the coefficients of its derivative in p:
// ∂term/∂p_ic = a + b g_ic for Dice and Jaccard; for Lovász a multiplies sign(p - g) * lovasz_grad.
template <class T>
struct ClassTerm {
  T term, a, b;
};

template <class T>
VG_HD ClassTerm<T> region_class_term(const LossConfig& cfg, const T* stats, T lovasz_sum) {
  const T eps = static_cast<T>(cfg.eps);
  const T P = stats[kProbSum], G = stats[kLabelCount], I = stats[kOverlap];
  if (cfg.kind == LossKind::Jaccard) {
    // J = (I + ε) / (U + ε), U = P + G - I; ∂J/∂p = (g - J (1 - g)) / (U + ε).
    const T den = P + G - I + eps;
    const T J = (I + eps) / den;
    return {T(1) - J, J / den, -(T(1) + J) / den};
  }
  if (loss_uses_lovasz(cfg.kind)) return {lovasz_sum, T(1), T(0)};
  // Dice, and the Dice part of dice_ce: D = (2I + ε) / (P + G + ε); ∂D/∂p = (2g - D) / (P + G + ε).
  const T den = P + G + eps;
  const T D = (T(2) * I + eps) / den;
  return {T(1) - D, D / den, T(-2) / den};
}

// From the per (set, class) sums to the loss. Writes the loss, each chosen class's term per set
// (NaN where not chosen), each class's mean cross-entropy over its voxels (NaN where it has none),
// the two unweighted parts (cross-entropy, region; NaN where the loss has no such part) and the
// backward coefficients. Runs once per loss: serially on the CPU, in one GPU thread.
//   stats        (sets, K, kClassStats)
//   lovasz_sums  (sets, K) Σ error * lovasz_grad per segment, or null
//   class_weights (K) for wce, or null for inverse class frequency over the batch
//   region_terms (sets, K); ce_terms (K); parts (2); coefs (loss_coefficient_count)
template <class T>
VG_HD void loss_finalize(const LossConfig& cfg, const T* stats, const T* lovasz_sums, const T* class_weights, T* loss,
                         T* region_terms, T* ce_terms, T* parts, T* coefs) {
  const std::int64_t K = cfg.classes, sets = loss_sets(cfg);
  T* coef_a = coefs;
  T* coef_b = coefs + sets * K;
  T* coef_ce = coefs + 2 * sets * K;
  const T nan = static_cast<T>(NAN);
  for (std::int64_t i = 0; i < 2 * sets * K + K; ++i) coefs[i] = T(0);
  const bool both = cfg.kind == LossKind::DiceCrossEntropy;

  T ce_value = nan;
  if (loss_has_cross_entropy(cfg.kind)) {
    T voxels = T(0);
    for (std::int64_t i = 0; i < sets * K; ++i) voxels += stats[i * kClassStats + kLabelCount];
    // PyTorch's weighted mean: Σ_i w_{y_i} (-log p_{i,y_i}) / Σ_i w_{y_i}, here summed by class.
    T weighted_nll = T(0), weight_total = T(0);
    for (std::int64_t c = 0; c < K; ++c) {
      T count = T(0), nll = T(0);
      for (std::int64_t s = 0; s < sets; ++s) {
        count += stats[(s * K + c) * kClassStats + kLabelCount];
        nll += stats[(s * K + c) * kClassStats + kNllSum];
      }
      T w = T(1);
      if (cfg.kind == LossKind::WeightedCrossEntropy) {
        // Inverse class frequency n / n_c; a class without voxels never weighs anything.
        w = class_weights != nullptr ? class_weights[c] : (count > T(0) ? voxels / count : T(0));
      }
      weighted_nll += w * nll;
      weight_total += w * count;
      ce_terms[c] = count > T(0) ? nll / count : nan;
      coef_ce[c] = w;
    }
    // No weighted voxel at all (everything ignored): the loss is 0, as an empty set's is.
    ce_value = weight_total > T(0) ? weighted_nll / weight_total : T(0);
    const T scale = weight_total > T(0) ? (both ? static_cast<T>(cfg.ce_weight) : T(1)) / weight_total : T(0);
    for (std::int64_t c = 0; c < K; ++c) coef_ce[c] *= scale;
  } else {
    for (std::int64_t c = 0; c < K; ++c) ce_terms[c] = nan;
  }

  T region_value = nan;
  if (loss_has_region(cfg.kind)) {
    const T region_scale = both ? static_cast<T>(cfg.dice_weight) : T(1);
    T set_total = T(0);
    for (std::int64_t s = 0; s < sets; ++s) {
      std::int64_t chosen = 0;
      for (std::int64_t c = 0; c < K; ++c) chosen += class_chosen(cfg, c, stats + (s * K + c) * kClassStats) ? 1 : 0;
      // A set with no chosen class has loss 0 and still counts in the mean.
      const T w = chosen > 0 ? region_scale / (static_cast<T>(sets) * static_cast<T>(chosen)) : T(0);
      T set_loss = T(0);
      for (std::int64_t c = 0; c < K; ++c) {
        const T* st = stats + (s * K + c) * kClassStats;
        if (!class_chosen(cfg, c, st)) {
          region_terms[s * K + c] = nan;
          continue;
        }
        const ClassTerm<T> t = region_class_term(cfg, st, lovasz_sums != nullptr ? lovasz_sums[s * K + c] : T(0));
        region_terms[s * K + c] = t.term;
        set_loss += t.term;
        coef_a[s * K + c] = w * t.a;
        coef_b[s * K + c] = w * t.b;
      }
      if (chosen > 0) set_total += set_loss / static_cast<T>(chosen);
    }
    region_value = set_total / static_cast<T>(sets);
  } else {
    for (std::int64_t i = 0; i < sets * K; ++i) region_terms[i] = nan;
  }

  if (both) {
    *loss = static_cast<T>(cfg.ce_weight) * ce_value + static_cast<T>(cfg.dice_weight) * region_value;
  } else {
    *loss = loss_has_cross_entropy(cfg.kind) ? ce_value : region_value;
  }
  parts[0] = ce_value;
  parts[1] = region_value;
}

// ∂loss/∂z for one voxel's K entries (`stride` apart), times the upstream gradient dy.
// x holds the softmax probabilities, or the logits for the hinge; lovasz_grad (or null) the
// Lovász gradient at each entry's sorted position. The region part gives dp_c and goes through
// the softmax Jacobian, dz_j = p_j (dp_j - Σ_c p_c dp_c); the cross-entropy part is w (p - g).
template <class T>
VG_HD void loss_voxel_backward(const LossConfig& cfg, std::int64_t set, std::int32_t label, const T* x,
                               const T* lovasz_grad, const T* coefs, T dy, T* dz, std::int64_t stride) {
  const std::int64_t K = cfg.classes, sets = loss_sets(cfg);
  if (loss_label_ignored(cfg, label)) {
    for (std::int64_t c = 0; c < K; ++c) dz[c * stride] = T(0);
    return;
  }
  const T* a = coefs + set * K;
  const T* b = coefs + sets * K + set * K;
  const T* ce = coefs + 2 * sets * K;
  if (cfg.kind == LossKind::LovaszHinge) {
    // error = 1 - z (2y - 1), weighted through relu: ∂/∂z = -(2y - 1) where the error is positive.
    const bool g = label == 1;
    const T e = lovasz_error(true, x[0], g);
    dz[0] = e > T(0) ? dy * a[0] * lovasz_grad[0] * (g ? T(-1) : T(1)) : T(0);
    return;
  }
  const bool region = loss_has_region(cfg.kind), lovasz = cfg.kind == LossKind::LovaszSoftmax;
  const bool has_ce = loss_has_cross_entropy(cfg.kind);
  // ∂term/∂p_c: a + b g for Dice and Jaccard; a sign(p - g) lovasz_grad for Lovász (m = |g - p|).
  auto region_dp = [&](std::int64_t c) -> T {
    const bool g = c == label;
    if (lovasz) return a[c] * (g ? T(-1) : T(1)) * lovasz_grad[c * stride];
    return a[c] + (g ? b[c] : T(0));
  };
  T inner = T(0);
  if (region)
    for (std::int64_t c = 0; c < K; ++c) inner += x[c * stride] * region_dp(c);
  for (std::int64_t c = 0; c < K; ++c) {
    const T p = x[c * stride];
    T d = T(0);
    if (region) d += p * (region_dp(c) - inner);
    if (has_ce) d += ce[label] * (p - (c == label ? T(1) : T(0)));
    dz[c * stride] = dy * d;
  }
}

// ---- device entry points ------------------------------------------------------------------------

template <class T>
struct LossForwardArgs {
  const T* logits = nullptr;             // (N, K, S)
  const std::int32_t* labels = nullptr;  // (N, S)
  const T* class_weights = nullptr;      // (K), wce only; null: inverse class frequency over the batch
  T* probs = nullptr;                    // (N, K, S) softmax, kept for the backward; unused by the hinge
  T* lovasz_grad = nullptr;              // (N, K, S) Lovász kinds only, kept for the backward
  T* loss = nullptr;                     // ()
  T* region_terms = nullptr;             // (sets, K)
  T* ce_terms = nullptr;                 // (K)
  T* parts = nullptr;                    // (2) cross-entropy part, region part
  T* coefs = nullptr;                    // (loss_coefficient_count)
};

template <class T>
struct LossBackwardArgs {
  const T* saved = nullptr;              // (N, K, S) probs, or the logits for the hinge
  const std::int32_t* labels = nullptr;  // (N, S)
  const T* lovasz_grad = nullptr;        // (N, K, S) or null
  const T* coefs = nullptr;              // from the forward
  const T* grad_output = nullptr;        // () the upstream gradient, on the loss's device
  T* grad_logits = nullptr;              // (N, K, S)
};

// The Error every device raises for a label outside [0, K) that is not the ignore label.
[[noreturn]] void fail_invalid_label(const LossConfig& cfg, std::int64_t label, std::int64_t voxel);

namespace cpu {
template <class T>
void loss_forward(const LossConfig& cfg, const LossForwardArgs<T>& args);
template <class T>
void loss_backward(const LossConfig& cfg, const LossBackwardArgs<T>& args);
}  // namespace cpu

namespace cuda {
// Waits for the stream once at the end, to read back the invalid-label flag.
void loss_forward(const LossConfig& cfg, const LossForwardArgs<float>& args, Scratch& scratch, Stream s);
void loss_backward(const LossConfig& cfg, const LossBackwardArgs<float>& args, Stream s);
}  // namespace cuda

}  // namespace voxgrad::kernels
