// Elementwise kernels: unary math, binary math with broadcasting, fill, arange and dtype casts.
// The per-element math is written once below (VG_HD) and called by the CPU loops and the CUDA kernels.
#pragma once

#include <cmath>

#include "kernels/common.h"

namespace voxgrad::kernels {

// Host compilers see only ::exp(double) etc. unqualified, which would run float math in double
// on the CPU; these make float calls pick the float overloads, as CUDA's own overloads do on
// both passes of nvcc (where std:: names are host-only and must not be used).
#if !defined(__CUDACC__)
using std::exp;
using std::log;
using std::tanh;
#endif

enum class UnaryOp : int { Neg, Exp, Log, Relu, LeakyRelu, Sigmoid, Tanh };
enum class BinaryOp : int { Add, Sub, Mul, Div };

// y = f(x); `alpha` is the negative slope of LeakyRelu, unused otherwise.
template <class T>
VG_HD T unary_forward(UnaryOp op, T x, T alpha) {
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return exp(x);
    case UnaryOp::Log: return log(x);
    case UnaryOp::Relu: return x > T(0) ? x : T(0);
    case UnaryOp::LeakyRelu: return x > T(0) ? x : alpha * x;
    case UnaryOp::Sigmoid: return T(1) / (T(1) + exp(-x));
    case UnaryOp::Tanh: return tanh(x);
  }
  return x;
}

// dx = dy * f'(x), using the saved input x or the saved output y, whichever is cheaper and stabler.
template <class T>
VG_HD T unary_backward(UnaryOp op, T x, T y, T dy, T alpha) {
  switch (op) {
    case UnaryOp::Neg: return -dy;
    case UnaryOp::Exp: return dy * y;
    case UnaryOp::Log: return dy / x;
    case UnaryOp::Relu: return x > T(0) ? dy : T(0);
    case UnaryOp::LeakyRelu: return x > T(0) ? dy : alpha * dy;
    case UnaryOp::Sigmoid: return dy * y * (T(1) - y);
    case UnaryOp::Tanh: return dy * (T(1) - y * y);
  }
  return dy;
}

template <class T>
VG_HD T binary_forward(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
  }
  return a;
}

// Partial derivatives of binary_forward with respect to a and b.
template <class T>
VG_HD void binary_partials(BinaryOp op, T a, T b, T* da, T* db) {
  switch (op) {
    case BinaryOp::Add: *da = T(1); *db = T(1); return;
    case BinaryOp::Sub: *da = T(1); *db = T(-1); return;
    case BinaryOp::Mul: *da = b; *db = a; return;
    case BinaryOp::Div: *da = T(1) / b; *db = -a / (b * b); return;
  }
}

// How an operand is read for output element i: index (i / inner) % size.
// Same shape: {1, n}. A single value: {n, 1}. A per-channel (C) vector over (N, C, D, H, W):
// {D*H*W, C}. Any operand whose non-unit axes form one contiguous block of the output's axes fits.
struct Broadcast {
  std::int64_t inner = 1;
  std::int64_t size = 1;
};

VG_HD std::int64_t broadcast_index(Broadcast b, std::int64_t i) { return (i / b.inner) % b.size; }

namespace cpu {
// Floating kernels are instantiated for float and double.
template <class T> void unary_forward(UnaryOp op, const T* x, T* y, std::int64_t n, T alpha);
template <class T> void unary_backward(UnaryOp op, const T* x, const T* y, const T* dy, T* dx, std::int64_t n, T alpha);
template <class T> void binary_forward(BinaryOp op, const T* a, Broadcast ba, const T* b, Broadcast bb, T* y, std::int64_t n);
// da and db receive full-size (n) gradients (the engine sums them down to a broadcast operand's
// shape); either may be null when that operand needs no gradient.
template <class T>
void binary_backward(BinaryOp op, const T* a, Broadcast ba, const T* b, Broadcast bb, const T* dy, T* da, T* db,
                     std::int64_t n);
// y[i] += x[i], the gradient accumulation of autograd.
template <class T> void accumulate(const T* x, T* y, std::int64_t n);
// Any dtype: `value` and `start + i * step` are converted to the element type.
void fill(DType t, void* y, std::int64_t n, double value);
void arange(DType t, void* y, std::int64_t n, double start, double step);
void cast(DType from, const void* x, DType to, void* y, std::int64_t n);
}  // namespace cpu

namespace cuda {
void unary_forward(UnaryOp op, const float* x, float* y, std::int64_t n, float alpha, Stream s);
void unary_backward(UnaryOp op, const float* x, const float* y, const float* dy, float* dx, std::int64_t n, float alpha,
                    Stream s);
void binary_forward(BinaryOp op, const float* a, Broadcast ba, const float* b, Broadcast bb, float* y, std::int64_t n,
                    Stream s);
void binary_backward(BinaryOp op, const float* a, Broadcast ba, const float* b, Broadcast bb, const float* dy,
                     float* da, float* db, std::int64_t n, Stream s);
void accumulate(const float* x, float* y, std::int64_t n, Stream s);
// float32, int32 and uint8 (float64 is CPU-only).
void fill(DType t, void* y, std::int64_t n, double value, Stream s);
void arange(DType t, void* y, std::int64_t n, double start, double step, Stream s);
void cast(DType from, const void* x, DType to, void* y, std::int64_t n, Stream s);
}  // namespace cuda

}  // namespace voxgrad::kernels
