// Reads nnU-Net's architecture entries, builds PlainConvUNet and ResidualEncoderUNet module trees whose
// registration order reproduces dynamic_network_architectures' (so state_dict names and order match
// PyTorch's), runs encoder -> decoder with skips, and loads checkpoint weights strictly.
#include "models/nnunet_networks.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <unordered_map>

#include "engine/autograd.h"
#include "engine/memory_budget.h"
#include "engine/norm_pool.h"
#include "engine/ops.h"

namespace voxgrad {

namespace {

// ---- parsing -------------------------------------------------------------------------------------

std::string shown(const Json& v) {
  std::string text = v.dump();
  if (text.size() > 120) text = text.substr(0, 117) + "...";
  return text;
}

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) {
    if (!out.empty()) out.append(", ");
    out.append(n);
  }
  return out;
}

// Reads arch_kwargs of one architecture entry; every message names the source and the field.
class ArchitectureReader {
 public:
  ArchitectureReader(const Json& kwargs, const std::string& source) : kwargs_(kwargs), source_(source) {}

  [[noreturn]] void fail(const std::string& field, const std::string& reason) const {
    VG_INPUT_FAIL(source_ << ": architecture field " << field << " " << reason);
  }

  const Json* find(const std::string& field) const {
    auto it = kwargs_.find(field);
    return it == kwargs_.end() ? nullptr : &*it;
  }
  const Json& require(const std::string& field) const {
    const Json* v = find(field);
    if (v == nullptr) fail(field, "is missing from arch_kwargs");
    return *v;
  }

  // Bounded so that no count from a file overflows; the network's total size is checked on building.
  std::int64_t integer(const Json& v, const std::string& field, std::int64_t min) const {
    constexpr std::int64_t kMax = std::int64_t{1} << 20;
    if (!v.is_number_integer()) fail(field, "is " + shown(v) + ", expected an integer");
    if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(kMax))
      fail(field, "is " + shown(v) + ", expected at most " + std::to_string(kMax));
    const std::int64_t i = v.get<std::int64_t>();
    if (i < min || i > kMax)
      fail(field,
           "is " + shown(v) + ", expected an integer in [" + std::to_string(min) + ", " + std::to_string(kMax) + "]");
    return i;
  }
  double number(const Json& v, const std::string& field) const {
    if (!v.is_number()) fail(field, "is " + shown(v) + ", expected a number");
    return v.get<double>();
  }
  bool boolean(const Json& v, const std::string& field) const {
    if (!v.is_boolean()) fail(field, "is " + shown(v) + ", expected true or false");
    return v.get<bool>();
  }

  // An int for every stage, or one list with `count` ints (PyTorch's int-or-list arguments).
  std::vector<std::int64_t> per_stage(const std::string& field, std::size_t count, std::int64_t min) const {
    const Json& v = require(field);
    if (v.is_number_integer()) return std::vector<std::int64_t>(count, integer(v, field, min));
    if (!v.is_array() || v.size() != count)
      fail(field, "is " + shown(v) + ", expected an integer or a list of " + std::to_string(count) + " integers");
    std::vector<std::int64_t> out;
    for (std::size_t i = 0; i < v.size(); ++i) out.push_back(integer(v[i], field + "[" + std::to_string(i) + "]", min));
    return out;
  }

  // Kernel sizes or strides: an int for everything, or one entry per stage, each an int or a list
  // with one int per spatial axis; 2-D entries [h, w] become [1, h, w].
  std::vector<Triple> per_stage_axes(const std::string& field, std::size_t count, int dims) const {
    const Json& v = require(field);
    const auto axes = [&](const Json& e, const std::string& name) {
      Triple t{1, 1, 1};
      if (e.is_number_integer()) {
        const std::int64_t k = integer(e, name, 1);
        for (int a = 3 - dims; a < 3; ++a) t[a] = k;
        return t;
      }
      if (!e.is_array() || e.size() != static_cast<std::size_t>(dims))
        fail(name, "is " + shown(e) + ", expected an integer or a list of " + std::to_string(dims) +
                       " integers (one per spatial axis of a " + std::to_string(dims) + "-D conv_op)");
      for (int a = 0; a < dims; ++a) t[3 - dims + a] = integer(e[a], name + "[" + std::to_string(a) + "]", 1);
      return t;
    };
    if (v.is_number_integer()) return std::vector<Triple>(count, axes(v, field));
    if (!v.is_array() || v.size() != count)
      fail(field, "is " + shown(v) + ", expected an integer or a list of " + std::to_string(count) + " entries");
    std::vector<Triple> out;
    for (std::size_t i = 0; i < v.size(); ++i) out.push_back(axes(v[i], field + "[" + std::to_string(i) + "]"));
    return out;
  }

  // A torch.nn class named as nnU-Net writes it ("torch.nn.LeakyReLU",
  // "torch.nn.modules.conv.Conv3d"): its class name, or "" for null.
  std::string torch_class(const std::string& field) const {
    const Json* v = find(field);
    if (v == nullptr || v->is_null()) return "";
    if (!v->is_string() || v->get<std::string>().rfind("torch.nn.", 0) != 0)
      fail(field, "is " + shown(*v) + ", expected the name of a torch.nn class");
    const std::string name = v->get<std::string>();
    return name.substr(name.rfind('.') + 1);
  }

  // A kwargs dict (null is empty) whose keys are all in `known`.
  Json kwargs(const std::string& field, const std::string& owner, const std::set<std::string>& known) const {
    const Json* v = find(field);
    if (v == nullptr || v->is_null()) return Json::object();
    if (!v->is_object()) fail(field, "is " + shown(*v) + ", expected a dict of keyword arguments");
    for (const auto& [key, value] : v->items())
      if (known.count(key) == 0)
        fail(field, "has \"" + key + "\", which voxgrad's " + owner +
                        " does not take (it takes: " + joined({known.begin(), known.end()}) + ")");
    return *v;
  }

 private:
  const Json& kwargs_;
  const std::string& source_;
};

void read_norm(const ArchitectureReader& r, NnunetArchitecture* a) {
  const std::string norm = r.torch_class("norm_op");
  if (norm.empty()) {
    a->norm = NnunetNorm::None;
    return;
  }
  const std::string dims = std::to_string(a->spatial_dims) + "d";
  if (norm == "InstanceNorm" + dims) {
    a->norm = NnunetNorm::Instance;
    a->norm_affine = false;  // torch.nn.InstanceNormNd's default
  } else if (norm == "BatchNorm" + dims) {
    a->norm = NnunetNorm::Batch;
    a->norm_affine = true;  // torch.nn.BatchNormNd's default
  } else {
    r.fail("norm_op", "is " + norm + ", which voxgrad cannot build with a " + dims +
                          " conv_op (supported: InstanceNorm" + dims + ", BatchNorm" + dims + " or null)");
  }
  const Json kw = r.kwargs("norm_op_kwargs", norm, {"eps", "affine", "momentum", "track_running_stats"});
  if (kw.contains("eps")) {
    a->norm_eps = r.number(kw["eps"], "norm_op_kwargs.eps");
    if (!(a->norm_eps > 0)) r.fail("norm_op_kwargs.eps", "is " + shown(kw["eps"]) + ", expected a positive number");
  }
  if (kw.contains("affine")) a->norm_affine = r.boolean(kw["affine"], "norm_op_kwargs.affine");
  if (kw.contains("momentum")) {
    a->norm_momentum = r.number(kw["momentum"], "norm_op_kwargs.momentum");
    if (a->norm_momentum < 0 || a->norm_momentum > 1)
      r.fail("norm_op_kwargs.momentum", "is " + shown(kw["momentum"]) + ", expected a number in [0, 1]");
  }
  if (kw.contains("track_running_stats")) {
    const bool tracks = r.boolean(kw["track_running_stats"], "norm_op_kwargs.track_running_stats");
    const bool supported = a->norm == NnunetNorm::Batch;
    if (tracks != supported)
      r.fail("norm_op_kwargs.track_running_stats", "is " + shown(kw["track_running_stats"]) + "; voxgrad's " + norm +
                                                       " supports only " + (supported ? "true" : "false"));
  }
}

void read_nonlin(const ArchitectureReader& r, NnunetArchitecture* a) {
  const std::string nonlin = r.torch_class("nonlin");
  if (nonlin.empty()) {
    a->nonlin = NnunetNonlin::None;
    r.kwargs("nonlin_kwargs", "absent nonlin", {"inplace"});
  } else if (nonlin == "LeakyReLU") {
    a->nonlin = NnunetNonlin::LeakyReLU;
    const Json kw = r.kwargs("nonlin_kwargs", "LeakyReLU", {"negative_slope", "inplace"});
    if (kw.contains("negative_slope"))
      a->negative_slope = r.number(kw["negative_slope"], "nonlin_kwargs.negative_slope");
  } else if (nonlin == "ReLU") {
    a->nonlin = NnunetNonlin::ReLU;
    r.kwargs("nonlin_kwargs", "ReLU", {"inplace"});
  } else {
    r.fail("nonlin", "is " + nonlin + ", which voxgrad does not support (supported: LeakyReLU, ReLU or null)");
  }
}

void read_dropout(const ArchitectureReader& r, NnunetArchitecture* a) {
  const std::string dropout = r.torch_class("dropout_op");
  if (dropout.empty()) {
    a->dropout = NnunetDropout::None;
    return;
  }
  if (dropout == "Dropout") {
    a->dropout = NnunetDropout::Elementwise;
  } else if (dropout == "Dropout2d" || dropout == "Dropout3d") {
    a->dropout = NnunetDropout::Channelwise;
  } else {
    r.fail("dropout_op", "is " + dropout +
                             ", which voxgrad does not support (supported: Dropout, Dropout2d, "
                             "Dropout3d or null)");
  }
  const Json kw = r.kwargs("dropout_op_kwargs", dropout, {"p", "inplace"});
  if (kw.contains("p")) {
    a->dropout_p = r.number(kw["p"], "dropout_op_kwargs.p");
    if (a->dropout_p < 0 || a->dropout_p > 1)
      r.fail("dropout_op_kwargs.p", "is " + shown(kw["p"]) + ", expected a probability in [0, 1]");
  }
}

}  // namespace

NnunetArchitecture parse_nnunet_architecture(const Json& architecture, const std::string& source) {
  VG_INPUT_CHECK(architecture.is_object(), source << ": the architecture entry is " << shown(architecture)
                                                  << ", expected an object with network_class_name and arch_kwargs");
  const auto class_it = architecture.find("network_class_name");
  VG_INPUT_CHECK(class_it != architecture.end() && class_it->is_string(),
                 source << ": the architecture entry has no network_class_name string");
  const auto kwargs_it = architecture.find("arch_kwargs");
  VG_INPUT_CHECK(kwargs_it != architecture.end() && kwargs_it->is_object(),
                 source << ": the architecture entry has no arch_kwargs object");
  if (const auto imports = architecture.find("_kw_requires_import"); imports != architecture.end()) {
    bool strings = imports->is_array();
    for (const Json& e : *imports) strings = strings && e.is_string();
    VG_INPUT_CHECK(strings, source << ": architecture field _kw_requires_import is " << shown(*imports)
                                   << ", expected a list of arch_kwargs names");
  }

  NnunetArchitecture a;
  // nnU-Net falls back to finding the class by its last name component when the module moved.
  const std::string class_name = class_it->get<std::string>();
  const std::string short_name = class_name.substr(class_name.rfind('.') + 1);
  if (short_name == "PlainConvUNet") {
    a.network_class = NnunetNetworkClass::PlainConvUNet;
  } else if (short_name == "ResidualEncoderUNet") {
    a.network_class = NnunetNetworkClass::ResidualEncoderUNet;
  } else {
    VG_INPUT_FAIL(source << ": network_class_name " << class_name
                         << " is not supported (supported: dynamic_network_architectures.architectures.unet."
                            "PlainConvUNet and ResidualEncoderUNet)");
  }
  const bool residual = a.network_class == NnunetNetworkClass::ResidualEncoderUNet;

  const Json& kwargs = *kwargs_it;
  const ArchitectureReader r(kwargs, source);
  std::set<std::string> known = {"n_stages",          "features_per_stage",
                                 "conv_op",           "kernel_sizes",
                                 "strides",           "n_conv_per_stage_decoder",
                                 "conv_bias",         "norm_op",
                                 "norm_op_kwargs",    "dropout_op",
                                 "dropout_op_kwargs", "nonlin",
                                 "nonlin_kwargs",     "deep_supervision"};
  if (residual) {
    known.insert({"n_blocks_per_stage", "block", "bottleneck_channels", "stem_channels"});
  } else {
    known.insert({"n_conv_per_stage", "nonlin_first"});
  }
  for (const auto& [key, value] : kwargs.items()) {
    if (key == "input_channels" || key == "num_classes")
      r.fail(key, "must not be in arch_kwargs: nnU-Net takes it from dataset.json");
    if (known.count(key) == 0)
      r.fail(key,
             "is not an argument of " + short_name + " (its arguments: " + joined({known.begin(), known.end()}) + ")");
  }

  const std::string conv = r.torch_class("conv_op");
  if (conv == "Conv3d") {
    a.spatial_dims = 3;
  } else if (conv == "Conv2d") {
    a.spatial_dims = 2;
  } else {
    r.fail("conv_op", "is " + shown(r.require("conv_op")) +
                          ", which voxgrad cannot build (supported: "
                          "torch.nn.modules.conv.Conv3d and Conv2d)");
  }
  a.n_stages = static_cast<int>(r.integer(r.require("n_stages"), "n_stages", 2));
  VG_INPUT_CHECK(a.n_stages <= 16, source << ": architecture field n_stages is " << a.n_stages
                                          << ", more than the 16 stages voxgrad builds");
  const std::size_t stages = static_cast<std::size_t>(a.n_stages);
  a.features_per_stage = r.per_stage("features_per_stage", stages, 1);
  a.kernel_sizes = r.per_stage_axes("kernel_sizes", stages, a.spatial_dims);
  a.strides = r.per_stage_axes("strides", stages, a.spatial_dims);
  const std::string blocks_field = residual ? "n_blocks_per_stage" : "n_conv_per_stage";
  for (std::int64_t n : r.per_stage(blocks_field, stages, 1)) a.n_conv_per_stage.push_back(static_cast<int>(n));
  for (std::int64_t n : r.per_stage("n_conv_per_stage_decoder", stages - 1, 1))
    a.n_conv_per_stage_decoder.push_back(static_cast<int>(n));
  if (const Json* v = r.find("conv_bias")) a.conv_bias = r.boolean(*v, "conv_bias");
  if (const Json* v = r.find("deep_supervision")) r.boolean(*v, "deep_supervision");  // inference runs without
  read_norm(r, &a);
  read_nonlin(r, &a);
  read_dropout(r, &a);
  if (const Json* v = r.find("nonlin_first")) a.nonlin_first = r.boolean(*v, "nonlin_first");
  if (residual) {
    if (const Json* v = r.find("block"); v != nullptr && !v->is_null()) {
      const std::string block = v->is_string() ? v->get<std::string>() : shown(*v);
      const std::string block_name = block.substr(block.rfind('.') + 1);
      if (block_name == "BottleneckD")
        r.fail("block", "is " + block + ": BottleneckD residual blocks are not supported yet (supported: BasicBlockD)");
      if (!v->is_string() || block_name != "BasicBlockD")
        r.fail("block", "is " + block +
                            ", which voxgrad does not support (supported: "
                            "dynamic_network_architectures.building_blocks.residual.BasicBlockD)");
    }
    // Only BottleneckD reads bottleneck_channels; BasicBlockD ignores it, as PyTorch does.
    if (const Json* v = r.find("bottleneck_channels"); v != nullptr && !v->is_null())
      r.per_stage("bottleneck_channels", stages, 1);
    if (const Json* v = r.find("stem_channels"); v != nullptr && !v->is_null())
      a.stem_channels = r.integer(*v, "stem_channels", 1);
  }
  return a;
}

namespace {

// ---- building blocks ------------------------------------------------------------------------------

// A module that only names its children (PyTorch modules whose forward voxgrad runs elsewhere).
class Container : public Module {
 public:
  template <class M>
  std::shared_ptr<M> add(const std::string& name, std::shared_ptr<M> m) {
    return register_module(name, std::move(m));
  }
  Tensor forward(const Tensor&) override { VG_FAIL("a container module has no forward; call its entries"); }
};

// torch.nn.Dropout / Dropout2d / Dropout3d: identity at inference.
class DropoutLayer : public Module {
 public:
  DropoutLayer(double p, bool channelwise) : p_(p), channelwise_(channelwise) {}
  Tensor forward(const Tensor& x) override {
    if (!is_training() || p_ == 0) return x;
    VG_CHECK(channelwise_, "element-wise dropout (torch.nn.Dropout) is supported at inference only");
    return dropout3d(x, p_, true);
  }

 private:
  double p_;
  bool channelwise_;
};

Triple same_padding(Triple kernel) { return {(kernel[0] - 1) / 2, (kernel[1] - 1) / 2, (kernel[2] - 1) / 2}; }
bool is_unit(Triple t) { return t[0] == 1 && t[1] == 1 && t[2] == 1; }

std::uint64_t saturating_product_of(std::uint64_t count, std::int64_t factor) {
  if (count > static_cast<std::uint64_t>(INT64_MAX)) return UINT64_MAX;
  return memory::saturating_product({static_cast<std::int64_t>(count), factor});
}

// StackedConvBlocks: child "convs", a Sequential of conv blocks; the first carries the stride.
class StackedConvBlocks : public Module {
 public:
  StackedConvBlocks(const NnunetArchitecture& a, int n, std::int64_t in_channels, std::int64_t out_channels,
                    Triple kernel, Triple initial_stride, bool nonlin_first, Generator& gen) {
    convs_ = register_module("convs", std::make_shared<Sequential>());
    for (int i = 0; i < n; ++i)
      convs_->push_back(std::make_shared<NnunetConvBlock>(a, i == 0 ? in_channels : out_channels, out_channels, kernel,
                                                          i == 0 ? initial_stride : Triple{1, 1, 1}, a.conv_bias, true,
                                                          true, nonlin_first, gen));
  }
  Tensor forward(const Tensor& x) override { return convs_->forward(x); }

 private:
  std::shared_ptr<Sequential> convs_;
};

// ResNet-D basic block: conv1 (with the stride) -> conv2 (no nonlin), plus a skip that average-pools
// when strided and projects with a 1x1 conv (no bias) when the width changes; nonlin2 after the sum.
class BasicBlockD : public Module {
 public:
  BasicBlockD(const NnunetArchitecture& a, std::int64_t in_channels, std::int64_t out_channels, Triple kernel,
              Triple stride, Generator& gen) {
    conv1_ = register_module("conv1", std::make_shared<NnunetConvBlock>(a, in_channels, out_channels, kernel, stride,
                                                                        a.conv_bias, true, true, false, gen));
    conv2_ = register_module(
        "conv2", std::make_shared<NnunetConvBlock>(a, out_channels, out_channels, kernel, Triple{1, 1, 1}, a.conv_bias,
                                                   false, false, false, gen));
    if (a.nonlin == NnunetNonlin::LeakyReLU)
      nonlin2_ = register_module("nonlin2", std::make_shared<LeakyReLU>(a.negative_slope));
    if (a.nonlin == NnunetNonlin::ReLU) nonlin2_ = register_module("nonlin2", std::make_shared<ReLU>());
    if (!is_unit(stride) || in_channels != out_channels) {
      skip_ = register_module("skip", std::make_shared<Sequential>());
      if (!is_unit(stride)) skip_->push_back(std::make_shared<AvgPool3d>(stride, stride));
      if (in_channels != out_channels)
        skip_->push_back(std::make_shared<NnunetConvBlock>(a, in_channels, out_channels, Triple{1, 1, 1},
                                                           Triple{1, 1, 1}, false, false, false, false, gen));
    }
  }
  Tensor forward(const Tensor& x) override {
    Tensor residual = skip_ ? skip_->forward(x) : x;
    Tensor out = conv2_->forward(conv1_->forward(x)) + residual;
    return nonlin2_ ? nonlin2_->forward(out) : out;
  }

 private:
  std::shared_ptr<NnunetConvBlock> conv1_, conv2_;
  std::shared_ptr<Module> nonlin2_;
  std::shared_ptr<Sequential> skip_;
};

// StackedResidualBlocks: child "blocks", a Sequential of BasicBlockD; the first carries the stride.
class StackedResidualBlocks : public Module {
 public:
  StackedResidualBlocks(const NnunetArchitecture& a, int n, std::int64_t in_channels, std::int64_t out_channels,
                        Triple kernel, Triple initial_stride, Generator& gen) {
    blocks_ = register_module("blocks", std::make_shared<Sequential>());
    for (int i = 0; i < n; ++i)
      blocks_->push_back(std::make_shared<BasicBlockD>(a, i == 0 ? in_channels : out_channels, out_channels, kernel,
                                                       i == 0 ? initial_stride : Triple{1, 1, 1}, gen));
  }
  Tensor forward(const Tensor& x) override { return blocks_->forward(x); }

 private:
  std::shared_ptr<Sequential> blocks_;
};

}  // namespace

NnunetConvBlock::NnunetConvBlock(const NnunetArchitecture& a, std::int64_t in_channels, std::int64_t out_channels,
                                 Triple kernel, Triple stride, bool conv_bias, bool with_dropout, bool with_nonlin,
                                 bool nonlin_first, Generator& gen) {
  std::vector<std::shared_ptr<Module>> runs;
  runs.push_back(register_module("conv", std::make_shared<Conv3d>(in_channels, out_channels, kernel, stride,
                                                                  same_padding(kernel), conv_bias, gen)));
  if (with_dropout && a.dropout != NnunetDropout::None)
    runs.push_back(register_module(
        "dropout", std::make_shared<DropoutLayer>(a.dropout_p, a.dropout == NnunetDropout::Channelwise)));
  const bool has_norm = a.norm != NnunetNorm::None;
  if (a.norm == NnunetNorm::Instance)
    runs.push_back(register_module("norm", std::make_shared<InstanceNorm3d>(out_channels, a.norm_affine, a.norm_eps)));
  if (a.norm == NnunetNorm::Batch)
    runs.push_back(register_module("norm", std::make_shared<BatchNorm3d>(out_channels, a.norm_momentum, a.norm_eps,
                                                                         a.norm_affine, /*track_num_batches=*/true)));
  const bool has_nonlin = with_nonlin && a.nonlin != NnunetNonlin::None;
  if (has_nonlin && a.nonlin == NnunetNonlin::LeakyReLU)
    runs.push_back(register_module("nonlin", std::make_shared<LeakyReLU>(a.negative_slope)));
  if (has_nonlin && a.nonlin == NnunetNonlin::ReLU) runs.push_back(register_module("nonlin", std::make_shared<ReLU>()));
  if (nonlin_first && has_norm && has_nonlin) std::swap(runs[runs.size() - 1], runs[runs.size() - 2]);
  all_modules_ = register_module("all_modules", std::make_shared<Sequential>(std::move(runs)));
}

Tensor NnunetConvBlock::forward(const Tensor& x) { return all_modules_->forward(x); }

NnunetNetwork::NnunetNetwork(const NnunetArchitecture& architecture, std::int64_t in_channels, std::int64_t num_classes,
                             Generator& gen)
    : architecture_(architecture), in_channels_(in_channels), num_classes_(num_classes) {
  const NnunetArchitecture& a = architecture_;
  const int S = a.n_stages;
  VG_CHECK(S >= 2 && a.features_per_stage.size() == static_cast<std::size_t>(S) &&
               a.kernel_sizes.size() == static_cast<std::size_t>(S) &&
               a.strides.size() == static_cast<std::size_t>(S) &&
               a.n_conv_per_stage.size() == static_cast<std::size_t>(S) &&
               a.n_conv_per_stage_decoder.size() == static_cast<std::size_t>(S - 1),
           "NnunetNetwork: the architecture's per-stage lists do not have n_stages (" << S << ") entries");
  VG_CHECK(in_channels > 0 && num_classes > 0, "NnunetNetwork: in_channels (" << in_channels << ") and num_classes ("
                                                                              << num_classes << ") must be positive");
  const bool residual = a.network_class == NnunetNetworkClass::ResidualEncoderUNet;
  const auto& f = a.features_per_stage;

  auto encoder = register_module("encoder", std::make_shared<Container>());
  std::int64_t channels = in_channels;
  if (residual) {
    const std::int64_t stem = a.stem_channels > 0 ? a.stem_channels : f[0];
    stem_ = encoder->add("stem", std::make_shared<StackedConvBlocks>(a, 1, channels, stem, a.kernel_sizes[0],
                                                                     Triple{1, 1, 1}, false, gen));
    channels = stem;
  }
  auto stages = encoder->add("stages", std::make_shared<Sequential>());
  for (int s = 0; s < S; ++s) {
    if (residual) {
      stages_.push_back(std::make_shared<StackedResidualBlocks>(a, a.n_conv_per_stage[s], channels, f[s],
                                                                a.kernel_sizes[s], a.strides[s], gen));
    } else {
      // PlainConvEncoder wraps each stage in a Sequential of its own (room for a pooling op).
      auto stage = std::make_shared<Sequential>();
      stage->push_back(std::make_shared<StackedConvBlocks>(a, a.n_conv_per_stage[s], channels, f[s], a.kernel_sizes[s],
                                                           a.strides[s], a.nonlin_first, gen));
      stages_.push_back(stage);
    }
    stages->push_back(stages_.back());
    channels = f[s];
  }

  // UNetDecoder keeps its encoder as a submodule: registered first, its tensors appear again under
  // "decoder.encoder.".
  auto decoder = register_module("decoder", std::make_shared<Container>());
  decoder->add("encoder", encoder);
  auto decoder_stages = decoder->add("stages", std::make_shared<Sequential>());
  auto transpconvs = decoder->add("transpconvs", std::make_shared<Sequential>());
  auto seg_layers = decoder->add("seg_layers", std::make_shared<Sequential>());
  const bool decoder_nonlin_first = !residual && a.nonlin_first;
  for (int s = 1; s < S; ++s) {
    const std::int64_t below = f[S - s], skip = f[S - s - 1];
    const Triple stride = a.strides[S - s];
    transpconvs_.push_back(std::make_shared<ConvTranspose3d>(below, skip, stride, stride, Triple{0, 0, 0},
                                                             Triple{0, 0, 0}, a.conv_bias, gen));
    decoder_stages_.push_back(std::make_shared<StackedConvBlocks>(a, a.n_conv_per_stage_decoder[s - 1], 2 * skip, skip,
                                                                  a.kernel_sizes[S - s - 1], Triple{1, 1, 1},
                                                                  decoder_nonlin_first, gen));
    seg_layers_.push_back(
        std::make_shared<Conv3d>(skip, num_classes, Triple{1, 1, 1}, Triple{1, 1, 1}, Triple{0, 0, 0}, true, gen));
    decoder_stages->push_back(decoder_stages_.back());
    transpconvs->push_back(transpconvs_.back());
    seg_layers->push_back(seg_layers_.back());
  }
}

void NnunetNetwork::check_input(const Shape& shape) const {
  const NnunetArchitecture& a = architecture_;
  const std::string expected = a.spatial_dims == 2 ? "(N, C, 1, H, W)" : "(N, C, D, H, W)";
  VG_INPUT_CHECK(shape.size() == 5, "nnU-Net network: input " << shape_str(shape) << " must be " << expected);
  VG_INPUT_CHECK(shape[1] == in_channels_, "nnU-Net network: input " << shape_str(shape) << " has " << shape[1]
                                                                     << " channels, the network takes "
                                                                     << in_channels_);
  VG_INPUT_CHECK(a.spatial_dims == 3 || shape[2] == 1,
                 "nnU-Net network: input " << shape_str(shape) << " must be (N, C, 1, H, W) for a 2-D network");
  std::ostringstream bad;
  static const char* axis_name[3] = {"D", "H", "W"};
  for (int axis = 0; axis < 3; ++axis) {
    std::int64_t q = 1;
    for (const Triple& s : a.strides) q *= s[axis];
    const std::int64_t size = shape[2 + axis];
    if (size > 0 && size % q == 0) continue;
    if (bad.tellp() > 0) bad << "; ";
    bad << axis_name[axis] << "=" << size << " is not a multiple of " << q << " (the product of the strides)";
  }
  VG_INPUT_CHECK(bad.tellp() == 0, "nnU-Net network: input " << shape_str(shape) << ": " << bad.str()
                                                             << "; crop or pad the patch to such sizes");
}

std::vector<Tensor> NnunetNetwork::run_decoder(const Tensor& x, bool all_heads) {
  check_input(x.shape());
  std::vector<Tensor> skips;  // stage s: (N, f_s, D_s, H_s, W_s)
  Tensor y = stem_ ? stem_->forward(x) : x;
  for (auto& stage : stages_) skips.push_back(y = stage->forward(y));
  std::vector<Tensor> heads;  // lowest resolution first until reversed
  const std::size_t n = decoder_stages_.size();
  for (std::size_t s = 0; s < n; ++s) {
    Tensor up = transpconvs_[s]->forward(y);                             // (N, f_skip, ...)
    y = decoder_stages_[s]->forward(concat({up, skips[n - 1 - s]}, 1));  // (N, 2 f_skip, ...) -> (N, f_skip, ...)
    if (all_heads || s + 1 == n) heads.push_back(seg_layers_[s]->forward(y));
  }
  std::reverse(heads.begin(), heads.end());
  return heads;
}

Tensor NnunetNetwork::forward(const Tensor& x) { return run_decoder(x, false)[0]; }

std::vector<Tensor> NnunetNetwork::forward_all(const Tensor& x) { return run_decoder(x, true); }

std::uint64_t nnunet_weight_count(const NnunetArchitecture& a, std::int64_t in_channels, std::int64_t num_classes) {
  using memory::saturating_add;
  using memory::saturating_product;
  const auto volume = [](Triple k) { return static_cast<std::int64_t>(saturating_product({k[0], k[1], k[2]})); };
  const auto& f = a.features_per_stage;
  const bool residual = a.network_class == NnunetNetworkClass::ResidualEncoderUNet;
  std::uint64_t n = 0;
  std::int64_t channels = in_channels;
  if (residual) {
    const std::int64_t stem = a.stem_channels > 0 ? a.stem_channels : f[0];
    n = saturating_product({channels, stem, volume(a.kernel_sizes[0])});
    channels = stem;
  }
  for (int s = 0; s < a.n_stages; ++s) {
    const std::int64_t k = volume(a.kernel_sizes[s]);
    const std::int64_t convs = residual ? 2 * a.n_conv_per_stage[s] : a.n_conv_per_stage[s];
    n = saturating_add(n, saturating_product({channels, f[s], k}));
    n = saturating_add(n, saturating_product({convs - 1, f[s], f[s], k}));
    if (residual && channels != f[s]) n = saturating_add(n, saturating_product({channels, f[s]}));
    channels = f[s];
  }
  for (int s = 1; s < a.n_stages; ++s) {
    const std::int64_t below = f[a.n_stages - s], skip = f[a.n_stages - s - 1];
    const std::int64_t k = volume(a.kernel_sizes[a.n_stages - s - 1]);
    n = saturating_add(n, saturating_product({below, skip, volume(a.strides[a.n_stages - s])}));
    n = saturating_add(n, saturating_product({2 * skip, skip, k}));
    n = saturating_add(n, saturating_product({a.n_conv_per_stage_decoder[s - 1] - 1, skip, skip, k}));
    n = saturating_add(n, saturating_product({skip, num_classes}));
  }
  return n;
}

std::shared_ptr<NnunetNetwork> build_nnunet_network(const NnunetArchitecture& architecture, std::int64_t in_channels,
                                                    std::int64_t num_classes, DType dtype, NnunetInit init,
                                                    Generator& gen) {
  // Built in float32, then converted: float64 needs both copies at once.
  const std::int64_t bytes_per_weight = dtype == DType::Float64 ? 12 : 4;
  memory::check_fits(
      saturating_product_of(nnunet_weight_count(architecture, in_channels, num_classes), bytes_per_weight),
      "the nnU-Net network of this architecture", "its convolution weights");
  std::optional<ZeroInitGuard> zero_init;
  if (init == NnunetInit::Zeros) zero_init.emplace();
  auto network = std::make_shared<NnunetNetwork>(architecture, in_channels, num_classes, gen);
  network->to(dtype);
  network->eval();
  return network;
}

// ---- strict loading -------------------------------------------------------------------------------

namespace {

bool is_floating_type(DType t) { return t == DType::Float32 || t == DType::Float64; }

// The file's shape as the network holds it: 2-D conv weights gain a depth of 1.
Shape lifted_shape(const Shape& file, const Shape& network, bool conv2d_weights) {
  if (!conv2d_weights || file.size() != 4 || network.size() != 5 || network[2] != 1) return file;
  return {file[0], file[1], 1, file[2], file[3]};
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  Tensor ca = a.cpu(), cb = b.cpu();
  return std::memcmp(ca.raw_data(), cb.raw_data(), ca.nbytes()) == 0;
}

}  // namespace

void load_state_dict_strict(Module& network, const NamedTensors& weights, const std::string& source,
                            bool conv2d_weights) {
  const NamedTensors expected = network.state_dict();
  std::unordered_map<std::string, const Tensor*> file;
  std::vector<std::string> problems;
  for (const auto& [name, t] : weights)
    if (!file.emplace(name, &t).second) problems.push_back("listed twice: " + name);
  std::set<std::string> known;
  std::vector<std::string> missing, mismatched;
  // Per network tensor, the names it goes by (aliases) that the file holds in a usable form.
  std::map<const TensorImpl*, std::pair<Tensor, std::vector<std::string>>> loadable;
  for (const auto& [name, t] : expected) {
    known.insert(name);
    auto it = file.find(name);
    if (it == file.end()) {
      missing.push_back(name + " " + shape_str(t.shape()));
      continue;
    }
    const Tensor& src = *it->second;
    if (lifted_shape(src.shape(), t.shape(), conv2d_weights) != t.shape()) {
      mismatched.push_back(name + ": the file has " + shape_str(src.shape()) + ", the network expects " +
                           shape_str(t.shape()));
    } else if (is_floating_type(src.dtype()) != is_floating_type(t.dtype())) {
      mismatched.push_back(name + ": the file has " + dtype_name(src.dtype()) + " values, the network expects " +
                           dtype_name(t.dtype()));
    } else {
      auto& [tensor, names] = loadable[t.impl()];
      tensor = t;
      names.push_back(name);
    }
  }
  std::vector<std::string> unexpected;
  for (const auto& [name, t] : weights)
    if (known.count(name) == 0) unexpected.push_back(name + " " + shape_str(t.shape()));
  std::vector<std::string> conflicting;
  for (const auto& [impl, entry] : loadable) {
    const std::vector<std::string>& names = entry.second;
    for (std::size_t i = 1; i < names.size(); ++i)
      if (!same_bytes(*file.at(names[0]), *file.at(names[i])))
        conflicting.push_back(names[0] + " and " + names[i] + " name one tensor of the network but differ in the file");
  }

  if (!missing.empty() || !unexpected.empty() || !mismatched.empty() || !conflicting.empty() || !problems.empty()) {
    std::ostringstream m;
    m << source << ": the weights do not fit the network (" << expected.size() << " tensors expected, "
      << weights.size() << " in the file):";
    const auto list = [&](const char* what, const std::vector<std::string>& items) {
      if (items.empty()) return;
      m << "\n  " << what << " (" << items.size() << "):";
      for (const std::string& item : items) m << "\n    " << item;
    };
    list("missing from the file", missing);
    list("unexpected in the file", unexpected);
    list("shape or type mismatch", mismatched);
    list("aliases that disagree", conflicting);
    list("malformed", problems);
    VG_INPUT_FAIL(m.str());
  }

  NoGradGuard no_grad;
  for (const auto& [impl, entry] : loadable) {
    const auto& [dst, names] = entry;
    const Tensor& src = *file.at(names[0]);
    Tensor value = reshape(src.detach(), dst.shape()).to(dst.dtype());
    dst.copy_(value);
  }
}

void load_nnunet_weights(NnunetNetwork& network, const NamedTensors& weights, const std::string& source) {
  load_state_dict_strict(network, weights, source, network.architecture().spatial_dims == 2);
}

}  // namespace voxgrad
