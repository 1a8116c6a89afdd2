// The layer API: Module (named parameters, buffers and children, PyTorch state_dict names such as
// `encoder.0.conv1.weight`, train/eval, moves between devices and dtypes), Sequential, LeakyReLU,
// ReLU, and the Kaiming-normal initialisation nnU-Net uses. Layers and models build on Module.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tensor.h"

namespace voxgrad {

// Tensors with their names, in registration order (a state_dict, an optimizer's state).
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  // Parameters are shared handles: copying a module would alias its weights silently.
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  virtual Tensor forward(const Tensor& x) = 0;
  Tensor operator()(const Tensor& x) { return forward(x); }

  // Own entries first, then each child's under "<child>.", recursively (PyTorch's order). A tensor
  // reachable under several names (a child registered twice) is listed once, under its first name.
  NamedTensors named_parameters() const;
  NamedTensors named_buffers() const;
  // Parameters, then buffers, module by module: what a model file holds. Like PyTorch's, it lists
  // a tensor under every name it is reachable by (aliases share the tensor).
  NamedTensors state_dict() const;
  std::vector<Tensor> parameters() const;
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }

  // Mode for layers that differ between training and inference (batch norm, dropout); recursive.
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // Moves every parameter and buffer to `d` in place: every handle to them (the layer's members,
  // an optimizer built afterwards) sees the new device; requires_grad is kept, gradients move too.
  void to(Device d);
  // Converts every floating-point parameter and buffer to `t` (Float32 or Float64) in place, the
  // same way; integer buffers (BatchNorm's num_batches_tracked) keep their type. Gradients are dropped.
  void to(DType t);
  // Drops the accumulated gradient of every parameter.
  void zero_grad();

 protected:
  // Registration returns the stored handle; layers keep a copy as a member (it shares the data).
  // Parameters require a gradient; buffers (running statistics) do not.
  Tensor register_parameter(const std::string& name, Tensor t);
  Tensor register_buffer(const std::string& name, Tensor t);
  // A module already registered (here or in another module of the tree) may be registered again
  // under another name: PyTorch then lists its tensors under both names in state_dict() and once
  // in named_parameters() (nnU-Net's `conv` and `all_modules.0`).
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    add_child(name, m);
    return m;
  }

 private:
  void add_child(const std::string& name, std::shared_ptr<Module> m);
  void check_new_name(const std::string& name) const;
  void collect(const std::string& prefix, bool parameters, bool buffers, NamedTensors* out) const;
  NamedTensors collect_unique(bool parameters, bool buffers) const;

  NamedTensors parameters_;
  NamedTensors buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

// Runs its children in order; they are named "0", "1", ... as in PyTorch.
class Sequential : public Module {
 public:
  Sequential() = default;
  explicit Sequential(std::vector<std::shared_ptr<Module>> modules);
  Sequential& push_back(std::shared_ptr<Module> m);
  std::size_t size() const { return children().size(); }
  Module& operator[](std::size_t i) const { return *children().at(i).second; }
  Tensor forward(const Tensor& x) override;
};

class LeakyReLU : public Module {
 public:
  explicit LeakyReLU(double negative_slope = 0.01) : negative_slope_(negative_slope) {}
  double negative_slope() const { return negative_slope_; }
  Tensor forward(const Tensor& x) override;

 private:
  double negative_slope_;
};

class ReLU : public Module {
 public:
  Tensor forward(const Tensor& x) override;
};

// PyTorch's kaiming_normal_(t, a=negative_slope, mode="fan_in", nonlinearity="leaky_relu"), as
// nnU-Net initialises its convolutions: normal with std = sqrt(2 / (1 + a^2)) / sqrt(fan_in).
// For a Conv3d weight (out, in, k, k, k), fan_in = in * k^3. Writes `t` in place, any device.
void kaiming_normal_(Tensor& t, std::int64_t fan_in, double negative_slope = 0.01,
                     Generator& gen = default_generator());

// While one is alive on this thread, kaiming_normal_ writes zeros and draws nothing: for networks
// whose weights a checkpoint replaces right after building (drawing a 100M-parameter network's
// weights takes seconds on a CPU). Nests; the generator is left as it was.
class ZeroInitGuard {
 public:
  ZeroInitGuard();
  ~ZeroInitGuard();
  ZeroInitGuard(const ZeroInitGuard&) = delete;
  ZeroInitGuard& operator=(const ZeroInitGuard&) = delete;
  static bool active();
};

}  // namespace voxgrad
