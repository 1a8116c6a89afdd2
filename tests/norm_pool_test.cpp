// instance_norm3d, batch_norm3d, max_pool3d, avg_pool3d and dropout3d from one table of cases: the
// forward against plain host references, float64 finite-difference gradients for every input, and
// CUDA against the CPU (skipped without a GPU); then the properties each op promises, and its errors.
// kernels/norm.h (and kernels/random.h through it) first: their unqualified log/sqrt must not see
// the Tensor overloads of engine/ops.h.
#include "kernels/norm.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>

#include "engine/allocator.h"
#include "engine/norm_pool.h"
#include "engine/ops.h"
#include "tests/op_harness.h"
#include "tests/test_support.h"

namespace voxgrad {
namespace {

using test::as_doubles;
using test::error_of;
using test::Values;

// ---- host references, written as the definitions read, without the kernels' arithmetic ---------

// Value at (n, c, d, h, w) of a (N, C, D, H, W) tensor.
struct Vol {
  const Values& v;
  Shape s;
  double at(std::int64_t n, std::int64_t c, std::int64_t d, std::int64_t h, std::int64_t w) const {
    return v[(((n * s[1] + c) * s[2] + d) * s[3] + h) * s[4] + w];
  }
};

std::int64_t spatial(const Shape& s) { return s[2] * s[3] * s[4]; }

// y over (n, c) groups given each group's mean and variance; affine entry c.
Values normalize_ref(const Values& x, const Shape& s, const std::function<double(std::int64_t, std::int64_t)>& mean,
                     const std::function<double(std::int64_t, std::int64_t)>& var, const Values* w, const Values* b,
                     double eps) {
  Values y(x.size());
  const std::int64_t S = spatial(s);
  for (std::int64_t n = 0; n < s[0]; ++n)
    for (std::int64_t c = 0; c < s[1]; ++c)
      for (std::int64_t j = 0; j < S; ++j) {
        const std::int64_t i = (n * s[1] + c) * S + j;
        double v = (x[i] - mean(n, c)) / std::sqrt(var(n, c) + eps);
        if (w) v *= (*w)[c];
        if (b) v += (*b)[c];
        y[i] = v;
      }
  return y;
}

Values instance_norm_ref(const Values& x, const Shape& s, const Values* w, const Values* b, double eps) {
  const std::int64_t S = spatial(s);
  Values mean(s[0] * s[1], 0.0), var(s[0] * s[1], 0.0);  // per (n, c) group
  for (std::int64_t g = 0; g < s[0] * s[1]; ++g) {
    for (std::int64_t j = 0; j < S; ++j) mean[g] += x[g * S + j];
    mean[g] /= S;
    for (std::int64_t j = 0; j < S; ++j) var[g] += (x[g * S + j] - mean[g]) * (x[g * S + j] - mean[g]);
    var[g] /= S;
  }
  return normalize_ref(
      x, s, [&](std::int64_t n, std::int64_t c) { return mean[n * s[1] + c]; },
      [&](std::int64_t n, std::int64_t c) { return var[n * s[1] + c]; }, w, b, eps);
}

// Per-channel batch mean and biased variance over (N, D, H, W).
void batch_stats_ref(const Values& x, const Shape& s, Values* mean, Values* var) {
  const std::int64_t S = spatial(s), M = s[0] * S;
  mean->assign(s[1], 0.0);
  var->assign(s[1], 0.0);
  for (std::int64_t c = 0; c < s[1]; ++c) {
    for (std::int64_t n = 0; n < s[0]; ++n)
      for (std::int64_t j = 0; j < S; ++j) (*mean)[c] += x[(n * s[1] + c) * S + j];
    (*mean)[c] /= M;
    for (std::int64_t n = 0; n < s[0]; ++n)
      for (std::int64_t j = 0; j < S; ++j) {
        const double d = x[(n * s[1] + c) * S + j] - (*mean)[c];
        (*var)[c] += d * d;
      }
    (*var)[c] /= M;
  }
}

Values batch_norm_ref(const Values& x, const Shape& s, const Values& mean, const Values& var, const Values* w,
                      const Values* b, double eps) {
  return normalize_ref(
      x, s, [&](std::int64_t, std::int64_t c) { return mean[c]; }, [&](std::int64_t, std::int64_t c) { return var[c]; },
      w, b, eps);
}

Shape pool_out_shape(const Shape& s, Triple k, Triple st, Triple p) {
  return {s[0], s[1], (s[2] + 2 * p[0] - k[0]) / st[0] + 1, (s[3] + 2 * p[1] - k[1]) / st[1] + 1,
          (s[4] + 2 * p[2] - k[2]) / st[2] + 1};
}

// Every window visited in (d, h, w) order; `visit` gets the value, or nullopt-as-flag for padding.
Values pool_ref(const Values& x, const Shape& s, Triple k, Triple st, Triple p,
                const std::function<double(const std::vector<double>& inside, std::int64_t window_cells,
                                           std::int64_t padded_cells)>& reduce) {
  const Shape o = pool_out_shape(s, k, st, p);
  const Vol vol{x, s};
  Values y;
  for (std::int64_t n = 0; n < o[0]; ++n)
    for (std::int64_t c = 0; c < o[1]; ++c)
      for (std::int64_t od = 0; od < o[2]; ++od)
        for (std::int64_t oh = 0; oh < o[3]; ++oh)
          for (std::int64_t ow = 0; ow < o[4]; ++ow) {
            std::vector<double> inside;
            std::int64_t padded_cells = 0;  // cells of the window inside input + padding
            for (std::int64_t a = 0; a < k[0]; ++a)
              for (std::int64_t b = 0; b < k[1]; ++b)
                for (std::int64_t e = 0; e < k[2]; ++e) {
                  const std::int64_t d = od * st[0] - p[0] + a, h = oh * st[1] - p[1] + b, w = ow * st[2] - p[2] + e;
                  if (d < s[2] + p[0] && h < s[3] + p[1] && w < s[4] + p[2]) ++padded_cells;
                  if (d >= 0 && d < s[2] && h >= 0 && h < s[3] && w >= 0 && w < s[4])
                    inside.push_back(vol.at(n, c, d, h, w));
                }
            y.push_back(reduce(inside, k[0] * k[1] * k[2], padded_cells));
          }
  return y;
}

Values max_pool_ref(const Values& x, const Shape& s, Triple k, Triple st, Triple p) {
  return pool_ref(x, s, k, st, p, [](const std::vector<double>& v, std::int64_t, std::int64_t) {
    return *std::max_element(v.begin(), v.end());
  });
}

Values avg_pool_ref(const Values& x, const Shape& s, Triple k, Triple st, Triple p, bool count_include_pad) {
  return pool_ref(x, s, k, st, p, [count_include_pad](const std::vector<double>& v, std::int64_t, std::int64_t padded) {
    const double sum = std::accumulate(v.begin(), v.end(), 0.0);
    return sum / static_cast<double>(count_include_pad ? padded : static_cast<std::int64_t>(v.size()));
  });
}

// ---- the table ---------------------------------------------------------------------------------

using test::Domain;
using test::HostInputs;
using test::OpCase;

// Every row runs its forward in float32 as well.
OpCase row(std::string name, std::function<HostInputs(std::uint32_t)> inputs,
           std::function<test::Outputs(const std::vector<Tensor>&)> fn,
           std::function<std::vector<Values>(const HostInputs&)> reference) {
  OpCase c;
  c.name = std::move(name);
  c.inputs = std::move(inputs);
  c.fn = std::move(fn);
  c.reference = std::move(reference);
  c.forward_f32 = test::Tolerance{1e-5, 1e-5};
  return c;
}

// Large volumes reach the split reductions: no finite differences, looser float32 parity.
constexpr unsigned kNoGradcheck = test::kForward | test::kCudaParity;
OpCase large(OpCase c) {
  c.checks = kNoGradcheck;
  c.parity_gradients = {1e-4, 1e-3};
  return c;
}

// Fixed running statistics (C) for eval-mode cases, on the device and dtype of x.
Tensor running_tensor(const Tensor& x, double base, double step) {
  Values v(x.shape()[1]);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = base + step * static_cast<double>(i);
  return from_vector(v, {x.shape()[1]}).to(x.dtype()).to(x.device());
}

OpCase instance_case(const std::string& name, Shape s, bool affine, double eps = 1e-5) {
  const Shape ch{s[1]};
  if (!affine)
    return row(name, test::random_inputs({s}),
               test::one_output([eps](const std::vector<Tensor>& t) { return instance_norm3d(t[0], {}, {}, eps); }),
               test::one_reference(
                   [s, eps](const HostInputs& v) { return instance_norm_ref(v[0].values, s, nullptr, nullptr, eps); }));
  return row(name, test::random_inputs({s, ch, ch}),
             test::one_output([eps](const std::vector<Tensor>& t) { return instance_norm3d(t[0], t[1], t[2], eps); }),
             test::one_reference([s, eps](const HostInputs& v) {
               return instance_norm_ref(v[0].values, s, &v[1].values, &v[2].values, eps);
             }));
}

// Outputs y, running_mean and running_var, the statistics of channel c starting from
// `mean0 + step * c` and `var0 + 5 * step * c`: training updates them with momentum 0.1 (unbiased
// variance), eval normalises with them and keeps them.
OpCase batch_case(const std::string& name, std::function<HostInputs(std::uint32_t)> inputs, Shape s, bool training,
                  double mean0 = 0.1, double var0 = 0.5, double step = 0.05) {
  const double momentum = 0.1, eps = 1e-5;
  return row(
      name, std::move(inputs),
      [=](const std::vector<Tensor>& t) {
        Tensor rm = running_tensor(t[0], mean0, step), rv = running_tensor(t[0], var0, 5 * step);
        Tensor y = batch_norm3d(t[0], t[1], t[2], rm, rv, training, momentum, eps);
        return test::Outputs{y, rm, rv};
      },
      [=](const HostInputs& v) {
        Values mean, var, rm, rv;
        for (std::int64_t c = 0; c < s[1]; ++c) {
          rm.push_back(mean0 + step * static_cast<double>(c));
          rv.push_back(var0 + 5 * step * static_cast<double>(c));
        }
        if (!training)
          return std::vector<Values>{batch_norm_ref(v[0].values, s, rm, rv, &v[1].values, &v[2].values, eps), rm, rv};
        batch_stats_ref(v[0].values, s, &mean, &var);
        const double count = static_cast<double>(shape_numel(s) / s[1]);
        for (std::int64_t c = 0; c < s[1]; ++c) {
          rm[c] = (1 - momentum) * rm[c] + momentum * mean[c];
          rv[c] = (1 - momentum) * rv[c] + momentum * var[c] * count / (count - 1);
        }
        return std::vector<Values>{batch_norm_ref(v[0].values, s, mean, var, &v[1].values, &v[2].values, eps), rm, rv};
      });
}

OpCase batch_case(const std::string& name, Shape s, bool training) {
  return batch_case(name, test::random_inputs({s, {s[1]}, {s[1]}}), s, training);
}

OpCase max_pool_case(const std::string& name, Shape s, Triple k, Triple st, Triple p,
                     std::function<HostInputs(std::uint32_t)> inputs = {}) {
  return row(
      name, inputs ? std::move(inputs) : test::random_inputs({s}, {Domain::Distinct}),
      test::one_output([k, st, p](const std::vector<Tensor>& t) { return max_pool3d(t[0], k, st, p); }),
      test::one_reference([s, k, st, p](const HostInputs& v) { return max_pool_ref(v[0].values, s, k, st, p); }));
}

OpCase avg_pool_case(const std::string& name, Shape s, Triple k, Triple st, Triple p, bool cip) {
  return row(name, test::random_inputs({s}), test::one_output([k, st, p, cip](const std::vector<Tensor>& t) {
               return avg_pool3d(t[0], k, st, p, cip);
             }),
             test::one_reference(
                 [s, k, st, p, cip](const HostInputs& v) { return avg_pool_ref(v[0].values, s, k, st, p, cip); }));
}

// dropout3d with a fresh Generator(seed) per call, so every call draws the same mask: channel i
// (of N * C) is kept when Philox's uniform i at (seed, offset 0) is <= 1 - p.
OpCase dropout_case(const std::string& name, std::function<HostInputs(std::uint32_t)> inputs, Shape s, double p,
                    std::uint64_t seed) {
  return row(name, std::move(inputs), test::one_output([p, seed](const std::vector<Tensor>& t) {
               Generator gen(seed);
               return dropout3d(t[0], p, true, gen);
             }),
             test::one_reference([s, p, seed](const HostInputs& v) {
               const std::int64_t S = spatial(s);
               Values y(v[0].values.size());
               for (std::size_t i = 0; i < y.size(); ++i) {
                 const bool keep = kernels::philox_uniform(seed, 0, static_cast<std::int64_t>(i) / S) <= 1 - p;
                 y[i] = keep ? v[0].values[i] / (1 - p) : 0.0;
               }
               return y;
             }));
}

// Few distinct values (0, 1, 2): ties in every window, and both devices must pick the same element.
std::function<HostInputs(std::uint32_t)> tied_inputs(Shape s) {
  return [s](std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> level(0, 2);
    Values v(shape_numel(s));
    for (auto& x : v) x = level(rng);
    return HostInputs{{v, s}};
  };
}

// x ~ N(30, 4): statistics accumulated naively would lose the variance under the offset.
std::function<HostInputs(std::uint32_t)> offset_inputs(Shape s) {
  return [s](std::uint32_t seed) {
    HostInputs in = test::random_inputs({s, {s[1]}, {s[1]}})(seed);
    std::mt19937 rng(seed);
    std::normal_distribution<double> normal(30.0, 4.0);
    for (auto& x : in[0].values) x = normal(rng);
    return in;
  };
}

std::vector<OpCase> op_cases() {
  const Shape big_batch{2, 3, 24, 24, 48}, many_channels{8, 32, 2, 2, 2};
  OpCase ties =
      max_pool_case("MaxPoolTies", {2, 3, 6, 6, 6}, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, tied_inputs({2, 3, 6, 6, 6}));
  ties.checks = kNoGradcheck;  // ties: the maximum is not differentiable there
  ties.parity_outputs = {{0, 0}};
  ties.parity_gradients = {1e-6, 1e-6};
  OpCase same_mask = dropout_case(
      "Dropout3dManyChannels",
      [many_channels](std::uint32_t) {
        return HostInputs{{Values(shape_numel(many_channels), 1.0), many_channels}};
      },
      many_channels, 0.25, 3);
  same_mask.checks = kNoGradcheck;
  same_mask.parity_outputs = {{0, 0}};
  OpCase big_batch_norm =
      large(batch_case("BatchNormTrainLargeVolume", offset_inputs(big_batch), big_batch, true, 0.0, 1.0, 0.0));
  big_batch_norm.parity_outputs = {{1e-5, 1e-4}, {1e-5, 1e-5}};
  return {
      instance_case("InstanceNormPlain", {2, 3, 3, 2, 4}, false),
      instance_case("InstanceNormAffine", {2, 3, 2, 3, 3}, true),
      instance_case("InstanceNormAffineOneChannelBigEps", {1, 1, 3, 3, 3}, true, 0.1),
      batch_case("BatchNormTrain", {3, 2, 2, 3, 2}, true),
      batch_case("BatchNormTrainBatchOfOne", {1, 3, 2, 2, 3}, true),
      batch_case("BatchNormEval", {2, 3, 2, 2, 3}, false),
      max_pool_case("MaxPool2", {2, 2, 4, 4, 4}, {2, 2, 2}, {2, 2, 2}, {0, 0, 0}),
      max_pool_case("MaxPoolOverlapOddSizes", {1, 2, 5, 4, 6}, {3, 2, 3}, {1, 2, 2}, {0, 0, 0}),
      max_pool_case("MaxPoolPadded", {1, 2, 5, 5, 3}, {3, 3, 2}, {2, 2, 1}, {1, 1, 1}),
      avg_pool_case("AvgPool2", {2, 2, 4, 4, 4}, {2, 2, 2}, {2, 2, 2}, {0, 0, 0}, true),
      avg_pool_case("AvgPoolOverlapOddSizes", {1, 2, 5, 4, 6}, {3, 2, 3}, {1, 2, 2}, {0, 0, 0}, true),
      avg_pool_case("AvgPoolPaddedIncludePad", {1, 2, 5, 5, 3}, {3, 3, 2}, {2, 2, 1}, {1, 1, 1}, true),
      avg_pool_case("AvgPoolPaddedExcludePad", {1, 2, 5, 5, 3}, {3, 3, 2}, {2, 2, 1}, {1, 1, 1}, false),
      dropout_case("Dropout3dTrain", test::random_inputs({{2, 5, 2, 3, 2}}), {2, 5, 2, 3, 2}, 0.4, 11),
      // Channels of 32768 values: the statistics and backward sums run as several merged splits.
      large(instance_case("InstanceNormLargeVolume", {2, 4, 32, 32, 32}, true)),
      // Channels of N * D*H*W = 55296 values: split reductions whose ranges cross the batch rows.
      big_batch_norm,
      ties,
      same_mask,
  };
}

class NormPoolForward : public ::testing::TestWithParam<OpCase> {};
class NormPoolGradcheck : public ::testing::TestWithParam<OpCase> {};
class NormPoolCudaParity : public ::testing::TestWithParam<OpCase> {};

TEST_P(NormPoolForward, MatchesReference) { test::expect_forward_matches_reference(GetParam()); }
TEST_P(NormPoolGradcheck, Float64MatchesFiniteDifferences) {
  test::expect_gradients_match_finite_differences(GetParam());
}
TEST_P(NormPoolCudaParity, CudaMatchesCpu) { test::expect_cuda_matches_cpu(GetParam()); }

INSTANTIATE_TEST_SUITE_P(NormPool, NormPoolForward, ::testing::ValuesIn(test::rows(op_cases(), test::kForward)),
                         test::row_name);
INSTANTIATE_TEST_SUITE_P(NormPool, NormPoolGradcheck, ::testing::ValuesIn(test::rows(op_cases(), test::kGradcheck)),
                         test::row_name);
INSTANTIATE_TEST_SUITE_P(NormPool, NormPoolCudaParity, ::testing::ValuesIn(test::rows(op_cases(), test::kCudaParity)),
                         test::row_name);

// ---- instance norm ---------------------------------------------------------------------------------

TEST(InstanceNorm, EachChannelHasMeanZeroAndVarianceOne) {
  // Offsets and scales far from 0 and 1 per (n, c), so a norm over the wrong axes cannot pass.
  const Shape s{2, 3, 4, 5, 6};
  Values x(shape_numel(s));
  std::mt19937 rng(5);
  std::normal_distribution<double> dist;
  const std::int64_t S = spatial(s);
  for (std::size_t i = 0; i < x.size(); ++i) {
    const auto g = static_cast<double>(i / S);
    x[i] = 100.0 * g - 50.0 + (1.0 + 3.0 * g) * dist(rng);
  }
  for (const DType t : {DType::Float64, DType::Float32}) {
    const Values y = as_doubles(instance_norm3d(from_vector(x, s).to(t), {}, {}, 0.0));
    for (std::int64_t g = 0; g < s[0] * s[1]; ++g) {
      double m = 0, v = 0;
      for (std::int64_t j = 0; j < S; ++j) m += y[g * S + j];
      m /= S;
      for (std::int64_t j = 0; j < S; ++j) v += (y[g * S + j] - m) * (y[g * S + j] - m);
      v /= S;
      const double tol = t == DType::Float64 ? 1e-12 : 1e-5;
      EXPECT_NEAR(m, 0.0, tol) << "group " << g;
      EXPECT_NEAR(v, 1.0, 10 * tol) << "group " << g;
    }
  }
}

// A float32 channel with a large offset: statistics accumulated naively in float (E[x²] - E[x]²)
// would lose the variance entirely.
TEST(InstanceNorm, Float32StatisticsAreStableUnderLargeOffsets) {
  const Shape s{1, 1, 8, 8, 8};
  Values x(shape_numel(s));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = 10000.0 + ((i % 2) ? 0.5 : -0.5);
  const Values y = as_doubles(instance_norm3d(from_vector(x, s).to(DType::Float32)));
  for (std::size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(std::fabs(y[i]), 1.0, 1e-3) << i;
}

// ---- batch norm --------------------------------------------------------------------------------

TEST(BatchNorm, RunningStatisticsFollowPyTorchOverTwoStepsAndEvalUsesThem) {
  const Shape s{2, 2, 1, 2, 3};  // 12 values per channel
  const double m = 0.3, eps = 1e-5;
  std::mt19937 rng(9);
  std::uniform_real_distribution<double> dist(-3.0, 3.0);
  Values rm{0.0, 0.0}, rv{1.0, 1.0};  // PyTorch's initial buffers
  Tensor running_mean = from_vector(rm, {2});
  Tensor running_var = from_vector(rv, {2});
  for (int step = 0; step < 2; ++step) {
    Values x(shape_numel(s));
    for (auto& v : x) v = dist(rng) + 2.0 * step;
    Values mean, var;
    batch_stats_ref(x, s, &mean, &var);
    const double count = 12;
    for (int c = 0; c < 2; ++c) {
      rm[c] = (1 - m) * rm[c] + m * mean[c];
      rv[c] = (1 - m) * rv[c] + m * var[c] * count / (count - 1);  // unbiased
    }
    const Values y = as_doubles(batch_norm3d(from_vector(x, s), {}, {}, running_mean, running_var, true, m, eps));
    EXPECT_TRUE(test::all_close(y, batch_norm_ref(x, s, mean, var, nullptr, nullptr, eps), 1e-12, 1e-10));
    EXPECT_TRUE(test::all_close(running_mean.to_vector<double>(), rm, 1e-14, 1e-12)) << "step " << step;
    EXPECT_TRUE(test::all_close(running_var.to_vector<double>(), rv, 1e-14, 1e-12)) << "step " << step;
  }
  // Eval: the running statistics, untouched by the call.
  Values x(shape_numel(s));
  for (auto& v : x) v = dist(rng);
  const Values w{1.5, -0.5}, b{0.25, 2.0};
  const Values mean_before = running_mean.to_vector<double>(), var_before = running_var.to_vector<double>();
  const Values y = as_doubles(batch_norm3d(from_vector(x, s), from_vector(w, {2}), from_vector(b, {2}), running_mean,
                                           running_var, false, m, eps));
  EXPECT_TRUE(test::all_close(y, batch_norm_ref(x, s, rm, rv, &w, &b, eps), 1e-12, 1e-10));
  EXPECT_EQ(running_mean.to_vector<double>(), mean_before);
  EXPECT_EQ(running_var.to_vector<double>(), var_before);
}

TEST(BatchNorm, TrainingWithoutRunningStatisticsWorksEvalNeedsThem) {
  const Tensor x = rand({2, 3, 2, 2, 2}, DType::Float64);
  EXPECT_NO_THROW(batch_norm3d(x, {}, {}, {}, {}, true));
  EXPECT_THROW(batch_norm3d(x, {}, {}, {}, {}, false), Error);
}

TEST(BatchNormCuda, RunningStatisticsMatchCpu) {
  VG_REQUIRE_CUDA();
  const Tensor x = randn({3, 4, 3, 5, 2});
  Tensor rm_cpu = zeros({4}), rv_cpu = ones({4});
  Tensor rm_gpu = zeros({4}, DType::Float32, Device::cuda()), rv_gpu = ones({4}, DType::Float32, Device::cuda());
  const Tensor x_gpu = x.to(Device::cuda());
  for (int step = 0; step < 2; ++step) {
    batch_norm3d(x, {}, {}, rm_cpu, rv_cpu, true);
    batch_norm3d(x_gpu, {}, {}, rm_gpu, rv_gpu, true);
  }
  EXPECT_TRUE(test::all_close(as_doubles(rm_gpu), as_doubles(rm_cpu), 1e-6, 1e-5));
  EXPECT_TRUE(test::all_close(as_doubles(rv_gpu), as_doubles(rv_cpu), 1e-6, 1e-5));
  const Values y_cpu = as_doubles(batch_norm3d(x, {}, {}, rm_cpu, rv_cpu, false));
  const Values y_gpu = as_doubles(batch_norm3d(x_gpu, {}, {}, rm_gpu, rv_gpu, false));
  EXPECT_TRUE(test::all_close(y_gpu, y_cpu, 1e-5, 1e-4));
}

// ---- channels without elements ------------------------------------------------------------------

// The kernels' statistics and backward sums of a geometry whose channels have no element (the ops
// refuse empty axes; the kernels still define the result), written over outputs that held 7:
// mean, var, invstd, sum_dy, sum_dy_xhat.
std::vector<Values> empty_channel_outputs(Device d, const kernels::NormGeometry& g, double eps) {
  std::vector<Tensor> out;
  for (int i = 0; i < 5; ++i) out.push_back(full({g.channels}, 7.0, DType::Float32, d));
  std::vector<float*> p;
  for (Tensor& t : out) p.push_back(t.data<float>());
  const float* none = nullptr;  // no element is read
  if (d.is_cpu()) {
    kernels::cpu::norm_stats(none, p[0], p[1], p[2], g, eps);
    kernels::cpu::norm_backward_reduce(none, none, p[0], p[2], p[3], p[4], g);
  } else {
#if VOXGRAD_HAS_CUDA
    ScratchArena scratch(d);
    kernels::cuda::norm_stats(none, p[0], p[1], p[2], g, eps, scratch, stream_for(d));
    kernels::cuda::norm_backward_reduce(none, none, p[0], p[2], p[3], p[4], g, scratch, stream_for(d));
#endif
  }
  std::vector<Values> values;
  for (const Tensor& t : out) values.push_back(as_doubles(t));
  return values;
}

// Mean 0, variance 0, invstd 1/sqrt(eps) and backward sums 0 on every device, from one definition.
void expect_empty_channels_defined(Device d) {
  const double eps = 1e-5;
  const double invstd = static_cast<float>(1.0 / std::sqrt(eps));
  EXPECT_EQ(kernels::norm_invstd(0.0, eps), 1.0 / std::sqrt(eps));
  for (const kernels::NormGeometry& g : {kernels::NormGeometry{2, 3, 0, 3}, kernels::NormGeometry{0, 3, 5, 3}}) {
    SCOPED_TRACE("outer " + std::to_string(g.outer) + ", inner " + std::to_string(g.inner));
    const std::vector<Values> v = empty_channel_outputs(d, g, eps);
    EXPECT_EQ(v[0], Values(3, 0.0));
    EXPECT_EQ(v[1], Values(3, 0.0));
    EXPECT_EQ(v[2], Values(3, invstd));
    EXPECT_EQ(v[3], Values(3, 0.0));
    EXPECT_EQ(v[4], Values(3, 0.0));
  }
}

TEST(NormKernels, ChannelsWithoutElementsGetDefinedStatistics) { expect_empty_channels_defined(Device::cpu()); }

TEST(NormKernels, CudaChannelsWithoutElementsGetDefinedStatistics) {
  VG_REQUIRE_CUDA();
  expect_empty_channels_defined(Device::cuda());
}

// ---- pools -------------------------------------------------------------------------------------

// Equal values in a window: the output and the whole gradient go to the first in (d, h, w) order.
TEST(MaxPool, TiesRouteTheGradientToTheFirstMaximum) {
  for (const DType t : {DType::Float64, DType::Float32}) {
    Tensor x = full({1, 1, 2, 2, 2}, 3.0, t);
    x.requires_grad_();
    Tensor y = max_pool3d(x, {2, 2, 2});
    ASSERT_EQ(y.shape(), (Shape{1, 1, 1, 1, 1}));
    EXPECT_EQ(y.item(), 3.0);
    y.backward(full({1, 1, 1, 1, 1}, 5.0, t));
    const Values g = as_doubles(x.grad());
    EXPECT_EQ(g, (Values{5, 0, 0, 0, 0, 0, 0, 0}));
  }
  // Overlapping windows (stride 1) sharing one maximum: its gradient is the sum of theirs.
  Tensor x = from_vector(Values{0, 1, 9, 2, 0}, {1, 1, 1, 1, 5});
  x.requires_grad_();
  Tensor y = max_pool3d(x, {1, 1, 3}, {1, 1, 1});
  EXPECT_EQ(y.to_vector<double>(), (Values{9, 9, 9}));
  y.backward(from_vector(Values{1, 2, 4}, {1, 1, 1, 1, 3}));
  EXPECT_EQ(x.grad().to_vector<double>(), (Values{0, 0, 7, 0, 0}));
}

TEST(Pool, OutputSizesFollowPyTorchFloorMode) {
  const Tensor x = zeros({2, 3, 7, 6, 5});
  EXPECT_EQ(max_pool3d(x, {2, 2, 2}).shape(), (Shape{2, 3, 3, 3, 2}));
  EXPECT_EQ(max_pool3d(x, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}).shape(), (Shape{2, 3, 4, 3, 3}));
  EXPECT_EQ(avg_pool3d(x, {3, 2, 1}, {1, 2, 3}).shape(), (Shape{2, 3, 5, 3, 2}));
}

TEST(Pool, AvgPoolDivisorsWithAndWithoutPadding) {
  // A 1-D row of ones, kernel 3, padding 1: the edge windows hold 2 real cells of 3.
  const Tensor x = ones({1, 1, 1, 1, 4}, DType::Float64);
  EXPECT_TRUE(test::all_close(avg_pool3d(x, {1, 1, 3}, {1, 1, 1}, {0, 0, 1}, true).to_vector<double>(),
                              {2.0 / 3, 1, 1, 2.0 / 3}, 1e-15, 0));
  EXPECT_TRUE(test::all_close(avg_pool3d(x, {1, 1, 3}, {1, 1, 1}, {0, 0, 1}, false).to_vector<double>(),
                              {1, 1, 1, 1}, 1e-15, 0));
}

// ---- dropout -----------------------------------------------------------------------------------

TEST(Dropout3d, EvalAndZeroRateAreIdentity) {
  Generator gen(1);
  const Tensor x = rand({2, 3, 2, 2, 2}, gen, DType::Float64);
  EXPECT_EQ(dropout3d(x, 0.5, false, gen).to_vector<double>(), x.to_vector<double>());
  EXPECT_EQ(dropout3d(x, 0.0, true, gen).to_vector<double>(), x.to_vector<double>());
}

TEST(Dropout3d, ZeroesWholeChannelsAtTheRateAndScalesTheRest) {
  const double p = 0.3;
  const Shape s{50, 80, 2, 2, 2};  // 4000 channels
  Generator gen(7);
  const Tensor x = rand(s, gen, DType::Float64, Device::cpu(), 1.0, 2.0);  // never 0
  const Values xv = x.to_vector<double>();
  const Values y = dropout3d(x, p, true, gen).to_vector<double>();
  const std::int64_t S = spatial(s), channels = s[0] * s[1];
  std::int64_t dropped = 0;
  for (std::int64_t c = 0; c < channels; ++c) {
    const bool zero = y[c * S] == 0.0;
    dropped += zero;
    for (std::int64_t j = 0; j < S; ++j) {
      const std::int64_t i = c * S + j;
      if (zero) ASSERT_EQ(y[i], 0.0) << "channel " << c << " partly dropped";
      else ASSERT_NEAR(y[i], xv[i] / (1 - p), 1e-15) << "channel " << c;
    }
  }
  // Binomial(4000, 0.3): mean 1200, standard deviation ~29; allow 5 of them.
  EXPECT_NEAR(static_cast<double>(dropped), p * channels, 5 * std::sqrt(channels * p * (1 - p)));
  // p = 1 drops everything.
  const Values all = dropout3d(x, 1.0, true, gen).to_vector<double>();
  EXPECT_TRUE(std::all_of(all.begin(), all.end(), [](double v) { return v == 0.0; }));
}

TEST(Dropout3d, SameGeneratorStateGivesTheSameMaskAndAdvances) {
  const Tensor x = ones({4, 16, 1, 2, 2}, DType::Float64);
  Generator a(42), b(42);
  const Values first = dropout3d(x, 0.5, true, a).to_vector<double>();
  EXPECT_EQ(dropout3d(x, 0.5, true, b).to_vector<double>(), first);
  EXPECT_EQ(a.offset(), b.offset());
  EXPECT_GT(a.offset(), 0u);
  EXPECT_NE(dropout3d(x, 0.5, true, a).to_vector<double>(), first) << "the generator did not advance";
  // float32 and float64 draw the same mask.
  Generator c(42);
  EXPECT_EQ(as_doubles(dropout3d(x.to(DType::Float32), 0.5, true, c)), first);
}

// ---- errors users hit ---------------------------------------------------------------------------

TEST(NormPoolErrors, BadShapesAndParametersAreRefusedWithAMessage) {
  const Tensor x = zeros({2, 3, 4, 4, 4});
  EXPECT_NE(error_of([&] { instance_norm3d(zeros({2, 3, 4, 4})); }).find("5-D"), std::string::npos);
  EXPECT_NE(error_of([&] { instance_norm3d(x, zeros({4})); }).find("weight must have shape (3)"), std::string::npos);
  EXPECT_NE(error_of([&] { instance_norm3d(x, {}, zeros({3}, DType::Float64)); }).find("dtypes"), std::string::npos);
  EXPECT_THROW(instance_norm3d(zeros({2, 3, 4, 4, 4}, DType::Int32)), Error);
  EXPECT_NE(error_of([&] { batch_norm3d(zeros({1, 3, 1, 1, 1}), {}, {}, {}, {}, true); }).find("more than one value"),
            std::string::npos);
  EXPECT_NE(error_of([&] { batch_norm3d(x, {}, {}, zeros({2}), ones({3}), true); }).find("running_mean"),
            std::string::npos);
  EXPECT_NE(error_of([&] { max_pool3d(x, {2, 0, 2}); }).find("kernel sizes must be positive"), std::string::npos);
  EXPECT_NE(error_of([&] { max_pool3d(x, {2, 2, 2}, {1, -1, 1}); }).find("strides"), std::string::npos);
  EXPECT_NE(error_of([&] { avg_pool3d(x, {2, 2, 2}, {2, 2, 2}, {0, 2, 0}); }).find("half the kernel"),
            std::string::npos);
  EXPECT_NE(error_of([&] { max_pool3d(x, {5, 2, 2}); }).find("larger than the padded input"), std::string::npos);
  EXPECT_NE(error_of([&] { dropout3d(x, 1.5, true); }).find("p must be in [0, 1]"), std::string::npos);
  EXPECT_THROW(dropout3d(zeros({2, 3}), 0.5, true), Error);
}

}  // namespace
}  // namespace voxgrad
