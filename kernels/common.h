// The vocabulary every kernel family shares: the host/device qualifier for math written once,
// element types, the opaque stream handle and the scratch-memory interface the engine implements.
// Kernels see raw pointers and these types only; nothing here includes engine/ or CUDA headers.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define VG_HD __host__ __device__ __forceinline__
#else
#define VG_HD inline
#endif

namespace voxgrad {

// Element types. float64 exists on the CPU only (gradient checks); labels are int32 or uint8.
enum class DType : std::uint8_t { Float32, Float64, Int32, UInt8 };

constexpr std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::Float32: return 4;
    case DType::Float64: return 8;
    case DType::Int32: return 4;
    case DType::UInt8: return 1;
  }
  return 0;
}

constexpr const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Int32: return "int32";
    case DType::UInt8: return "uint8";
  }
  return "unknown";
}

// Tensors have at most this many axes (NIfTI's limit).
constexpr int kMaxDims = 7;

}  // namespace voxgrad

namespace voxgrad::kernels {

// A cudaStream_t on the GPU, ignored on the CPU. Opaque so public headers stay plain C++.
struct Stream {
  void* handle = nullptr;
};

// Temporary device memory for one kernel call (CUB temp storage, cuDNN workspaces).
// The engine implements it on top of its caching allocator; memory handed out stays valid
// until the Scratch object is destroyed, and is freed in stream order.
class Scratch {
 public:
  virtual ~Scratch() = default;
  virtual void* get(std::size_t bytes) = 0;
};

}  // namespace voxgrad::kernels
