// Launch geometry shared by the CUDA kernel families: the block size and the capped grid of the
// grid-stride loops. Included only by kernels/cuda/*.cu.
#pragma once

#include <algorithm>
#include <cstdint>

namespace voxgrad::kernels::cuda {

constexpr int kBlock = 256;
// Several waves on the largest GPUs; grid-stride loops cover any n beyond that.
constexpr std::int64_t kMaxBlocks = 8192;

inline unsigned grid_for(std::int64_t n) {
  return static_cast<unsigned>(std::min<std::int64_t>((n + kBlock - 1) / kBlock, kMaxBlocks));
}

}  // namespace voxgrad::kernels::cuda
