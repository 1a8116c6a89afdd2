// The op-table harness every op suite runs its cases through (ggml's test-backend-ops shape): a suite
// states each case as one row (random inputs, the op, a plain host reference) and the harness checks
// the forward against the reference, float64 gradients against central finite differences, and CUDA
// against the CPU, forward and every backward output.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/tensor.h"
#include "tests/test_support.h"

namespace voxgrad::test {

using Values = std::vector<double>;

// One input of a case as the host holds it.
struct HostTensor {
  Values values;
  Shape shape;
  bool integer = false;  // int32 data (class labels): the same in every run's dtype, never differentiated
};
using HostInputs = std::vector<HostTensor>;

// |a - b| <= atol + rtol * |b|, b the reference.
struct Tolerance {
  double atol = 0, rtol = 0;
  // atol times the largest |b| of the output: the gradients of a mean over many voxels are all small.
  bool atol_scales_with_reference = false;
};

// The checks a row takes part in.
enum Check : unsigned { kForward = 1u, kGradcheck = 2u, kCudaParity = 4u, kAllChecks = 7u };

// Output 0 is the one differentiated; later outputs (per-class terms, running statistics) are
// compared in the forward and parity checks only.
using Outputs = std::vector<Tensor>;

struct OpCase {
  std::string name;
  std::function<HostInputs(std::uint32_t seed)> inputs;  // fresh random inputs for a seed
  std::function<Outputs(const std::vector<Tensor>&)> fn;
  // The expected values of the leading outputs, from a plain loop; needed by kForward.
  std::function<std::vector<Values>(const HostInputs&)> reference;
  unsigned checks = kAllChecks;
  std::vector<Shape> output_shapes;  // when given, the forward check also compares the leading outputs' shapes
  Tolerance forward_f64{1e-12, 1e-10};
  std::optional<Tolerance> forward_f32;  // when given, the forward also runs in float32 against the reference
  Tolerance gradcheck{1e-6, 1e-5};
  std::vector<Tolerance> parity_outputs{{1e-5, 1e-4}};  // per output; the last one repeats
  Tolerance parity_gradients{1e-4, 1e-4};
  bool nan_outputs = false;  // outputs may hold NaN (terms of classes not chosen): NaN matches NaN there
};

inline void PrintTo(const OpCase& c, std::ostream* os) { *os << c.name; }
inline std::string row_name(const ::testing::TestParamInfo<OpCase>& info) { return info.param.name; }

// The rows of `table` that take part in `check`.
inline std::vector<OpCase> rows(const std::vector<OpCase>& table, Check check) {
  std::vector<OpCase> out;
  std::copy_if(table.begin(), table.end(), std::back_inserter(out),
               [check](const OpCase& c) { return c.checks & check; });
  return out;
}

// ---- building rows -----------------------------------------------------------------------------

// Any: uniform in [-2, 2]; Positive: [0.5, 2] (log, divisors); AwayFromZero: |x| in [0.2, 2] (kinks at
// 0); Distinct: values 0.01 apart, shuffled (max pool: no ties within a finite-difference step).
enum class Domain { Any, Positive, AwayFromZero, Distinct };

// Random real inputs of the given shapes; domains per input, the last one repeating.
inline std::function<HostInputs(std::uint32_t)> random_inputs(std::vector<Shape> shapes,
                                                              std::vector<Domain> domains = {Domain::Any}) {
  return [shapes, domains](std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> any(-2.0, 2.0), positive(0.5, 2.0), magnitude(0.2, 2.0);
    std::bernoulli_distribution sign;
    HostInputs inputs;
    for (std::size_t i = 0; i < shapes.size(); ++i) {
      const Domain d = domains[std::min(i, domains.size() - 1)];
      Values v(shape_numel(shapes[i]));
      if (d == Domain::Distinct) {
        for (std::size_t j = 0; j < v.size(); ++j) v[j] = 0.01 * static_cast<double>(j) - 0.5;
        std::shuffle(v.begin(), v.end(), rng);
      } else {
        for (auto& x : v) {
          if (d == Domain::Positive) {
            x = positive(rng);
          } else if (d == Domain::AwayFromZero) {
            x = (sign(rng) ? 1 : -1) * magnitude(rng);
          } else {
            x = any(rng);
          }
        }
      }
      inputs.push_back({std::move(v), shapes[i]});
    }
    return inputs;
  };
}

// A one-output op and reference as a row's fn and reference.
inline std::function<Outputs(const std::vector<Tensor>&)> one_output(
    std::function<Tensor(const std::vector<Tensor>&)> f) {
  return [f](const std::vector<Tensor>& x) { return Outputs{f(x)}; };
}
inline std::function<std::vector<Values>(const HostInputs&)> one_reference(std::function<Values(const HostInputs&)> f) {
  return [f](const HostInputs& x) { return std::vector<Values>{f(x)}; };
}

// ---- tensors and values ------------------------------------------------------------------------

inline Tensor make_tensor(const HostTensor& h, DType t, Device d, bool requires_grad) {
  if (h.integer) return from_vector(std::vector<std::int32_t>(h.values.begin(), h.values.end()), h.shape, d);
  Tensor x = t == DType::Float64 ? from_vector(h.values, h.shape, d)
                                 : from_vector(std::vector<float>(h.values.begin(), h.values.end()), h.shape, d);
  if (requires_grad) x.requires_grad_();
  return x;
}

inline std::vector<Tensor> make_tensors(const HostInputs& inputs, DType t, Device d, bool requires_grad) {
  std::vector<Tensor> xs;
  for (const HostTensor& h : inputs) xs.push_back(make_tensor(h, t, d, requires_grad));
  return xs;
}

inline Values as_doubles(const Tensor& t) {
  const Tensor h = t.cpu();
  if (h.dtype() == DType::Float64) return h.to_vector<double>();
  if (h.dtype() == DType::Int32) {
    const auto v = h.to_vector<std::int32_t>();
    return Values(v.begin(), v.end());
  }
  const auto f = h.to_vector<float>();
  return Values(f.begin(), f.end());
}

// all_close with a Tolerance (and its scaling); NaN matches NaN where `nan_matches_nan`.
inline ::testing::AssertionResult within(const Values& a, const Values& b, const Tolerance& tol,
                                         bool nan_matches_nan = false) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "sizes differ: " << a.size() << " vs " << b.size();
  double atol = tol.atol;
  if (tol.atol_scales_with_reference) {
    double largest = 0;
    for (double v : b) largest = std::max(largest, std::fabs(v));
    atol *= largest;
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (nan_matches_nan && std::isnan(a[i]) && std::isnan(b[i])) continue;
    const double bound = atol + tol.rtol * std::fabs(b[i]);
    if (!(std::fabs(a[i] - b[i]) <= bound))
      return ::testing::AssertionFailure() << "element " << i << ": " << a[i] << " vs " << b[i] << " (|diff| "
                                           << std::fabs(a[i] - b[i]) << " > " << bound << ")";
  }
  return ::testing::AssertionSuccess();
}

// Weights w of <output, w>: random signs and sizes away from 0, so that a gradient blind to the
// output (softmax under a plain sum) or to its scale cannot pass.
inline Values random_weights(std::int64_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> magnitude(0.5, 1.5);
  std::bernoulli_distribution sign;
  Values w(n);
  for (auto& v : w) v = (sign(rng) ? 1 : -1) * magnitude(rng);
  return w;
}

// One run of a row: every output, then the gradient of <output 0, w> for each real input, all on
// the host. Every output and gradient must live on the device the inputs were on.
struct CaseRun {
  std::vector<Values> outputs;
  std::vector<Values> gradients;
};

inline CaseRun run_case(const OpCase& c, const HostInputs& inputs, Device d, DType t, std::uint32_t weight_seed) {
  std::vector<Tensor> xs = make_tensors(inputs, t, d, true);
  const Outputs ys = c.fn(xs);
  CaseRun run;
  for (const Tensor& y : ys) {
    EXPECT_EQ(y.device(), d) << "an output of " << c.name;
    run.outputs.push_back(as_doubles(y));
  }
  if (ys.empty()) return run;
  const Values w = random_weights(ys[0].numel(), weight_seed);
  ys[0].backward(make_tensor({w, ys[0].shape()}, t, d, false));
  for (std::size_t i = 0; i < xs.size(); ++i) {
    if (inputs[i].integer) continue;
    if (!xs[i].grad().defined()) {
      ADD_FAILURE() << "input " << i << " of " << c.name << " got no gradient";
      run.gradients.emplace_back();
      continue;
    }
    EXPECT_EQ(xs[i].grad().device(), d) << "gradient of input " << i;
    run.gradients.push_back(as_doubles(xs[i].grad()));
  }
  return run;
}

// ---- the three checks ---------------------------------------------------------------------------

// Seeds of each check's inputs and weights: every check sees fresh random values.
inline constexpr std::uint32_t kForwardSeed = 1, kGradcheckSeed = 2, kWeightSeed = 3, kParitySeed = 4;

// The forward in float64 (and float32 where the row asks) against the host reference.
inline void expect_forward_matches_reference(const OpCase& c) {
  ASSERT_TRUE(c.reference) << c.name << " has no reference";
  const HostInputs inputs = c.inputs(kForwardSeed);
  const std::vector<Values> expected = c.reference(inputs);
  std::vector<std::pair<DType, Tolerance>> runs{{DType::Float64, c.forward_f64}};
  if (c.forward_f32) runs.emplace_back(DType::Float32, *c.forward_f32);
  for (const auto& [dtype, tol] : runs) {
    const Outputs ys = c.fn(make_tensors(inputs, dtype, Device::cpu(), false));
    ASSERT_GE(ys.size(), expected.size());
    for (std::size_t k = 0; k < expected.size(); ++k) {
      if (k < c.output_shapes.size()) {
        EXPECT_EQ(ys[k].shape(), c.output_shapes[k]) << "output " << k;
      }
      EXPECT_TRUE(within(as_doubles(ys[k]), expected[k], tol, c.nan_outputs)) << dtype_name(dtype) << " output " << k;
    }
  }
}

// Analytic float64 gradients of <output 0, w> for random w against central differences, for every
// real input.
inline void expect_gradients_match_finite_differences(const OpCase& c) {
  const HostInputs inputs = c.inputs(kGradcheckSeed);
  const CaseRun analytic = run_case(c, inputs, Device::cpu(), DType::Float64, kWeightSeed);
  ASSERT_FALSE(analytic.outputs.empty());
  const Values w = random_weights(static_cast<std::int64_t>(analytic.outputs[0].size()), kWeightSeed);
  std::size_t real = 0;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i].integer) continue;
    HostInputs moved = inputs;
    const auto objective = [&](const Values& at) {
      NoGradGuard no_grad;
      moved[i].values = at;
      const Values y = as_doubles(c.fn(make_tensors(moved, DType::Float64, Device::cpu(), false))[0]);
      return std::inner_product(y.begin(), y.end(), w.begin(), 0.0);
    };
    EXPECT_TRUE(within(analytic.gradients[real++], central_differences(objective, inputs[i].values), c.gradcheck))
        << "input " << i;
  }
}

// The row on both devices from the same float32 inputs: every output and every input's gradient.
inline void expect_cuda_matches_cpu(const OpCase& c) {
  VG_REQUIRE_CUDA();
  const HostInputs inputs = c.inputs(kParitySeed);
  const CaseRun on_cpu = run_case(c, inputs, Device::cpu(), DType::Float32, kWeightSeed);
  const CaseRun on_gpu = run_case(c, inputs, Device::cuda(), DType::Float32, kWeightSeed);
  ASSERT_EQ(on_gpu.outputs.size(), on_cpu.outputs.size());
  for (std::size_t k = 0; k < on_cpu.outputs.size(); ++k)
    EXPECT_TRUE(within(on_gpu.outputs[k], on_cpu.outputs[k], c.parity_outputs[std::min(k, c.parity_outputs.size() - 1)],
                       c.nan_outputs))
        << "output " << k;
  ASSERT_EQ(on_gpu.gradients.size(), on_cpu.gradients.size());
  for (std::size_t i = 0; i < on_cpu.gradients.size(); ++i)
    EXPECT_TRUE(within(on_gpu.gradients[i], on_cpu.gradients[i], c.parity_gradients)) << "gradient of real input " << i;
}

}  // namespace voxgrad::test
