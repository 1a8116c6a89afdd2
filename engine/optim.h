// Optimizers over named parameters: SGD (momentum, Nesterov, weight decay), Adam and AdamW with
// PyTorch's update rules, their state as named tensors (for training checkpoints), gradient-norm
// clipping and nnU-Net's poly learning-rate schedule. Updates run on the parameters' device.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nn.h"

namespace voxgrad {

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // Updates every parameter that has a gradient; the others are left as they are (and keep no state).
  virtual void step() = 0;
  void zero_grad();
  double lr() const { return lr_; }
  void set_lr(double lr);
  virtual const char* name() const = 0;  // "SGD", "Adam", "AdamW"

  const NamedTensors& params() const { return params_; }
  // The per-parameter state as "state.<param name>.<what>" (momentum_buffer, exp_avg, exp_avg_sq,
  // step), CPU copies; parameters that have not been updated yet have none.
  NamedTensors state() const;
  // Restores what state() returned (any device; moved to each parameter's). Names that match no
  // parameter state, and shapes that differ from the parameter's, are errors.
  void load_state(const NamedTensors& state);

 protected:
  // Unnamed parameter lists are named "0", "1", ... (PyTorch's parameter ids).
  Optimizer(NamedTensors params, double lr, std::vector<std::string> buffer_names);
  static NamedTensors number(const std::vector<Tensor>& params);

  // Buffers of parameter i, created as zeros at its first step.
  std::vector<Tensor>& buffers(std::size_t i);
  std::int64_t& steps(std::size_t i) { return steps_[i]; }

 private:
  NamedTensors params_;
  double lr_;
  std::vector<std::string> buffer_names_;  // what each parameter's state holds besides its step
  std::vector<std::vector<Tensor>> buffers_;
  std::vector<std::int64_t> steps_;  // 0: no state yet
};

struct SgdOptions {
  double lr = 0.01;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
};

class SGD : public Optimizer {
 public:
  SGD(NamedTensors params, const SgdOptions& options);
  SGD(const std::vector<Tensor>& params, const SgdOptions& options) : SGD(number(params), options) {}
  void step() override;
  const char* name() const override { return "SGD"; }
  const SgdOptions& options() const { return options_; }

 private:
  SgdOptions options_;
};

struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  // Adam: added to the gradient; AdamW: decoupled (PyTorch's default 1e-2)
};

class Adam : public Optimizer {
 public:
  Adam(NamedTensors params, const AdamOptions& options);
  Adam(const std::vector<Tensor>& params, const AdamOptions& options) : Adam(number(params), options) {}
  void step() override;
  const char* name() const override { return decoupled_ ? "AdamW" : "Adam"; }
  const AdamOptions& options() const { return options_; }

 protected:
  Adam(NamedTensors params, const AdamOptions& options, bool decoupled);

 private:
  AdamOptions options_;
  bool decoupled_;
};

// Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr wd before the Adam update.
class AdamW : public Adam {
 public:
  AdamW(NamedTensors params, const AdamOptions& options) : Adam(std::move(params), options, true) {}
  AdamW(const std::vector<Tensor>& params, const AdamOptions& options) : AdamW(number(params), options) {}
};

// Scales all gradients together so that their total L2 norm is at most max_norm (by
// max_norm / (norm + 1e-6), as PyTorch); returns the norm before clipping. Tensors without a
// gradient are skipped.
double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm);

// nnU-Net's schedule: initial * (1 - epoch / max_epochs)^exponent.
double poly_lr(double initial, std::int64_t epoch, std::int64_t max_epochs, double exponent = 0.9);

}  // namespace voxgrad
