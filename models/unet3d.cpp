// UNet3d: states its configuration as PlainConvUNet arch_kwargs, builds that network and adopts its
// modules as its own children (so the names are PyTorch's), checks that inputs fit the
// downsamplings, and renames files written with the former hand-built U-Net's names.
#include "models/unet3d.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "engine/checkpoint.h"
#include "engine/ops.h"
#include "models/nnunet_networks.h"

namespace voxgrad {

std::int64_t unet3d_features(const UNet3dConfig& config, int level) {
  std::int64_t f = config.base_features;
  for (int i = 0; i < level && f < config.feature_cap; ++i) f *= 2;
  return std::min<std::int64_t>(f, config.feature_cap);
}

NnunetArchitecture unet3d_architecture(const UNet3dConfig& config) {
  NnunetArchitecture a;
  a.network_class = NnunetNetworkClass::PlainConvUNet;
  a.spatial_dims = 3;
  a.n_stages = config.levels;
  for (int i = 0; i < config.levels; ++i) {
    a.features_per_stage.push_back(unet3d_features(config, i));
    a.kernel_sizes.push_back({3, 3, 3});
    a.strides.push_back(i == 0 ? Triple{1, 1, 1} : Triple{2, 2, 2});
    a.n_conv_per_stage.push_back(2);
  }
  a.n_conv_per_stage_decoder.assign(config.levels - 1, 2);
  a.conv_bias = true;
  a.norm = config.norm == Norm::Batch ? NnunetNorm::Batch : NnunetNorm::Instance;
  a.norm_eps = 1e-5;
  a.norm_affine = true;
  a.norm_momentum = 0.1;
  a.nonlin = NnunetNonlin::LeakyReLU;
  a.negative_slope = 0.01;
  a.nonlin_first = false;
  a.dropout = NnunetDropout::None;
  return a;
}

UNet3d::UNet3d(const UNet3dConfig& config, Generator& gen) : config_(config) {
  VG_CHECK(config.in_channels > 0, "UNet3d: in_channels must be positive, got " << config.in_channels);
  VG_CHECK(config.classes > 0, "UNet3d: classes must be positive, got " << config.classes);
  VG_CHECK(config.base_features > 0, "UNet3d: base_features must be positive, got " << config.base_features);
  VG_CHECK(config.feature_cap >= config.base_features, "UNet3d: feature_cap (" << config.feature_cap
                                                                               << ") must be at least base_features ("
                                                                               << config.base_features << ")");
  VG_CHECK(config.levels >= 2 && config.levels <= 12,
           "UNet3d: levels must be in [2, 12] (resolutions, 4 = 3 downsamplings; nnU-Net's PlainConvUNet has at "
           "least one), got "
               << config.levels);
  network_ = std::make_shared<NnunetNetwork>(unet3d_architecture(config), config.in_channels, config.classes, gen);
  // Adopting the network's children (rather than the network) keeps PyTorch's names unprefixed.
  for (const auto& [name, child] : network_->children()) register_module(name, child);
}

void UNet3d::check_input(const Shape& shape) const {
  VG_CHECK(shape.size() == 5, "UNet3d: input " << shape_str(shape) << " must be (N, C, D, H, W)");
  VG_CHECK(shape[1] == config_.in_channels, "UNet3d: input " << shape_str(shape) << " has " << shape[1]
                                                             << " channels, the model takes " << config_.in_channels);
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
  VG_CHECK(bad.tellp() == 0,
           "UNet3d: input " << shape_str(shape) << ": " << bad.str() << "; crop or pad the patch to such sizes");
}

Tensor UNet3d::forward(const Tensor& x) {
  check_input(x.shape());
  return network_->forward(x);
}

std::vector<Tensor> UNet3d::forward_all(const Tensor& x) {
  check_input(x.shape());
  if (config_.deep_supervision) return network_->forward_all(x);
  return {network_->forward(x)};
}

std::int64_t UNet3d::parameter_count() const {
  std::int64_t n = 0;
  for (const Tensor& p : parameters()) n += p.numel();
  return n;
}

// ---- migration of the former names ---------------------------------------------------------------

namespace {

std::vector<std::string> split_dots(const std::string& name) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  for (;;) {
    const std::size_t dot = name.find('.', start);
    parts.push_back(name.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) return parts;
    start = dot + 1;
  }
}

std::string join_dots(const std::vector<std::string>& parts, std::size_t from, std::size_t to) {
  std::string out;
  for (std::size_t i = from; i < to; ++i) {
    if (!out.empty()) out.push_back('.');
    out.append(parts[i]);
  }
  return out;
}

bool is_index(const std::string& s) {
  return !s.empty() && s.size() <= 4 &&
         std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
}

// One former name inside a longer one: prefix (e.g. "model." or "optimizer.state."), the module
// ("encoder.3.conv1", "decoder.0.up", "heads.1") and the rest ("weight", "weight.exp_avg").
struct FormerName {
  std::string prefix;
  std::string kind;  // encoder, decoder, heads
  int index = 0;
  std::string layer;  // conv1, norm1, conv2, norm2, up; empty for heads
  std::string rest;
};

std::optional<FormerName> parse_former_name(const std::string& name) {
  static const std::set<std::string> block_layers = {"conv1", "norm1", "conv2", "norm2"};
  const std::vector<std::string> p = split_dots(name);
  for (std::size_t k = 0; k + 2 < p.size(); ++k) {
    if (!is_index(p[k + 1])) continue;
    FormerName f;
    f.prefix = k == 0 ? "" : join_dots(p, 0, k) + ".";
    f.kind = p[k];
    f.index = std::stoi(p[k + 1]);
    std::size_t rest_at = 0;
    if (p[k] == "heads") {
      rest_at = k + 2;
    } else if ((p[k] == "encoder" || p[k] == "decoder") && k + 3 < p.size() &&
               (block_layers.count(p[k + 2]) != 0 || (p[k] == "decoder" && p[k + 2] == "up"))) {
      f.layer = p[k + 2];
      rest_at = k + 3;
    } else {
      continue;
    }
    f.rest = join_dots(p, rest_at, p.size());
    return f;
  }
  return std::nullopt;
}

// "conv1" -> "convs.0.conv", "norm2" -> "convs.1.norm".
std::string conv_block_path(const std::string& layer) {
  const std::string k = layer.back() == '1' ? "0" : "1";
  return "convs." + k + (layer.rfind("conv", 0) == 0 ? ".conv" : ".norm");
}

std::string current_name(const FormerName& f, int levels) {
  const std::string stage = std::to_string(levels - 2 - f.index);  // decoder stages count from the bottom
  std::string module;
  if (f.kind == "encoder")
    module = "encoder.stages." + std::to_string(f.index) + ".0." + conv_block_path(f.layer);
  else if (f.kind == "heads")
    module = "decoder.seg_layers." + stage;
  else if (f.layer == "up")
    module = "decoder.transpconvs." + stage;
  else
    module = "decoder.stages." + stage + "." + conv_block_path(f.layer);
  return f.prefix + module + "." + f.rest;
}

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }
bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

// What the current state_dict holds under `prefix` beyond the renamed former tensors.
void complete_weights(const std::string& prefix, int levels, NamedTensors* tensors) {
  std::map<std::string, Tensor> by_name;
  for (const auto& [n, t] : *tensors) by_name.emplace(n, t);
  const auto has = [&](const std::string& n) { return by_name.count(n) != 0; };
  NamedTensors added;
  const auto add = [&](const std::string& n, const Tensor& t) {
    if (has(n)) return;
    by_name.emplace(n, t);
    added.emplace_back(n, t);
  };
  // BatchNorm's counter, which the former layers did not keep (PyTorch fills in 0 the same way).
  // Only the model's own names under this prefix: "state.encoder..." is not one for prefix "".
  const auto is_model_name = [&](const std::string& n) {
    return starts_with(n, prefix + "encoder.") || starts_with(n, prefix + "decoder.");
  };
  for (const auto& [n, t] : *tensors)
    if (is_model_name(n) && ends_with(n, ".norm.running_mean"))
      add(n.substr(0, n.size() - std::string("running_mean").size()) + "num_batches_tracked", zeros({}, DType::Int32));
  // The seg layers a model without deep supervision did not have: never used by such a model.
  std::optional<Tensor> any_seg;
  for (int d = 0; d + 1 < levels && !any_seg; ++d)
    if (auto it = by_name.find(prefix + "decoder.seg_layers." + std::to_string(d) + ".weight"); it != by_name.end())
      any_seg = it->second;
  for (int d = 0; any_seg && d + 1 < levels; ++d) {
    const std::string seg = prefix + "decoder.seg_layers." + std::to_string(d) + ".";
    const auto stage_conv = by_name.find(prefix + "decoder.stages." + std::to_string(d) + ".convs.1.conv.weight");
    if (has(seg + "weight") || stage_conv == by_name.end()) continue;
    const std::int64_t classes = any_seg->size(0), channels = stage_conv->second.size(0);
    add(seg + "weight", zeros({classes, channels, 1, 1, 1}, any_seg->dtype()));
    add(seg + "bias", zeros({classes}, any_seg->dtype()));
  }
  tensors->insert(tensors->end(), added.begin(), added.end());
  added.clear();
  // The aliases: "all_modules.{0,1}" for conv and norm, "decoder.encoder." for the encoder.
  for (const auto& [n, t] : *tensors) {
    if (!is_model_name(n)) continue;
    for (const char* what : {".conv.", ".norm."}) {
      const std::size_t at = n.find(what, prefix.size());
      if (at == std::string::npos || n.find(".convs.", prefix.size()) == std::string::npos) continue;
      add(n.substr(0, at) + (what[1] == 'c' ? ".all_modules.0." : ".all_modules.1.") + n.substr(at + 6), t);
    }
  }
  tensors->insert(tensors->end(), added.begin(), added.end());
  added.clear();
  for (const auto& [n, t] : *tensors)
    if (starts_with(n, prefix + "encoder.")) add(prefix + "decoder." + n.substr(prefix.size()), t);
  tensors->insert(tensors->end(), added.begin(), added.end());
}

}  // namespace

NamedTensors unet3d_migrate_names(const NamedTensors& tensors) {
  std::vector<std::optional<FormerName>> former;
  int levels = 0;
  for (const auto& [name, t] : tensors) {
    former.push_back(parse_former_name(name));
    if (!former.back()) continue;
    const FormerName& f = *former.back();
    levels = std::max(levels, f.index + (f.kind == "encoder" ? 1 : 2));
  }
  if (levels == 0) return tensors;
  NamedTensors out;
  std::set<std::string> weight_prefixes;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (!former[i]) {
      out.push_back(tensors[i]);
      continue;
    }
    out.emplace_back(current_name(*former[i], levels), tensors[i].second);
    // Optimizer state is keyed by named_parameters(): no aliases or additions there.
    if (former[i]->prefix.find("state.") == std::string::npos) weight_prefixes.insert(former[i]->prefix);
  }
  for (const std::string& prefix : weight_prefixes) complete_weights(prefix, levels, &out);
  return out;
}

void load_unet3d_weights(UNet3d& model, const NamedTensors& weights, const std::string& source) {
  try {
    load_state_dict(model, unet3d_migrate_names(weights), true);
  } catch (const UsageError&) {
    throw;
  } catch (const InputError& e) {
    VG_INPUT_FAIL(source << ": " << e.what());
  }
}

void load_unet3d_model(const std::string& path, UNet3d& model) {
  const SafeTensors file = load_safetensors(path);
  load_unet3d_weights(model, file.tensors, path);
}

}  // namespace voxgrad
