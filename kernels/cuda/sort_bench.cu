// One plain CUB radix sort of key-value pairs: the yardstick `voxgrad bench loss` holds the
// Lovász-softmax forward+backward to (goal: within 2x of it). Declared in kernels/sort_bench.h.
#include <cub/device/device_radix_sort.cuh>
#include <limits>

#include "kernels/cuda/check.h"
#include "kernels/sort_bench.h"

namespace voxgrad::kernels::cuda {

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
