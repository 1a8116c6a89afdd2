// The differentiable 3D convolution and transposed convolution on (N, C, D, H, W) tensors, and the
// process-wide settings of their cuDNN path. Output sizes, weight layouts and parameter rules are
// PyTorch's (torch.nn.functional.conv3d / conv_transpose3d), so weights move between the two as is.
#pragma once

#include <array>
#include <cstdint>

#include "tensor.h"

namespace voxgrad {

struct Conv3dParams {
  Triple stride{1, 1, 1};
  Triple padding{0, 0, 0};
  Triple dilation{1, 1, 1};
};

struct ConvTranspose3dParams {
  Triple stride{1, 1, 1};
  Triple padding{0, 0, 0};
  Triple output_padding{0, 0, 0};  // each < stride or < dilation of its axis
  Triple dilation{1, 1, 1};
};

// y (N, Co, D', H', W') from x (N, Ci, D, H, W), w (Co, Ci, kD, kH, kW) and bias (Co) or an
// undefined Tensor; D' = floor((D + 2p - dil*(k-1) - 1) / s) + 1. One autograd node: dx, dw, db.
Tensor conv3d(const Tensor& x, const Tensor& w, const Tensor& bias = Tensor(), const Conv3dParams& p = {});

// y (N, Co, D', H', W') from x (N, Ci, D, H, W), w (Ci, Co, kD, kH, kW) (PyTorch's layout) and bias
// (Co) or undefined; D' = (D-1)*s - 2p + dil*(k-1) + output_padding + 1. The adjoint of conv3d in
// its input: the U-Net's upsampling (kernel 2, stride 2). One autograd node: dx, dw, db.
Tensor conv_transpose3d(const Tensor& x, const Tensor& w, const Tensor& bias = Tensor(),
                        const ConvTranspose3dParams& p = {});

// cuDNN only (the CPU path is always deterministic and strict FP32/FP64):
// restrict the algorithm choice to algorithms cuDNN reports as deterministic (default false) ...
void set_conv_deterministic(bool on);
bool conv_deterministic();
// ... and allow TF32 tensor cores on Ampere and later (default false: CUDNN_FMA_MATH, strict FP32).
void set_conv_allow_tf32(bool on);
bool conv_allow_tf32();

}  // namespace voxgrad
