// Internal to the engine: the one place that knows whether CUDA calls exist in this build, and
// small helpers that route a call to the CPU twin or the CUDA kernel of a family.
#pragma once

#include "engine/error.h"
#include "engine/tensor.h"

#if VOXGRAD_HAS_CUDA
// The statement runs in CUDA builds; CPU-only builds cannot hold a CUDA tensor, so reaching it is a bug.
#define VG_CUDA_ONLY(...) __VA_ARGS__
#else
#define VG_CUDA_ONLY(...) VG_FAIL("this voxgrad was built without CUDA")
#endif

namespace voxgrad::detail {

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::Float32; }
template <> constexpr DType dtype_of<double>() { return DType::Float64; }
template <> constexpr DType dtype_of<std::int32_t>() { return DType::Int32; }
template <> constexpr DType dtype_of<std::uint8_t>() { return DType::UInt8; }

// Ops compute in floating point: float32 on both devices, float64 on the CPU.
void check_floating(const Tensor& x, const char* op);
// Both operands on one device with one dtype.
void check_compatible(const Tensor& a, const Tensor& b, const char* op);

// Byte copies between any two devices, ordered on the devices' streams.
void copy_bytes(const void* src, Device src_device, void* dst, Device dst_device, std::size_t bytes);

}  // namespace voxgrad::detail
