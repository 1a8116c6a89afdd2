// CUDA Lovász gradient on CUB: all (set, class) segments sorted in one call (a radix sort over
// composite segment/error keys, or a segmented sort), the ground truth's running count by one
// scan by key, and lovasz_grad scattered back through the sorted permutation.
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>

#include <algorithm>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_segmented_sort.cuh>
#include <limits>

#include "kernels/cuda/check.h"
#include "kernels/cuda/launch.h"
#include "kernels/lovasz.h"

namespace voxgrad::kernels::cuda {

namespace {


// Where element e of (N, K, S) lives: its image, class and voxel, and its label.
struct Element {
  std::int64_t n, c, s;
};
__device__ Element element_of(const LovaszProblem<float>& pb, std::int64_t e) {
  const std::int64_t s = e % pb.voxels, nc = e / pb.voxels;
  return {nc / pb.classes, nc % pb.classes, s};
}

// 1 where the element is a valid voxel of its segment's class (label 1 for the hinge).
struct GroundTruthOf {
  LovaszProblem<float> pb;
  __host__ __device__ std::uint32_t operator()(std::uint32_t e) const {
    const std::int64_t s = e % pb.voxels, nc = e / pb.voxels;
    const std::int64_t n = nc / pb.classes, c = nc % pb.classes;
    const std::int32_t y = pb.labels[n * pb.voxels + s];
    if (pb.has_ignore_label && y == pb.ignore_label) return 0u;
    return y == (pb.hinge ? 1 : c) ? 1u : 0u;
  }
};

// Every segment holds L elements at [seg * L, (seg + 1) * L) of the segment-major layout.
struct SegmentOf {
  std::uint32_t length;
  __host__ __device__ std::uint32_t operator()(std::uint32_t q) const { return q / length; }
};
struct SegmentStart {
  std::int64_t length;
  __host__ __device__ std::int64_t operator()(std::int64_t seg) const { return seg * length; }
};

// Keys and element indices in segment-major order: segment (set, class), then voxel order
// ((n, s) for a batch set), which is the order ties keep through the stable sorts.
template <class Key>
__global__ void build_keys_kernel(LovaszProblem<float> pb, std::int64_t length, Key* __restrict__ keys,
                                  std::uint32_t* __restrict__ values, std::int64_t count) {
  for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < count;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const Element el = element_of(pb, e);
    const std::int64_t set = pb.per_image ? el.n : 0;
    const std::int64_t seg = set * pb.classes + el.c;
    const std::int64_t q = seg * length + (pb.per_image ? el.s : el.n * pb.voxels + el.s);
    const std::int32_t y = pb.labels[el.n * pb.voxels + el.s];
    std::uint32_t low = kIgnoredErrorKey;
    if (!(pb.has_ignore_label && y == pb.ignore_label)) {
      low = descending_error_key(lovasz_error(pb.hinge, pb.x[e], y == (pb.hinge ? 1 : el.c)));
    }
    if constexpr (sizeof(Key) == 8) {
      keys[q] = (static_cast<Key>(seg) << 32) | low;
    } else {
      keys[q] = low;
    }
    values[q] = static_cast<std::uint32_t>(e);
  }
}

// Position q of the sorted layout is the k-th element of its segment; cum_g holds the segment's
// running count of ground truth, whose last entry is the segment's G (ignored voxels sort last
// and count 0).
__global__ void scatter_grad_kernel(LovaszProblem<float> pb, std::int64_t length,
                                    const std::uint32_t* __restrict__ sorted_elements,
                                    const std::uint32_t* __restrict__ cum_g, std::int64_t count) {
  for (std::int64_t q = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < count;
       q += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t seg = q / length, k = q - seg * length + 1;
    const std::uint32_t e = sorted_elements[q];
    const Element el = element_of(pb, e);
    const std::int32_t y = pb.labels[el.n * pb.voxels + el.s];
    if (pb.has_ignore_label && y == pb.ignore_label) {
      pb.grad[e] = 0.0f;
      continue;
    }
    const bool g = y == (pb.hinge ? 1 : el.c);
    const std::int64_t G = cum_g[seg * length + length - 1];
    pb.grad[e] = lovasz_grad<float>(g, k, cum_g[q], G);
  }
}

int bit_width(std::uint64_t v) {
  int bits = 0;
  while (v != 0) {
    ++bits;
    v >>= 1;
  }
  return bits;
}

}  // namespace

void lovasz_gradient(const LovaszProblem<float>& pb, LovaszSort sort, Scratch& scratch, Stream s) {
  const std::int64_t count = pb.images * pb.classes * pb.voxels;
  if (count == 0) return;
  VG_CHECK(count <= static_cast<std::int64_t>(std::numeric_limits<std::uint32_t>::max()),
           "lovasz: " << count
                      << " (image, class, voxel) elements exceed the 2^32 the CUDA sort indexes; "
                         "use smaller patches or a smaller batch");
  const std::int64_t segments = (pb.per_image ? pb.images : 1) * pb.classes;
  const std::int64_t length = count / segments;
  const auto items = static_cast<std::uint32_t>(count);
  cudaStream_t stream = native(s);

  auto* values0 = static_cast<std::uint32_t*>(scratch.get(count * sizeof(std::uint32_t)));  // (segments, L)
  auto* values1 = static_cast<std::uint32_t*>(scratch.get(count * sizeof(std::uint32_t)));
  cub::DoubleBuffer<std::uint32_t> values(values0, values1);
  std::size_t temp_bytes = 0;
  if (sort == LovaszSort::CompositeKeys) {
    auto* keys0 = static_cast<std::uint64_t*>(scratch.get(count * sizeof(std::uint64_t)));  // (segments, L)
    auto* keys1 = static_cast<std::uint64_t*>(scratch.get(count * sizeof(std::uint64_t)));
    cub::DoubleBuffer<std::uint64_t> keys(keys0, keys1);
    build_keys_kernel<<<grid_for(count), kBlock, 0, stream>>>(pb, length, keys.Current(), values.Current(), count);
    VG_CUDA_CHECK_LAUNCH();
    // Only the bits that can be set are sorted: 32 of error, then as many as the segment index needs.
    const int end_bit = 32 + bit_width(static_cast<std::uint64_t>(segments - 1));
    VG_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys, values, items, 0, end_bit, stream));
    void* temp = scratch.get(temp_bytes);
    VG_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys, values, items, 0, end_bit, stream));
  } else {
    auto* keys0 = static_cast<std::uint32_t*>(scratch.get(count * sizeof(std::uint32_t)));  // (segments, L)
    auto* keys1 = static_cast<std::uint32_t*>(scratch.get(count * sizeof(std::uint32_t)));
    cub::DoubleBuffer<std::uint32_t> keys(keys0, keys1);
    build_keys_kernel<<<grid_for(count), kBlock, 0, stream>>>(pb, length, keys.Current(), values.Current(), count);
    VG_CUDA_CHECK_LAUNCH();
    const auto starts =
        thrust::make_transform_iterator(thrust::counting_iterator<std::int64_t>(0), SegmentStart{length});
    VG_CUDA_CHECK(cub::DeviceSegmentedSort::StableSortPairs(nullptr, temp_bytes, keys, values, count, segments, starts,
                                                            starts + 1, stream));
    void* temp = scratch.get(temp_bytes);
    VG_CUDA_CHECK(cub::DeviceSegmentedSort::StableSortPairs(temp, temp_bytes, keys, values, count, segments, starts,
                                                            starts + 1, stream));
  }

  // Running count of the sorted ground truth within each segment, read through the permutation.
  auto* cum_g = static_cast<std::uint32_t*>(scratch.get(count * sizeof(std::uint32_t)));  // (segments, L)
  const auto segment_ids = thrust::make_transform_iterator(thrust::counting_iterator<std::uint32_t>(0),
                                                           SegmentOf{static_cast<std::uint32_t>(length)});
  const auto sorted_truth = thrust::make_transform_iterator(values.Current(), GroundTruthOf{pb});
  temp_bytes = 0;
  VG_CUDA_CHECK(cub::DeviceScan::InclusiveSumByKey(nullptr, temp_bytes, segment_ids, sorted_truth, cum_g, items,
                                                   ::cuda::std::equal_to<>(), stream));
  void* scan_temp = scratch.get(temp_bytes);
  VG_CUDA_CHECK(cub::DeviceScan::InclusiveSumByKey(scan_temp, temp_bytes, segment_ids, sorted_truth, cum_g, items,
                                                   ::cuda::std::equal_to<>(), stream));

  scatter_grad_kernel<<<grid_for(count), kBlock, 0, stream>>>(pb, length, values.Current(), cum_g, count);
  VG_CUDA_CHECK_LAUNCH();
}

// The yardstick of `voxgrad bench loss`: one plain radix sort of as many pairs as the loss sorts
// (goal: Lovász-softmax forward+backward within 2x of it).
void lovasz_sort_benchmark(const std::uint32_t* keys_in, const std::uint32_t* values_in, std::int64_t count,
                           Scratch& scratch, Stream s) {
  if (count == 0) return;
  VG_CHECK(count <= static_cast<std::int64_t>(std::numeric_limits<int>::max()),
           "lovasz_sort_benchmark: " << count << " pairs exceed what one CUB sort call takes");
  const int items = static_cast<int>(count);
  auto* keys_out = static_cast<std::uint32_t*>(scratch.get(count * sizeof(std::uint32_t)));    // (count)
  auto* values_out = static_cast<std::uint32_t*>(scratch.get(count * sizeof(std::uint32_t)));  // (count)
  cudaStream_t stream = native(s);
  std::size_t temp_bytes = 0;
  VG_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in, keys_out, values_in, values_out, items,
                                                0, 32, stream));
  void* temp = scratch.get(temp_bytes);
  VG_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, values_in, values_out, items,
                                                0, 32, stream));
}

}  // namespace voxgrad::kernels::cuda
