// Conv3d, ConvTranspose3d, InstanceNorm3d, BatchNorm3d and AvgPool3d: parameter registration with
// PyTorch's names and nnU-Net's initialisation; each forward is one call into the differentiable ops.
#include "engine/layers.h"

#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "kernels/norm.h"

namespace voxgrad {

namespace {

void check_positive(const char* layer, const char* what, std::int64_t v) {
  VG_CHECK(v > 0, layer << ": " << what << " must be positive, got " << v);
}

Triple cube(std::int64_t v) { return {v, v, v}; }

}  // namespace

Conv3d::Conv3d(std::int64_t in_channels, std::int64_t out_channels, std::int64_t kernel, std::int64_t stride,
               std::int64_t padding, bool bias, Generator& gen)
    : Conv3d(in_channels, out_channels, cube(kernel), cube(stride), cube(padding), bias, gen) {}

Conv3d::Conv3d(std::int64_t in_channels, std::int64_t out_channels, Triple kernel, Triple stride, Triple padding,
               bool bias, Generator& gen) {
  check_positive("Conv3d", "in_channels", in_channels);
  check_positive("Conv3d", "out_channels", out_channels);
  for (int a = 0; a < 3; ++a) {
    check_positive("Conv3d", "kernel", kernel[a]);
    check_positive("Conv3d", "stride", stride[a]);
    VG_CHECK(padding[a] >= 0, "Conv3d: padding must be non-negative, got " << padding[a]);
  }
  params_.stride = stride;
  params_.padding = padding;
  Tensor w = empty({out_channels, in_channels, kernel[0], kernel[1], kernel[2]});  // (Co, Ci, kD, kH, kW)
  kaiming_normal_(w, in_channels * kernel[0] * kernel[1] * kernel[2], kInitNegativeSlope, gen);
  weight_ = register_parameter("weight", w);
  if (bias) bias_ = register_parameter("bias", zeros({out_channels}));  // (Co)
}

Tensor Conv3d::forward(const Tensor& x) { return conv3d(x, weight_, bias_, params_); }

ConvTranspose3d::ConvTranspose3d(std::int64_t in_channels, std::int64_t out_channels, std::int64_t kernel,
                                 std::int64_t stride, std::int64_t padding, std::int64_t output_padding, bool bias,
                                 Generator& gen)
    : ConvTranspose3d(in_channels, out_channels, cube(kernel), cube(stride), cube(padding), cube(output_padding), bias,
                      gen) {}

ConvTranspose3d::ConvTranspose3d(std::int64_t in_channels, std::int64_t out_channels, Triple kernel, Triple stride,
                                 Triple padding, Triple output_padding, bool bias, Generator& gen) {
  check_positive("ConvTranspose3d", "in_channels", in_channels);
  check_positive("ConvTranspose3d", "out_channels", out_channels);
  for (int a = 0; a < 3; ++a) {
    check_positive("ConvTranspose3d", "kernel", kernel[a]);
    check_positive("ConvTranspose3d", "stride", stride[a]);
    VG_CHECK(padding[a] >= 0, "ConvTranspose3d: padding must be non-negative, got " << padding[a]);
    VG_CHECK(output_padding[a] >= 0 && output_padding[a] < stride[a],
             "ConvTranspose3d: output_padding must be in [0, stride), got " << output_padding[a] << " with stride "
                                                                            << stride[a]);
  }
  params_.stride = stride;
  params_.padding = padding;
  params_.output_padding = output_padding;
  Tensor w = empty({in_channels, out_channels, kernel[0], kernel[1], kernel[2]});  // (Ci, Co, kD, kH, kW)
  // torch.nn.init._calculate_fan_in_and_fan_out reads fan_in from weight dim 1, here Co.
  kaiming_normal_(w, out_channels * kernel[0] * kernel[1] * kernel[2], kInitNegativeSlope, gen);
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

BatchNorm3d::BatchNorm3d(std::int64_t channels, double momentum, double eps, bool affine, bool track_num_batches)
    : momentum_(momentum), eps_(eps) {
  check_positive("BatchNorm3d", "channels", channels);
  VG_CHECK(momentum >= 0 && momentum <= 1, "BatchNorm3d: momentum must be in [0, 1], got " << momentum);
  VG_CHECK(eps > 0, "BatchNorm3d: eps must be positive, got " << eps);
  if (affine) {
    weight_ = register_parameter("weight", ones({channels}));  // (C)
    bias_ = register_parameter("bias", zeros({channels}));     // (C)
  }
  running_mean_ = register_buffer("running_mean", zeros({channels}));  // (C)
  running_var_ = register_buffer("running_var", ones({channels}));     // (C)
  if (track_num_batches) num_batches_tracked_ = register_buffer("num_batches_tracked", zeros({}, DType::Int32));
}

Tensor BatchNorm3d::forward(const Tensor& x) {
  if (is_training() && num_batches_tracked_.defined()) {
    // Counted on the counter's device in the stream's order: reading it back to the host would make
    // every training forward on a GPU wait for the work before it.
    std::int32_t* count = num_batches_tracked_.data<std::int32_t>();
    detail::dispatch_device(num_batches_tracked_.device(), [&](auto on) { VG_LAUNCH(on, count_batch, count); });
  }
  return batch_norm3d(x, weight_, bias_, running_mean_, running_var_, is_training(), momentum_, eps_);
}

AvgPool3d::AvgPool3d(Triple kernel, Triple stride) : kernel_(kernel), stride_(stride) {
  for (int a = 0; a < 3; ++a) {
    check_positive("AvgPool3d", "kernel", kernel[a]);
    check_positive("AvgPool3d", "stride", stride[a]);
  }
}

Tensor AvgPool3d::forward(const Tensor& x) { return avg_pool3d(x, kernel_, stride_); }

}  // namespace voxgrad
