// Launch geometry shared by the CUDA kernel families (the block size and the capped grid of the
// grid-stride loops) and the VOXGRAD_CUDA_SYNC switch behind VG_CUDA_CHECK_LAUNCH. Free of CUDA
// headers, so CPU builds and tests can include it; used by kernels/cuda/ and kernels/cuda/check.h.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "kernels/error.h"

namespace voxgrad::kernels::cuda {

constexpr int kBlock = 256;
// Several waves on the largest GPUs; grid-stride loops cover any n beyond that.
constexpr std::int64_t kMaxBlocks = 8192;

inline unsigned grid_for(std::int64_t n) {
  return static_cast<unsigned>(std::min<std::int64_t>((n + kBlock - 1) / kBlock, kMaxBlocks));
}

// The value of VOXGRAD_CUDA_SYNC (nullptr when unset): "1" asks for a device synchronisation after
// every kernel launch, unset, "" or "0" for none. Anything else is refused rather than read as
// off, so a misspelt value cannot silently leave a debugging run asynchronous.
inline bool launch_sync_requested(const char* value) {
  const std::string_view v = value == nullptr ? std::string_view() : std::string_view(value);
  if (v.empty() || v == "0") return false;
  if (v == "1") return true;
  VG_INPUT_FAIL("VOXGRAD_CUDA_SYNC=" << v << ": expected 1 (synchronise after every kernel launch) or 0");
}

// VOXGRAD_CUDA_SYNC, read once per process: the launch check costs one cached bool when it is off.
inline bool sync_after_launch() {
  static const bool on = launch_sync_requested(std::getenv("VOXGRAD_CUDA_SYNC"));
  return on;
}

}  // namespace voxgrad::kernels::cuda
