// The layer Modules a 3D U-Net is built from: Conv3d, ConvTranspose3d (cubic or per-axis kernels),
// InstanceNorm3d, BatchNorm3d and AvgPool3d, with PyTorch's parameter names, shapes and layouts (so
// state_dicts line up with torch.nn's) and nnU-Net's initialisation (Kaiming-normal, slope 0.01).
#pragma once

#include <cstdint>

#include "conv.h"
#include "nn.h"
#include "norm_pool.h"

namespace voxgrad {

// Weight init slope nnU-Net passes to kaiming_normal_ (its LeakyReLU slope).
inline constexpr double kInitNegativeSlope = 0.01;

// torch.nn.Conv3d: "weight" (out, in, kD, kH, kW), "bias" (out) when `bias`.
// weight ~ kaiming_normal_(fan_in = in * kD * kH * kW, a = 0.01), bias = 0.
class Conv3d : public Module {
 public:
  // Cubic kernel, stride and padding.
  Conv3d(std::int64_t in_channels, std::int64_t out_channels, std::int64_t kernel, std::int64_t stride = 1,
         std::int64_t padding = 0, bool bias = true, Generator& gen = default_generator());
  // Per-axis (D, H, W) kernel, stride and padding (nnU-Net's anisotropic [1, 3, 3] kernels).
  Conv3d(std::int64_t in_channels, std::int64_t out_channels, Triple kernel, Triple stride, Triple padding,
         bool bias = true, Generator& gen = default_generator());
  Tensor forward(const Tensor& x) override;  // (N, in, D, H, W) -> (N, out, D', H', W')

  const Tensor& weight() const { return weight_; }
  const Tensor& bias() const { return bias_; }  // undefined without bias
  const Conv3dParams& params() const { return params_; }

 private:
  Tensor weight_, bias_;
  Conv3dParams params_;
};

// torch.nn.ConvTranspose3d: "weight" (in, out, kD, kH, kW) (PyTorch's layout), "bias" (out) when
// `bias`. PyTorch computes fan_in from weight dim 1, so kaiming_normal_ here uses
// fan_in = out * kD * kH * kW exactly as torch.nn.init does on this weight; bias = 0.
class ConvTranspose3d : public Module {
 public:
  // Cubic kernel, stride and paddings.
  ConvTranspose3d(std::int64_t in_channels, std::int64_t out_channels, std::int64_t kernel, std::int64_t stride = 1,
                  std::int64_t padding = 0, std::int64_t output_padding = 0, bool bias = true,
                  Generator& gen = default_generator());
  // Per-axis (D, H, W) kernel, stride and paddings; output_padding of each axis below its stride.
  ConvTranspose3d(std::int64_t in_channels, std::int64_t out_channels, Triple kernel, Triple stride, Triple padding,
                  Triple output_padding, bool bias = true, Generator& gen = default_generator());
  Tensor forward(const Tensor& x) override;  // (N, in, D, H, W) -> (N, out, D', H', W')

  const Tensor& weight() const { return weight_; }
  const Tensor& bias() const { return bias_; }
  const ConvTranspose3dParams& params() const { return params_; }

 private:
  Tensor weight_, bias_;
  ConvTranspose3dParams params_;
};

// torch.nn.InstanceNorm3d(C, affine, track_running_stats=False): "weight" = 1, "bias" = 0 (C)
// when affine (nnU-Net's choice); statistics per sample and channel in both modes.
class InstanceNorm3d : public Module {
 public:
  explicit InstanceNorm3d(std::int64_t channels, bool affine = true, double eps = 1e-5);
  Tensor forward(const Tensor& x) override;  // (N, C, D, H, W) -> same

  const Tensor& weight() const { return weight_; }
  const Tensor& bias() const { return bias_; }
  double eps() const { return eps_; }

 private:
  Tensor weight_, bias_;
  double eps_;
};

// torch.nn.BatchNorm3d(C): parameters "weight" = 1, "bias" = 0 (C) when affine, buffers
// "running_mean" = 0 and "running_var" = 1 (C). Training mode (Module::is_training) normalises with
// the batch statistics and updates the running ones with `momentum`; eval mode uses the running ones.
// PyTorch's int64 "num_batches_tracked" buffer only matters for momentum=None (cumulative
// averaging), which this layer does not offer, so it is kept only on request
// (`track_num_batches`, for state_dicts that must match PyTorch's name for name): an int32 scalar
// (voxgrad's integer type) counted up by each training forward on its own device, never read back. Without it PyTorch's
// load_state_dict fills it in when a state_dict without version metadata lacks it.
class BatchNorm3d : public Module {
 public:
  explicit BatchNorm3d(std::int64_t channels, double momentum = 0.1, double eps = 1e-5, bool affine = true,
                       bool track_num_batches = false);
  Tensor forward(const Tensor& x) override;  // (N, C, D, H, W) -> same

  const Tensor& weight() const { return weight_; }
  const Tensor& bias() const { return bias_; }
  const Tensor& running_mean() const { return running_mean_; }
  const Tensor& running_var() const { return running_var_; }
  const Tensor& num_batches_tracked() const { return num_batches_tracked_; }  // undefined unless tracked
  double eps() const { return eps_; }

 private:
  Tensor weight_, bias_, running_mean_, running_var_, num_batches_tracked_;
  double momentum_, eps_;
};

// torch.nn.AvgPool3d(kernel, stride) without padding (floor mode, count_include_pad): no parameters.
class AvgPool3d : public Module {
 public:
  AvgPool3d(Triple kernel, Triple stride);
  Tensor forward(const Tensor& x) override;  // (N, C, D, H, W) -> (N, C, D', H', W')

 private:
  Triple kernel_, stride_;
};

}  // namespace voxgrad
