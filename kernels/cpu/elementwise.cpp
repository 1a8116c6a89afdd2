// CPU twins of the elementwise kernels: OpenMP loops over the VG_HD math in kernels/elementwise.h,
// plus dtype-generic fill, arange and cast. Floating kernels exist for float and double.
#include "kernels/elementwise.h"

#include <type_traits>

#include "kernels/error.h"

namespace voxgrad::kernels::cpu {

namespace {

// Below this many elements a parallel region costs more than the loop it would split.
constexpr std::int64_t kParallelMin = 1 << 15;

// Calls f with the op as a compile-time constant, so each loop body is specialised (and
// vectorisable) instead of switching on the op once per element.
template <class F>
void with_unary_op(UnaryOp op, F&& f) {
  switch (op) {
    case UnaryOp::Neg: return f(std::integral_constant<UnaryOp, UnaryOp::Neg>{});
    case UnaryOp::Exp: return f(std::integral_constant<UnaryOp, UnaryOp::Exp>{});
    case UnaryOp::Log: return f(std::integral_constant<UnaryOp, UnaryOp::Log>{});
    case UnaryOp::Relu: return f(std::integral_constant<UnaryOp, UnaryOp::Relu>{});
    case UnaryOp::LeakyRelu: return f(std::integral_constant<UnaryOp, UnaryOp::LeakyRelu>{});
    case UnaryOp::Sigmoid: return f(std::integral_constant<UnaryOp, UnaryOp::Sigmoid>{});
    case UnaryOp::Tanh: return f(std::integral_constant<UnaryOp, UnaryOp::Tanh>{});
  }
  VG_FAIL("unknown unary op " << static_cast<int>(op));
}

template <class F>
void with_binary_op(BinaryOp op, F&& f) {
  switch (op) {
    case BinaryOp::Add: return f(std::integral_constant<BinaryOp, BinaryOp::Add>{});
    case BinaryOp::Sub: return f(std::integral_constant<BinaryOp, BinaryOp::Sub>{});
    case BinaryOp::Mul: return f(std::integral_constant<BinaryOp, BinaryOp::Mul>{});
    case BinaryOp::Div: return f(std::integral_constant<BinaryOp, BinaryOp::Div>{});
  }
  VG_FAIL("unknown binary op " << static_cast<int>(op));
}

// Calls f with a value of the C++ type stored under `t`.
template <class F>
void with_dtype(DType t, F&& f) {
  switch (t) {
    case DType::Float32: return f(float{});
    case DType::Float64: return f(double{});
    case DType::Int32: return f(std::int32_t{});
    case DType::UInt8: return f(std::uint8_t{});
  }
  VG_FAIL("unknown dtype " << static_cast<int>(t));
}

bool is_identity(Broadcast b, std::int64_t n) { return b.inner == 1 && b.size == n; }

// Same-shape and scalar operands skip broadcast_index's 64-bit division.
std::int64_t operand_index(Broadcast b, std::int64_t i, std::int64_t n) {
  if (b.size == 1) return 0;
  if (is_identity(b, n)) return i;
  return broadcast_index(b, i);
}

}  // namespace

template <class T>
void unary_forward(UnaryOp op, const T* x, T* y, std::int64_t n, T alpha) {
  with_unary_op(op, [&](auto k) {
#pragma omp parallel for schedule(static) if (n > kParallelMin)
    for (std::int64_t i = 0; i < n; ++i) y[i] = kernels::unary_forward(k.value, x[i], alpha);
  });
}

template <class T>
void unary_backward(UnaryOp op, const T* x, const T* y, const T* dy, T* dx, std::int64_t n, T alpha) {
  with_unary_op(op, [&](auto k) {
#pragma omp parallel for schedule(static) if (n > kParallelMin)
    for (std::int64_t i = 0; i < n; ++i) dx[i] = kernels::unary_backward(k.value, x[i], y[i], dy[i], alpha);
  });
}

template <class T>
void binary_forward(BinaryOp op, const T* a, Broadcast ba, const T* b, Broadcast bb, T* y, std::int64_t n) {
  with_binary_op(op, [&](auto k) {
    if (is_identity(ba, n) && is_identity(bb, n)) {
      // Same shape, the common case: no index arithmetic, so the loop vectorises.
#pragma omp parallel for schedule(static) if (n > kParallelMin)
      for (std::int64_t i = 0; i < n; ++i) y[i] = kernels::binary_forward(k.value, a[i], b[i]);
    } else {
#pragma omp parallel for schedule(static) if (n > kParallelMin)
      for (std::int64_t i = 0; i < n; ++i)
        y[i] = kernels::binary_forward(k.value, a[operand_index(ba, i, n)], b[operand_index(bb, i, n)]);
    }
  });
}

template <class T>
void binary_backward(BinaryOp op, const T* a, Broadcast ba, const T* b, Broadcast bb, const T* dy, T* da, T* db,
                     std::int64_t n) {
  with_binary_op(op, [&](auto k) {
#pragma omp parallel for schedule(static) if (n > kParallelMin)
    for (std::int64_t i = 0; i < n; ++i) {
      T pa = T(0), pb = T(0);
      binary_partials(k.value, a[operand_index(ba, i, n)], b[operand_index(bb, i, n)], &pa, &pb);
      if (da != nullptr) da[i] = dy[i] * pa;
      if (db != nullptr) db[i] = dy[i] * pb;
    }
  });
}

template <class T>
void accumulate(const T* x, T* y, std::int64_t n) {
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (std::int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void fill(DType t, void* y, std::int64_t n, double value) {
  with_dtype(t, [&](auto tag) {
    using T = decltype(tag);
    T* out = static_cast<T*>(y);  // (n)
    const T v = static_cast<T>(value);
#pragma omp parallel for schedule(static) if (n > kParallelMin)
    for (std::int64_t i = 0; i < n; ++i) out[i] = v;
  });
}

// Each element is computed from i in double (not by repeated addition), so long ranges do not
// drift and the CUDA kernel yields the same values.
void arange(DType t, void* y, std::int64_t n, double start, double step) {
  with_dtype(t, [&](auto tag) {
    using T = decltype(tag);
    T* out = static_cast<T*>(y);  // (n)
#pragma omp parallel for schedule(static) if (n > kParallelMin)
    for (std::int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(start + static_cast<double>(i) * step);
  });
}

// A C++ static_cast per element: floating to integer truncates toward zero (2.7 -> 2, -2.7 -> -2);
// int32 to uint8 wraps modulo 256. A floating value outside the target's range (or NaN) has no
// defined result, exactly as in C++, and may differ between the CPU and the GPU.
void cast(DType from, const void* x, DType to, void* y, std::int64_t n) {
  with_dtype(from, [&](auto from_tag) {
    with_dtype(to, [&](auto to_tag) {
      using From = decltype(from_tag);
      using To = decltype(to_tag);
      const From* in = static_cast<const From*>(x);  // (n)
      To* out = static_cast<To*>(y);                 // (n)
#pragma omp parallel for schedule(static) if (n > kParallelMin)
      for (std::int64_t i = 0; i < n; ++i) out[i] = static_cast<To>(in[i]);
    });
  });
}

#define VG_INSTANTIATE(T)                                                                                         \
  template void unary_forward<T>(UnaryOp, const T*, T*, std::int64_t, T);                                         \
  template void unary_backward<T>(UnaryOp, const T*, const T*, const T*, T*, std::int64_t, T);                    \
  template void binary_forward<T>(BinaryOp, const T*, Broadcast, const T*, Broadcast, T*, std::int64_t);          \
  template void binary_backward<T>(BinaryOp, const T*, Broadcast, const T*, Broadcast, const T*, T*, T*,          \
                                   std::int64_t);                                                                 \
  template void accumulate<T>(const T*, T*, std::int64_t);
VG_INSTANTIATE(float)
VG_INSTANTIATE(double)
#undef VG_INSTANTIATE

}  // namespace voxgrad::kernels::cpu
