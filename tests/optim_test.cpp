// Optimizers against PyTorch's update formulas written out here step by step (float64, CPU), CPU vs
// CUDA parity (float32, GPU), their state as named tensors, gradient clipping, the poly schedule, and
// a sanity run: each optimizer minimises a quadratic.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "engine/ops.h"
#include "engine/optim.h"
#include "tests/test_support.h"

namespace voxgrad {
namespace {

using Values = std::vector<double>;

// The gradient fed at step k: depends on p (as a real loss would) and on k (so steps differ).
Values gradient_at(const Values& p, int k) {
  Values g(p.size());
  for (std::size_t i = 0; i < p.size(); ++i) g[i] = 0.7 * p[i] - 0.3 + 0.1 * k * (i % 2 == 0 ? 1 : -1);
  return g;
}

const Values kStart = {0.5, -1.25, 2.0, 0.0, -0.75, 3.5};

// PyTorch 1.13's _single_tensor_sgd, element by element.
Values reference_sgd(const SgdOptions& o, int steps) {
  Values p = kStart, buf(p.size());
  for (int k = 0; k < steps; ++k) {
    const Values g = gradient_at(p, k);
    for (std::size_t i = 0; i < p.size(); ++i) {
      double d_p = g[i] + o.weight_decay * p[i];
      if (o.momentum != 0) {
        buf[i] = k == 0 ? d_p : o.momentum * buf[i] + (1 - o.dampening) * d_p;
        d_p = o.nesterov ? d_p + o.momentum * buf[i] : buf[i];
      }
      p[i] -= o.lr * d_p;
    }
  }
  return p;
}

// PyTorch 1.13's _single_tensor_adam / _single_tensor_adamw, element by element.
Values reference_adam(const AdamOptions& o, bool decoupled, int steps) {
  Values p = kStart, m(p.size()), v(p.size());
  for (int k = 0; k < steps; ++k) {
    Values g = gradient_at(p, k);
    const double t = k + 1;
    for (std::size_t i = 0; i < p.size(); ++i) {
      if (decoupled) p[i] *= 1 - o.lr * o.weight_decay;
      else g[i] += o.weight_decay * p[i];
      m[i] = m[i] * o.beta1 + (1 - o.beta1) * g[i];
      v[i] = v[i] * o.beta2 + (1 - o.beta2) * g[i] * g[i];
      const double step_size = o.lr / (1 - std::pow(o.beta1, t));
      const double denom = std::sqrt(v[i]) / std::sqrt(1 - std::pow(o.beta2, t)) + o.eps;
      p[i] -= step_size * m[i] / denom;
    }
  }
  return p;
}

// Runs `steps` steps of the optimizer `make` builds over one parameter starting at kStart.
template <class T>
std::vector<T> run_voxgrad(const std::function<std::unique_ptr<Optimizer>(const Tensor&)>& make, int steps,
                           Device d = Device::cpu()) {
  Tensor p = from_vector<T>(std::vector<T>(kStart.begin(), kStart.end()), {2, 3}, d).requires_grad_();
  auto opt = make(p);
  for (int k = 0; k < steps; ++k) {
    const auto now = p.to_vector<T>();
    const Values g = gradient_at(Values(now.begin(), now.end()), k);
    p.set_grad(from_vector<T>(std::vector<T>(g.begin(), g.end()), {2, 3}, d));
    opt->step();
  }
  return p.to_vector<T>();
}

::testing::AssertionResult matches(const std::vector<double>& got, const Values& want) {
  return test::all_close(got, want, 1e-13, 1e-12);
}

struct SgdCase {
  const char* name;
  SgdOptions options;
};

TEST(Optim, SgdMatchesPyTorchFormulas) {
  const SgdCase cases[] = {
      {"plain", {.lr = 0.1}},
      {"weight decay", {.lr = 0.1, .weight_decay = 0.05}},
      {"momentum", {.lr = 0.05, .momentum = 0.9}},
      {"momentum dampening", {.lr = 0.05, .momentum = 0.9, .dampening = 0.3, .weight_decay = 0.01}},
      {"nesterov", {.lr = 0.01, .momentum = 0.99, .weight_decay = 3e-5, .nesterov = true}},
  };
  for (const auto& c : cases) {
    const auto got = run_voxgrad<double>(
        [&](const Tensor& p) { return std::make_unique<SGD>(std::vector<Tensor>{p}, c.options); }, 5);
    EXPECT_TRUE(matches(got, reference_sgd(c.options, 5))) << c.name;
  }
}

TEST(Optim, SgdFirstStepsByHand) {
  // One weight at 1, gradient 0.5 each step, lr 0.1, momentum 0.9, Nesterov:
  // step 1: buf = 0.5, d_p = 0.5 + 0.45 = 0.95, p = 0.905;
  // step 2: buf = 0.45 + 0.5 = 0.95, d_p = 0.5 + 0.855 = 1.355, p = 0.7695.
  Tensor p = from_vector<double>({1.0}, {1}).requires_grad_();
  SGD opt({p}, {.lr = 0.1, .momentum = 0.9, .nesterov = true});
  p.set_grad(from_vector<double>({0.5}, {1}));
  opt.step();
  EXPECT_NEAR(p.item(), 0.905, 1e-15);
  opt.step();
  EXPECT_NEAR(p.item(), 0.7695, 1e-15);
}

TEST(Optim, AdamAndAdamWMatchPyTorchFormulas) {
  const AdamOptions cases[] = {
      {.lr = 0.01},
      {.lr = 0.02, .beta1 = 0.8, .beta2 = 0.95, .eps = 1e-6, .weight_decay = 0.1},
  };
  for (const auto& o : cases) {
    const auto adam = run_voxgrad<double>(
        [&](const Tensor& p) { return std::make_unique<Adam>(std::vector<Tensor>{p}, o); }, 6);
    EXPECT_TRUE(matches(adam, reference_adam(o, false, 6))) << "Adam wd " << o.weight_decay;
    const auto adamw = run_voxgrad<double>(
        [&](const Tensor& p) { return std::make_unique<AdamW>(std::vector<Tensor>{p}, o); }, 6);
    EXPECT_TRUE(matches(adamw, reference_adam(o, true, 6))) << "AdamW wd " << o.weight_decay;
  }
  // Adam's first step moves each weight by lr against the sign of its gradient (m/sqrt(v) = sign(g)).
  Tensor p = from_vector<double>({1.0, 1.0}, {2}).requires_grad_();
  Adam opt({p}, {.lr = 0.1, .eps = 0});
  p.set_grad(from_vector<double>({0.5, -3.0}, {2}));
  opt.step();
  EXPECT_EQ(p.to_vector<double>(), (std::vector<double>{0.9, 1.1}));
}

TEST(Optim, FloatOnCpuFollowsTheDoubleResult) {
  const AdamOptions o{.lr = 0.01, .weight_decay = 0.01};
  const auto f = run_voxgrad<float>(
      [&](const Tensor& p) { return std::make_unique<AdamW>(std::vector<Tensor>{p}, o); }, 6);
  EXPECT_TRUE(test::all_close(Values(f.begin(), f.end()), reference_adam(o, true, 6), 1e-5, 1e-5));
}

TEST(Optim, CudaMatchesCpu) {
  VG_REQUIRE_CUDA();
  const SgdOptions sgd{.lr = 0.01, .momentum = 0.99, .weight_decay = 3e-5, .nesterov = true};
  const AdamOptions adam{.lr = 0.01, .weight_decay = 0.05};
  const std::vector<std::pair<const char*, std::function<std::unique_ptr<Optimizer>(const Tensor&)>>> makers = {
      {"SGD", [&](const Tensor& p) { return std::make_unique<SGD>(std::vector<Tensor>{p}, sgd); }},
      {"Adam", [&](const Tensor& p) { return std::make_unique<Adam>(std::vector<Tensor>{p}, adam); }},
      {"AdamW", [&](const Tensor& p) { return std::make_unique<AdamW>(std::vector<Tensor>{p}, adam); }},
  };
  for (const auto& [name, make] : makers) {
    const auto cpu = run_voxgrad<float>(make, 5, Device::cpu());
    const auto gpu = run_voxgrad<float>(make, 5, Device::cuda());
    EXPECT_TRUE(test::all_close(Values(gpu.begin(), gpu.end()), Values(cpu.begin(), cpu.end()), 1e-6, 1e-5)) << name;
  }
}

TEST(Optim, ParametersWithoutGradientAreLeftAlone) {
  Tensor a = from_vector<double>({1.0}, {1}).requires_grad_();
  Tensor b = from_vector<double>({2.0}, {1}).requires_grad_();
  SGD opt({{"a", a}, {"b", b}}, {.lr = 0.1, .momentum = 0.9});
  a.set_grad(from_vector<double>({1.0}, {1}));
  opt.step();
  EXPECT_DOUBLE_EQ(a.item(), 0.9);
  EXPECT_DOUBLE_EQ(b.item(), 2.0);
  opt.zero_grad();
  EXPECT_FALSE(a.grad().defined());
}

TEST(Optim, StateIsNamedAndRestores) {
  const AdamOptions o{.lr = 0.01};
  Tensor w = from_vector<double>({0.5, -1.0}, {2}).requires_grad_();
  Tensor b = from_vector<double>({0.25}, {1}).requires_grad_();
  Adam opt({{"conv.weight", w}, {"conv.bias", b}}, o);
  w.set_grad(from_vector<double>({0.1, 0.2}, {2}));
  opt.step();
  std::vector<std::string> names;
  for (const auto& [n, t] : opt.state()) names.push_back(n);
  // Only parameters that were updated carry state.
  EXPECT_EQ(names, (std::vector<std::string>{"state.conv.weight.exp_avg", "state.conv.weight.exp_avg_sq",
                                             "state.conv.weight.step"}));
  opt.step();
  const NamedTensors saved = opt.state();
  const auto after_two = w.to_vector<double>();

  // A fresh optimizer given that state continues exactly like the original.
  Tensor w2 = from_vector<double>(after_two, {2}).requires_grad_();
  Tensor b2 = from_vector<double>({0.25}, {1}).requires_grad_();
  Adam resumed({{"conv.weight", w2}, {"conv.bias", b2}}, o);
  resumed.load_state(saved);
  w2.set_grad(from_vector<double>({0.1, 0.2}, {2}));
  opt.step();
  resumed.step();
  EXPECT_EQ(w2.to_vector<double>(), w.to_vector<double>());

  NamedTensors wrong = saved;
  wrong[0].first = "state.other.exp_avg";
  EXPECT_THROW(resumed.load_state(wrong), Error);
  NamedTensors bad_shape = saved;
  bad_shape[0].second = zeros({3}, DType::Float64);
  EXPECT_THROW(resumed.load_state(bad_shape), Error);
}

TEST(Optim, SgdStateHoldsTheMomentumBuffer) {
  Tensor p = from_vector<double>({1.0}, {1}).requires_grad_();
  SGD opt({p}, {.lr = 0.1, .momentum = 0.9});
  p.set_grad(from_vector<double>({0.5}, {1}));
  opt.step();
  opt.step();
  const NamedTensors s = opt.state();
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].first, "state.0.momentum_buffer");
  EXPECT_DOUBLE_EQ(s[0].second.item(), 0.95);  // 0.9 * 0.5 + 0.5
  EXPECT_EQ(s[1].first, "state.0.step");
  EXPECT_DOUBLE_EQ(s[1].second.item(), 2.0);
}

TEST(Optim, OptionsAreValidated) {
  Tensor p = zeros({1}).requires_grad_();
  EXPECT_THROW(SGD({p}, {.lr = 0.1, .nesterov = true}), Error);  // Nesterov without momentum
  EXPECT_THROW(SGD({p}, {.lr = -1}), Error);
  EXPECT_THROW(Adam({p}, {.beta1 = 1.0}), Error);
  EXPECT_THROW(SGD({p, p}, {}), Error);  // one tensor twice
}

TEST(Optim, ClipGradNormScalesAllGradientsTogether) {
  Tensor a = zeros({2}, DType::Float64).requires_grad_();
  Tensor b = zeros({1}, DType::Float64).requires_grad_();
  Tensor c = zeros({1}, DType::Float64).requires_grad_();  // no gradient: skipped
  a.set_grad(from_vector<double>({3, 4}, {2}));
  b.set_grad(from_vector<double>({12}, {1}));
  EXPECT_DOUBLE_EQ(clip_grad_norm_({a, b, c}, 100.0), 13.0);
  EXPECT_EQ(a.grad().to_vector<double>(), (std::vector<double>{3, 4}));  // below max_norm: untouched
  EXPECT_DOUBLE_EQ(clip_grad_norm_({a, b, c}, 6.5), 13.0);
  const double coef = 6.5 / (13.0 + 1e-6);
  EXPECT_NEAR(a.grad().to_vector<double>()[0], 3 * coef, 1e-15);
  EXPECT_NEAR(a.grad().to_vector<double>()[1], 4 * coef, 1e-15);
  EXPECT_NEAR(b.grad().item(), 12 * coef, 1e-14);
  EXPECT_NEAR(clip_grad_norm_({a, b, c}, 100.0), 6.5, 1e-6);
}

TEST(Optim, PolyLrFollowsNnUNet) {
  EXPECT_DOUBLE_EQ(poly_lr(0.01, 0, 1000), 0.01);
  EXPECT_DOUBLE_EQ(poly_lr(0.01, 500, 1000), 0.01 * 0.5358867312681466);
  EXPECT_NEAR(poly_lr(0.01, 250, 1000), 0.007718895067235705, 1e-17);
  EXPECT_NEAR(poly_lr(0.01, 999, 1000), 1.995262314968881e-05, 1e-19);
  EXPECT_EQ(poly_lr(0.01, 1000, 1000), 0.0);
  EXPECT_DOUBLE_EQ(poly_lr(1.0, 1, 2, 1.0), 0.5);
  EXPECT_THROW(poly_lr(0.01, 1001, 1000), Error);
}

// Each optimizer, driven by autograd, brings sum((p - t)^2) near its minimum at t.
TEST(Optim, EveryOptimizerMinimisesAQuadratic) {
  const std::vector<double> target = {1.5, -2.0, 0.25, 3.0};
  const std::vector<std::pair<const char*, std::function<std::unique_ptr<Optimizer>(const Tensor&)>>> makers = {
      {"SGD", [](const Tensor& p) { return std::make_unique<SGD>(std::vector<Tensor>{p}, SgdOptions{.lr = 0.1}); }},
      {"SGD Nesterov",
       [](const Tensor& p) {
         return std::make_unique<SGD>(std::vector<Tensor>{p}, SgdOptions{.lr = 0.01, .momentum = 0.9, .nesterov = true});
       }},
      {"Adam", [](const Tensor& p) { return std::make_unique<Adam>(std::vector<Tensor>{p}, AdamOptions{.lr = 0.05}); }},
      {"AdamW",
       [](const Tensor& p) {
         return std::make_unique<AdamW>(std::vector<Tensor>{p}, AdamOptions{.lr = 0.05, .weight_decay = 1e-4});
       }},
  };
  for (const auto& [name, make] : makers) {
    Tensor p = zeros({4}).requires_grad_();
    Tensor t = from_vector<float>(std::vector<float>(target.begin(), target.end()), {4});
    auto opt = make(p);
    double first = 0, last = 0;
    for (int k = 0; k < 300; ++k) {
      opt->zero_grad();
      Tensor d = p - t;
      Tensor loss = sum(d * d);
      if (k == 0) first = loss.item();
      last = loss.item();
      loss.backward();
      opt->step();
    }
    EXPECT_LT(last, 1e-3 * first) << name << ": loss " << first << " -> " << last;
    const auto v = p.to_vector<float>();
    for (std::size_t i = 0; i < v.size(); ++i) EXPECT_NEAR(v[i], target[i], 0.05) << name;
  }
}

}  // namespace
}  // namespace voxgrad
