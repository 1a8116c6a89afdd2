// CUDA elementwise kernels: grid-stride loops over the VG_HD math in kernels/elementwise.h (float),
// and fill, arange and cast for float32, int32 and uint8.
#include <algorithm>

#include "kernels/cuda/check.h"
#include "kernels/cuda/launch.h"
#include "kernels/elementwise.h"

namespace voxgrad::kernels::cuda {

namespace {

__device__ std::int64_t first_index() { return static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ std::int64_t grid_stride() { return static_cast<std::int64_t>(gridDim.x) * blockDim.x; }

// Same-shape and scalar operands skip broadcast_index's 64-bit division, the dearest instruction
// in these loops on a GPU; the branch is uniform across the grid.
__device__ __forceinline__ std::int64_t operand_index(Broadcast b, std::int64_t i, std::int64_t n) {
  if (b.size == 1) return 0;
  if (b.inner == 1 && b.size == n) return i;
  return broadcast_index(b, i);
}

__global__ void unary_forward_kernel(UnaryOp op, const float* __restrict__ x, float* __restrict__ y, std::int64_t n,
                                     float alpha) {
  for (std::int64_t i = first_index(); i < n; i += grid_stride()) y[i] = kernels::unary_forward(op, x[i], alpha);
}

__global__ void unary_backward_kernel(UnaryOp op, const float* __restrict__ x, const float* __restrict__ y,
                                      const float* __restrict__ dy, float* __restrict__ dx, std::int64_t n,
                                      float alpha) {
  for (std::int64_t i = first_index(); i < n; i += grid_stride())
    dx[i] = kernels::unary_backward(op, x[i], y[i], dy[i], alpha);
}

__global__ void binary_forward_kernel(BinaryOp op, const float* __restrict__ a, Broadcast ba,
                                      const float* __restrict__ b, Broadcast bb, float* __restrict__ y,
                                      std::int64_t n) {
  for (std::int64_t i = first_index(); i < n; i += grid_stride())
    y[i] = kernels::binary_forward(op, a[operand_index(ba, i, n)], b[operand_index(bb, i, n)]);
}

__global__ void binary_backward_kernel(BinaryOp op, const float* __restrict__ a, Broadcast ba,
                                       const float* __restrict__ b, Broadcast bb, const float* __restrict__ dy,
                                       float* __restrict__ da, float* __restrict__ db, std::int64_t n) {
  for (std::int64_t i = first_index(); i < n; i += grid_stride()) {
    float pa = 0.0f, pb = 0.0f;
    binary_partials(op, a[operand_index(ba, i, n)], b[operand_index(bb, i, n)], &pa, &pb);
    if (da != nullptr) da[i] = dy[i] * pa;
    if (db != nullptr) db[i] = dy[i] * pb;
  }
}

__global__ void accumulate_kernel(const float* __restrict__ x, float* __restrict__ y, std::int64_t n) {
  for (std::int64_t i = first_index(); i < n; i += grid_stride()) y[i] += x[i];
}

template <class T>
__global__ void fill_kernel(T* __restrict__ y, std::int64_t n, T value) {
  for (std::int64_t i = first_index(); i < n; i += grid_stride()) y[i] = value;
}

// Each element from i in double, the CPU twin's formula; fused multiply-add is ruled out so the
// rounding matches the host's separate multiply and add.
template <class T>
__global__ void arange_kernel(T* __restrict__ y, std::int64_t n, double start, double step) {
  for (std::int64_t i = first_index(); i < n; i += grid_stride())
    y[i] = static_cast<T>(__dadd_rn(start, __dmul_rn(static_cast<double>(i), step)));
}

template <class From, class To>
__global__ void cast_kernel(const From* __restrict__ x, To* __restrict__ y, std::int64_t n) {
  for (std::int64_t i = first_index(); i < n; i += grid_stride()) y[i] = static_cast<To>(x[i]);
}

// Calls f with a value of the C++ type stored under `t`; float64 has no CUDA kernels.
template <class F>
void with_device_dtype(const char* what, DType t, F&& f) {
  switch (t) {
    case DType::Float32: return f(float{});
    case DType::Int32: return f(std::int32_t{});
    case DType::UInt8: return f(std::uint8_t{});
    case DType::Float64: break;
  }
  VG_FAIL(what << ": " << dtype_name(t) << " has no CUDA kernels (float64 is CPU-only; cast on the CPU)");
}

}  // namespace

void unary_forward(UnaryOp op, const float* x, float* y, std::int64_t n, float alpha, Stream s) {
  if (n == 0) return;
  unary_forward_kernel<<<grid_for(n), kBlock, 0, native(s)>>>(op, x, y, n, alpha);
  VG_CUDA_CHECK_LAUNCH();
}

void unary_backward(UnaryOp op, const float* x, const float* y, const float* dy, float* dx, std::int64_t n, float alpha,
                    Stream s) {
  if (n == 0) return;
  unary_backward_kernel<<<grid_for(n), kBlock, 0, native(s)>>>(op, x, y, dy, dx, n, alpha);
  VG_CUDA_CHECK_LAUNCH();
}

void binary_forward(BinaryOp op, const float* a, Broadcast ba, const float* b, Broadcast bb, float* y, std::int64_t n,
                    Stream s) {
  if (n == 0) return;
  binary_forward_kernel<<<grid_for(n), kBlock, 0, native(s)>>>(op, a, ba, b, bb, y, n);
  VG_CUDA_CHECK_LAUNCH();
}

void binary_backward(BinaryOp op, const float* a, Broadcast ba, const float* b, Broadcast bb, const float* dy,
                     float* da, float* db, std::int64_t n, Stream s) {
  if (n == 0 || (da == nullptr && db == nullptr)) return;
  binary_backward_kernel<<<grid_for(n), kBlock, 0, native(s)>>>(op, a, ba, b, bb, dy, da, db, n);
  VG_CUDA_CHECK_LAUNCH();
}

void accumulate(const float* x, float* y, std::int64_t n, Stream s) {
  if (n == 0) return;
  accumulate_kernel<<<grid_for(n), kBlock, 0, native(s)>>>(x, y, n);
  VG_CUDA_CHECK_LAUNCH();
}

void fill(DType t, void* y, std::int64_t n, double value, Stream s) {
  with_device_dtype("fill", t, [&](auto tag) {
    using T = decltype(tag);
    if (n == 0) return;
    fill_kernel<T><<<grid_for(n), kBlock, 0, native(s)>>>(static_cast<T*>(y), n, static_cast<T>(value));
    VG_CUDA_CHECK_LAUNCH();
  });
}

void arange(DType t, void* y, std::int64_t n, double start, double step, Stream s) {
  with_device_dtype("arange", t, [&](auto tag) {
    using T = decltype(tag);
    if (n == 0) return;
    arange_kernel<T><<<grid_for(n), kBlock, 0, native(s)>>>(static_cast<T*>(y), n, start, step);
    VG_CUDA_CHECK_LAUNCH();
  });
}

// static_cast semantics as on the CPU: floating to integer truncates toward zero, int32 to uint8
// wraps. A floating value outside the target's range (or NaN) has no defined result, and the GPU's
// conversion instructions give other bytes than the CPU's, so only in-range casts are portable.
void cast(DType from, const void* x, DType to, void* y, std::int64_t n, Stream s) {
  with_device_dtype("cast", from, [&](auto from_tag) {
    with_device_dtype("cast", to, [&](auto to_tag) {
      using From = decltype(from_tag);
      using To = decltype(to_tag);
      if (n == 0) return;
      cast_kernel<From, To><<<grid_for(n), kBlock, 0, native(s)>>>(static_cast<const From*>(x), static_cast<To*>(y), n);
      VG_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace voxgrad::kernels::cuda
