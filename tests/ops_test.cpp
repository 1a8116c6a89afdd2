// Every op from one table of cases, checked three ways: the forward against a plain host reference,
// the analytic gradient against central finite differences (float64, CPU), and the CUDA kernels
// against the CPU twins, forward and backward (float32; skipped without a GPU).
#include "engine/ops.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>

#include "tests/op_harness.h"
#include "tests/test_support.h"

namespace voxgrad {
namespace {

using test::Values;

// ---- host references, written independently of the kernels' index arithmetic ----------------

std::vector<std::int64_t> coords_of(std::int64_t i, const Shape& s) {
  std::vector<std::int64_t> c(s.size());
  for (int k = static_cast<int>(s.size()) - 1; k >= 0; --k) {
    c[k] = i % s[k];
    i /= s[k];
  }
  return c;
}

std::int64_t index_of(const std::vector<std::int64_t>& c, const Shape& s) {
  std::int64_t i = 0;
  for (std::size_t k = 0; k < s.size(); ++k) i = i * s[k] + c[k];
  return i;
}

// Value of `operand` (shape `os`) seen at output coordinate `c` of shape `out` (NumPy rules
// aligned left for a (C) vector over axis 1, as voxgrad documents; numel-1 operands broadcast).
double broadcast_at(const Values& v, const Shape& os, const std::vector<std::int64_t>& c, const Shape& out) {
  if (shape_numel(os) == 1) return v[0];
  if (os.size() == 1 && out.size() >= 2 && os != out) return v[c[1]];
  std::vector<std::int64_t> oc(os.size());
  for (std::size_t k = 0; k < os.size(); ++k) oc[k] = os[k] == 1 ? 0 : c[k];
  return v[index_of(oc, os)];
}

Values binary_ref(const Values& a, const Shape& as, const Values& b, const Shape& bs, const Shape& out,
                  const std::function<double(double, double)>& f) {
  Values y(shape_numel(out));
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(y.size()); ++i) {
    const auto c = coords_of(i, out);
    y[i] = f(broadcast_at(a, as, c, out), broadcast_at(b, bs, c, out));
  }
  return y;
}

Values map_ref(const Values& x, const std::function<double(double)>& f) {
  Values y(x.size());
  std::transform(x.begin(), x.end(), y.begin(), f);
  return y;
}

Values sum_ref(const Values& x, const Shape& s, const std::vector<int>& axes, double scale) {
  Shape out;
  std::vector<bool> reduced(s.size(), false);
  for (int a : axes) reduced[a < 0 ? a + static_cast<int>(s.size()) : a] = true;
  for (std::size_t k = 0; k < s.size(); ++k)
    if (!reduced[k]) out.push_back(s[k]);
  Values y(shape_numel(out), 0.0);
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(x.size()); ++i) {
    const auto c = coords_of(i, s);
    std::vector<std::int64_t> oc;
    for (std::size_t k = 0; k < s.size(); ++k)
      if (!reduced[k]) oc.push_back(c[k]);
    y[index_of(oc, out)] += x[i];
  }
  for (auto& v : y) v *= scale;
  return y;
}

Values softmax_ref(const Values& x, const Shape& s, int axis, bool log_space) {
  Values y(x.size());
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(x.size()); ++i) {
    auto c = coords_of(i, s);
    double z = 0;
    for (std::int64_t k = 0; k < s[axis]; ++k) {
      c[axis] = k;
      z += std::exp(x[index_of(c, s)]);
    }
    y[i] = log_space ? x[i] - std::log(z) : std::exp(x[i]) / z;
  }
  return y;
}

Values concat_ref(const std::vector<Values>& xs, const std::vector<Shape>& shapes, int axis) {
  Shape out = shapes[0];
  out[axis] = 0;
  for (const auto& s : shapes) out[axis] += s[axis];
  Values y(shape_numel(out));
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(y.size()); ++i) {
    auto c = coords_of(i, out);
    std::size_t which = 0;
    while (c[axis] >= shapes[which][axis]) c[axis] -= shapes[which++][axis];
    y[i] = xs[which][index_of(c, shapes[which])];
  }
  return y;
}

Values slice_ref(const Values& x, const Shape& s, int axis, std::int64_t start, std::int64_t end) {
  Shape out = s;
  out[axis] = end - start;
  Values y(shape_numel(out));
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(y.size()); ++i) {
    auto c = coords_of(i, out);
    c[axis] += start;
    y[i] = x[index_of(c, s)];
  }
  return y;
}

// ---- the table ---------------------------------------------------------------------------------

using test::Domain;
using test::HostInputs;
using test::OpCase;

// Rows too large for finite differences take the forward and CPU/CUDA parity checks only.
constexpr unsigned kNoGradcheck = test::kForward | test::kCudaParity;

// Every row also runs its forward in float32.
OpCase row(std::string name, std::vector<Shape> shapes, std::vector<Domain> domains,
           std::function<Tensor(const std::vector<Tensor>&)> fn, std::function<Values(const HostInputs&)> reference,
           bool gradcheck) {
  OpCase c;
  c.name = std::move(name);
  c.inputs = test::random_inputs(std::move(shapes), std::move(domains));
  c.fn = test::one_output(std::move(fn));
  c.reference = test::one_reference(std::move(reference));
  c.checks = gradcheck ? test::kAllChecks : kNoGradcheck;
  c.forward_f32 = test::Tolerance{1e-5, 1e-5};
  return c;
}

using BinaryFn = Tensor (*)(const Tensor&, const Tensor&);

OpCase binary_case(const std::string& name, BinaryFn fn, std::function<double(double, double)> f, Shape a, Shape b,
                   Domain db = Domain::Any, bool gradcheck = true) {
  Shape out = shape_numel(a) >= shape_numel(b) ? a : b;
  return row(
      name, {a, b}, {Domain::Any, db}, [fn](const std::vector<Tensor>& x) { return fn(x[0], x[1]); },
      [a, b, out, f](const HostInputs& v) { return binary_ref(v[0].values, a, v[1].values, b, out, f); }, gradcheck);
}

OpCase unary_case(const std::string& name, std::function<Tensor(const Tensor&)> fn, std::function<double(double)> f,
                  Shape s, Domain d = Domain::Any, bool gradcheck = true) {
  return row(
      name, {s}, {d}, [fn](const std::vector<Tensor>& x) { return fn(x[0]); },
      [f](const HostInputs& v) { return map_ref(v[0].values, f); }, gradcheck);
}

OpCase reduce_case(const std::string& name, Shape s, std::vector<int> axes, bool average, bool keepdim,
                   bool gradcheck = true) {
  return row(
      name, {s}, {Domain::Any},
      [axes, average, keepdim](const std::vector<Tensor>& x) {
        if (axes.empty()) return average ? mean(x[0]) : sum(x[0]);
        return average ? mean(x[0], axes, keepdim) : sum(x[0], axes, keepdim);
      },
      [s, axes, average](const HostInputs& v) {
        std::vector<int> ax = axes;
        if (ax.empty()) {
          ax.resize(s.size());
          std::iota(ax.begin(), ax.end(), 0);
        }
        std::int64_t count = 1;
        for (int a : ax) count *= s[a < 0 ? a + static_cast<int>(s.size()) : a];
        return sum_ref(v[0].values, s, ax, average ? 1.0 / static_cast<double>(count) : 1.0);
      },
      gradcheck);
}

OpCase softmax_case(const std::string& name, Shape s, int axis, bool log_space, bool gradcheck = true) {
  const int a = axis < 0 ? axis + static_cast<int>(s.size()) : axis;
  return row(
      name, {s}, {Domain::Any},
      [axis, log_space](const std::vector<Tensor>& x) {
        return log_space ? log_softmax(x[0], axis) : softmax(x[0], axis);
      },
      [s, a, log_space](const HostInputs& v) { return softmax_ref(v[0].values, s, a, log_space); }, gradcheck);
}

OpCase concat_case(const std::string& name, std::vector<Shape> shapes, int axis, bool gradcheck = true) {
  const int a = axis < 0 ? axis + static_cast<int>(shapes[0].size()) : axis;
  return row(
      name, shapes, {Domain::Any}, [axis](const std::vector<Tensor>& x) { return concat(x, axis); },
      [shapes, a](const HostInputs& v) {
        std::vector<Values> xs;
        for (const auto& h : v) xs.push_back(h.values);
        return concat_ref(xs, shapes, a);
      },
      gradcheck);
}

OpCase slice_case(const std::string& name, Shape s, int axis, std::int64_t start, std::int64_t end,
                  bool gradcheck = true) {
  return row(
      name, {s}, {Domain::Any}, [=](const std::vector<Tensor>& x) { return slice(x[0], axis, start, end); },
      [=](const HostInputs& v) { return slice_ref(v[0].values, s, axis, start, end); }, gradcheck);
}

double sigmoid_ref(double x) { return 1.0 / (1.0 + std::exp(-x)); }

std::vector<OpCase> op_cases() {
  const auto plus = [](double a, double b) { return a + b; };
  const auto minus = [](double a, double b) { return a - b; };
  const auto times = [](double a, double b) { return a * b; };
  const auto over = [](double a, double b) { return a / b; };
  BinaryFn add_fn = add, sub_fn = sub, mul_fn = mul, div_fn = div;
  const Shape ncdhw{2, 3, 2, 3, 2}, big{2, 8, 16, 16, 16};
  return {
      binary_case("add_same", add_fn, plus, {2, 3, 4}, {2, 3, 4}),
      binary_case("add_channel", add_fn, plus, ncdhw, {3}),
      binary_case("add_channel_first", add_fn, plus, {3}, ncdhw),
      binary_case("add_scalar_tensor", add_fn, plus, {2, 3}, {}),
      binary_case("add_block", add_fn, plus, {2, 3, 4, 5}, {1, 3, 4, 1}),
      binary_case("sub_same", sub_fn, minus, {4, 5}, {4, 5}),
      binary_case("sub_channel", sub_fn, minus, ncdhw, {3}),
      binary_case("sub_channel_first", sub_fn, minus, {3}, ncdhw),
      binary_case("mul_same", mul_fn, times, {3, 4}, {3, 4}),
      binary_case("mul_channel", mul_fn, times, ncdhw, {3}),
      binary_case("mul_scalar_tensor", mul_fn, times, {1}, {2, 5}),
      binary_case("div_same", div_fn, over, {3, 4}, {3, 4}, Domain::Positive),
      binary_case("div_channel", div_fn, over, ncdhw, {3}, Domain::Positive),
      binary_case("div_block", div_fn, over, {2, 3, 4}, {2, 3, 1}, Domain::Positive),
      unary_case(
          "add_double", [](const Tensor& x) { return add(x, 1.5); }, [](double v) { return v + 1.5; }, {7}),
      unary_case(
          "sub_double", [](const Tensor& x) { return x - 0.25; }, [](double v) { return v - 0.25; }, {7}),
      unary_case(
          "mul_double", [](const Tensor& x) { return x * -3.0; }, [](double v) { return v * -3.0; }, {7}),
      unary_case(
          "div_double", [](const Tensor& x) { return x / 4.0; }, [](double v) { return v / 4.0; }, {7}),
      unary_case(
          "neg", [](const Tensor& x) { return -x; }, [](double v) { return -v; }, {2, 5}),
      unary_case(
          "exp", [](const Tensor& x) { return exp(x); }, [](double v) { return std::exp(v); }, {2, 5}),
      unary_case(
          "log", [](const Tensor& x) { return log(x); }, [](double v) { return std::log(v); }, {2, 5},
          Domain::Positive),
      unary_case(
          "relu", [](const Tensor& x) { return relu(x); }, [](double v) { return v > 0 ? v : 0; }, {2, 6},
          Domain::AwayFromZero),
      unary_case(
          "leaky_relu", [](const Tensor& x) { return leaky_relu(x, 0.1); },
          [](double v) { return v > 0 ? v : 0.1 * v; }, {2, 6}, Domain::AwayFromZero),
      unary_case(
          "leaky_relu_default", [](const Tensor& x) { return leaky_relu(x); },
          [](double v) { return v > 0 ? v : 0.01 * v; }, {2, 6}, Domain::AwayFromZero),
      unary_case("sigmoid", [](const Tensor& x) { return sigmoid(x); }, sigmoid_ref, {2, 5}),
      unary_case(
          "tanh", [](const Tensor& x) { return tanh(x); }, [](double v) { return std::tanh(v); }, {2, 5}),
      reduce_case("sum_all", {3, 4, 2}, {}, false, false),
      reduce_case("sum_channels_kept", ncdhw, {0, 2, 3, 4}, false, false),
      reduce_case("sum_axis1_keepdim", ncdhw, {1}, false, true),
      reduce_case("sum_last_negative", {3, 4, 5}, {-1}, false, false),
      reduce_case("sum_inner_block", {2, 3, 4, 5}, {1, 2}, false, false),
      reduce_case("mean_all", {3, 4, 2}, {}, true, false),
      reduce_case("mean_spatial", ncdhw, {2, 3, 4}, true, true),
      softmax_case("softmax_channels", {2, 4, 3, 2}, 1, false),
      softmax_case("log_softmax_channels", {2, 4, 3, 2}, 1, true),
      softmax_case("softmax_last", {3, 5}, -1, false),
      softmax_case("log_softmax_first", {4, 3}, 0, true),
      concat_case("concat_channels", {{2, 2, 3}, {2, 3, 3}, {2, 1, 3}}, 1),
      concat_case("concat_first", {{1, 4}, {2, 4}}, 0),
      concat_case("concat_last", {{2, 3, 2}, {2, 3, 1}}, -1),
      slice_case("slice_channels", {2, 4, 3}, 1, 1, 3),
      slice_case("slice_last", {2, 3, 5}, 2, 2, 5),
      slice_case("slice_first", {4, 3}, 0, 0, 1),
      unary_case(
          "reshape",
          [](const Tensor& x) {
            return exp(reshape(x, {6, -1}));
          },
          [](double v) { return std::exp(v); }, {2, 3, 4}),
      // Large cases reach the threaded CPU loops and the multi-block GPU paths.
      binary_case("big_add_channel", add_fn, plus, big, {8}, Domain::Any, false),
      binary_case("big_mul_same", mul_fn, times, big, big, Domain::Any, false),
      unary_case(
          "big_leaky_relu", [](const Tensor& x) { return leaky_relu(x); },
          [](double v) { return v > 0 ? v : 0.01 * v; }, big, Domain::Any, false),
      unary_case(
          "big_exp", [](const Tensor& x) { return exp(x); }, [](double v) { return std::exp(v); }, big, Domain::Any,
          false),
      reduce_case("big_sum_all", {200003}, {}, false, false, false),
      reduce_case("big_sum_channels", big, {0, 2, 3, 4}, false, false, false),
      reduce_case("big_mean_spatial", big, {2, 3, 4}, true, false, false),
      reduce_case("big_sum_channel_axis", big, {1}, false, false, false),
      // Long reductions over few outputs, cut into several GPU blocks each: splits that start inside
      // a long contiguous run, and splits over runs shorter than a block.
      reduce_case("big_sum_split_runs", {3, 2, 5000}, {0, 2}, false, false, false),
      reduce_case("big_mean_split_short_runs", {20000, 3, 7}, {0, 2}, true, false, false),
      softmax_case("big_softmax_channels", {2, 5, 32, 32, 8}, 1, false, false),
      softmax_case("big_log_softmax_channels", {2, 5, 32, 32, 8}, 1, true, false),
      concat_case("big_concat_channels", {{2, 8, 16, 16, 16}, {2, 4, 16, 16, 16}}, 1, false),
      slice_case("big_slice_channels", big, 1, 2, 7, false),
  };
}

class OpForward : public ::testing::TestWithParam<OpCase> {};
class OpGradcheck : public ::testing::TestWithParam<OpCase> {};
class OpCudaParity : public ::testing::TestWithParam<OpCase> {};

TEST_P(OpForward, MatchesReference) { test::expect_forward_matches_reference(GetParam()); }
TEST_P(OpGradcheck, Float64MatchesFiniteDifferences) { test::expect_gradients_match_finite_differences(GetParam()); }
TEST_P(OpCudaParity, CudaMatchesCpu) { test::expect_cuda_matches_cpu(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Ops, OpForward, ::testing::ValuesIn(test::rows(op_cases(), test::kForward)), test::row_name);
INSTANTIATE_TEST_SUITE_P(Ops, OpGradcheck, ::testing::ValuesIn(test::rows(op_cases(), test::kGradcheck)),
                         test::row_name);
INSTANTIATE_TEST_SUITE_P(Ops, OpCudaParity, ::testing::ValuesIn(test::rows(op_cases(), test::kCudaParity)),
                         test::row_name);

// ---- errors users hit ---------------------------------------------------------------------------

TEST(OpErrors, ShapesThatDoNotBroadcastNameBoth) {
  try {
    add(zeros({2, 3}), zeros({3, 2}));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("(2, 3) and (3, 2)"), std::string::npos) << e.what();
  }
}

TEST(OpErrors, MixedDtypesAndBadAxesAreRefused) {
  EXPECT_THROW(add(zeros({2}), zeros({2}, DType::Float64)), Error);
  EXPECT_THROW(sum(zeros({2, 3}), {2}), Error);
  EXPECT_THROW(sum(zeros({2, 3}), {1, -1}), Error);
  EXPECT_THROW(softmax(zeros({2, 3}), 2), Error);
  EXPECT_THROW(slice(zeros({2, 3}), 1, 2, 4), Error);
  EXPECT_THROW(reshape(zeros({2, 3}), {4, -1}), Error);
  EXPECT_THROW(concat({zeros({2, 3}), zeros({3, 3})}, 1), Error);
  EXPECT_THROW(exp(zeros({2}, DType::Int32)), Error);
}

}  // namespace
}  // namespace voxgrad
