// The optimizers: per-parameter state bookkeeping, the host side of the bias corrections, and the
// one dispatch per update to the CPU twin or the CUDA kernel of kernels/optim.h.
#include "engine/optim.h"

#include <algorithm>
#include <cmath>

#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "engine/ops.h"
#include "engine/profiler.h"
#include "kernels/optim.h"

namespace voxgrad {

namespace {

void check_param(const std::string& name, const Tensor& p, const char* op) {
  VG_CHECK(p.defined(), op << ": parameter \"" << name << "\" is undefined");
  detail::check_floating(p, op);
  const Tensor& g = p.grad();
  if (!g.defined()) return;
  VG_CHECK(g.shape() == p.shape() && g.dtype() == p.dtype() && g.device() == p.device(),
           op << ": the gradient of \"" << name << "\" is " << g.str() << " but the parameter is " << p.str());
}

template <class T>
kernels::SgdStep<T> sgd_scalars(const SgdOptions& o, double lr, bool first_step) {
  return {static_cast<T>(lr),
          static_cast<T>(o.momentum),
          static_cast<T>(o.dampening),
          static_cast<T>(o.weight_decay),
          o.nesterov,
          first_step};
}

template <class T>
kernels::AdamStep<T> adam_scalars(const AdamOptions& o, double lr, bool decoupled, std::int64_t step) {
  const double t = static_cast<double>(step);
  const double bias_correction1 = 1.0 - std::pow(o.beta1, t);
  const double bias_correction2 = 1.0 - std::pow(o.beta2, t);
  return {static_cast<T>(lr),
          static_cast<T>(o.beta1),
          static_cast<T>(o.beta2),
          static_cast<T>(o.eps),
          static_cast<T>(o.weight_decay),
          decoupled,
          static_cast<T>(lr / bias_correction1),
          static_cast<T>(std::sqrt(bias_correction2))};
}

}  // namespace

// ---- Optimizer ------------------------------------------------------------------------------

Optimizer::Optimizer(NamedTensors params, double lr, std::vector<std::string> buffer_names)
    : params_(std::move(params)), lr_(lr), buffer_names_(std::move(buffer_names)) {
  VG_CHECK(lr >= 0, "optimizer: learning rate must be >= 0, got " << lr);
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const auto& [name, p] = params_[i];
    check_param(name, p, "optimizer");
    for (std::size_t j = 0; j < i; ++j) {
      VG_CHECK(params_[j].first != name, "optimizer: parameter name \"" << name << "\" appears twice");
      VG_CHECK(params_[j].second.impl() != p.impl(),
               "optimizer: parameter \"" << name << "\" is also \"" << params_[j].first << "\"");
    }
  }
  buffers_.resize(params_.size());
  steps_.assign(params_.size(), 0);
}

NamedTensors Optimizer::number(const std::vector<Tensor>& params) {
  NamedTensors out;
  for (std::size_t i = 0; i < params.size(); ++i) out.emplace_back(std::to_string(i), params[i]);
  return out;
}

std::vector<Tensor>& Optimizer::buffers(std::size_t i) {
  auto& b = buffers_[i];
  if (b.empty())
    for (std::size_t k = 0; k < buffer_names_.size(); ++k) b.push_back(zeros_like(params_[i].second));
  return b;
}

void Optimizer::zero_grad() {
  for (auto& [name, p] : params_) p.zero_grad();
}

void Optimizer::set_lr(double lr) {
  VG_CHECK(lr >= 0, "optimizer: learning rate must be >= 0, got " << lr);
  lr_ = lr;
}

NamedTensors Optimizer::state() const {
  NamedTensors out;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    if (steps_[i] == 0) continue;
    const std::string prefix = "state." + params_[i].first + ".";
    for (std::size_t k = 0; k < buffer_names_.size(); ++k)
      out.emplace_back(prefix + buffer_names_[k], buffers_[i][k].cpu());
    // float64 holds every step count exactly (PyTorch keeps a float32 scalar).
    out.emplace_back(prefix + "step", from_vector<double>({static_cast<double>(steps_[i])}, {}));
  }
  return out;
}

void Optimizer::load_state(const NamedTensors& state) {
  std::vector<std::vector<Tensor>> buffers(params_.size());
  std::vector<std::int64_t> steps(params_.size(), 0);
  std::vector<bool> used(state.size(), false);
  auto find = [&](const std::string& key) -> const Tensor* {
    for (std::size_t j = 0; j < state.size(); ++j)
      if (state[j].first == key) {
        used[j] = true;
        return &state[j].second;
      }
    return nullptr;
  };
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const auto& [name, p] = params_[i];
    const std::string prefix = "state." + name + ".";
    const Tensor* step = find(prefix + "step");
    if (step == nullptr) continue;  // this parameter had no state yet
    VG_INPUT_CHECK(step->numel() == 1, "optimizer state \"" << prefix << "step\" must hold one value, got shape "
                                                            << shape_str(step->shape()));
    // Checked as a double first: casting 1e300 or NaN to an integer is undefined behaviour.
    const double s = step->item();
    VG_INPUT_CHECK(s >= 1 && s <= 9007199254740992.0 && s == std::floor(s),
                   "optimizer state \"" << prefix << "step\" must be a whole number of steps >= 1, got " << s);
    steps[i] = static_cast<std::int64_t>(s);
    for (const auto& what : buffer_names_) {
      const Tensor* b = find(prefix + what);
      VG_INPUT_CHECK(b != nullptr, "optimizer state for \"" << name << "\" lacks \"" << prefix << what << "\"");
      VG_INPUT_CHECK(b->shape() == p.shape() && b->dtype() == p.dtype(),
                     "optimizer state \"" << prefix << what << "\" is " << dtype_name(b->dtype()) << " "
                                          << shape_str(b->shape()) << " but the parameter is " << dtype_name(p.dtype())
                                          << " " << shape_str(p.shape()));
      buffers[i].push_back(b->to(p.device()).clone());
    }
  }
  for (std::size_t j = 0; j < state.size(); ++j)
    VG_INPUT_CHECK(used[j], "optimizer state \"" << state[j].first << "\" matches no parameter of this " << name()
                                                 << " optimizer");
  buffers_ = std::move(buffers);
  steps_ = std::move(steps);
}

// ---- SGD ------------------------------------------------------------------------------------

SGD::SGD(NamedTensors params, const SgdOptions& options)
    : Optimizer(std::move(params), options.lr,
                options.momentum != 0 ? std::vector<std::string>{"momentum_buffer"} : std::vector<std::string>{}),
      options_(options) {
  VG_CHECK(options.momentum >= 0, "SGD: momentum must be >= 0, got " << options.momentum);
  VG_CHECK(options.weight_decay >= 0, "SGD: weight_decay must be >= 0, got " << options.weight_decay);
  VG_CHECK(!options.nesterov || (options.momentum > 0 && options.dampening == 0),
           "SGD: Nesterov momentum needs momentum > 0 and dampening 0");
}

void SGD::step() {
  NoGradGuard no_grad;
  for (std::size_t i = 0; i < params().size(); ++i) {
    const std::string& name = params()[i].first;
    const Tensor& p = params()[i].second;  // not a structured binding: lambdas capture it below
    const Tensor& g = p.grad();
    if (!g.defined()) continue;
    check_param(name, p, "SGD");
    const bool first_step = steps(i) == 0;
    Tensor buf = options_.momentum != 0 ? buffers(i)[0] : Tensor();
    const std::int64_t n = p.numel();
    // p and its momentum read and written, the gradient read; about 5 operations a parameter.
    VG_PROFILE_COST(
        "sgd_step", p.device(),
        elementwise_cost(n, 5.0, buf.defined() ? 5 : 3, static_cast<double>(p.nbytes()) / std::max<double>(n, 1)));
    detail::dispatch_floating(p, [&]<class T>(auto on) {
      VG_LAUNCH(on, sgd_step, p.data<T>(), g.data<T>(), detail::data_or_null<T>(buf), n,
                sgd_scalars<T>(options_, lr(), first_step));
    });
    ++steps(i);
  }
}

// ---- Adam, AdamW ----------------------------------------------------------------------------

Adam::Adam(NamedTensors params, const AdamOptions& options) : Adam(std::move(params), options, false) {}

Adam::Adam(NamedTensors params, const AdamOptions& options, bool decoupled)
    : Optimizer(std::move(params), options.lr, {"exp_avg", "exp_avg_sq"}), options_(options), decoupled_(decoupled) {
  VG_CHECK(options.beta1 >= 0 && options.beta1 < 1 && options.beta2 >= 0 && options.beta2 < 1,
           name() << ": betas must lie in [0, 1), got (" << options.beta1 << ", " << options.beta2 << ")");
  VG_CHECK(options.eps >= 0, name() << ": eps must be >= 0, got " << options.eps);
  VG_CHECK(options.weight_decay >= 0, name() << ": weight_decay must be >= 0, got " << options.weight_decay);
}

void Adam::step() {
  NoGradGuard no_grad;
  for (std::size_t i = 0; i < params().size(); ++i) {
    const std::string& name = params()[i].first;
    const Tensor& p = params()[i].second;  // not a structured binding: lambdas capture it below
    const Tensor& g = p.grad();
    if (!g.defined()) continue;
    check_param(name, p, this->name());
    std::vector<Tensor>& b = buffers(i);
    const std::int64_t step = ++steps(i);
    VG_PROFILE(decoupled_ ? "adamw_step" : "adam_step", p.device());
    const std::int64_t n = p.numel();
    detail::dispatch_floating(p, [&]<class T>(auto on) {
      VG_LAUNCH(on, adam_step, p.data<T>(), g.data<T>(), b[0].data<T>(), b[1].data<T>(), n,
                adam_scalars<T>(options_, lr(), decoupled_, step));
    });
  }
}

// ---- clipping and schedule ------------------------------------------------------------------

double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm) {
  VG_CHECK(max_norm >= 0, "clip_grad_norm_: max_norm must be >= 0, got " << max_norm);
  NoGradGuard no_grad;
  double total_sq = 0;
  for (const Tensor& p : params) {
    const Tensor& g = p.defined() ? p.grad() : Tensor();
    if (!g.defined() || g.numel() == 0) continue;
    total_sq += sum(mul(g, g)).item();
  }
  const double norm = std::sqrt(total_sq);
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) {
    for (const Tensor& p : params)
      if (p.defined() && p.grad().defined()) p.grad().copy_(mul(p.grad(), coef));
  }
  return norm;
}

double poly_lr(double initial, std::int64_t epoch, std::int64_t max_epochs, double exponent) {
  VG_CHECK(max_epochs > 0, "poly_lr: max_epochs must be positive, got " << max_epochs);
  VG_CHECK(epoch >= 0 && epoch <= max_epochs, "poly_lr: epoch " << epoch << " is outside [0, " << max_epochs << "]");
  return initial * std::pow(1.0 - static_cast<double>(epoch) / static_cast<double>(max_epochs), exponent);
}

}  // namespace voxgrad
