// The 3D U-Net with nnU-Net's topology (plain conv encoder and decoder, stride-2 convolutions to
// downsample, transposed convolutions to upsample, skip concatenation, optional deep supervision),
// built from engine/ layers; its state_dict names are stable and PyTorch-style (listed below).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../engine/layers.h"
#include "../engine/nn.h"

namespace voxgrad {

enum class Norm { Instance, Batch };

struct UNet3dConfig {
  int in_channels = 1;
  int classes = 2;
  int base_features = 32;
  int levels = 4;  // resolutions: 4 levels = 3 downsamplings
  int feature_cap = 320;
  Norm norm = Norm::Instance;  // affine InstanceNorm3d (nnU-Net) or BatchNorm3d
  bool deep_supervision = false;
};

// Features at level i (0 = full resolution): min(base_features * 2^i, feature_cap).
std::int64_t unet3d_features(const UNet3dConfig& config, int level);

// Two (conv 3^3 pad 1 -> norm -> LeakyReLU 0.01). The first conv may have stride 2 (downsampling).
// Children: conv1, norm1, conv2, norm2 (the activations have no parameters and are not children).
class ConvBlock : public Module {
 public:
  ConvBlock(std::int64_t in_channels, std::int64_t out_channels, std::int64_t first_stride, Norm norm,
            Generator& gen);
  Tensor forward(const Tensor& x) override;  // (N, in, D, H, W) -> (N, out, D/s, H/s, W/s)

 protected:
  // For subclasses that register children of their own before the block's (DecoderStage's "up").
  ConvBlock() = default;
  void build(std::int64_t in_channels, std::int64_t out_channels, std::int64_t first_stride, Norm norm,
             Generator& gen);

 private:
  std::shared_ptr<Conv3d> conv1_, conv2_;
  std::shared_ptr<Module> norm1_, norm2_;
};

// One decoder level: "up" (transposed conv 2^3 stride 2, features of the level below -> this
// level's) registered first, then the ConvBlock children on the concatenation [up(below), skip].
class DecoderStage : public ConvBlock {
 public:
  DecoderStage(std::int64_t below_channels, std::int64_t channels, Norm norm, Generator& gen);
  // below (N, below_channels, D/2, H/2, W/2), skip (N, channels, D, H, W) -> (N, channels, D, H, W)
  Tensor forward(const Tensor& below, const Tensor& skip);
  using ConvBlock::forward;  // forward(x) runs the conv block alone on an already concatenated x

 private:
  std::shared_ptr<ConvTranspose3d> up_;
};

// A container of numbered children ("0", "1", ...), like torch.nn.ModuleList: it has no forward
// of its own, so calling one is an error.
class ModuleList : public Module {
 public:
  void push_back(std::shared_ptr<Module> m) { register_module(std::to_string(children().size()), std::move(m)); }
  std::size_t size() const { return children().size(); }
  Tensor forward(const Tensor& x) override;
};

// state_dict names, level i = resolution level (0 = full resolution, L = levels):
//   encoder.{i}.conv1.{weight,bias}  i in [0, L); conv1 has stride 2 for i > 0
//   encoder.{i}.norm1.{weight,bias}  (+ running_mean, running_var with batch norm)
//   encoder.{i}.conv2.*, encoder.{i}.norm2.*
//   decoder.{i}.up.{weight,bias}     i in [0, L-1): transposed conv from level i+1 to level i
//   decoder.{i}.conv1.*, norm1.*, conv2.*, norm2.*
//   heads.{i}.{weight,bias}          1^3 conv to `classes` at level i; only heads.0 without deep
//                                    supervision, heads.0 .. heads.{L-2} with it
// Registration order (and so state_dict order) is encoder, decoder, heads, each by index. Weights of
// a model without deep supervision are a subset of those with it (load non-strictly across).
class UNet3d : public Module {
 public:
  explicit UNet3d(const UNet3dConfig& config, Generator& gen = default_generator());

  // x (N, in_channels, D, H, W), each of D, H, W divisible by 2^(levels-1), else an Error that
  // says which sizes work. Returns the full-resolution logits (N, classes, D, H, W).
  Tensor forward(const Tensor& x) override;
  // Every head's logits, highest resolution first: (N, classes, D/2^i, H/2^i, W/2^i) for
  // i = 0 .. levels-2 with deep supervision, just the full-resolution logits without.
  std::vector<Tensor> forward_all(const Tensor& x);

  // Throws the Error forward would for this input shape; nothing when it is accepted.
  void check_input(const Shape& shape) const;
  std::int64_t parameter_count() const;
  const UNet3dConfig& config() const { return config_; }

 private:
  // Decoder features at every level from 0 to levels-1 (index i holds level i's decoder output;
  // the last is the bottleneck's encoder output).
  std::vector<Tensor> run_decoder(const Tensor& x);

  UNet3dConfig config_;
  std::vector<std::shared_ptr<ConvBlock>> encoder_;
  std::vector<std::shared_ptr<DecoderStage>> decoder_;
  std::vector<std::shared_ptr<Conv3d>> heads_;
};

}  // namespace voxgrad
