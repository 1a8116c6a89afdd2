// nnU-Net v2's networks (dynamic_network_architectures 0.4.4: PlainConvUNet and ResidualEncoderUNet
// with BasicBlockD), built from a plans.json configuration's `architecture` entry with PyTorch's exact
// state_dict names and order, and strict loading of a checkpoint's `network_weights` into them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../engine/json.h"
#include "../engine/layers.h"
#include "../engine/nn.h"

namespace voxgrad {

enum class NnunetNetworkClass { PlainConvUNet, ResidualEncoderUNet };
enum class NnunetNorm { None, Instance, Batch };
enum class NnunetNonlin { None, LeakyReLU, ReLU };
// Dropout is the identity at inference; in training the channel-wise kinds run dropout3d.
enum class NnunetDropout { None, Elementwise, Channelwise };

// Every arch_kwargs field, resolved: scalars broadcast, 2-D configurations lifted to 3-D
// (kernels and strides [1, h, w]: a 2-D network runs on (N, C, 1, H, W)).
struct NnunetArchitecture {
  NnunetNetworkClass network_class = NnunetNetworkClass::PlainConvUNet;
  int spatial_dims = 3;  // conv_op Conv3d (3) or Conv2d (2)
  int n_stages = 0;
  std::vector<std::int64_t> features_per_stage;  // n_stages
  std::vector<Triple> kernel_sizes;              // n_stages, (D, H, W)
  std::vector<Triple> strides;                   // n_stages, (D, H, W)
  // PlainConvUNet's n_conv_per_stage or ResidualEncoderUNet's n_blocks_per_stage (n_stages).
  std::vector<int> n_conv_per_stage;
  std::vector<int> n_conv_per_stage_decoder;  // n_stages - 1
  bool conv_bias = false;
  NnunetNorm norm = NnunetNorm::None;
  double norm_eps = 1e-5;
  bool norm_affine = false;
  double norm_momentum = 0.1;  // BatchNorm's, for training
  NnunetNonlin nonlin = NnunetNonlin::None;
  double negative_slope = 0.01;
  bool nonlin_first = false;  // PlainConvUNet only: conv -> (dropout) -> nonlin -> norm
  NnunetDropout dropout = NnunetDropout::None;
  double dropout_p = 0.5;
  std::int64_t stem_channels = 0;  // ResidualEncoderUNet's stem width; features_per_stage[0] when absent
};

// Reads an `architecture` entry ({"network_class_name", "arch_kwargs", "_kw_requires_import"}).
// Anything voxgrad cannot build (an unknown class, field or value) is an InputError that names
// `source`, the field, the value and what is supported.
NnunetArchitecture parse_nnunet_architecture(const Json& architecture, const std::string& source);

// conv -> (dropout) -> norm -> nonlin (or nonlin before norm), dynamic_network_architectures'
// ConvDropoutNormReLU. Children in PyTorch's order: conv, dropout, norm, nonlin (each when present)
// and all_modules, a Sequential over the same modules in the order they run, so the state_dict lists
// conv.weight and all_modules.0.weight for one tensor.
class NnunetConvBlock : public Module {
 public:
  NnunetConvBlock(const NnunetArchitecture& a, std::int64_t in_channels, std::int64_t out_channels, Triple kernel,
                  Triple stride, bool conv_bias, bool with_dropout, bool with_nonlin, bool nonlin_first,
                  Generator& gen);
  Tensor forward(const Tensor& x) override;

 private:
  std::shared_ptr<Sequential> all_modules_;
};

// The network: children "encoder" and "decoder" (the decoder holds the encoder again as
// "decoder.encoder", as in PyTorch). Deep-supervision heads are all built (their weights are in
// every checkpoint); forward returns the full-resolution logits only.
class NnunetNetwork : public Module {
 public:
  NnunetNetwork(const NnunetArchitecture& architecture, std::int64_t in_channels, std::int64_t num_classes,
                Generator& gen = default_generator());

  // x (N, in_channels, D, H, W), or (N, in_channels, 1, H, W) for a 2-D network; each spatial size
  // a multiple of the product of its axis' strides. Returns (N, num_classes, D, H, W).
  Tensor forward(const Tensor& x) override;
  // Every seg layer's logits, highest resolution first (nnU-Net's deep-supervision outputs).
  std::vector<Tensor> forward_all(const Tensor& x);
  // Throws the InputError forward would for this input shape; nothing when it is accepted.
  void check_input(const Shape& shape) const;

  const NnunetArchitecture& architecture() const { return architecture_; }
  std::int64_t in_channels() const { return in_channels_; }
  std::int64_t num_classes() const { return num_classes_; }

 private:
  std::vector<Tensor> run_decoder(const Tensor& x, bool all_heads);

  NnunetArchitecture architecture_;
  std::int64_t in_channels_, num_classes_;
  std::shared_ptr<Module> stem_;                      // ResidualEncoderUNet only
  std::vector<std::shared_ptr<Module>> stages_;       // encoder stages, full resolution first
  std::vector<std::shared_ptr<Module>> transpconvs_;  // decoder, lowest resolution first
  std::vector<std::shared_ptr<Module>> decoder_stages_;
  std::vector<std::shared_ptr<Module>> seg_layers_;
};

// Elements of the network's convolution weights (nearly all of its parameters), saturated at
// UINT64_MAX: what building it will allocate, known before anything is allocated.
std::uint64_t nnunet_weight_count(const NnunetArchitecture& architecture, std::int64_t in_channels,
                                  std::int64_t num_classes);

// How a built network's weights start: nnU-Net's initialisation (Kaiming-normal convolutions, zero
// biases), or zeros for a network whose weights a checkpoint replaces next (much faster).
enum class NnunetInit { Kaiming, Zeros };

// Builds the network in `dtype` (Float32, or Float64 on the CPU), in eval mode (inference:
// BatchNorm uses its running statistics, dropout is off); train() to train. An InputError when
// its weights would not fit in the memory this machine has available.
std::shared_ptr<NnunetNetwork> build_nnunet_network(const NnunetArchitecture& architecture, std::int64_t in_channels,
                                                    std::int64_t num_classes, DType dtype = DType::Float32,
                                                    NnunetInit init = NnunetInit::Kaiming,
                                                    Generator& gen = default_generator());

// Copies `weights` (a checkpoint's network_weights) into `network` strictly: every name of its
// state_dict present with its shape, nothing left over, names that alias one tensor holding
// identical values. With `conv2d_weights`, 4-D convolution weights (out, in, kh, kw) and transposed
// ones (in, out, kh, kw) load into depth-1 5-D ones. Values are converted to the network's dtype
// (integer buffers must be integers). Otherwise one InputError naming `source` lists every
// difference (missing names, unexpected names, shape and type mismatches); nothing is written then.
void load_state_dict_strict(Module& network, const NamedTensors& weights, const std::string& source,
                            bool conv2d_weights = false);
// The same for an nnU-Net network, 2-D weights accepted for a 2-D architecture.
void load_nnunet_weights(NnunetNetwork& network, const NamedTensors& weights, const std::string& source);

}  // namespace voxgrad
