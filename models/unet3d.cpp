// UNet3d: builds nnU-Net's plain-conv U-Net from Conv3d, ConvTranspose3d and norm layers, checks
// that inputs fit its downsamplings, and runs encoder -> decoder with skips -> heads.
#include "models/unet3d.h"

#include <algorithm>
#include <sstream>

#include "engine/ops.h"

namespace voxgrad {

namespace {

constexpr double kLeakySlope = 0.01;  // nnU-Net's LeakyReLU, also the init slope

std::shared_ptr<Module> make_norm(Norm norm, std::int64_t channels) {
  if (norm == Norm::Batch) return std::make_shared<BatchNorm3d>(channels);
  return std::make_shared<InstanceNorm3d>(channels, /*affine=*/true);
}

}  // namespace

std::int64_t unet3d_features(const UNet3dConfig& config, int level) {
  std::int64_t f = config.base_features;
  for (int i = 0; i < level && f < config.feature_cap; ++i) f *= 2;
  return std::min<std::int64_t>(f, config.feature_cap);
}

ConvBlock::ConvBlock(std::int64_t in_channels, std::int64_t out_channels, std::int64_t first_stride, Norm norm,
                     Generator& gen) {
  build(in_channels, out_channels, first_stride, norm, gen);
}

void ConvBlock::build(std::int64_t in_channels, std::int64_t out_channels, std::int64_t first_stride, Norm norm,
                      Generator& gen) {
  conv1_ = register_module("conv1", std::make_shared<Conv3d>(in_channels, out_channels, 3, first_stride, 1, true, gen));
  norm1_ = register_module("norm1", make_norm(norm, out_channels));
  conv2_ = register_module("conv2", std::make_shared<Conv3d>(out_channels, out_channels, 3, 1, 1, true, gen));
  norm2_ = register_module("norm2", make_norm(norm, out_channels));
}

Tensor ConvBlock::forward(const Tensor& x) {
  Tensor y = leaky_relu(norm1_->forward(conv1_->forward(x)), kLeakySlope);
  return leaky_relu(norm2_->forward(conv2_->forward(y)), kLeakySlope);
}

// "up" is registered before the block so the state_dict lists a stage in the order it runs.
DecoderStage::DecoderStage(std::int64_t below_channels, std::int64_t channels, Norm norm, Generator& gen) {
  up_ = register_module("up", std::make_shared<ConvTranspose3d>(below_channels, channels, 2, 2, 0, 0, true, gen));
  build(2 * channels, channels, 1, norm, gen);  // on [up(below), skip]
}

Tensor DecoderStage::forward(const Tensor& below, const Tensor& skip) {
  Tensor up = up_->forward(below);                   // (N, C, D, H, W)
  return ConvBlock::forward(concat({up, skip}, 1));  // (N, 2C, D, H, W) -> (N, C, D, H, W)
}

Tensor ModuleList::forward(const Tensor&) {
  VG_FAIL("a ModuleList is a container without a forward; call its entries");
}

UNet3d::UNet3d(const UNet3dConfig& config, Generator& gen) : config_(config) {
  VG_CHECK(config.in_channels > 0, "UNet3d: in_channels must be positive, got " << config.in_channels);
  VG_CHECK(config.classes > 0, "UNet3d: classes must be positive, got " << config.classes);
  VG_CHECK(config.base_features > 0, "UNet3d: base_features must be positive, got " << config.base_features);
  VG_CHECK(config.feature_cap >= config.base_features,
           "UNet3d: feature_cap (" << config.feature_cap << ") must be at least base_features ("
                                   << config.base_features << ")");
  VG_CHECK(config.levels >= 1 && config.levels <= 12,
           "UNet3d: levels must be in [1, 12] (resolutions, 4 = 3 downsamplings), got " << config.levels);
  const int L = config.levels;
  auto encoder = register_module("encoder", std::make_shared<ModuleList>());
  for (int i = 0; i < L; ++i) {
    const std::int64_t in = i == 0 ? config.in_channels : unet3d_features(config, i - 1);
    encoder_.push_back(std::make_shared<ConvBlock>(in, unet3d_features(config, i), i == 0 ? 1 : 2, config.norm, gen));
    encoder->push_back(encoder_.back());
  }
  if (L > 1) {
    auto decoder = register_module("decoder", std::make_shared<ModuleList>());
    for (int i = 0; i + 1 < L; ++i) {
      decoder_.push_back(std::make_shared<DecoderStage>(unet3d_features(config, i + 1), unet3d_features(config, i),
                                                        config.norm, gen));
      decoder->push_back(decoder_.back());
    }
  }
  auto heads = register_module("heads", std::make_shared<ModuleList>());
  const int n_heads = config.deep_supervision ? std::max(1, L - 1) : 1;
  for (int i = 0; i < n_heads; ++i) {
    heads_.push_back(std::make_shared<Conv3d>(unet3d_features(config, i), config.classes, 1, 1, 0, true, gen));
    heads->push_back(heads_.back());
  }
}

void UNet3d::check_input(const Shape& shape) const {
  VG_CHECK(shape.size() == 5, "UNet3d: input " << shape_str(shape) << " must be (N, C, D, H, W)");
  VG_CHECK(shape[1] == config_.in_channels,
           "UNet3d: input " << shape_str(shape) << " has " << shape[1] << " channels, the model takes "
                            << config_.in_channels);
  const std::int64_t q = std::int64_t{1} << (config_.levels - 1);
  std::ostringstream bad;
  static const char* axis_name[3] = {"D", "H", "W"};
  for (int a = 0; a < 3; ++a) {
    const std::int64_t s = shape[2 + a];
    if (s > 0 && s % q == 0) continue;
    const std::int64_t lo = s / q * q;
    if (bad.tellp() > 0) bad << "; ";
    bad << axis_name[a] << "=" << s << " is not divisible by " << q << " (levels " << config_.levels
        << " need multiples of " << q << ": ...";
    for (std::int64_t m = lo - q; m <= lo + 2 * q; m += q)
      if (m > 0) bad << ", " << m;
    bad << ", ...)";
  }
  VG_CHECK(bad.tellp() == 0, "UNet3d: input " << shape_str(shape) << ": " << bad.str()
                                              << "; crop or pad the patch to such sizes");
}

std::vector<Tensor> UNet3d::run_decoder(const Tensor& x) {
  check_input(x.shape());
  const int L = config_.levels;
  std::vector<Tensor> level(L);  // level i: (N, f_i, D/2^i, H/2^i, W/2^i)
  Tensor y = x;
  for (int i = 0; i < L; ++i) level[i] = y = encoder_[i]->forward(y);
  // Walk back up; level[i] becomes the decoder's output at level i (the encoder's is the skip).
  for (int i = L - 2; i >= 0; --i) level[i] = decoder_[i]->forward(level[i + 1], level[i]);
  return level;
}

Tensor UNet3d::forward(const Tensor& x) { return heads_[0]->forward(run_decoder(x)[0]); }

std::vector<Tensor> UNet3d::forward_all(const Tensor& x) {
  std::vector<Tensor> level = run_decoder(x);
  std::vector<Tensor> out;
  for (std::size_t i = 0; i < heads_.size(); ++i) out.push_back(heads_[i]->forward(level[i]));  // (N, K, D/2^i, ...)
  return out;
}

std::int64_t UNet3d::parameter_count() const {
  std::int64_t n = 0;
  for (const Tensor& p : parameters()) n += p.numel();
  return n;
}

}  // namespace voxgrad
