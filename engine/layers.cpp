// Conv3d, ConvTranspose3d, InstanceNorm3d and BatchNorm3d: parameter registration with PyTorch's
// names and nnU-Net's initialisation; each forward is one call into the differentiable ops.
#include "engine/layers.h"

namespace voxgrad {

namespace {

void check_positive(const char* layer, const char* what, std::int64_t v) {
  VG_CHECK(v > 0, layer << ": " << what << " must be positive, got " << v);
}

Triple cube(std::int64_t v) { return {v, v, v}; }

}  // namespace

Conv3d::Conv3d(std::int64_t in_channels, std::int64_t out_channels, std::int64_t kernel, std::int64_t stride,
               std::int64_t padding, bool bias, Generator& gen) {
  check_positive("Conv3d", "in_channels", in_channels);
  check_positive("Conv3d", "out_channels", out_channels);
  check_positive("Conv3d", "kernel", kernel);
  check_positive("Conv3d", "stride", stride);
  VG_CHECK(padding >= 0, "Conv3d: padding must be non-negative, got " << padding);
  params_.stride = cube(stride);
  params_.padding = cube(padding);
  Tensor w = empty({out_channels, in_channels, kernel, kernel, kernel});  // (Co, Ci, k, k, k)
  kaiming_normal_(w, in_channels * kernel * kernel * kernel, kInitNegativeSlope, gen);
  weight_ = register_parameter("weight", w);
  if (bias) bias_ = register_parameter("bias", zeros({out_channels}));  // (Co)
}

Tensor Conv3d::forward(const Tensor& x) { return conv3d(x, weight_, bias_, params_); }

ConvTranspose3d::ConvTranspose3d(std::int64_t in_channels, std::int64_t out_channels, std::int64_t kernel,
                                 std::int64_t stride, std::int64_t padding, std::int64_t output_padding, bool bias,
                                 Generator& gen) {
  check_positive("ConvTranspose3d", "in_channels", in_channels);
  check_positive("ConvTranspose3d", "out_channels", out_channels);
  check_positive("ConvTranspose3d", "kernel", kernel);
  check_positive("ConvTranspose3d", "stride", stride);
  VG_CHECK(padding >= 0, "ConvTranspose3d: padding must be non-negative, got " << padding);
  VG_CHECK(output_padding >= 0 && output_padding < stride,
           "ConvTranspose3d: output_padding must be in [0, stride), got " << output_padding << " with stride "
                                                                           << stride);
  params_.stride = cube(stride);
  params_.padding = cube(padding);
  params_.output_padding = cube(output_padding);
  Tensor w = empty({in_channels, out_channels, kernel, kernel, kernel});  // (Ci, Co, k, k, k)
  // torch.nn.init._calculate_fan_in_and_fan_out reads fan_in from weight dim 1, here Co.
  kaiming_normal_(w, out_channels * kernel * kernel * kernel, kInitNegativeSlope, gen);
  weight_ = register_parameter("weight", w);
  if (bias) bias_ = register_parameter("bias", zeros({out_channels}));  // (Co)
}

Tensor ConvTranspose3d::forward(const Tensor& x) { return conv_transpose3d(x, weight_, bias_, params_); }

InstanceNorm3d::InstanceNorm3d(std::int64_t channels, bool affine, double eps) : eps_(eps) {
  check_positive("InstanceNorm3d", "channels", channels);
  VG_CHECK(eps > 0, "InstanceNorm3d: eps must be positive, got " << eps);
  if (affine) {
    weight_ = register_parameter("weight", ones({channels}));  // (C)
    bias_ = register_parameter("bias", zeros({channels}));     // (C)
  }
}

Tensor InstanceNorm3d::forward(const Tensor& x) { return instance_norm3d(x, weight_, bias_, eps_); }

BatchNorm3d::BatchNorm3d(std::int64_t channels, double momentum, double eps) : momentum_(momentum), eps_(eps) {
  check_positive("BatchNorm3d", "channels", channels);
  VG_CHECK(momentum >= 0 && momentum <= 1, "BatchNorm3d: momentum must be in [0, 1], got " << momentum);
  VG_CHECK(eps > 0, "BatchNorm3d: eps must be positive, got " << eps);
  weight_ = register_parameter("weight", ones({channels}));         // (C)
  bias_ = register_parameter("bias", zeros({channels}));            // (C)
  running_mean_ = register_buffer("running_mean", zeros({channels}));  // (C)
  running_var_ = register_buffer("running_var", ones({channels}));     // (C)
}

Tensor BatchNorm3d::forward(const Tensor& x) {
  return batch_norm3d(x, weight_, bias_, running_mean_, running_var_, is_training(), momentum_, eps_);
}

}  // namespace voxgrad
