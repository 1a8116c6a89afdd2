// CPU twin of the Lovász gradient. Each (set, class) segment is ordered by decreasing error with
// ties in voxel order, as the CUDA radix sorts order it, then walked once to scatter lovasz_grad
// back to every element's place. float segments go through the stable radix sort on the CUDA
// path's integer keys (kernels/cpu/radix_sort.h); double ones through std::stable_sort.
#include "kernels/lovasz.h"

#include <omp.h>

#include <algorithm>
#include <memory>
#include <new>
#include <numeric>
#include <type_traits>
#include <vector>

#include "kernels/cpu/radix_sort.h"

namespace voxgrad::kernels::cpu {

namespace {

constexpr std::int64_t kParallelMin = 1 << 14;
// A segment at least this long is sorted by all threads together; shorter ones, one per thread.
constexpr std::int64_t kCooperativeMin = 1 << 16;
// The radix items carry a voxel's place in its segment and its ground truth in 32 bits.
constexpr std::int64_t kMaxRadixSegment = std::int64_t{1} << 31;

// float errors compare through the CUDA path's integer keys, so both devices order the same
// bits the same way (signed zeros included); double errors compare as numbers.
bool sorts_before(float a, float b) { return descending_error_key(a) < descending_error_key(b); }
bool sorts_before(double a, double b) { return a > b; }

// One segment: class c of images [first_image, first_image + images).
struct Segment {
  std::int64_t first_image = 0, images = 0, c = 0;
};

template <class T>
Segment segment_of(const LovaszProblem<T>& pb, std::int64_t seg) {
  const std::int64_t images_per_set = pb.per_image ? 1 : pb.images;
  return {(seg / pb.classes) * images_per_set, images_per_set, seg % pb.classes};
}

template <class T>
bool in_class(const LovaszProblem<T>& pb, std::int32_t y, std::int64_t c) {
  return y == (pb.hinge ? 1 : c);
}

template <class T>
bool ignored(const LovaszProblem<T>& pb, std::int32_t y) {
  return pb.has_ignore_label && y == pb.ignore_label;
}

// floor(i / d) for 0 <= i, d < 2^31 without an integer division per element: a double estimate
// off by at most one, then corrected.
struct Divider {
  std::int64_t d;
  double inverse;
  explicit Divider(std::int64_t divisor) : d(divisor), inverse(1.0 / static_cast<double>(divisor)) {}
  std::int64_t quotient(std::int64_t i) const {
    std::int64_t q = static_cast<std::int64_t>(static_cast<double>(i) * inverse);
    if (q * d > i) --q;
    if ((q + 1) * d <= i) ++q;
    return q;
  }
};

// The radix sort's two buffers for one segment, cache-line aligned so that its whole-line stores
// are aligned.
struct RadixBuffers {
  std::uint64_t* items;
  std::uint64_t* scratch;
  explicit RadixBuffers(std::int64_t length)
      : items(new (std::align_val_t{64}) std::uint64_t[length]),
        scratch(new (std::align_val_t{64}) std::uint64_t[length]) {}
  ~RadixBuffers() {
    ::operator delete[](items, std::align_val_t{64});
    ::operator delete[](scratch, std::align_val_t{64});
  }
  RadixBuffers(const RadixBuffers&) = delete;
  RadixBuffers& operator=(const RadixBuffers&) = delete;
};

// Sorts one segment's (error key, place << 1 | g) items and writes lovasz_grad to its elements.
// `items` and `scratch` hold the segment's length; `parallel`: all threads work on this segment.
void radix_segment(const LovaszProblem<float>& pb, const Segment& sg, std::uint64_t* items, std::uint64_t* scratch,
                   bool parallel) {
  const std::int64_t K = pb.classes, S = pb.voxels, length = sg.images * S;
  std::int64_t G = 0;
  for (std::int64_t m = 0; m < sg.images; ++m) {
    const std::int64_t n = sg.first_image + m;
    const std::int32_t* labels = pb.labels + n * S;
    const float* x = pb.x + (n * K + sg.c) * S;
    float* grad = pb.grad + (n * K + sg.c) * S;
    std::uint64_t* out = items + m * S;
#pragma omp parallel for schedule(static) reduction(+ : G) if (parallel)
    for (std::int64_t s = 0; s < S; ++s) {
      const std::int32_t y = labels[s];
      const std::uint32_t place = static_cast<std::uint32_t>((m * S + s) << 1);
      if (ignored(pb, y)) {
        grad[s] = 0.0f;
        out[s] = radix_item(kIgnoredErrorKey, place);
        continue;
      }
      const bool g = in_class(pb, y, sg.c);
      G += g ? 1 : 0;
      out[s] = radix_item(descending_error_key(lovasz_error(pb.hinge, x[s], g)), place | (g ? 1u : 0u));
    }
  }
  const std::uint64_t* sorted = radix_sort_by_key(items, scratch, length, parallel);

  // The walk: rank and cum_g at the start of each thread's chunk come from the chunks before it.
  // Ignored voxels sort last, so the valid ones hold ranks 0..V-1 (their grad is already 0).
  const Divider by_voxels(S);
  const int max_threads = parallel ? omp_get_max_threads() : 1;
  std::vector<std::int64_t> chunk_g(static_cast<std::size_t>(max_threads));
#pragma omp parallel num_threads(max_threads) if (max_threads > 1)
  {
    const int threads = omp_get_num_threads(), t = omp_get_thread_num();
    const std::int64_t first = length * t / threads, last = length * (t + 1) / threads;
    std::int64_t g_here = 0;
    for (std::int64_t k = first; k < last; ++k) g_here += radix_payload(sorted[k]) & 1u;
    chunk_g[static_cast<std::size_t>(t)] = g_here;
#pragma omp barrier
    std::int64_t cum_g = 0;
    for (int u = 0; u < t; ++u) cum_g += chunk_g[static_cast<std::size_t>(u)];
    // The element of a sorted item, where its gradient goes.
    auto element = [&](std::uint32_t payload) {
      const std::int64_t place = payload >> 1;
      const std::int64_t m = sg.images == 1 ? 0 : by_voxels.quotient(place);
      return ((sg.first_image + m) * K + sg.c) * S + (place - m * S);
    };
    for (std::int64_t k = first; k < last; ++k) {
      const std::uint64_t item = sorted[k];
      if (radix_key(item) == kIgnoredErrorKey) break;
      const std::uint32_t payload = radix_payload(item);
      const bool g = (payload & 1u) != 0u;
      cum_g += g ? 1 : 0;
      pb.grad[element(payload)] = lovasz_grad<float>(g, k + 1, cum_g, G);
    }
  }
}

void lovasz_gradient_radix(const LovaszProblem<float>& pb) {
  const std::int64_t sets = pb.per_image ? pb.images : 1, segments = sets * pb.classes;
  const std::int64_t length = segment_of(pb, 0).images * pb.voxels;
  if (length >= kCooperativeMin) {
    RadixBuffers buffers(length);
    for (std::int64_t seg = 0; seg < segments; ++seg)
      radix_segment(pb, segment_of(pb, seg), buffers.items, buffers.scratch, true);
    return;
  }
#pragma omp parallel if (segments > 1 && segments * length > kParallelMin)
  {
    RadixBuffers buffers(length);
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t seg = 0; seg < segments; ++seg)
      radix_segment(pb, segment_of(pb, seg), buffers.items, buffers.scratch, false);
  }
}

}  // namespace

template <class T>
void lovasz_gradient_by_comparison(const LovaszProblem<T>& pb) {
  const std::int64_t N = pb.images, K = pb.classes, S = pb.voxels;
  const std::int64_t segments = (pb.per_image ? N : 1) * K;
#pragma omp parallel if (segments > 1 && N * K * S > kParallelMin)
  {
    std::vector<std::int64_t> elements;  // flat (N, K, S) indices of the segment's valid voxels
    std::vector<T> errors;               // indexed like `elements`
    std::vector<std::int64_t> order;     // positions into `elements`, sorted
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t seg = 0; seg < segments; ++seg) {
      const Segment sg = segment_of(pb, seg);
      elements.clear();
      errors.clear();
      std::int64_t G = 0;
      for (std::int64_t n = sg.first_image; n < sg.first_image + sg.images; ++n) {
        for (std::int64_t s = 0; s < S; ++s) {
          const std::int32_t y = pb.labels[n * S + s];
          const std::int64_t e = (n * K + sg.c) * S + s;
          if (ignored(pb, y)) {
            pb.grad[e] = T(0);
            continue;
          }
          const bool g = in_class(pb, y, sg.c);
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
        const bool g = in_class(pb, pb.labels[n * S + s], sg.c);
        cum_g += g ? 1 : 0;
        pb.grad[e] = lovasz_grad<T>(g, static_cast<std::int64_t>(k) + 1, cum_g, G);
      }
    }
  }
}

template <class T>
void lovasz_gradient(const LovaszProblem<T>& pb) {
  if constexpr (std::is_same_v<T, float>) {
    if ((pb.per_image ? 1 : pb.images) * pb.voxels < kMaxRadixSegment) return lovasz_gradient_radix(pb);
  }
  lovasz_gradient_by_comparison(pb);
}

template void lovasz_gradient<float>(const LovaszProblem<float>&);
template void lovasz_gradient<double>(const LovaszProblem<double>&);
template void lovasz_gradient_by_comparison<float>(const LovaszProblem<float>&);
template void lovasz_gradient_by_comparison<double>(const LovaszProblem<double>&);

}  // namespace voxgrad::kernels::cpu
