// Internal to the engine: the one place that knows whether CUDA calls exist in this build, and the
// one idiom that routes a kernel call to the CPU twin or the CUDA kernel of its family:
//   dispatch_floating(x, [&]<class T>(auto on) { VG_LAUNCH(on, unary_forward, op, x.data<T>(), y.data<T>(), n, a); });
// dispatch_* picks the device and element type once; VG_LAUNCH writes the argument list once.
#pragma once

#include <tuple>
#include <utility>

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

inline bool is_double(const Tensor& t) { return t.dtype() == DType::Float64; }
inline kernels::Stream stream_of(const Tensor& t) { return stream_for(t.device()); }

// The data of a tensor a kernel may go without (absent affine parameters, unwanted gradients).
template <class T>
T* data_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

// Where one kernel call runs: the CPU twin in element type T (void when the kernel takes a DType or
// raw bytes), or the CUDA kernel in float32 on a device's stream. Trailing arguments only one twin
// takes (a scratch arena for CUDA's partial sums, cuDNN's math options) are added with
// with_cpu_args / with_cuda_args, which the other device ignores; they go after the shared
// arguments and before the stream. Lvalues are held by reference and temporaries by value, so a
// tag must not outlive the variables it was given.
template <class T, class... Extra>
struct OnCpu {
  std::tuple<Extra...> extra;

  template <class... A>
  OnCpu<T, Extra..., A...> with_cpu_args(A&&... a) const {
    return {std::tuple_cat(extra, std::tuple<A...>(std::forward<A>(a)...))};
  }
  template <class... A>
  OnCpu with_cuda_args(A&&...) const {
    return *this;
  }
  template <class CpuCall, class CudaCall>
  auto launch(CpuCall&& cpu_call, CudaCall&&) const {
    return std::apply(cpu_call, extra);
  }
};

template <class... Extra>
struct OnCuda {
  kernels::Stream stream;
  std::tuple<Extra...> extra;

  template <class... A>
  OnCuda with_cpu_args(A&&...) const {
    return *this;
  }
  template <class... A>
  OnCuda<Extra..., A...> with_cuda_args(A&&... a) const {
    return {stream, std::tuple_cat(extra, std::tuple<A...>(std::forward<A>(a)...))};
  }
  template <class CpuCall, class CudaCall>
  auto launch(CpuCall&&, CudaCall&& cuda_call) const {
    return std::apply([&](auto&&... e) { return cuda_call(e..., stream); }, extra);
  }
};

// Calls call.template operator()<T>(on) once for the device and dtype of `t`: T is double or
// float on the CPU, float on CUDA. `call` is a lambda of the form [&]<class T>(auto on) {...}.
template <class Call>
void dispatch_floating(const Tensor& t, Call&& call) {
  if (t.device().is_cpu()) {
    if (is_double(t)) {
      call.template operator()<double>(OnCpu<double>{});
    } else {
      call.template operator()<float>(OnCpu<float>{});
    }
  } else {
    VG_CUDA_ONLY(call.template operator()<float>(OnCuda<>{stream_of(t), {}}));
  }
}

// Calls call(on) once for device `d`, for kernels whose element type is not a template parameter.
template <class Call>
void dispatch_device(Device d, Call&& call) {
  if (d.is_cpu()) {
    call(OnCpu<void>{});
  } else {
    VG_CUDA_ONLY(call(OnCuda<>{stream_for(d), {}}));
  }
}

}  // namespace voxgrad::detail

// Calls the kernel `kernel` of a family where `on` says and returns its result:
// kernels::cpu::kernel(args..., cpu extras...) or kernels::cuda::kernel(args..., cuda extras..., stream).
// The arguments are written once; a braced list among them needs parentheses (it holds commas).
#define VG_LAUNCH(on, kernel, ...)                                                                   \
  (on).launch([&](auto&&... tail) { return ::voxgrad::kernels::cpu::kernel(__VA_ARGS__, tail...); }, \
              [&](auto&&... tail) { return ::voxgrad::kernels::cuda::kernel(__VA_ARGS__, tail...); })
