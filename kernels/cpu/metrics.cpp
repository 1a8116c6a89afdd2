// CPU twins of the hard-metric kernels: argmax over the classes per voxel, and the per (image,
// class) counts of predicted, ground-truth and overlapping voxels, one image per thread.
#include "kernels/metrics.h"

#include <vector>

namespace voxgrad::kernels::cpu {

namespace {
constexpr std::int64_t kParallelMin = 1 << 15;
}  // namespace

template <class T>
void argmax_classes(const T* logits, std::int32_t* prediction, std::int64_t images, std::int64_t classes,
                    std::int64_t voxels) {
#pragma omp parallel for schedule(static) if (images * classes * voxels > kParallelMin)
  for (std::int64_t v = 0; v < images * voxels; ++v) {
    const std::int64_t n = v / voxels, s = v % voxels;
    prediction[v] = argmax_position(logits + n * classes * voxels + s, classes, voxels);
  }
}

InvalidClass overlap_counts(const OverlapProblem& pb) {
  const std::int64_t N = pb.images, K = pb.classes, S = pb.voxels;
  std::vector<InvalidClass> invalid(static_cast<std::size_t>(N));
#pragma omp parallel for schedule(static) if (N * S > kParallelMin)
  for (std::int64_t n = 0; n < N; ++n) {
    std::int32_t* counts = pb.counts + n * K * kOverlapCounts;
    for (std::int64_t i = 0; i < K * kOverlapCounts; ++i) counts[i] = 0;
    for (std::int64_t s = 0; s < S; ++s) {
      const std::int32_t a = pb.prediction[n * S + s], b = pb.labels[n * S + s];
      if (pb.has_ignore_label && b == pb.ignore_label) continue;
      const bool a_ok = a >= 0 && a < K, b_ok = b >= 0 && b < K;
      if (!a_ok || !b_ok) {
        if (invalid[n].found == 0) invalid[n] = {1, a_ok ? b : a, a_ok ? 1 : 0, n * S + s};
        continue;
      }
      ++counts[a * kOverlapCounts + kPredicted];
      ++counts[b * kOverlapCounts + kReference];
      if (a == b) ++counts[a * kOverlapCounts + kIntersection];
    }
  }
  for (const InvalidClass& i : invalid)
    if (i.found != 0) return i;
  return {};
}

template void argmax_classes<float>(const float*, std::int32_t*, std::int64_t, std::int64_t, std::int64_t);
template void argmax_classes<double>(const double*, std::int32_t*, std::int64_t, std::int64_t, std::int64_t);

}  // namespace voxgrad::kernels::cpu
