// The 3D U-Net voxgrad trains: nnU-Net's PlainConvUNet (models/nnunet_networks) in the configuration
// UNet3dConfig describes, so its state_dict names are PyTorch's (listed below), plus the migration of
// model files written with UNet3d's former names.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../engine/layers.h"
#include "../engine/nn.h"

namespace voxgrad {

// models/nnunet_networks.h; declared here so that this header stands alone where it is installed.
struct NnunetArchitecture;
class NnunetNetwork;

enum class Norm { Instance, Batch };

struct UNet3dConfig {
  int in_channels = 1;
  int classes = 2;
  int base_features = 32;
  int levels = 4;  // resolutions, at least 2: 4 levels = 3 downsamplings
  int feature_cap = 320;
  Norm norm = Norm::Instance;  // affine InstanceNorm3d (nnU-Net) or BatchNorm3d
  bool deep_supervision = false;
};

// Features at level i (0 = full resolution): min(base_features * 2^i, feature_cap).
std::int64_t unet3d_features(const UNet3dConfig& config, int level);

// The PlainConvUNet arch_kwargs a UNet3dConfig stands for: n_stages = levels, features_per_stage
// unet3d_features, kernel 3^3, strides [1, 2, 2, ...], two convs per encoder and decoder stage,
// conv_bias true, affine InstanceNorm3d (eps 1e-5) or BatchNorm3d, LeakyReLU 0.01, no dropout.
NnunetArchitecture unet3d_architecture(const UNet3dConfig& config);

// state_dict names (L = levels, s = encoder stage 0 .. L-1 from full resolution, d = decoder stage
// 0 .. L-2 from the lowest resolution, so decoder stage d works at level L-2-d), exactly those of
// PyTorch's PlainConvUNet(input_channels, num_classes, **unet3d_architecture's arch_kwargs):
//   encoder.stages.{s}.0.convs.{0,1}.conv.{weight,bias}   convs.0 has stride 2 for s > 0
//   encoder.stages.{s}.0.convs.{0,1}.norm.{weight,bias}   (+ running_mean, running_var,
//                                                          num_batches_tracked with batch norm)
//   decoder.transpconvs.{d}.{weight,bias}                 transposed conv 2^3 stride 2
//   decoder.stages.{d}.convs.{0,1}.{conv,norm}.*          convs.0 on the concatenation [up, skip]
//   decoder.seg_layers.{d}.{weight,bias}                  1^3 conv to `classes`
// and the aliases PyTorch lists for the same tensors: every "convs.{k}.conv.X" again as
// "convs.{k}.all_modules.0.X" and "norm" as "all_modules.1", and every "encoder.*" again as
// "decoder.encoder.*". A model file or checkpoint therefore holds each tensor under every name;
// named_parameters() (and so the optimizer's state) uses the first, alias-free one.
//
// Every seg layer exists with or without deep supervision, as in nnU-Net: without it only
// decoder.seg_layers.{L-2} is used; the others never receive a gradient, so the optimizers skip
// them (no update, no weight decay, no state) and they keep their initial values.
// parameter_count() counts them.
//
// The former names (before UNet3d was built as a PlainConvUNet) and their new ones:
//   encoder.{i}.conv1/norm1/conv2/norm2  ->  encoder.stages.{i}.0.convs.{0,1}.{conv,norm}
//   decoder.{i}.up                       ->  decoder.transpconvs.{L-2-i}
//   decoder.{i}.conv1/norm1/conv2/norm2  ->  decoder.stages.{L-2-i}.convs.{0,1}.{conv,norm}
//   heads.{i}                            ->  decoder.seg_layers.{L-2-i}
class UNet3d : public Module {
 public:
  explicit UNet3d(const UNet3dConfig& config, Generator& gen = default_generator());

  // x (N, in_channels, D, H, W), each of D, H, W divisible by 2^(levels-1), else an Error that
  // says which sizes work. Returns the full-resolution logits (N, classes, D, H, W).
  Tensor forward(const Tensor& x) override;
  // The logits training uses, highest resolution first: (N, classes, D/2^i, H/2^i, W/2^i) for
  // i = 0 .. levels-2 with deep supervision, just the full-resolution logits without.
  std::vector<Tensor> forward_all(const Tensor& x);

  // Throws the Error forward would for this input shape; nothing when it is accepted.
  void check_input(const Shape& shape) const;
  std::int64_t parameter_count() const;
  const UNet3dConfig& config() const { return config_; }
  // The PlainConvUNet it is; its modules are this model's children.
  NnunetNetwork& network() { return *network_; }

 private:
  UNet3dConfig config_;
  std::shared_ptr<NnunetNetwork> network_;
};

// Renames the tensors of a file written with UNet3d's former names to the current ones (the map
// above; L is read from the file's encoder.{i} names) and adds what the current state_dict holds
// besides: the aliases, BatchNorm's num_batches_tracked (0) and, for a model without deep
// supervision, the seg layers it did not have (zeros: such a model never uses them). Names are
// also recognised after a prefix and before a suffix, so a training checkpoint's
// "model.encoder.0.conv1.weight" and "optimizer.state.encoder.0.conv1.weight.exp_avg" migrate too
// (optimizer state gets no aliases: it is keyed by named_parameters()). A list without former
// names comes back unchanged.
NamedTensors unet3d_migrate_names(const NamedTensors& tensors);

// Loads weights into `model` strictly after unet3d_migrate_names, so files of either naming load;
// an InputError that names `source` otherwise.
void load_unet3d_weights(UNet3d& model, const NamedTensors& weights, const std::string& source);
// A model file (save_model's) of either naming, its checksum verified as load_model does.
void load_unet3d_model(const std::string& path, UNet3d& model);

}  // namespace voxgrad
