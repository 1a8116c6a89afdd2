// CPU twin of the Lovász gradient: each (set, class) segment gathered in voxel order, sorted by
// decreasing error with std::stable_sort (ties keep voxel order, as the CUDA radix sorts do), then
// walked once to scatter lovasz_grad back. Segments run in parallel.
#include "kernels/lovasz.h"

#include <algorithm>
#include <numeric>
#include <vector>

namespace voxgrad::kernels::cpu {

namespace {

constexpr std::int64_t kParallelMin = 1 << 14;

// float errors compare through the CUDA path's integer keys, so both devices order the same
// bits the same way (signed zeros included); double errors compare as numbers.
bool sorts_before(float a, float b) { return descending_error_key(a) < descending_error_key(b); }
bool sorts_before(double a, double b) { return a > b; }

}  // namespace

template <class T>
void lovasz_gradient(const LovaszProblem<T>& pb) {
  const std::int64_t N = pb.images, K = pb.classes, S = pb.voxels;
  const std::int64_t sets = pb.per_image ? N : 1, images_per_set = pb.per_image ? 1 : N;
  const std::int64_t segments = sets * K;
#pragma omp parallel if (segments > 1 && N * K * S > kParallelMin)
  {
    std::vector<std::int64_t> elements;  // flat (N, K, S) indices of the segment's valid voxels
    std::vector<T> errors;               // indexed like `elements`
    std::vector<std::int64_t> order;     // positions into `elements`, sorted
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t seg = 0; seg < segments; ++seg) {
      const std::int64_t set = seg / K, c = seg % K;
      elements.clear();
      errors.clear();
      std::int64_t G = 0;
      for (std::int64_t n = set * images_per_set; n < (set + 1) * images_per_set; ++n) {
        for (std::int64_t s = 0; s < S; ++s) {
          const std::int32_t y = pb.labels[n * S + s];
          const std::int64_t e = (n * K + c) * S + s;
          if (pb.has_ignore_label && y == pb.ignore_label) {
            pb.grad[e] = T(0);
            continue;
          }
          const bool g = y == (pb.hinge ? 1 : c);
          G += g ? 1 : 0;
          elements.push_back(e);
          errors.push_back(lovasz_error(pb.hinge, pb.x[e], g));
        }
      }
      order.resize(elements.size());
      std::iota(order.begin(), order.end(), std::int64_t{0});
      std::stable_sort(order.begin(), order.end(),
                       [&](std::int64_t a, std::int64_t b) { return sorts_before(errors[a], errors[b]); });
      std::int64_t cum_g = 0;
      for (std::size_t k = 0; k < order.size(); ++k) {
        const std::int64_t e = elements[order[k]];
        const std::int64_t n = e / (K * S), s = e % S;
        const bool g = pb.labels[n * S + s] == (pb.hinge ? 1 : c);
        cum_g += g ? 1 : 0;
        pb.grad[e] = lovasz_grad<T>(g, static_cast<std::int64_t>(k) + 1, cum_g, G);
      }
    }
  }
}

template void lovasz_gradient<float>(const LovaszProblem<float>&);
template void lovasz_gradient<double>(const LovaszProblem<double>&);

}  // namespace voxgrad::kernels::cpu
