// The differentiable op API. Each op dispatches on device once, runs its forward kernel inside a
// profiler scope and records its backward closure. float32 on both devices, float64 on the CPU.
#pragma once

#include <vector>

#include "autograd.h"
#include "tensor.h"

namespace voxgrad {

// Binary ops take operands of the same shape, or broadcast one of them: a one-element tensor over
// anything, a (C) tensor over the channel axis 1 of (N, C, ...), or more generally a tensor whose
// shape equals the other's on one block of adjacent axes and is 1 elsewhere ((1, C, 1, 1, 1)).
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, double b);
Tensor sub(const Tensor& a, double b);
Tensor mul(const Tensor& a, double b);
Tensor div(const Tensor& a, double b);

Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor leaky_relu(const Tensor& x, double negative_slope = 0.01);
Tensor sigmoid(const Tensor& x);
Tensor tanh(const Tensor& x);

// Reductions: over all elements (a one-element tensor of shape ()), or over `axes`
// (negative axes count from the end), dropping them unless keepdim.
Tensor sum(const Tensor& x);
Tensor sum(const Tensor& x, const std::vector<int>& axes, bool keepdim = false);
Tensor mean(const Tensor& x);
Tensor mean(const Tensor& x, const std::vector<int>& axes, bool keepdim = false);

// Over one axis, the channel axis 1 by default (losses take logits (N, K, D, H, W)).
Tensor softmax(const Tensor& x, int axis = 1);
Tensor log_softmax(const Tensor& x, int axis = 1);

// Layout. concat joins tensors equal in every axis but `axis` (channels by default: U-Net skips);
// slice keeps [start, end) of `axis`; reshape shares storage, one size may be -1.
Tensor concat(const std::vector<Tensor>& xs, int axis = 1);
Tensor slice(const Tensor& x, int axis, std::int64_t start, std::int64_t end);
Tensor reshape(const Tensor& x, const Shape& shape);

inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator+(const Tensor& a, double b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, double b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, double b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, double b) { return div(a, b); }
inline Tensor operator-(const Tensor& x) { return neg(x); }

}  // namespace voxgrad
