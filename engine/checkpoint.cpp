// The layouts on top of the safetensors format (engine/safetensors.cpp): a module's state_dict as
// a model file, and training checkpoints holding weights, optimizer state and progress in one file.
#include "engine/checkpoint.h"

#include <cmath>
#include <sstream>

#include "engine/autograd.h"
#include "engine/json.h"

namespace voxgrad {

namespace {

// Names listed in one error at most (a file may hold millions), each cut to 200 characters.
constexpr std::size_t kMaxListedNames = 20;
constexpr std::size_t kMaxNameChars = 200;

std::string listed_name(const std::string& name) {
  // JSON escaping keeps control characters of a hostile name off the terminal.
  std::string s = Json(name).dump(-1, ' ', false, Json::error_handler_t::replace);
  s = s.substr(1, s.size() - 2);
  if (s.size() > kMaxNameChars) {
    std::size_t cut = kMaxNameChars;
    while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
    s = s.substr(0, cut) + "...";
  }
  return s;
}

}  // namespace

void load_state_dict(Module& module, const NamedTensors& tensors, bool strict) {
  const NamedTensors expected = module.state_dict();
  std::vector<std::string> missing, unexpected, mismatched;
  std::vector<std::pair<Tensor, Tensor>> copies;  // (destination, source)
  std::map<std::string, const Tensor*> given;
  for (const auto& [name, t] : tensors) given[name] = &t;
  for (const auto& [name, dst] : expected) {
    const auto it = given.find(name);
    if (it == given.end()) {
      missing.push_back(name);
      continue;
    }
    const Tensor& src = *it->second;
    if (src.shape() != dst.shape() || src.dtype() != dst.dtype()) {
      mismatched.push_back(name + ": checkpoint " + dtype_name(src.dtype()) + " " + shape_str(src.shape()) +
                           ", model " + dtype_name(dst.dtype()) + " " + shape_str(dst.shape()));
    } else {
      copies.emplace_back(dst, src);
    }
    given.erase(it);
  }
  for (const auto& [name, t] : tensors)
    if (given.count(name) != 0) unexpected.push_back(name);

  if (!mismatched.empty() || (strict && (!missing.empty() || !unexpected.empty()))) {
    std::ostringstream msg;
    auto list = [&](const char* what, const std::vector<std::string>& names, bool one_per_line) {
      if (names.empty()) return;
      msg << "\n  " << what << " (" << names.size() << "):";
      const std::size_t shown = std::min(names.size(), kMaxListedNames);
      for (std::size_t i = 0; i < shown; ++i)
        msg << (one_per_line ? "\n    " : (i ? ", " : " ")) << listed_name(names[i]);
      if (shown < names.size()) msg << (one_per_line ? "\n    " : ", ") << "and " << names.size() - shown << " more";
    };
    msg << "the tensors do not match the model";
    if (strict) {
      list("missing keys", missing, false);
      list("unexpected keys", unexpected, false);
    }
    list("shape or dtype mismatch", mismatched, true);
    VG_INPUT_FAIL(msg.str());
  }
  NoGradGuard no_grad;
  for (const auto& [dst, src] : copies) dst.copy_(src);
}

void save_model(const std::string& path, const Module& module, const Metadata& metadata) {
  save_safetensors(path, module.state_dict(), metadata);
}

namespace {

// load_state_dict's refusal with the file named; other errors (which name it already) unchanged.
template <class F>
void naming_the_file(const std::string& path, F&& load) {
  try {
    load();
  } catch (const UsageError&) {
    throw;  // keeps its exit status
  } catch (const InputError& e) {
    VG_INPUT_FAIL(path << ": " << e.what());
  }
}

}  // namespace

void load_model(const std::string& path, Module& module, bool strict, const TensorRenamer& rename) {
  SafeTensors file = load_safetensors(path);
  if (rename) file.tensors = rename(file.tensors);
  naming_the_file(path, [&] { load_state_dict(module, file.tensors, strict); });
}

namespace {
const char* kTrainingFormat = "voxgrad-training-checkpoint";
const std::string kModelPrefix = "model.";
const std::string kOptimizerPrefix = "optimizer.";

const std::string& metadata_value(const std::string& path, const Metadata& m, const std::string& key) {
  const auto it = m.find(key);
  VG_INPUT_CHECK(it != m.end(), path << ": training checkpoint metadata lacks \"" << key << "\"");
  return it->second;
}

// A count that is never negative (step, epoch).
std::int64_t parse_count(const std::string& path, const Metadata& m, const std::string& key) {
  const std::string& text = metadata_value(path, m, key);
  try {
    std::size_t used = 0;
    const long long v = std::stoll(text, &used);
    if (used == text.size() && v >= 0) return v;
  } catch (const std::exception&) {
  }
  VG_INPUT_FAIL(path << ": metadata \"" << key << "\" is not a count (a whole number >= 0): \"" << listed_name(text)
                     << "\"");
}

std::uint64_t parse_uint(const std::string& path, const Metadata& m, const std::string& key) {
  const std::string& text = metadata_value(path, m, key);
  try {
    std::size_t used = 0;
    const unsigned long long v = std::stoull(text, &used);
    if (used == text.size() && text[0] != '-') return v;
  } catch (const std::exception&) {
  }
  VG_INPUT_FAIL(path << ": metadata \"" << key << "\" is not an unsigned integer: \"" << listed_name(text) << "\"");
}

double parse_lr(const std::string& path, const Metadata& m) {
  const std::string& text = metadata_value(path, m, "lr");
  try {
    std::size_t used = 0;
    const double v = std::stod(text, &used);
    if (used == text.size() && std::isfinite(v) && v >= 0) return v;
  } catch (const std::exception&) {
  }
  VG_INPUT_FAIL(path << ": metadata \"lr\" is not a finite learning rate >= 0: \"" << listed_name(text) << "\"");
}

// The file's tensors split into the model's weights and the optimizer's state.
void split_checkpoint(const std::string& path, const SafeTensors& file, NamedTensors* weights, NamedTensors* optimizer) {
  const auto format = file.metadata.find("format");
  VG_INPUT_CHECK(format != file.metadata.end() && format->second == kTrainingFormat,
                 path << ": not a voxgrad training checkpoint (metadata \"format\" is not \"" << kTrainingFormat
                      << "\")");
  for (const auto& [name, t] : file.tensors) {
    if (name.rfind(kModelPrefix, 0) == 0) weights->emplace_back(name.substr(kModelPrefix.size()), t);
    else if (name.rfind(kOptimizerPrefix, 0) == 0) optimizer->emplace_back(name.substr(kOptimizerPrefix.size()), t);
    else VG_INPUT_FAIL(path << ": tensor \"" << listed_name(name) << "\" is neither model.* nor optimizer.*");
  }
}

}  // namespace

void save_training_checkpoint(const std::string& path, const Module& module, const Optimizer& optimizer,
                              const TrainingState& state) {
  NamedTensors tensors;
  for (auto& [name, t] : module.state_dict()) tensors.emplace_back(kModelPrefix + name, t);
  for (auto& [name, t] : optimizer.state()) tensors.emplace_back(kOptimizerPrefix + name, t);
  std::ostringstream lr;
  lr.precision(17);  // round-trips a double exactly
  lr << optimizer.lr();
  const Metadata metadata = {{"format", kTrainingFormat},
                             {"optimizer", optimizer.name()},
                             {"lr", lr.str()},
                             {"step", std::to_string(state.step)},
                             {"epoch", std::to_string(state.epoch)},
                             {"rng_seed", std::to_string(state.rng_seed)},
                             {"rng_offset", std::to_string(state.rng_offset)},
                             {"config", state.config}};
  save_safetensors(path, tensors, metadata);
}

TrainingState load_training_checkpoint(const std::string& path, Module& module, Optimizer& optimizer,
                                       const TensorRenamer& rename) {
  SafeTensors file = load_safetensors(path);
  if (rename) file.tensors = rename(file.tensors);
  const Metadata& m = file.metadata;
  NamedTensors weights, optimizer_state;
  split_checkpoint(path, file, &weights, &optimizer_state);
  const auto kind = m.find("optimizer");
  VG_INPUT_CHECK(kind != m.end() && kind->second == optimizer.name(),
                 path << ": the checkpoint's optimizer is "
                      << (kind == m.end() ? std::string("not recorded") : listed_name(kind->second))
                      << " but this run uses " << optimizer.name());
  TrainingState state;
  state.step = parse_count(path, m, "step");
  state.epoch = parse_count(path, m, "epoch");
  state.rng_seed = parse_uint(path, m, "rng_seed");
  state.rng_offset = parse_uint(path, m, "rng_offset");
  const auto config = m.find("config");
  state.config = config == m.end() ? "{}" : config->second;
  const double lr = parse_lr(path, m);
  // All or nothing: if the optimizer state is refused after the weights went in, the module gets
  // its own weights back, so a failed resume never leaves a half-loaded model.
  NamedTensors previous;
  for (const auto& [name, t] : module.state_dict()) previous.emplace_back(name, t.clone());
  try {
    naming_the_file(path, [&] {
      load_state_dict(module, weights, true);
      optimizer.load_state(optimizer_state);
    });
  } catch (const Error&) {
    load_state_dict(module, previous, true);
    throw;
  }
  optimizer.set_lr(lr);
  return state;
}

void load_checkpoint_weights(const std::string& path, Module& module, bool strict, const TensorRenamer& rename) {
  SafeTensors file = load_safetensors(path);
  if (rename) file.tensors = rename(file.tensors);
  NamedTensors weights, optimizer_state;
  split_checkpoint(path, file, &weights, &optimizer_state);
  naming_the_file(path, [&] { load_state_dict(module, weights, strict); });
}

}  // namespace voxgrad
