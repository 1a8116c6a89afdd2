// Module bookkeeping (registration, aliases, state_dict names, mode, device and dtype moves),
// Sequential, LeakyReLU, ReLU and the Kaiming-normal initialisation.
#include "engine/nn.h"

#include <cmath>
#include <unordered_set>

#include "engine/autograd.h"
#include "engine/ops.h"

namespace voxgrad {

namespace {

bool has_name(const NamedTensors& list, const std::string& name) {
  for (const auto& [n, t] : list)
    if (n == name) return true;
  return false;
}

// Points the tensor's shared impl at a copy of its data on `d`, so every handle follows.
void move_in_place(const Tensor& t, Device d) {
  if (!t.defined() || t.device() == d) return;
  Tensor moved = t.to(d);
  TensorImpl* impl = t.impl();
  impl->storage = moved.impl()->storage;
  impl->byte_offset = moved.impl()->byte_offset;
  if (impl->grad.defined()) impl->grad = impl->grad.to(d);
}

thread_local int zero_init_depth = 0;

bool is_floating(DType t) { return t == DType::Float32 || t == DType::Float64; }

// Points the tensor's shared impl at a converted copy of its data, so every handle follows.
void convert_in_place(const Tensor& t, DType type) {
  if (!t.defined() || t.dtype() == type || !is_floating(t.dtype())) return;
  Tensor converted = t.detach().to(type);
  TensorImpl* impl = t.impl();
  impl->storage = converted.impl()->storage;
  impl->byte_offset = converted.impl()->byte_offset;
  impl->dtype = type;
  impl->grad = Tensor();
}

}  // namespace

void Module::check_new_name(const std::string& name) const {
  VG_CHECK(!name.empty() && name.find('.') == std::string::npos,
           "module entry name \"" << name << "\" must be non-empty and contain no '.'");
  bool taken = has_name(parameters_, name) || has_name(buffers_, name);
  for (const auto& [n, m] : children_) taken = taken || n == name;
  VG_CHECK(!taken, "module entry \"" << name << "\" is registered twice");
}

Tensor Module::register_parameter(const std::string& name, Tensor t) {
  check_new_name(name);
  VG_CHECK(t.defined(), "register_parameter(\"" << name << "\"): the tensor is undefined");
  VG_CHECK(t.is_leaf(), "register_parameter(\"" << name << "\"): a parameter must be a leaf tensor (detach it)");
  t.requires_grad_(true);
  parameters_.emplace_back(name, t);
  return t;
}

Tensor Module::register_buffer(const std::string& name, Tensor t) {
  check_new_name(name);
  VG_CHECK(t.defined(), "register_buffer(\"" << name << "\"): the tensor is undefined");
  buffers_.emplace_back(name, t);
  return t;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> m) {
  check_new_name(name);
  VG_CHECK(m != nullptr, "register_module(\"" << name << "\"): the module is null");
  m->train(training_);
  children_.emplace_back(name, std::move(m));
}

void Module::collect(const std::string& prefix, bool parameters, bool buffers, NamedTensors* out) const {
  if (parameters)
    for (const auto& [n, t] : parameters_) out->emplace_back(prefix + n, t);
  if (buffers)
    for (const auto& [n, t] : buffers_) out->emplace_back(prefix + n, t);
  for (const auto& [n, child] : children_) child->collect(prefix + n + ".", parameters, buffers, out);
}

NamedTensors Module::collect_unique(bool parameters, bool buffers) const {
  NamedTensors all;
  collect("", parameters, buffers, &all);
  NamedTensors out;
  std::unordered_set<const TensorImpl*> seen;
  for (auto& [n, t] : all)
    if (seen.insert(t.impl()).second) out.emplace_back(std::move(n), t);
  return out;
}

NamedTensors Module::named_parameters() const { return collect_unique(true, false); }

NamedTensors Module::named_buffers() const { return collect_unique(false, true); }

NamedTensors Module::state_dict() const {
  NamedTensors out;
  collect("", true, true, &out);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [n, t] : named_parameters()) out.push_back(t);
  return out;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [n, child] : children_) child->train(on);
}

void Module::to(Device d) {
  for (auto& [n, t] : state_dict()) move_in_place(t, d);
}

void Module::to(DType t) {
  VG_CHECK(is_floating(t), "Module::to: parameters convert to a floating-point type, not " << dtype_name(t));
  for (auto& [n, tensor] : state_dict()) convert_in_place(tensor, t);
}

void Module::zero_grad() {
  for (auto& [n, t] : named_parameters()) t.zero_grad();
}

Sequential::Sequential(std::vector<std::shared_ptr<Module>> modules) {
  for (auto& m : modules) push_back(std::move(m));
}

Sequential& Sequential::push_back(std::shared_ptr<Module> m) {
  register_module(std::to_string(children().size()), std::move(m));
  return *this;
}

Tensor Sequential::forward(const Tensor& x) {
  Tensor y = x;
  for (const auto& [n, m] : children()) y = m->forward(y);
  return y;
}

Tensor LeakyReLU::forward(const Tensor& x) { return leaky_relu(x, negative_slope_); }

Tensor ReLU::forward(const Tensor& x) { return relu(x); }

void kaiming_normal_(Tensor& t, std::int64_t fan_in, double negative_slope, Generator& gen) {
  VG_CHECK(t.defined(), "kaiming_normal_: the tensor is undefined");
  VG_CHECK(fan_in > 0, "kaiming_normal_: fan_in must be positive, got " << fan_in);
  const double gain = std::sqrt(2.0 / (1.0 + negative_slope * negative_slope));
  const double std = gain / std::sqrt(static_cast<double>(fan_in));
  NoGradGuard no_grad;
  if (ZeroInitGuard::active()) {
    t.copy_(zeros(t.shape(), t.dtype(), t.device()));
    return;
  }
  t.copy_(randn(t.shape(), gen, t.dtype(), t.device(), 0.0, std));
}

ZeroInitGuard::ZeroInitGuard() { ++zero_init_depth; }
ZeroInitGuard::~ZeroInitGuard() { --zero_init_depth; }
bool ZeroInitGuard::active() { return zero_init_depth > 0; }

}  // namespace voxgrad
