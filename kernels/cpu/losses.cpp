// CPU twins of the segmentation losses: softmax per voxel, per (set, class) sums in double in an
// order fixed by the shapes alone, the Lovász sort where needed, then the shared finalize and the
// per-voxel backward of kernels/losses.h. float and double.
#include "kernels/losses.h"

#include <vector>

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

// Sums over the valid voxels of each (image, class) row, then over the images of each set.
// Each row is summed by one thread front to back, so the result does not depend on the threads.
template <class T>
std::vector<T> class_stats(const LossConfig& cfg, const T* probs, const std::int32_t* labels, const T* nll) {
  const std::int64_t N = cfg.images, K = cfg.classes, S = cfg.voxels, sets = loss_sets(cfg);
  std::vector<ClassStatSum> rows(static_cast<std::size_t>(N * K * kClassStats), 0.0);  // (N, K, kClassStats)
#pragma omp parallel for schedule(static) if (N * K * S > kParallelMin)
  for (std::int64_t row = 0; row < N * K; ++row) {
    const std::int64_t n = row / K, c = row % K;
    ClassStatSum* acc = rows.data() + row * kClassStats;
    for (std::int64_t s = 0; s < S; ++s) {
      const std::int32_t y = labels[n * S + s];
      if (loss_label_ignored(cfg, y)) continue;
      const bool g = y == (cfg.kind == LossKind::LovaszHinge ? 1 : c);
      const T p = probs != nullptr ? probs[row * S + s] : T(0);
      accumulate_class_stats(p, g, nll[n * S + s], acc);
    }
  }
  std::vector<T> stats(static_cast<std::size_t>(sets * K * kClassStats));  // (sets, K, kClassStats)
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

// Σ weighted error * lovasz_grad per (set, class), in (n, s) order.
template <class T>
std::vector<T> lovasz_sums(const LossConfig& cfg, const T* x, const std::int32_t* labels, const T* grad) {
  const std::int64_t N = cfg.images, K = cfg.classes, S = cfg.voxels, sets = loss_sets(cfg);
  const bool hinge = cfg.kind == LossKind::LovaszHinge;
  std::vector<double> rows(static_cast<std::size_t>(N * K), 0.0);
#pragma omp parallel for schedule(static) if (N * K * S > kParallelMin)
  for (std::int64_t row = 0; row < N * K; ++row) {
    const std::int64_t n = row / K, c = row % K;
    double acc = 0.0;
    for (std::int64_t s = 0; s < S; ++s) {
      const std::int32_t y = labels[n * S + s];
      if (loss_label_ignored(cfg, y)) continue;
      const T e = lovasz_error(hinge, x[row * S + s], y == (hinge ? 1 : c));
      acc += static_cast<double>(lovasz_weighted_error(hinge, e)) * static_cast<double>(grad[row * S + s]);
    }
    rows[row] = acc;
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
  std::vector<T> nll(static_cast<std::size_t>(N * S), T(0));  // (N, S) -log p of the voxel's label
  if (loss_uses_softmax(cfg.kind)) {
#pragma omp parallel for schedule(static) if (N * K * S > kParallelMin)
    for (std::int64_t v = 0; v < N * S; ++v) {
      const std::int64_t n = v / S, s = v % S;
      const std::int32_t y = a.labels[v];
      const std::int64_t base = n * K * S + s;
      nll[v] = softmax_nll_position(a.logits + base, a.probs + base, K, S, loss_label_ignored(cfg, y) ? -1 : y);
    }
  }
  const std::vector<T> stats =
      class_stats(cfg, loss_uses_softmax(cfg.kind) ? a.probs : static_cast<const T*>(nullptr), a.labels, nll.data());
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
#pragma omp parallel for schedule(static) if (N * K * S > kParallelMin)
  for (std::int64_t v = 0; v < N * S; ++v) {
    const std::int64_t n = v / S, s = v % S;
    const std::int64_t base = n * K * S + s;
    const std::int64_t set = cfg.aggregate == Aggregate::Batch ? 0 : n;
    loss_voxel_backward(cfg, set, a.labels[v], a.saved + base,
                        a.lovasz_grad != nullptr ? a.lovasz_grad + base : nullptr, a.coefs, dy, a.grad_logits + base,
                        S);
  }
}

template void loss_forward<float>(const LossConfig&, const LossForwardArgs<float>&);
template void loss_forward<double>(const LossConfig&, const LossForwardArgs<double>&);
template void loss_backward<float>(const LossConfig&, const LossBackwardArgs<float>&);
template void loss_backward<double>(const LossConfig&, const LossBackwardArgs<double>&);

}  // namespace cpu
}  // namespace voxgrad::kernels
