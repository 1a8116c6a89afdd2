// VG_CUDA_CHECK, VG_CUDNN_CHECK and VG_CUDNN: the CUDA and cuDNN instances of the check-macro
// generator. Included only by kernels/cuda/ and the engine's few device files.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "kernels/common.h"
#include "kernels/cuda/cudnn_library.h"
#include "kernels/cuda/launch.h"
#include "kernels/error.h"

namespace voxgrad::detail {
inline bool cuda_ok(cudaError_t s) { return s == cudaSuccess; }
inline std::string cuda_describe(cudaError_t s) {
  return std::string(cudaGetErrorName(s)) + ": " + cudaGetErrorString(s);
}
inline bool cudnn_ok(cudnnStatus_t s) { return s == CUDNN_STATUS_SUCCESS; }
// A cuDNN status exists only once the library is loaded, so the table is there to name it.
inline std::string cudnn_describe(cudnnStatus_t s) { return kernels::cuda::cudnn().cudnnGetErrorString(s); }
}  // namespace voxgrad::detail

#define VG_CUDA_CHECK(expr) VG_CHECK_WITH(expr, ::voxgrad::detail::cuda_ok, ::voxgrad::detail::cuda_describe)
#define VG_CUDNN_CHECK(expr) VG_CHECK_WITH(expr, ::voxgrad::detail::cudnn_ok, ::voxgrad::detail::cudnn_describe)

// VG_CUDNN(cudnnXxx, args...): calls cudnnXxx through the run-time loaded table (loading it on first
// use) and checks the status; a failure names the call as written, `cudnnXxx(args...)`.
#define VG_CUDNN(function, ...)                                                                           \
  VG_CHECK_RAISE(::voxgrad::kernels::cuda::cudnn().function(__VA_ARGS__), #function "(" #__VA_ARGS__ ")", \
                 ::voxgrad::detail::cudnn_ok, ::voxgrad::detail::fail, ::voxgrad::detail::cudnn_describe(vg_status_))

// After a kernel launch: configuration errors surface here, not at the next unrelated call. With
// VOXGRAD_CUDA_SYNC=1 it also waits for the kernel, so a fault the kernel causes (an illegal
// address, a device-side trap) is reported at this launch instead of at a later, unrelated call.
#define VG_CUDA_CHECK_LAUNCH()                                                                           \
  do {                                                                                                   \
    VG_CUDA_CHECK(cudaGetLastError());                                                                   \
    if (::voxgrad::kernels::cuda::sync_after_launch())                                                   \
      VG_CHECK_RAISE(cudaDeviceSynchronize(), "kernel launched here, waited for by VOXGRAD_CUDA_SYNC=1", \
                     ::voxgrad::detail::cuda_ok, ::voxgrad::detail::fail,                                \
                     ::voxgrad::detail::cuda_describe(vg_status_));                                      \
  } while (0)

namespace voxgrad::kernels::cuda {
inline cudaStream_t native(Stream s) { return static_cast<cudaStream_t>(s.handle); }
}  // namespace voxgrad::kernels::cuda
