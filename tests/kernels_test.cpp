// The CPU kernels checked directly, without the engine: Philox against Random123's known answers,
// reductions and softmax against naive double references, broadcasting index arithmetic, and the
// data-movement kernels for every dtype. The CUDA kernels run the same VG_HD math.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/elementwise.h"
#include "kernels/layout.h"
#include "kernels/random.h"
#include "kernels/reduce.h"
#include "kernels/softmax.h"
#include "tests/test_support.h"

namespace voxgrad::kernels {
namespace {

using test::all_close;

std::vector<double> random_values(std::size_t n, std::uint32_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(n);
  for (double& x : v) x = dist(gen);
  return v;
}

template <class T>
std::vector<T> to(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <class T>
std::vector<double> as_double(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

std::int64_t numel(const std::vector<std::int64_t>& shape) {
  return std::accumulate(shape.begin(), shape.end(), std::int64_t{1}, std::multiplies<>());
}

// ---- Philox4x32-10 ------------------------------------------------------------------------------

std::uint64_t pack(std::uint32_t lo, std::uint32_t hi) { return lo | (static_cast<std::uint64_t>(hi) << 32); }

TEST(KernelsRandom, PhiloxKnownAnswers) {
  // Random123 kat_vectors: philox4x32 10 rounds, (counter c0..c3, key k0 k1) -> output.
  struct Kat {
    std::uint32_t ctr[4], key[2], out[4];
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Kat& k : kats) {
    const Philox4 r = philox4x32_10(pack(k.ctr[0], k.ctr[1]), pack(k.ctr[2], k.ctr[3]), pack(k.key[0], k.key[1]));
    for (int lane = 0; lane < 4; ++lane) EXPECT_EQ(r.v[lane], k.out[lane]) << "lane " << lane << " of KAT " << k.ctr[0];
  }
}

TEST(KernelsRandom, UnitIntervalEnds) {
  EXPECT_EQ(uint_to_unit_double(0u), 1.0 / 16777216.0);
  EXPECT_EQ(uint_to_unit_double(0xffffffffu), 1.0);
  EXPECT_EQ(uint_to_unit_float(0xffffffffu), 1.0f);
  EXPECT_GT(uint_to_unit_float(0u), 0.0f);
  // Normal draws use up to one counter block per two elements, uniform draws one per four.
  for (std::int64_t n : {0, 1, 2, 3, 7, 8, 1001}) EXPECT_GE(philox_blocks_used(n), static_cast<std::uint64_t>((n + 1) / 2));
}

TEST(KernelsRandom, UniformMomentsAndRange) {
  const std::int64_t n = 100000;
  std::vector<double> u(n);
  cpu::rand_uniform(DType::Float64, u.data(), n, 1234, 0, 0.0, 1.0);
  double sum = 0, sq = 0;
  std::vector<int> bins(10, 0);
  for (double x : u) {
    ASSERT_GT(x, 0.0);
    ASSERT_LE(x, 1.0);
    sum += x;
    sq += x * x;
    ++bins[std::min(9, static_cast<int>(x * 10))];
  }
  const double mean = sum / n, var = sq / n - mean * mean;
  EXPECT_NEAR(mean, 0.5, 0.005);  // 5 sigma of the sample mean
  EXPECT_NEAR(var, 1.0 / 12.0, 0.002);
  for (int b : bins) EXPECT_NEAR(b, n / 10, 500);
  // The lanes of one Philox block and of neighbouring blocks are independent.
  for (std::int64_t k = 1; k <= 8; ++k) {
    double lag = 0;
    for (std::int64_t i = 0; i + k < n; ++i) lag += (u[i] - 0.5) * (u[i + k] - 0.5);
    EXPECT_NEAR(lag / static_cast<double>(n - k) * 12.0, 0.0, 0.016) << "lag " << k;
  }

  std::vector<float> f(n);
  cpu::rand_uniform(DType::Float32, f.data(), n, 1234, 0, -2.0, 3.0);
  for (std::int64_t i = 0; i < n; ++i) {
    ASSERT_GT(f[i], -2.0f);
    ASSERT_LE(f[i], 3.0f);
    ASSERT_EQ(f[i], static_cast<float>(-2.0 + 5.0 * u[i])) << i;  // same draw, scaled, then rounded
  }
}

TEST(KernelsRandom, NormalMoments) {
  const std::int64_t n = 100000;
  std::vector<double> z(n);
  cpu::rand_normal(DType::Float64, z.data(), n, 99, 5, 0.0, 1.0);
  double sum = 0, sq = 0, fourth = 0;
  for (double x : z) {
    ASSERT_TRUE(std::isfinite(x));
    sum += x;
    sq += x * x;
    fourth += x * x * x * x;
  }
  const double mean = sum / n, var = sq / n - mean * mean;
  EXPECT_NEAR(mean, 0.0, 0.016);
  EXPECT_NEAR(var, 1.0, 0.025);
  EXPECT_NEAR(fourth / n, 3.0, 0.15);  // kurtosis of a normal: tails are right, not just the variance
  // Box-Muller pairs (cosine, sine) are independent: neighbours must not correlate or repeat.
  double lag = 0;
  for (std::int64_t i = 0; i + 1 < n; ++i) {
    lag += z[i] * z[i + 1];
    if (i % 2 == 0) {
      ASSERT_NE(z[i], z[i + 1]) << i;
    }
  }
  EXPECT_NEAR(lag / (n - 1), 0.0, 0.016);

  std::vector<float> f(1000);
  cpu::rand_normal(DType::Float32, f.data(), 1000, 99, 5, 3.0, 0.5);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(f[i], static_cast<float>(3.0 + 0.5 * z[i])) << i;
}

TEST(KernelsRandom, StreamsAreReproducibleAndIndependent) {
  const std::int64_t n = 4096;
  for (bool normal : {false, true}) {
    auto draw = [&](std::uint64_t seed, std::uint64_t offset, std::int64_t count) {
      std::vector<double> v(count);
      if (normal) {
        cpu::rand_normal(DType::Float64, v.data(), count, seed, offset, 0.0, 1.0);
      } else {
        cpu::rand_uniform(DType::Float64, v.data(), count, seed, offset, 0.0, 1.0);
      }
      return v;
    };
    const auto a = draw(7, 100, n);
    EXPECT_EQ(a, draw(7, 100, n));
    // Element i does not depend on how many are drawn (what lets GPU threads draw in any order).
    const auto head = draw(7, 100, 13);
    EXPECT_TRUE(std::equal(head.begin(), head.end(), a.begin()));
    auto count_equal = [&](const std::vector<double>& b) {
      int same = 0;
      for (std::int64_t i = 0; i < n; ++i) same += a[i] == b[i];
      return same;
    };
    EXPECT_LT(count_equal(draw(7, 100 + philox_blocks_used(n), n)), 4) << "normal=" << normal;
    EXPECT_LT(count_equal(draw(8, 100, n)), 4) << "normal=" << normal;
  }
  std::vector<std::int32_t> labels(4);
  EXPECT_THROW(cpu::rand_uniform(DType::Int32, labels.data(), 4, 1, 0, 0.0, 1.0), Error);
}

// ---- sum_axes / expand_axes ---------------------------------------------------------------------

// Output index of input element `in`: the row-major index over the kept axes.
std::int64_t naive_output_index(const std::vector<std::int64_t>& shape, unsigned mask, std::int64_t in) {
  std::int64_t out = 0, out_stride = 1;
  for (int a = static_cast<int>(shape.size()) - 1; a >= 0; --a) {
    const std::int64_t coord = in % shape[a];
    in /= shape[a];
    if (!((mask >> a) & 1u)) {
      out += coord * out_stride;
      out_stride *= shape[a];
    }
  }
  return out;
}

std::int64_t kept_numel(const std::vector<std::int64_t>& shape, unsigned mask) {
  std::int64_t k = 1;
  for (std::size_t a = 0; a < shape.size(); ++a)
    if (!((mask >> a) & 1u)) k *= shape[a];
  return k;
}

std::vector<double> naive_sum(const std::vector<double>& x, const std::vector<std::int64_t>& shape, unsigned mask,
                              double scale) {
  std::vector<double> y(kept_numel(shape, mask), 0.0);
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(x.size()); ++i) y[naive_output_index(shape, mask, i)] += x[i];
  for (double& v : y) v *= scale;
  return y;
}

void check_reduce(const std::vector<std::int64_t>& shape, unsigned mask) {
  SCOPED_TRACE(::testing::Message() << "rank " << shape.size() << " mask " << mask);
  const std::int64_t n = numel(shape);
  const ReduceGeometry g = make_reduce_geometry(shape.data(), static_cast<int>(shape.size()), mask);
  ASSERT_EQ(g.kept_count, kept_numel(shape, mask));
  ASSERT_EQ(g.kept_count * g.red_count, n);
  const double scale = 0.25;
  const auto x = random_values(n, 17u + mask);
  const auto ref = naive_sum(x, shape, mask, scale);

  std::vector<double> y(g.kept_count);
  cpu::sum_axes(x.data(), y.data(), g, scale);
  EXPECT_TRUE(all_close(y, ref, 1e-12, 1e-12));

  const auto xf = to<float>(x);
  std::vector<float> yf(g.kept_count);
  cpu::sum_axes(xf.data(), yf.data(), g, 0.25f);
  // Float input, double accumulation: only the final rounding (and the inputs') separate it.
  EXPECT_TRUE(all_close(as_double(yf), naive_sum(as_double(xf), shape, mask, scale), 1e-6, 1e-6));

  // expand_axes is the adjoint of sum_axes: <sum(x), dy> == <x, expand(dy)>, and each dx element
  // is its output's dy.
  const auto dy = random_values(g.kept_count, 5u + mask);
  std::vector<double> dx(n);
  cpu::expand_axes(dy.data(), dx.data(), g, scale);
  double lhs = 0, rhs = 0;
  for (std::int64_t o = 0; o < g.kept_count; ++o) lhs += ref[o] * dy[o];
  for (std::int64_t i = 0; i < n; ++i) rhs += x[i] * dx[i];
  EXPECT_NEAR(lhs, rhs, 1e-9 * (1 + std::fabs(lhs)));
  for (std::int64_t i = 0; i < n; ++i) ASSERT_EQ(dx[i], scale * dy[naive_output_index(shape, mask, i)]) << i;
}

TEST(KernelsReduce, EveryAxisSetOfAFiveDimShape) {
  // (N, C, D, H, W) with a size-1 axis: all 32 masks, reducing nothing through everything.
  for (unsigned mask = 0; mask < 32; ++mask) check_reduce({2, 3, 1, 4, 5}, mask);
}

TEST(KernelsReduce, NamedCases) {
  const std::vector<std::int64_t> ncdhw = {2, 4, 3, 5, 6};
  check_reduce(ncdhw, 0b11101u);  // per-channel: {0, 2, 3, 4}
  check_reduce(ncdhw, 0b11111u);  // everything
  check_reduce(ncdhw, 0u);        // nothing
  check_reduce(ncdhw, 0b01010u);  // non-adjacent {1, 3}
  check_reduce({1, 3, 1, 4, 1}, 0b10101u);  // only size-1 axes reduced
  check_reduce({3, 1, 5}, 0b010u);
  check_reduce({7}, 1u);
  check_reduce({}, 0u);  // a scalar
  check_reduce({3, 0, 4}, 0b010u);  // empty reduced block: zeros
  check_reduce({3, 0, 4}, 0b101u);  // no outputs
}

TEST(KernelsReduce, GeometryMergesRuns) {
  const std::int64_t shape[5] = {2, 4, 3, 5, 6};
  const ReduceGeometry g = make_reduce_geometry(shape, 5, 0b11101u);
  ASSERT_EQ(g.kept_ndim, 1);
  EXPECT_EQ(g.kept_size[0], 4);
  EXPECT_EQ(g.kept_stride[0], 90);
  ASSERT_EQ(g.red_ndim, 2);
  EXPECT_EQ(g.red_size[0], 2);
  EXPECT_EQ(g.red_stride[0], 360);
  EXPECT_EQ(g.red_size[1], 90);
  EXPECT_EQ(g.red_stride[1], 1);
  EXPECT_EQ(g.red_count, 180);
}

TEST(KernelsReduce, LongBlocksAndManyOutputs) {
  check_reduce({2, 100003}, 0b10u);   // few outputs, chunked partial sums
  check_reduce({100003, 3}, 0b01u);   // few outputs, strided chunks
  check_reduce({300, 2, 250}, 0b101u);
  check_reduce({130, 700}, 0b10u);   // many outputs, one per thread
  check_reduce({(1 << 18) + 37}, 1u);
}

TEST(KernelsReduce, ResultDoesNotDependOnThreadCount) {
  const std::int64_t n = (1 << 20) + 3;
  const auto x = to<float>(random_values(n, 3));
  const std::int64_t shape[2] = {3, n / 3};
  float one[3], many[3], full_one, full_many;
  const int threads = omp_get_max_threads();
  const auto g = make_reduce_geometry(shape, 2, 0b10u);
  const auto g_full = make_reduce_geometry(&n, 1, 1u);
  omp_set_num_threads(1);
  cpu::sum_axes(x.data(), one, g, 1.0f);
  cpu::sum_axes(x.data(), &full_one, g_full, 1.0f);
  omp_set_num_threads(4);
  cpu::sum_axes(x.data(), many, g, 1.0f);
  cpu::sum_axes(x.data(), &full_many, g_full, 1.0f);
  omp_set_num_threads(threads);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(one[i], many[i]);
  EXPECT_EQ(full_one, full_many);
}

// ---- softmax ------------------------------------------------------------------------------------

// Softmax of x (outer, classes, inner) in double, the textbook way.
std::vector<double> naive_softmax(const std::vector<double>& x, std::int64_t outer, std::int64_t classes,
                                  std::int64_t inner, bool log_space) {
  std::vector<double> y(x.size());
  for (std::int64_t o = 0; o < outer; ++o)
    for (std::int64_t j = 0; j < inner; ++j) {
      auto at = [&](std::int64_t c) { return (o * classes + c) * inner + j; };
      double m = -INFINITY, z = 0;
      for (std::int64_t c = 0; c < classes; ++c) m = std::max(m, x[at(c)]);
      for (std::int64_t c = 0; c < classes; ++c) z += std::exp(x[at(c)] - m);
      for (std::int64_t c = 0; c < classes; ++c)
        y[at(c)] = log_space ? x[at(c)] - m - std::log(z) : std::exp(x[at(c)] - m) / z;
    }
  return y;
}

TEST(KernelsSoftmax, ForwardMatchesReferenceAndIsNormalised) {
  const std::int64_t outer = 3, classes = 5, inner = 7;
  auto x = random_values(outer * classes * inner, 11, -4.0, 4.0);
  x[0] = 80.0;  // exp(80) overflows float: only max subtraction keeps this finite
  x[inner] = -75.0;
  for (bool log_space : {false, true}) {
    SCOPED_TRACE(log_space ? "log_softmax" : "softmax");
    const auto ref = naive_softmax(x, outer, classes, inner, log_space);
    std::vector<double> y(x.size());
    cpu::softmax_forward(x.data(), y.data(), outer, classes, inner, log_space);
    EXPECT_TRUE(all_close(y, ref, 1e-14, 1e-12));

    const auto xf = to<float>(x);
    std::vector<float> yf(x.size());
    cpu::softmax_forward(xf.data(), yf.data(), outer, classes, inner, log_space);
    EXPECT_TRUE(all_close(as_double(yf), ref, 1e-6, 1e-5));
  }
  std::vector<double> p(x.size()), lp(x.size());
  cpu::softmax_forward(x.data(), p.data(), outer, classes, inner, false);
  cpu::softmax_forward(x.data(), lp.data(), outer, classes, inner, true);
  for (std::int64_t o = 0; o < outer; ++o)
    for (std::int64_t j = 0; j < inner; ++j) {
      double s = 0;
      for (std::int64_t c = 0; c < classes; ++c) s += p[(o * classes + c) * inner + j];
      EXPECT_NEAR(s, 1.0, 1e-12);
    }
  for (std::size_t i = 0; i < p.size(); ++i)
    if (p[i] > 1e-300) {
      EXPECT_NEAR(lp[i], std::log(p[i]), 1e-12 * (1 + std::fabs(lp[i])));
    }
}

TEST(KernelsSoftmax, SingleClassIsCertain) {
  const std::vector<double> x = {3.0, -1.0, 0.5};
  std::vector<double> y(3), ly(3);
  cpu::softmax_forward(x.data(), y.data(), 1, 1, 3, false);
  cpu::softmax_forward(x.data(), ly.data(), 1, 1, 3, true);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(y[i], 1.0);
    EXPECT_EQ(ly[i], 0.0);
  }
}

TEST(KernelsSoftmax, BackwardMatchesFiniteDifferences) {
  // dx = d<dy, softmax(x)>/dx by central differences of the naive double reference.
  const std::int64_t outer = 2, classes = 4, inner = 3;
  const auto x = random_values(outer * classes * inner, 21, -2.0, 2.0);
  const auto dy = random_values(x.size(), 22);
  for (bool log_space : {false, true}) {
    SCOPED_TRACE(log_space ? "log_softmax" : "softmax");
    std::vector<double> y(x.size()), dx(x.size());
    cpu::softmax_forward(x.data(), y.data(), outer, classes, inner, log_space);
    cpu::softmax_backward(y.data(), dy.data(), dx.data(), outer, classes, inner, log_space);
    const auto numeric = test::central_differences(
        [&](const std::vector<double>& at) {
          const auto y_at = naive_softmax(at, outer, classes, inner, log_space);
          return std::inner_product(y_at.begin(), y_at.end(), dy.begin(), 0.0);
        },
        x);
    EXPECT_TRUE(all_close(dx, numeric, 1e-8, 1e-6));

    const auto yf = to<float>(y), dyf = to<float>(dy);
    std::vector<float> dxf(x.size());
    cpu::softmax_backward(yf.data(), dyf.data(), dxf.data(), outer, classes, inner, log_space);
    EXPECT_TRUE(all_close(as_double(dxf), dx, 1e-6, 1e-5));
  }
}

// ---- elementwise --------------------------------------------------------------------------------

struct UnaryCase {
  UnaryOp op;
  const char* name;
  double (*f)(double);
  double (*df)(double);  // derivative at x
};

constexpr double kAlpha = 0.01;

const UnaryCase kUnary[] = {
    {UnaryOp::Neg, "neg", [](double x) { return -x; }, [](double) { return -1.0; }},
    {UnaryOp::Exp, "exp", [](double x) { return std::exp(x); }, [](double x) { return std::exp(x); }},
    {UnaryOp::Log, "log", [](double x) { return std::log(x); }, [](double x) { return 1.0 / x; }},
    {UnaryOp::Relu, "relu", [](double x) { return x > 0 ? x : 0.0; }, [](double x) { return x > 0 ? 1.0 : 0.0; }},
    {UnaryOp::LeakyRelu, "leaky_relu", [](double x) { return x > 0 ? x : kAlpha * x; },
     [](double x) { return x > 0 ? 1.0 : kAlpha; }},
    {UnaryOp::Sigmoid, "sigmoid", [](double x) { return 1.0 / (1.0 + std::exp(-x)); },
     [](double x) {
       const double s = 1.0 / (1.0 + std::exp(-x));
       return s * (1.0 - s);
     }},
    {UnaryOp::Tanh, "tanh", [](double x) { return std::tanh(x); },
     [](double x) { return 1.0 - std::tanh(x) * std::tanh(x); }},
};

template <class T>
void check_unary(const UnaryCase& u, std::int64_t n, double tol) {
  SCOPED_TRACE(::testing::Message() << u.name << " n=" << n << " sizeof(T)=" << sizeof(T));
  // Log needs positive inputs; the others see both signs.
  const auto xd = random_values(n, 31, u.op == UnaryOp::Log ? 0.05 : -3.0, 3.0);
  const auto x = to<T>(xd), dy = to<T>(random_values(n, 32));
  std::vector<T> y(n), dx(n);
  cpu::unary_forward(u.op, x.data(), y.data(), n, static_cast<T>(kAlpha));
  cpu::unary_backward(u.op, x.data(), y.data(), dy.data(), dx.data(), n, static_cast<T>(kAlpha));
  std::vector<double> y_ref(n), dx_ref(n);
  for (std::int64_t i = 0; i < n; ++i) {
    const double xi = static_cast<double>(x[i]);
    y_ref[i] = u.f(xi);
    dx_ref[i] = static_cast<double>(dy[i]) * u.df(xi);
  }
  EXPECT_TRUE(all_close(as_double(y), y_ref, tol, tol));
  EXPECT_TRUE(all_close(as_double(dx), dx_ref, tol, 4 * tol));
}

TEST(KernelsElementwise, UnaryOpsMatchStdMath) {
  for (const UnaryCase& u : kUnary) {
    check_unary<double>(u, 1000, 1e-13);
    check_unary<float>(u, 1000, 2e-6);
    check_unary<float>(u, 100000, 2e-6);  // the parallel path
  }
}

double naive_binary(BinaryOp op, double a, double b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
  }
  return NAN;
}

void naive_binary_partials(BinaryOp op, double a, double b, double* da, double* db) {
  switch (op) {
    case BinaryOp::Add: *da = 1; *db = 1; return;
    case BinaryOp::Sub: *da = 1; *db = -1; return;
    case BinaryOp::Mul: *da = b; *db = a; return;
    case BinaryOp::Div: *da = 1 / b; *db = -a / (b * b); return;
  }
}

// y = a op b over (N, C, D, H, W) with b either full-size, a scalar or a per-channel vector; the
// reference finds b's element from the multi-index, not from the Broadcast arithmetic.
TEST(KernelsElementwise, BinaryBroadcasting) {
  enum class Kind { Same, Scalar, Channel };
  for (std::int64_t spatial : {8, 20000}) {  // small, and large enough for the parallel path
    const std::int64_t N = 2, C = 3, n = N * C * spatial;
    for (Kind kind : {Kind::Same, Kind::Scalar, Kind::Channel}) {
      const std::int64_t nb = kind == Kind::Same ? n : kind == Kind::Scalar ? 1 : C;
      const Broadcast bb = kind == Kind::Same ? Broadcast{1, n} : kind == Kind::Scalar ? Broadcast{n, 1}
                                                                                      : Broadcast{spatial, C};
      const Broadcast ba{1, n};
      auto b_index = [&](std::int64_t i) -> std::int64_t {
        const std::int64_t c = (i / spatial) % C;
        return kind == Kind::Same ? i : kind == Kind::Scalar ? 0 : c;
      };
      const auto a = random_values(n, 41);
      const auto b = random_values(nb, 42, 0.5, 2.0);  // away from zero for Div
      const auto dy = random_values(n, 43);
      for (BinaryOp op : {BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div}) {
        SCOPED_TRACE(::testing::Message() << "op " << static_cast<int>(op) << " kind " << static_cast<int>(kind)
                                          << " n " << n);
        std::vector<double> y(n), da(n), db(n), y_ref(n), da_ref(n), db_ref(n);
        for (std::int64_t i = 0; i < n; ++i) {
          const double bi = b[b_index(i)];
          y_ref[i] = naive_binary(op, a[i], bi);
          double pa = 0, pb = 0;
          naive_binary_partials(op, a[i], bi, &pa, &pb);
          da_ref[i] = dy[i] * pa;
          db_ref[i] = dy[i] * pb;
        }
        cpu::binary_forward(op, a.data(), ba, b.data(), bb, y.data(), n);
        EXPECT_TRUE(all_close(y, y_ref, 0, 1e-15));
        // Broadcasting the first operand instead must give the mirrored result.
        cpu::binary_forward(op, b.data(), bb, a.data(), ba, y.data(), n);
        for (std::int64_t i = 0; i < n; ++i) y_ref[i] = naive_binary(op, b[b_index(i)], a[i]);
        EXPECT_TRUE(all_close(y, y_ref, 0, 1e-15));

        cpu::binary_backward(op, a.data(), ba, b.data(), bb, dy.data(), da.data(), db.data(), n);
        EXPECT_TRUE(all_close(da, da_ref, 0, 1e-15));
        EXPECT_TRUE(all_close(db, db_ref, 0, 1e-15));
        // Either gradient may be skipped.
        std::vector<double> only_b(n, -7.0), only_a(n, -7.0);
        cpu::binary_backward<double>(op, a.data(), ba, b.data(), bb, dy.data(), nullptr, only_b.data(), n);
        cpu::binary_backward<double>(op, a.data(), ba, b.data(), bb, dy.data(), only_a.data(), nullptr, n);
        EXPECT_EQ(only_b, db);
        EXPECT_EQ(only_a, da);
      }
    }
  }
}

TEST(KernelsElementwise, FloatBinaryAndAccumulate) {
  const std::vector<float> a = {1.5f, -2.0f, 4.0f, 0.25f}, c = {10.0f, 20.0f};
  std::vector<float> y(4);
  cpu::binary_forward(BinaryOp::Mul, a.data(), Broadcast{1, 4}, c.data(), Broadcast{2, 2}, y.data(), 4);
  EXPECT_EQ(y, (std::vector<float>{15.0f, -20.0f, 80.0f, 5.0f}));
  cpu::accumulate(a.data(), y.data(), 4);
  EXPECT_EQ(y, (std::vector<float>{16.5f, -22.0f, 84.0f, 5.25f}));
  // A vector along the last axis: inner 1, repeating every 2 elements.
  cpu::binary_forward(BinaryOp::Sub, a.data(), Broadcast{1, 4}, c.data(), Broadcast{1, 2}, y.data(), 4);
  EXPECT_EQ(y, (std::vector<float>{-8.5f, -22.0f, -6.0f, -19.75f}));

  // The index arithmetic itself, for an (N=2, C=3, D*H*W=4) output.
  for (std::int64_t i = 0; i < 24; ++i) {
    EXPECT_EQ(broadcast_index(Broadcast{1, 24}, i), i);
    EXPECT_EQ(broadcast_index(Broadcast{24, 1}, i), 0);
    EXPECT_EQ(broadcast_index(Broadcast{4, 3}, i), (i / 4) % 3);
  }

  const std::int64_t n = 100000;
  const auto x = random_values(n, 51), base = random_values(n, 52);
  auto acc = base;
  cpu::accumulate(x.data(), acc.data(), n);
  for (std::int64_t i = 0; i < n; ++i) ASSERT_EQ(acc[i], base[i] + x[i]);
}

// ---- fill, arange, cast, copy_rows --------------------------------------------------------------

template <class T>
std::vector<T> run_fill(DType t, std::int64_t n, double value) {
  std::vector<T> v(n, T(0));
  cpu::fill(t, v.data(), n, value);
  return v;
}

TEST(KernelsLayout, FillEveryDtype) {
  EXPECT_EQ(run_fill<float>(DType::Float32, 5, 1.5), std::vector<float>(5, 1.5f));
  EXPECT_EQ(run_fill<double>(DType::Float64, 5, 0.1), std::vector<double>(5, 0.1));
  EXPECT_EQ(run_fill<std::int32_t>(DType::Int32, 5, -7.0), std::vector<std::int32_t>(5, -7));
  EXPECT_EQ(run_fill<std::uint8_t>(DType::UInt8, 5, 200.0), std::vector<std::uint8_t>(5, 200));
  EXPECT_EQ(run_fill<float>(DType::Float32, 100000, -3.0), std::vector<float>(100000, -3.0f));
  std::vector<float> untouched = {9.0f};
  cpu::fill(DType::Float32, untouched.data(), 0, 1.0);
  EXPECT_EQ(untouched[0], 9.0f);
}

TEST(KernelsLayout, ArangeEveryDtype) {
  std::vector<float> f(4);
  cpu::arange(DType::Float32, f.data(), 4, 1.0, 0.5);
  EXPECT_EQ(f, (std::vector<float>{1.0f, 1.5f, 2.0f, 2.5f}));
  std::vector<std::int32_t> i(5);
  cpu::arange(DType::Int32, i.data(), 5, -2.0, 3.0);
  EXPECT_EQ(i, (std::vector<std::int32_t>{-2, 1, 4, 7, 10}));
  std::vector<std::uint8_t> u(4);
  cpu::arange(DType::UInt8, u.data(), 4, 250.0, 1.0);
  EXPECT_EQ(u, (std::vector<std::uint8_t>{250, 251, 252, 253}));
  const std::int64_t n = 1000000;
  std::vector<double> d(n);
  cpu::arange(DType::Float64, d.data(), n, 0.5, 0.1);
  for (std::int64_t k = 0; k < n; ++k) ASSERT_EQ(d[k], 0.5 + static_cast<double>(k) * 0.1) << k;  // no drift
}

// Values every dtype holds (uint8's range), so each of the 16 casts is defined.
template <class From, class To>
void check_cast(DType from, DType to) {
  SCOPED_TRACE(::testing::Message() << dtype_name(from) << " -> " << dtype_name(to));
  const std::vector<double> values = {0.0, 1.0, 2.75, 100.5, 254.99, 7.0};
  std::vector<From> x(values.size());
  for (std::size_t k = 0; k < values.size(); ++k) x[k] = static_cast<From>(values[k]);
  std::vector<To> y(values.size());
  cpu::cast(from, x.data(), to, y.data(), static_cast<std::int64_t>(values.size()));
  for (std::size_t k = 0; k < values.size(); ++k) EXPECT_EQ(y[k], static_cast<To>(x[k])) << k;
}

template <class From>
void check_casts_from(DType from) {
  check_cast<From, float>(from, DType::Float32);
  check_cast<From, double>(from, DType::Float64);
  check_cast<From, std::int32_t>(from, DType::Int32);
  check_cast<From, std::uint8_t>(from, DType::UInt8);
}

TEST(KernelsLayout, CastEveryDtypePair) {
  check_casts_from<float>(DType::Float32);
  check_casts_from<double>(DType::Float64);
  check_casts_from<std::int32_t>(DType::Int32);
  check_casts_from<std::uint8_t>(DType::UInt8);

  // The documented semantics, spelled out: truncation toward zero, uint8 wraps from int32.
  const std::vector<float> f = {2.7f, -2.7f, 0.99f, 255.9f};
  std::vector<std::int32_t> i(4);
  cpu::cast(DType::Float32, f.data(), DType::Int32, i.data(), 4);
  EXPECT_EQ(i, (std::vector<std::int32_t>{2, -2, 0, 255}));
  const std::vector<std::int32_t> wide = {300, -1, 255, 256};
  std::vector<std::uint8_t> narrow(4);
  cpu::cast(DType::Int32, wide.data(), DType::UInt8, narrow.data(), 4);
  EXPECT_EQ(narrow, (std::vector<std::uint8_t>{44, 255, 255, 0}));
  const std::vector<double> d = {0.1, 1e-50};
  std::vector<float> df(2);
  cpu::cast(DType::Float64, d.data(), DType::Float32, df.data(), 2);
  EXPECT_EQ(df[0], 0.1f);
  EXPECT_EQ(df[1], 0.0f);

  const std::int64_t n = 100000;
  std::vector<std::uint8_t> labels(n);
  for (std::int64_t k = 0; k < n; ++k) labels[k] = static_cast<std::uint8_t>(k % 7);
  std::vector<float> lf(n);
  cpu::cast(DType::UInt8, labels.data(), DType::Float32, lf.data(), n);
  for (std::int64_t k = 0; k < n; ++k) ASSERT_EQ(lf[k], static_cast<float>(k % 7));
}

TEST(KernelsLayout, CopyRowsBetweenPitches) {
  // src: 3 rows, pitch 10; move 4 bytes starting at byte 2 of each into dst rows of pitch 7 at byte 1.
  std::vector<std::uint8_t> src(30), dst(21, 0xAA);
  std::iota(src.begin(), src.end(), std::uint8_t{0});
  cpu::copy_rows(src.data() + 2, 10, dst.data() + 1, 7, 3, 4);
  for (int r = 0; r < 3; ++r)
    for (int b = 0; b < 7; ++b) {
      const bool moved = b >= 1 && b < 5;
      EXPECT_EQ(dst[r * 7 + b], moved ? src[r * 10 + 2 + (b - 1)] : 0xAA) << "row " << r << " byte " << b;
    }

  // Whole-tensor copies, one row or equal pitches, both large enough to be split between threads.
  const std::int64_t big = (3 << 20) + 5;
  std::vector<std::uint8_t> a(big), b(big, 0);
  for (std::int64_t k = 0; k < big; ++k) a[k] = static_cast<std::uint8_t>(k * 31 + 7);
  cpu::copy_rows(a.data(), big, b.data(), big, 1, big);
  EXPECT_EQ(a, b);
  std::fill(b.begin(), b.end(), 0);
  cpu::copy_rows(a.data(), 5, b.data(), 5, big / 5, 5);
  EXPECT_TRUE(std::equal(a.begin(), a.begin() + big / 5 * 5, b.begin()));
  EXPECT_EQ(b[big - 1], 0);

  // Concat along channels: two (N=2, C_i, inner=3) float blocks into (2, 5, 3).
  const std::vector<float> p = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};  // (2, 2, 3)
  const std::vector<float> q = {-1, -2, -3, -4, -5, -6, -7, -8, -9, -10, -11, -12, -13, -14, -15, -16, -17,
                                -18};  // (2, 3, 3)
  std::vector<float> out(30, 0);  // (2, 5, 3)
  const std::int64_t fs = sizeof(float);
  cpu::copy_rows(p.data(), 6 * fs, out.data(), 15 * fs, 2, 6 * fs);
  cpu::copy_rows(q.data(), 9 * fs, out.data() + 6, 15 * fs, 2, 9 * fs);
  const std::vector<float> expect = {1,  2,  3,  4,  5,  6,  -1,  -2,  -3,  -4,  -5,  -6,  -7,  -8,  -9,
                                     7,  8,  9,  10, 11, 12, -10, -11, -12, -13, -14, -15, -16, -17, -18};
  EXPECT_EQ(out, expect);
}

}  // namespace
}  // namespace voxgrad::kernels
