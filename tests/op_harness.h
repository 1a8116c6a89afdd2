// The op-table checks shared by the op suites (ops, norms and pools): float64 finite-difference
// gradient checks and CPU-vs-CUDA parity of any function of tensors, on host-given inputs.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include "engine/ops.h"
#include "tests/test_support.h"

namespace voxgrad::test {

using Values = std::vector<double>;
using OpFn = std::function<Tensor(const std::vector<Tensor>&)>;

template <class T>
Tensor make_input(const Values& v, const Shape& s, Device d, bool requires_grad) {
  Tensor t = from_vector(std::vector<T>(v.begin(), v.end()), s, d);
  if (requires_grad) t.requires_grad_();
  return t;
}

inline Values as_doubles(const Tensor& t) {
  const Tensor h = t.cpu();
  if (h.dtype() == DType::Float64) return h.to_vector<double>();
  const auto f = h.to_vector<float>();
  return Values(f.begin(), f.end());
}

// Analytic gradients of every input against central differences of <fn(x), w> with random
// weights w, so that a gradient blind to the output (e.g. softmax under a plain sum) cannot pass.
inline void expect_gradients_match_finite_differences(const OpFn& fn, std::vector<Values> inputs,
                                                      const std::vector<Shape>& shapes) {
  std::vector<Tensor> xs;
  for (std::size_t i = 0; i < inputs.size(); ++i) xs.push_back(make_input<double>(inputs[i], shapes[i], Device::cpu(), true));
  Tensor y = fn(xs);
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  Values w(y.numel());
  for (auto& v : w) v = dist(rng);
  y.backward(from_vector(w, y.shape()));

  const auto objective = [&](const std::vector<Values>& at) {
    NoGradGuard no_grad;
    std::vector<Tensor> ps;
    for (std::size_t i = 0; i < at.size(); ++i) ps.push_back(make_input<double>(at[i], shapes[i], Device::cpu(), false));
    const Values out = as_doubles(fn(ps));
    return std::inner_product(out.begin(), out.end(), w.begin(), 0.0);
  };
  const double h = 1e-6;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    ASSERT_TRUE(xs[i].grad().defined()) << "input " << i << " got no gradient";
    const Values analytic = as_doubles(xs[i].grad());
    Values numeric(inputs[i].size());
    for (std::size_t j = 0; j < inputs[i].size(); ++j) {
      const double keep = inputs[i][j];
      inputs[i][j] = keep + h;
      const double up = objective(inputs);
      inputs[i][j] = keep - h;
      const double down = objective(inputs);
      inputs[i][j] = keep;
      numeric[j] = (up - down) / (2 * h);
    }
    EXPECT_TRUE(all_close(analytic, numeric, 1e-6, 1e-5)) << "input " << i;
  }
}

// The same function on both devices from the same float32 inputs: the output and every input's
// gradient. Call after VG_REQUIRE_CUDA().
inline void expect_cuda_matches_cpu(const OpFn& fn, const std::vector<Values>& inputs,
                                    const std::vector<Shape>& shapes) {
  std::vector<Tensor> on_cpu, on_gpu;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    on_cpu.push_back(make_input<float>(inputs[i], shapes[i], Device::cpu(), true));
    on_gpu.push_back(make_input<float>(inputs[i], shapes[i], Device::cuda(), true));
  }
  Tensor y_cpu = fn(on_cpu), y_gpu = fn(on_gpu);
  ASSERT_EQ(y_gpu.device(), Device::cuda());
  EXPECT_TRUE(all_close(as_doubles(y_gpu), as_doubles(y_cpu), 1e-5, 1e-4)) << "forward";
  const Tensor w = rand(y_cpu.shape(), DType::Float32, Device::cpu());
  y_cpu.backward(w);
  y_gpu.backward(w.to(Device::cuda()));
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    ASSERT_TRUE(on_gpu[i].grad().defined());
    EXPECT_EQ(on_gpu[i].grad().device(), Device::cuda());
    EXPECT_TRUE(all_close(as_doubles(on_gpu[i].grad()), as_doubles(on_cpu[i].grad()), 1e-4, 1e-4))
        << "gradient of input " << i;
  }
}

}  // namespace voxgrad::test
