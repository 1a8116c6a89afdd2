// CPU twins of the segmentation losses: softmax per voxel, per (set, class) sums in double in an
// order fixed by the shapes alone, the Lovász sort where needed, then the shared finalize and the
// per-voxel backward of kernels/losses.h. float and double.
#include "kernels/losses.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/lane_sums.h"
#include "kernels/cpu/vector_exp.h"
#include "kernels/error.h"

namespace voxgrad::kernels {

void fail_invalid_label(const LossConfig& cfg, std::int64_t label, std::int64_t voxel) {
  const std::int64_t limit = loss_label_limit(cfg);
  const std::int64_t n = cfg.voxels > 0 ? voxel / cfg.voxels : 0, s = cfg.voxels > 0 ? voxel % cfg.voxels : 0;
  VG_FAIL("label " << label << " at voxel " << s << " of image " << n << " is outside 0.." << (limit - 1)
                   << (cfg.kind == LossKind::LovaszHinge ? " (lovasz_hinge takes binary labels)"
                                                         : " (the logits have " + std::to_string(limit) + " classes)")
                   << (cfg.has_ignore_label ? " and is not the ignore label " + std::to_string(cfg.ignore_label)
                                            : std::string())
                   << "; check that the label map matches the model's classes, or mark such voxels with "
                      "--ignore-label");
}

namespace cpu {

namespace {

constexpr std::int64_t kParallelMin = 1 << 14;

// The voxels a softmax block holds: its temporaries stay in L1.
constexpr std::int64_t kSoftmaxBlock = 256;

// Softmax of `count` voxels into p, class planes S apart, in softmax_nll_position's arithmetic
// order (max, then exp and their sum class by class, then one reciprocal), with the class loops
// outside and the voxel loops inside, so that those vectorise; and the block's share of each
// class's statistics (accumulate_class_stats' sums) into stats (K, kClassStats), with -log p_label
// taken as log-sum-exp minus the label's logit.
template <class T>
void softmax_stats_block(const LossConfig& cfg, const T* z, T* p, const std::int32_t* labels, ClassStatSum* stats,
                         std::int64_t K, std::int64_t S, std::int64_t count) {
  T m[kSoftmaxBlock], sum[kSoftmaxBlock], inverse[kSoftmaxBlock], nll[kSoftmaxBlock];
  std::copy(z, z + count, m);
  for (std::int64_t c = 1; c < K; ++c)
    for (std::int64_t s = 0; s < count; ++s) m[s] = z[c * S + s] > m[s] ? z[c * S + s] : m[s];
  std::fill(sum, sum + count, T(0));
  for (std::int64_t c = 0; c < K; ++c) {
#pragma omp simd
    for (std::int64_t s = 0; s < count; ++s) {
      const T e = vector_exp(z[c * S + s] - m[s]);
      p[c * S + s] = e;
      sum[s] += e;
    }
  }
  for (std::int64_t s = 0; s < count; ++s) inverse[s] = T(1) / sum[s];
  for (std::int64_t c = 0; c < K; ++c)
    for (std::int64_t s = 0; s < count; ++s) p[c * S + s] *= inverse[s];
  for (std::int64_t s = 0; s < count; ++s) {
    const std::int32_t y = labels[s];
    const bool scored = !loss_label_ignored(cfg, y) && y >= 0 && y < K;
    nll[s] = scored ? std::log(sum[s]) + m[s] - z[y * S + s] : T(0);
  }
  for (std::int64_t c = 0; c < K; ++c) {
    ClassStatSum prob_sum = 0, label_count = 0, overlap = 0, nll_sum = 0, valid_count = 0;
    const std::int32_t label = static_cast<std::int32_t>(c);
#pragma omp simd reduction(+ : prob_sum, label_count, overlap, nll_sum, valid_count)
    for (std::int64_t s = 0; s < count; ++s) {
      const bool valid = !loss_label_ignored(cfg, labels[s]), g = valid && labels[s] == label;
      const ClassStatSum pc = static_cast<ClassStatSum>(p[c * S + s]);
      prob_sum += valid ? pc : 0.0;
      label_count += g ? 1.0 : 0.0;
      overlap += g ? pc : 0.0;
      nll_sum += g ? static_cast<ClassStatSum>(nll[s]) : 0.0;
      valid_count += valid ? 1.0 : 0.0;
    }
    ClassStatSum* out = stats + c * kClassStats;
    out[kProbSum] = prob_sum;
    out[kLabelCount] = label_count;
    out[kOverlap] = overlap;
    out[kNllSum] = nll_sum;
    out[kValidCount] = valid_count;
  }
}

// loss_voxel_backward of `count` voxels for the softmax kinds, in its arithmetic order, with the
// class loops outside and the voxel loops inside, so that those vectorise. The kind's parts are
// template arguments: a branch on them inside the loops would stop the vectoriser.
template <class T, bool kRegion, bool kLovasz, bool kCrossEntropy>
void softmax_loss_backward_block(const LossConfig& cfg, std::int64_t set, const std::int32_t* labels, const T* x,
                                 const T* lovasz_grad, const T* coefs, T dy, T* dz, std::int64_t S,
                                 std::int64_t count) {
  const std::int64_t K = cfg.classes, sets = loss_sets(cfg);
  const T* a = coefs + set * K;
  const T* b = coefs + sets * K + set * K;
  const T* ce = coefs + 2 * sets * K;
  T inner[kSoftmaxBlock], ce_weight[kSoftmaxBlock], keep[kSoftmaxBlock];
  for (std::int64_t s = 0; s < count; ++s) {
    const std::int32_t y = labels[s];
    keep[s] = loss_label_ignored(cfg, y) ? T(0) : T(1);
    // An ignored label may lie outside 0..K-1; its weight is never used.
    ce_weight[s] = kCrossEntropy && y >= 0 && y < K ? ce[y] : T(0);
    inner[s] = T(0);
  }
  // ∂term/∂p_c at voxel s: a + b g for Dice and Jaccard; a sign(p - g) lovasz_grad for Lovász.
  // Made per class with its coefficients as values, so the voxel loops load nothing else.
  auto region_dp_of = [&](std::int64_t c) {
    const T ac = a[c], bc = kLovasz ? T(0) : b[c];
    const T* lg = kLovasz ? lovasz_grad + c * S : nullptr;
    const std::int32_t label = static_cast<std::int32_t>(c);
    return [=](std::int64_t s) -> T {
      const bool g = labels[s] == label;
      if constexpr (kLovasz) return ac * (g ? T(-1) : T(1)) * lg[s];
      return ac + (g ? bc : T(0));
    };
  };
  if constexpr (kRegion) {
    for (std::int64_t c = 0; c < K; ++c) {
      const auto region_dp = region_dp_of(c);
      const T* xc = x + c * S;
#pragma omp simd
      for (std::int64_t s = 0; s < count; ++s) inner[s] += xc[s] * region_dp(s);
    }
  }
  for (std::int64_t c = 0; c < K; ++c) {
    const auto region_dp = region_dp_of(c);
    const T* xc = x + c * S;
    T* dzc = dz + c * S;
    const std::int32_t label = static_cast<std::int32_t>(c);
#pragma omp simd
    for (std::int64_t s = 0; s < count; ++s) {
      const T p = xc[s];
      T d = T(0);
      if constexpr (kRegion) d += p * (region_dp(s) - inner[s]);
      if constexpr (kCrossEntropy) d += ce_weight[s] * (p - (labels[s] == label ? T(1) : T(0)));
      dzc[s] = keep[s] != T(0) ? dy * d : T(0);
    }
  }
}

// The block function for the loss's kind.
template <class T>
auto softmax_loss_backward_for(LossKind kind) {
  const bool region = loss_has_region(kind), ce = loss_has_cross_entropy(kind);
  if (kind == LossKind::LovaszSoftmax) return softmax_loss_backward_block<T, true, true, false>;
  if (region && ce) return softmax_loss_backward_block<T, true, false, true>;
  if (region) return softmax_loss_backward_block<T, true, false, false>;
  return softmax_loss_backward_block<T, false, false, true>;
}

// The images [first, last) whose voxels make up set `set`.
struct ImageRange {
  std::int64_t first, last;
};
ImageRange images_of_set(const LossConfig& cfg, std::int64_t set) {
  return cfg.aggregate == Aggregate::Batch ? ImageRange{0, cfg.images} : ImageRange{set, set + 1};
}

void check_labels(const LossConfig& cfg, const std::int32_t* labels) {
  const std::int64_t n = cfg.images * cfg.voxels;
  for (std::int64_t i = 0; i < n; ++i)
    if (!loss_label_valid(cfg, labels[i])) fail_invalid_label(cfg, labels[i], i);
}

// The per-set statistics (sets, K, kClassStats) from the per-image ones (N, K, kClassStats): each
// set's images added in order.
template <class T>
std::vector<T> set_stats(const LossConfig& cfg, const std::vector<ClassStatSum>& rows) {
  const std::int64_t K = cfg.classes, sets = loss_sets(cfg);
  std::vector<T> stats(static_cast<std::size_t>(sets * K * kClassStats));
  for (std::int64_t set = 0; set < sets; ++set) {
    for (std::int64_t i = 0; i < K * kClassStats; ++i) {
      ClassStatSum sum = 0.0;
      const ImageRange r = images_of_set(cfg, set);
      for (std::int64_t n = r.first; n < r.last; ++n) sum += rows[n * K * kClassStats + i];
      stats[set * K * kClassStats + i] = static_cast<T>(sum);
    }
  }
  return stats;
}

// The per-image statistics of the softmax kinds from the softmax blocks' (N, blocks, K,
// kClassStats), each image's blocks added in order: a fixed order whatever the threads.
std::vector<ClassStatSum> image_stats_from_blocks(const LossConfig& cfg, const std::vector<ClassStatSum>& blocks,
                                                  std::int64_t blocks_per_image) {
  const std::int64_t N = cfg.images, K = cfg.classes, row = K * kClassStats;
  std::vector<ClassStatSum> rows(static_cast<std::size_t>(N * row), 0.0);
#pragma omp parallel for schedule(static) if (N * blocks_per_image * row > kParallelMin)
  for (std::int64_t i = 0; i < N * row; ++i) {
    const std::int64_t n = i / row, j = i % row;
    ClassStatSum sum = 0.0;
    for (std::int64_t b = 0; b < blocks_per_image; ++b) sum += blocks[(n * blocks_per_image + b) * row + j];
    rows[i] = sum;
  }
  return rows;
}

// The hinge's per-image statistics: label and voxel counts only (it has no probabilities).
std::vector<ClassStatSum> hinge_image_stats(const LossConfig& cfg, const std::int32_t* labels) {
  const std::int64_t N = cfg.images, S = cfg.voxels;
  std::vector<ClassStatSum> rows(static_cast<std::size_t>(N * kClassStats), 0.0);  // K = 1
  for (std::int64_t n = 0; n < N; ++n) {
    std::int64_t positives = 0, valid = 0;
    for (std::int64_t s = 0; s < S; ++s) {
      const std::int32_t y = labels[n * S + s];
      const bool counted = !loss_label_ignored(cfg, y);
      valid += counted ? 1 : 0;
      positives += counted && y == 1 ? 1 : 0;
    }
    rows[n * kClassStats + kLabelCount] = static_cast<ClassStatSum>(positives);
    rows[n * kClassStats + kValidCount] = static_cast<ClassStatSum>(valid);
  }
  return rows;
}

// Σ weighted error * lovasz_grad per (set, class), in (n, s) order.
template <class T>
std::vector<T> lovasz_sums(const LossConfig& cfg, const T* x, const std::int32_t* labels, const T* grad) {
  const std::int64_t N = cfg.images, K = cfg.classes, S = cfg.voxels, sets = loss_sets(cfg);
  const bool hinge = cfg.kind == LossKind::LovaszHinge;
  std::vector<double> rows(static_cast<std::size_t>(N * K), 0.0);
#pragma omp parallel for schedule(static) if (N * K * S > kParallelMin)
  for (std::int64_t row = 0; row < N * K; ++row) {
    const std::int64_t n = row / K, c = row % K;
    const std::int32_t target = hinge ? 1 : static_cast<std::int32_t>(c);
    LaneSums acc;
    add_to_lanes(acc, S, [&](std::int64_t s) {
      const std::int32_t y = labels[n * S + s];
      const T e = lovasz_error(hinge, x[row * S + s], y == target);
      const double term = static_cast<double>(lovasz_weighted_error(hinge, e)) * static_cast<double>(grad[row * S + s]);
      return loss_label_ignored(cfg, y) ? 0.0 : term;
    });
    rows[row] = acc.total();
  }
  std::vector<T> sums(static_cast<std::size_t>(sets * K));  // (sets, K)
  for (std::int64_t set = 0; set < sets; ++set) {
    for (std::int64_t c = 0; c < K; ++c) {
      double sum = 0.0;
      const ImageRange r = images_of_set(cfg, set);
      for (std::int64_t n = r.first; n < r.last; ++n) sum += rows[n * K + c];
      sums[set * K + c] = static_cast<T>(sum);
    }
  }
  return sums;
}

}  // namespace

template <class T>
void loss_forward(const LossConfig& cfg, const LossForwardArgs<T>& a) {
  const std::int64_t N = cfg.images, K = cfg.classes, S = cfg.voxels;
  check_labels(cfg, a.labels);
  std::vector<ClassStatSum> rows;  // (N, K, kClassStats)
  if (loss_uses_softmax(cfg.kind)) {
    const std::int64_t blocks = (S + kSoftmaxBlock - 1) / kSoftmaxBlock;
    std::vector<ClassStatSum> block_stats(static_cast<std::size_t>(N * blocks * K * kClassStats));
    // Images outside, blocks of voxels inside: no division per voxel to find its image.
#pragma omp parallel if (N * K * S > kParallelMin)
    for (std::int64_t n = 0; n < N; ++n) {
#pragma omp for schedule(static) nowait
      for (std::int64_t block = 0; block < blocks; ++block) {
        const std::int64_t s0 = block * kSoftmaxBlock, base = n * K * S + s0;
        softmax_stats_block(cfg, a.logits + base, a.probs + base, a.labels + n * S + s0,
                            block_stats.data() + (n * blocks + block) * K * kClassStats, K, S,
                            std::min(kSoftmaxBlock, S - s0));
      }
    }
    rows = image_stats_from_blocks(cfg, block_stats, blocks);
  } else {
    rows = hinge_image_stats(cfg, a.labels);
  }
  const std::vector<T> stats = set_stats<T>(cfg, rows);
  std::vector<T> sums;
  if (loss_uses_lovasz(cfg.kind)) {
    const LovaszProblem<T> pb =
        lovasz_problem(cfg, cfg.kind == LossKind::LovaszHinge ? a.logits : a.probs, a.labels, a.lovasz_grad);
    lovasz_gradient(pb);
    sums = lovasz_sums(cfg, pb.x, a.labels, static_cast<const T*>(a.lovasz_grad));
  }
  loss_finalize(cfg, stats.data(), sums.empty() ? static_cast<const T*>(nullptr) : sums.data(), a.class_weights, a.loss,
                a.region_terms, a.ce_terms, a.parts, a.coefs);
}

template <class T>
void loss_backward(const LossConfig& cfg, const LossBackwardArgs<T>& a) {
  const std::int64_t N = cfg.images, K = cfg.classes, S = cfg.voxels;
  const T dy = *a.grad_output;
  const bool hinge = cfg.kind == LossKind::LovaszHinge;
  const auto backward_block = softmax_loss_backward_for<T>(cfg.kind);
#pragma omp parallel if (N * K * S > kParallelMin)
  for (std::int64_t n = 0; n < N; ++n) {
    const std::int64_t set = cfg.aggregate == Aggregate::Batch ? 0 : n;
    if (hinge) {  // one channel: nothing to gain from blocks
#pragma omp for schedule(static) nowait
      for (std::int64_t s = 0; s < S; ++s)
        loss_voxel_backward(cfg, set, a.labels[n * S + s], a.saved + n * S + s,
                            a.lovasz_grad != nullptr ? a.lovasz_grad + n * S + s : nullptr, a.coefs, dy,
                            a.grad_logits + n * S + s, S);
      continue;
    }
#pragma omp for schedule(static) nowait
    for (std::int64_t block = 0; block < (S + kSoftmaxBlock - 1) / kSoftmaxBlock; ++block) {
      const std::int64_t s0 = block * kSoftmaxBlock, base = n * K * S + s0;
      backward_block(cfg, set, a.labels + n * S + s0, a.saved + base,
                     a.lovasz_grad != nullptr ? a.lovasz_grad + base : nullptr, a.coefs, dy, a.grad_logits + base, S,
                     std::min(kSoftmaxBlock, S - s0));
    }
  }
}

template void loss_forward<float>(const LossConfig&, const LossForwardArgs<float>&);
template void loss_forward<double>(const LossConfig&, const LossForwardArgs<double>&);
template void loss_backward<float>(const LossConfig&, const LossBackwardArgs<float>&);
template void loss_backward<double>(const LossConfig&, const LossBackwardArgs<double>&);

}  // namespace cpu
}  // namespace voxgrad::kernels
