// Differentiable normalisation, pooling and dropout ops on (N, C, D, H, W) tensors, with PyTorch's
// semantics (InstanceNorm3d, BatchNorm3d, MaxPool3d, AvgPool3d, Dropout3d). The nn layers wrap
// these; float32 on both devices, float64 on the CPU.
#pragma once

#include <array>
#include <cstdint>

#include "autograd.h"
#include "tensor.h"

namespace voxgrad {

// Per (n, c): mean and biased variance over D*H*W, y = (x - mean) / sqrt(var + eps) * weight + bias.
// weight and bias are (C) or undefined (no affine part); no running statistics.
Tensor instance_norm3d(const Tensor& x, const Tensor& weight = {}, const Tensor& bias = {}, double eps = 1e-5);

// Per channel over (N, D, H, W). Training normalises with the batch statistics and, when given,
// updates running_mean and running_var (C) in place: r = (1 - momentum) * r + momentum * batch,
// with the unbiased variance for running_var. Eval normalises with the running statistics, which
// must then be given. weight and bias are (C) or undefined.
Tensor batch_norm3d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                    const Tensor& running_var, bool training, double momentum = 0.1, double eps = 1e-5);

// Output sizes as PyTorch's floor mode: (in + 2 * padding - kernel) / stride + 1. A stride of
// {0, 0, 0} means the kernel size; padding must be at most half the kernel.
// max_pool3d routes the gradient to the first maximum of each window (d, h, w order).
Tensor max_pool3d(const Tensor& x, Triple kernel, Triple stride = {0, 0, 0}, Triple padding = {0, 0, 0});
// count_include_pad: divide by the padded window size (PyTorch's default), else by the elements
// inside the input.
Tensor avg_pool3d(const Tensor& x, Triple kernel, Triple stride = {0, 0, 0}, Triple padding = {0, 0, 0},
                  bool count_include_pad = true);

// Channel-wise dropout: each (n, c) channel is zeroed with probability p, kept ones are scaled by
// 1/(1 - p). Identity when not training. The mask comes from `gen` (Philox), so the same generator
// state gives the same mask on either device.
Tensor dropout3d(const Tensor& x, double p, bool training, Generator& gen);
Tensor dropout3d(const Tensor& x, double p, bool training);  // default_generator()

}  // namespace voxgrad
