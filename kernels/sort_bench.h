// The yardstick of the Lovász-softmax benchmark: one plain CUB radix sort of as many key-value
// pairs as the loss sorts, timed by `voxgrad bench loss` beside the loss's own forward+backward.
// CUDA builds only (kernels/cuda/sort_bench.cu); the CPU benchmark reports no such number.
#pragma once

#include <cstdint>

#include "kernels/common.h"

namespace voxgrad::kernels::cuda {

// One cub::DeviceRadixSort::SortPairs of `count` (uint32 key, uint32 value) pairs over all 32 key
// bits, from keys_in/values_in (left untouched, so every repetition sorts the same data) into
// buffers taken from `scratch`. Queues the work on `s` and returns without waiting.
void lovasz_sort_benchmark(const std::uint32_t* keys_in, const std::uint32_t* values_in, std::int64_t count,
                           Scratch& scratch, Stream s);

}  // namespace voxgrad::kernels::cuda
