// conv3d and conv_transpose3d from one table of cases: forward against plain nested-loop host
// references, float64 finite differences for every input and CPU-vs-cuDNN parity (skipped without a
// GPU); then the adjoint identities at sizes that reach the tiling and OpenMP paths, the geometry
// every pass runs on, float32 against float64, determinism, clear errors and concurrent threads.
#include "engine/conv.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "engine/allocator.h"
#include "engine/autograd.h"
#include "kernels/conv3d.h"
#include "tests/op_harness.h"
#include "tests/test_support.h"

namespace voxgrad {
namespace {

using test::HostInputs;
using test::OpCase;
using test::Values;

// ---- references, written from the definitions, independent of the kernels -------------------

struct ConvCase {
  std::string name;
  bool transpose = false;
  std::int64_t n = 1, ci = 1, co = 1;
  Triple in{1, 1, 1}, kernel{1, 1, 1}, stride{1, 1, 1}, padding{0, 0, 0}, dilation{1, 1, 1}, output_padding{0, 0, 0};
  bool bias = false;

  Shape x_shape() const { return {n, ci, in[0], in[1], in[2]}; }
  // conv: (Co, Ci, k); transpose: (Ci, Co, k), PyTorch's layouts.
  Shape w_shape() const {
    return transpose ? Shape{ci, co, kernel[0], kernel[1], kernel[2]} : Shape{co, ci, kernel[0], kernel[1], kernel[2]};
  }
  std::int64_t out(int a) const {
    return transpose ? (in[a] - 1) * stride[a] - 2 * padding[a] + dilation[a] * (kernel[a] - 1) + output_padding[a] + 1
                     : (in[a] + 2 * padding[a] - dilation[a] * (kernel[a] - 1) - 1) / stride[a] + 1;
  }
  Shape y_shape() const { return {n, co, out(0), out(1), out(2)}; }
  Conv3dParams conv_params() const { return {stride, padding, dilation}; }
  ConvTranspose3dParams transpose_params() const { return {stride, padding, output_padding, dilation}; }
};

// y[n][o][od][oh][ow] = b[o] + sum_{c,kd,kh,kw} x[n][c][od*s-p+kd*d]... * w[o][c][kd][kh][kw]
Values conv_ref(const ConvCase& k, const Values& x, const Values& w, const Values& b) {
  const Shape ys = k.y_shape();
  Values y(shape_numel(ys), 0.0);
  const auto [D, H, W] = k.in;
  const auto [KD, KH, KW] = k.kernel;
  for (std::int64_t n = 0; n < k.n; ++n)
    for (std::int64_t o = 0; o < k.co; ++o)
      for (std::int64_t od = 0; od < ys[2]; ++od)
        for (std::int64_t oh = 0; oh < ys[3]; ++oh)
          for (std::int64_t ow = 0; ow < ys[4]; ++ow) {
            double acc = b.empty() ? 0.0 : b[o];
            for (std::int64_t c = 0; c < k.ci; ++c)
              for (std::int64_t kd = 0; kd < KD; ++kd)
                for (std::int64_t kh = 0; kh < KH; ++kh)
                  for (std::int64_t kw = 0; kw < KW; ++kw) {
                    const std::int64_t id = od * k.stride[0] - k.padding[0] + kd * k.dilation[0];
                    const std::int64_t ih = oh * k.stride[1] - k.padding[1] + kh * k.dilation[1];
                    const std::int64_t iw = ow * k.stride[2] - k.padding[2] + kw * k.dilation[2];
                    if (id < 0 || id >= D || ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                    acc += x[(((n * k.ci + c) * D + id) * H + ih) * W + iw] *
                           w[(((o * k.ci + c) * KD + kd) * KH + kh) * KW + kw];
                  }
            y[(((n * k.co + o) * ys[2] + od) * ys[3] + oh) * ys[4] + ow] = acc;
          }
  return y;
}

// The transposed convolution by its own definition: every input voxel scatters its kernel-weighted
// value to y[i*s - p + k*d] (positions outside the output are dropped).
Values conv_transpose_ref(const ConvCase& k, const Values& x, const Values& w, const Values& b) {
  const Shape ys = k.y_shape();
  Values y(shape_numel(ys), 0.0);
  const std::int64_t OD = ys[2], OH = ys[3], OW = ys[4];
  const auto [KD, KH, KW] = k.kernel;
  for (std::int64_t n = 0; n < k.n; ++n)
    for (std::int64_t o = 0; o < k.co; ++o)
      for (std::int64_t s = 0; s < OD * OH * OW; ++s) y[(n * k.co + o) * OD * OH * OW + s] = b.empty() ? 0.0 : b[o];
  for (std::int64_t n = 0; n < k.n; ++n)
    for (std::int64_t c = 0; c < k.ci; ++c)
      for (std::int64_t id = 0; id < k.in[0]; ++id)
        for (std::int64_t ih = 0; ih < k.in[1]; ++ih)
          for (std::int64_t iw = 0; iw < k.in[2]; ++iw) {
            const double v = x[(((n * k.ci + c) * k.in[0] + id) * k.in[1] + ih) * k.in[2] + iw];
            for (std::int64_t o = 0; o < k.co; ++o)
              for (std::int64_t kd = 0; kd < KD; ++kd)
                for (std::int64_t kh = 0; kh < KH; ++kh)
                  for (std::int64_t kw = 0; kw < KW; ++kw) {
                    const std::int64_t od = id * k.stride[0] - k.padding[0] + kd * k.dilation[0];
                    const std::int64_t oh = ih * k.stride[1] - k.padding[1] + kh * k.dilation[1];
                    const std::int64_t ow = iw * k.stride[2] - k.padding[2] + kw * k.dilation[2];
                    if (od < 0 || od >= OD || oh < 0 || oh >= OH || ow < 0 || ow >= OW) continue;
                    y[(((n * k.co + o) * OD + od) * OH + oh) * OW + ow] +=
                        v * w[(((c * k.co + o) * KD + kd) * KH + kh) * KW + kw];
                  }
          }
  return y;
}

Tensor random_tensor(const Shape& s, DType t, std::uint64_t seed) {
  Generator gen(seed);
  return randn(s, gen, t);
}

// The op of a case on tensors (bias may be undefined).
Tensor conv_op(const ConvCase& k, const Tensor& x, const Tensor& w, const Tensor& b) {
  return k.transpose ? conv_transpose3d(x, w, b, k.transpose_params()) : conv3d(x, w, b, k.conv_params());
}

struct Operands {
  Tensor x, w, b;  // b undefined when the case has no bias
};
Operands make_operands(const ConvCase& k, DType t, std::uint64_t seed) {
  Operands o{random_tensor(k.x_shape(), t, seed), random_tensor(k.w_shape(), t, seed + 1), Tensor()};
  if (k.bias) o.b = random_tensor({k.co}, t, seed + 2);
  return o;
}

ConvCase make(std::string name, std::int64_t n, std::int64_t ci, std::int64_t co, Triple in, Triple kernel,
              Triple stride = {1, 1, 1}, Triple padding = {0, 0, 0}, Triple dilation = {1, 1, 1}, bool bias = true) {
  ConvCase c;
  c.name = std::move(name);
  c.n = n;
  c.ci = ci;
  c.co = co;
  c.in = in;
  c.kernel = kernel;
  c.stride = stride;
  c.padding = padding;
  c.dilation = dilation;
  c.bias = bias;
  return c;
}

ConvCase transposed(ConvCase c, Triple output_padding = {0, 0, 0}) {
  c.transpose = true;
  c.output_padding = output_padding;
  return c;
}

Values values_of(const Tensor& t) { return t.cpu().to(DType::Float64).to_vector<double>(); }

double dot(const Tensor& a, const Tensor& b) {
  const Values va = values_of(a), vb = values_of(b);
  double s = 0;
  for (std::size_t i = 0; i < va.size(); ++i) s += va[i] * vb[i];
  return s;
}

// ---- the table ----------------------------------------------------------------------------------

// A case as a table row: inputs x, w and, with a bias, b.
OpCase row(const ConvCase& k, unsigned checks = test::kAllChecks) {
  std::vector<Shape> shapes{k.x_shape(), k.w_shape()};
  if (k.bias) shapes.push_back({k.co});
  OpCase c;
  c.name = k.name;
  c.inputs = test::random_inputs(shapes);
  c.fn = test::one_output(
      [k](const std::vector<Tensor>& t) { return conv_op(k, t[0], t[1], t.size() > 2 ? t[2] : Tensor()); });
  c.reference = test::one_reference([k](const HostInputs& v) {
    const Values b = v.size() > 2 ? v[2].values : Values{};
    return k.transpose ? conv_transpose_ref(k, v[0].values, v[1].values, b) : conv_ref(k, v[0].values, v[1].values, b);
  });
  c.checks = checks;
  c.output_shapes = {k.y_shape()};
  c.forward_f64 = {1e-12, 1e-12};
  c.forward_f32 = test::Tolerance{1e-5, 1e-5};
  c.gradcheck = {1e-6, 1e-6};  // linear in each operand: central differences are exact up to rounding
  c.parity_outputs = {{1e-4, 1e-4}};
  return c;
}

std::vector<OpCase> conv_cases() {
  std::vector<OpCase> table;
  // Small enough for float64 finite differences over every element.
  for (const ConvCase& k : {
           make("k1", 2, 3, 4, {3, 4, 5}, {1, 1, 1}),
           make("k3_pad1", 1, 2, 3, {5, 4, 6}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}),
           make("k3_nopad_nobias", 2, 2, 2, {5, 5, 4}, {3, 3, 3}, {1, 1, 1}, {0, 0, 0}, {1, 1, 1}, false),
           make("k3_stride2_pad1", 1, 3, 2, {7, 6, 5}, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}),
           make("k2_stride2", 2, 2, 3, {4, 6, 5}, {2, 2, 2}, {2, 2, 2}),
           make("k3_dil2_pad2", 1, 2, 2, {6, 7, 5}, {3, 3, 3}, {1, 1, 1}, {2, 2, 2}, {2, 2, 2}),
           make("mixed_axes", 1, 3, 5, {5, 7, 9}, {1, 2, 3}, {1, 2, 3}, {0, 1, 1}, {1, 1, 2}),
           make("k3_stride2_odd_nobias", 3, 1, 2, {5, 5, 5}, {3, 3, 3}, {2, 2, 2}, {0, 0, 0}, {1, 1, 1}, false),
           // Padding wider than the input: whole kernel taps fall outside on every axis.
           make("pad_beyond_input", 1, 2, 2, {3, 4, 2}, {3, 3, 3}, {1, 1, 1}, {2, 2, 3}, {1, 2, 3}),
           transposed(make("t_k2_s2", 2, 3, 2, {3, 2, 3}, {2, 2, 2}, {2, 2, 2})),
           transposed(make("t_k3_s1_p1", 1, 2, 3, {4, 3, 5}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1})),
           transposed(make("t_k3_s2_p1_op1", 1, 2, 2, {3, 4, 3}, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}), {1, 1, 1}),
           transposed(make("t_mixed_op", 2, 3, 2, {3, 2, 4}, {2, 3, 1}, {2, 3, 2}, {0, 1, 0}, {1, 1, 1}, false),
                      {1, 2, 0}),
           transposed(make("t_dil2_op_below_dil", 1, 2, 2, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, {0, 0, 0}, {2, 2, 2}),
                      {1, 0, 1}),
           // output_padding at or above the stride (below the dilation): the input is padded by 2, 1, 1
           // planes, and 1, 1, 2 in the second.
           transposed(make("t_op_over_stride", 1, 2, 3, {3, 2, 3}, {2, 2, 3}, {1, 2, 1}, {1, 0, 1}, {3, 3, 2}),
                      {2, 2, 1}),
           transposed(
               make("t_op_over_stride_nobias", 2, 3, 2, {2, 3, 2}, {3, 2, 2}, {2, 1, 1}, {2, 1, 0}, {3, 2, 3}, false),
               {2, 1, 2}),
       })
    table.push_back(row(k));
  // Sizes with many tiles and threads (tile edges checked against the reference directly), and
  // U-Net levels on cuDNN: too large for finite differences; float32 sums of hundreds of terms.
  const auto large = [](const ConvCase& k, double f64_tol) {
    OpCase c = row(k, test::kForward | test::kCudaParity);
    c.forward_f64 = {f64_tol, f64_tol};
    c.forward_f32 = test::Tolerance{1e-4, 1e-4};
    return c;
  };
  table.push_back(large(make("tiled", 2, 24, 9, {17, 19, 21}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}), 1e-11));
  table.push_back(large(make("unet_level", 2, 16, 32, {16, 16, 16}, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}), 1e-12));
  table.push_back(large(transposed(make("unet_up", 2, 32, 16, {8, 8, 8}, {2, 2, 2}, {2, 2, 2})), 1e-12));
  // More output channels than one block of the GEMM's A rows (120), K over one block of the sum:
  // over several tiles, and in one tile whose jobs split the output channels between threads.
  table.push_back(large(make("wide_out_tiles", 1, 10, 130, {8, 8, 8}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}), 1e-12));
  table.push_back(large(make("wide_out_one_tile", 1, 10, 130, {4, 4, 4}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}), 1e-12));
  return table;
}

// Every output, then every gradient, of `k` on a device in float32, from the row's inputs for `seed`.
std::vector<Values> run_all(const ConvCase& k, Device d, std::uint32_t seed) {
  const OpCase c = row(k);
  test::CaseRun run = test::run_case(c, c.inputs(seed), d, DType::Float32, seed + 7);
  run.outputs.insert(run.outputs.end(), run.gradients.begin(), run.gradients.end());
  return run.outputs;
}

class ConvForward : public ::testing::TestWithParam<OpCase> {};
class ConvGradcheck : public ::testing::TestWithParam<OpCase> {};
class ConvCudaParity : public ::testing::TestWithParam<OpCase> {};

TEST_P(ConvForward, MatchesReferenceFloat64AndFloat32) { test::expect_forward_matches_reference(GetParam()); }
TEST_P(ConvGradcheck, AnalyticMatchesFiniteDifferences) { test::expect_gradients_match_finite_differences(GetParam()); }
TEST_P(ConvCudaParity, CudaMatchesCpu) { test::expect_cuda_matches_cpu(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Conv, ConvForward, ::testing::ValuesIn(test::rows(conv_cases(), test::kForward)),
                         test::row_name);
INSTANTIATE_TEST_SUITE_P(Conv, ConvGradcheck, ::testing::ValuesIn(test::rows(conv_cases(), test::kGradcheck)),
                         test::row_name);
INSTANTIATE_TEST_SUITE_P(Conv, ConvCudaParity, ::testing::ValuesIn(test::rows(conv_cases(), test::kCudaParity)),
                         test::row_name);

// ---- the adjoint identities at sizes that span many tiles and threads -------------------------

// For L = <op(x, w), r> the op is bilinear, so <dL/dx, x> = <dL/dw, w> = L exactly (up to rounding);
// a gradient wrong anywhere (tile edges, padding, thread splits) breaks one of the identities.
void expect_adjoint(const ConvCase& k) {
  Operands o = make_operands(k, DType::Float64, 31);
  const Tensor r = random_tensor(k.y_shape(), DType::Float64, 32);
  o.x.requires_grad_();
  o.w.requires_grad_();
  const Tensor y = conv_op(k, o.x, o.w, Tensor());
  const double L = dot(y, r);
  y.backward(r);
  EXPECT_NEAR(dot(o.x.grad(), o.x), L, 1e-9 * std::abs(L) + 1e-9) << k.name << ": <dx, x>";
  EXPECT_NEAR(dot(o.w.grad(), o.w), L, 1e-9 * std::abs(L) + 1e-9) << k.name << ": <dw, w>";
}

TEST(ConvAdjoint, ConvAtMediumSizes) {
  expect_adjoint(make("s1_p1", 2, 8, 12, {20, 22, 24}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}));
  expect_adjoint(make("s2_p1", 1, 16, 32, {33, 30, 31}, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}));
  expect_adjoint(make("d2_wide_k", 1, 40, 7, {18, 17, 19}, {3, 3, 3}, {1, 1, 1}, {2, 2, 2}, {2, 2, 2}));
}

TEST(ConvAdjoint, TransposeAtMediumSizes) {
  expect_adjoint(transposed(make("t_k2_s2", 2, 32, 16, {12, 11, 13}, {2, 2, 2}, {2, 2, 2})));
  expect_adjoint(transposed(make("t_k3_s2_op1", 1, 12, 8, {10, 12, 9}, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}), {1, 1, 1}));
  expect_adjoint(
      transposed(make("t_d3_op2", 1, 8, 6, {9, 10, 8}, {3, 3, 3}, {1, 2, 1}, {1, 1, 2}, {3, 3, 3}), {2, 2, 1}));
}

// ---- the geometry every pass runs on ------------------------------------------------------------

// A transposed convolution runs as the convolution it transposes, with its input padded by
// conv_transpose_input_padding zero planes: for every legal (stride, dilation, output_padding) the
// sizes then agree, which cuDNN requires.
TEST(ConvGeometry, PaddedTransposedInputMakesSizesAgree) {
  int checked = 0, padded = 0;
  for (std::int64_t in = 1; in <= 5; ++in)
    for (std::int64_t k = 1; k <= 4; ++k)
      for (std::int64_t s = 1; s <= 3; ++s)
        for (std::int64_t d = 1; d <= 3; ++d)
          for (std::int64_t p = 0; p <= 3; ++p)
            for (std::int64_t op = 0; op < std::max(s, d); ++op) {
              const std::int64_t out = kernels::conv_transpose_output_size(in, k, s, p, d, op);
              if (out < 1) continue;
              const std::int64_t extra = kernels::conv_transpose_input_padding(s, op);
              EXPECT_EQ(kernels::conv_output_size(out, k, s, p, d), in + extra)
                  << "in " << in << " k " << k << " s " << s << " d " << d << " p " << p << " op " << op;
              ++checked;
              padded += extra > 0;
            }
  EXPECT_GT(checked, 1000);
  EXPECT_GT(padded, 100);
}

// The CPU twins refuse sizes that disagree, as cuDNN does, so every transposed row above that
// passes on the CPU ran on a geometry the CUDA path accepts.
TEST(ConvGeometry, CpuTwinsRefuseSizesThatDisagree) {
  kernels::Conv3dShape g;
  g.c_in = 2;
  g.c_out = 3;
  for (int a = 0; a < 3; ++a) {
    g.in[a] = 5;
    g.kernel[a] = 2;
    g.dilation[a] = 2;
    g.out[a] = 3;
  }
  ASSERT_TRUE(kernels::conv3d_sizes_agree(g));
  g.out[1] = 2;  // what an unpadded transposed input with output_padding 1, stride 1, dilation 2 gives
  EXPECT_FALSE(kernels::conv3d_sizes_agree(g));
  std::vector<float> x(static_cast<std::size_t>(g.n * g.c_in * g.in_spatial()));
  std::vector<float> w(static_cast<std::size_t>(g.c_out * g.c_in * g.kernel_volume()));
  std::vector<float> y(static_cast<std::size_t>(g.n * g.c_out * g.out_spatial()));
  ScratchArena scratch(Device::cpu());
  for (const std::function<void()>& pass : std::vector<std::function<void()>>{
           [&] { kernels::cpu::conv3d_forward(x.data(), w.data(), y.data(), g, scratch); },
           [&] { kernels::cpu::conv3d_backward_data(y.data(), w.data(), x.data(), g, scratch); },
           [&] { kernels::cpu::conv3d_backward_filter(x.data(), y.data(), w.data(), g, scratch); }}) {
    const std::string m = test::error_of(pass);
    EXPECT_NE(m.find("is not the convolution of input (5, 5, 5)"), std::string::npos) << m;
  }
}

// The CPU passes sum in an order fixed by the shape alone: results are bit-identical for any thread count.
TEST(ConvDeterminism, CpuResultsDoNotDependOnThreadCount) {
  const int threads = omp_get_max_threads();
  for (const ConvCase& k : {make("det_cpu", 2, 8, 12, {14, 16, 18}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}),
                            transposed(make("det_cpu_up", 2, 16, 8, {7, 8, 9}, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}),
                                       {1, 1, 1})}) {
    omp_set_num_threads(1);
    const auto one = run_all(k, Device::cpu(), 3);
    omp_set_num_threads(3);
    const auto three = run_all(k, Device::cpu(), 3);
    omp_set_num_threads(threads);
    for (std::size_t i = 0; i < one.size(); ++i) EXPECT_EQ(one[i], three[i]) << k.name << " output " << i;
  }
}

// ---- float32 against float64 at a U-Net-like size ---------------------------------------------

TEST(ConvPrecision, Float32AgreesWithFloat64AtUNetSize) {
  for (const ConvCase& k : {make("unet", 1, 16, 16, {24, 24, 24}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}),
                            transposed(make("unet_up", 1, 32, 16, {12, 12, 12}, {2, 2, 2}, {2, 2, 2}))}) {
    std::vector<Values> grads[2];
    Values outputs[2];
    for (int i = 0; i < 2; ++i) {
      const DType t = i == 0 ? DType::Float64 : DType::Float32;
      Operands o = make_operands(k, DType::Float64, 51);
      o.x = o.x.to(t).requires_grad_();
      o.w = o.w.to(t).requires_grad_();
      o.b = o.b.to(t).requires_grad_();
      const Tensor y = conv_op(k, o.x, o.w, o.b);
      y.backward(random_tensor(k.y_shape(), DType::Float64, 52).to(t));
      outputs[i] = values_of(y);
      grads[i] = {values_of(o.x.grad()), values_of(o.w.grad()), values_of(o.b.grad())};
    }
    EXPECT_TRUE(test::all_close(outputs[1], outputs[0], 1e-4, 1e-4)) << k.name << " y";
    EXPECT_TRUE(test::all_close(grads[1][0], grads[0][0], 1e-4, 1e-4)) << k.name << " dx";
    EXPECT_TRUE(test::all_close(grads[1][1], grads[0][1], 2e-3, 1e-4)) << k.name << " dw";
    EXPECT_TRUE(test::all_close(grads[1][2], grads[0][2], 2e-3, 1e-4)) << k.name << " db";
  }
}

// ---- the graph: one node, only the gradients asked for ----------------------------------------

TEST(ConvGraph, OneNodeAndOnlyRequestedGradients) {
  const ConvCase k = make("g", 1, 2, 3, {4, 4, 4}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1});
  Operands o = make_operands(k, DType::Float64, 61);
  o.w.requires_grad_();
  const Tensor y = conv_op(k, o.x, o.w, o.b);
  ASSERT_TRUE(y.grad_fn());
  EXPECT_EQ(y.grad_fn()->name, "conv3d");
  EXPECT_EQ(y.grad_fn()->inputs.size(), 3u);
  y.backward(ones_like(y));
  EXPECT_TRUE(o.w.grad().defined());
  EXPECT_FALSE(o.x.grad().defined());
  EXPECT_FALSE(o.b.grad().defined());
  // Without any input requiring a gradient nothing is recorded.
  EXPECT_FALSE(conv_op(k, o.x, o.w.detach(), o.b).grad_fn());
}

// ---- errors -------------------------------------------------------------------------------------

TEST(ConvErrors, BadShapesAndParametersAreNamed) {
  const Tensor x = zeros({1, 3, 5, 5, 5});
  const Tensor w = zeros({4, 2, 3, 3, 3});
  std::string m = test::error_of([&] { conv3d(x, w); });
  EXPECT_NE(m.find("(4, 2, 3, 3, 3)"), std::string::npos) << m;
  EXPECT_NE(m.find("(1, 3, 5, 5, 5)"), std::string::npos) << m;
  m = test::error_of([&] { conv3d(zeros({3, 5, 5, 5}), zeros({4, 3, 3, 3, 3})); });
  EXPECT_NE(m.find("(3, 5, 5, 5)"), std::string::npos) << m;
  m = test::error_of([&] { conv3d(x, zeros({4, 3, 3, 3})); });
  EXPECT_NE(m.find("weight"), std::string::npos) << m;
  m = test::error_of([&] { conv3d(x, zeros({4, 3, 3, 3, 3}), zeros({3})); });
  EXPECT_NE(m.find("bias"), std::string::npos) << m;
  m = test::error_of([&] { conv3d(zeros({1, 3, 2, 5, 5}), zeros({4, 3, 3, 3, 3})); });
  EXPECT_NE(m.find("smaller"), std::string::npos) << m;
  m = test::error_of([&] {
    conv3d(x, zeros({4, 3, 3, 3, 3}), Tensor(), Conv3dParams{{0, 1, 1}, {0, 0, 0}, {1, 1, 1}});
  });
  EXPECT_NE(m.find("stride"), std::string::npos) << m;
  m = test::error_of([&] { conv3d(x, zeros({4, 3, 3, 3, 3}, DType::Float64)); });
  EXPECT_FALSE(m.empty());
  // Transposed: weight is (Ci, Co, k); output_padding must stay below stride or dilation.
  m = test::error_of([&] { conv_transpose3d(x, zeros({4, 2, 2, 2, 2})); });
  EXPECT_NE(m.find("(4, 2, 2, 2, 2)"), std::string::npos) << m;
  m = test::error_of([&] {
    conv_transpose3d(x, zeros({3, 2, 2, 2, 2}), Tensor(),
                     ConvTranspose3dParams{{2, 2, 2}, {0, 0, 0}, {2, 0, 0}, {1, 1, 1}});
  });
  EXPECT_NE(m.find("output_padding"), std::string::npos) << m;
  m = test::error_of([&] { conv_transpose3d(x, zeros({3, 2, 2, 2, 2}), zeros({3})); });
  EXPECT_NE(m.find("bias"), std::string::npos) << m;
  EXPECT_NO_THROW(conv_transpose3d(x, zeros({3, 2, 2, 2, 2}), zeros({2}),
                                   ConvTranspose3dParams{{2, 2, 2}, {0, 0, 0}, {1, 1, 1}, {1, 1, 1}}));
}

// ---- CPU vs cuDNN -------------------------------------------------------------------------------

// Restores the global conv settings when a test ends, passed or not.
struct ConvSettingsGuard {
  bool deterministic = conv_deterministic(), tf32 = conv_allow_tf32();
  ~ConvSettingsGuard() {
    set_conv_deterministic(deterministic);
    set_conv_allow_tf32(tf32);
  }
};

TEST(ConvCuda, DeterministicModeIsBitIdentical) {
  VG_REQUIRE_CUDA();
  ConvSettingsGuard guard;
  set_conv_deterministic(true);
  for (const ConvCase& k : {make("det", 2, 16, 32, {20, 20, 20}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}),
                            transposed(make("det_up", 2, 32, 16, {10, 10, 10}, {2, 2, 2}, {2, 2, 2}))}) {
    const auto a = run_all(k, Device::cuda(), 81);
    const auto b = run_all(k, Device::cuda(), 81);
    for (std::size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << k.name << " output " << i;
  }
}

TEST(ConvCuda, Tf32ModeStaysClose) {
  VG_REQUIRE_CUDA();
  ConvSettingsGuard guard;
  const ConvCase k = make("tf32", 1, 16, 16, {16, 16, 16}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1});
  const auto strict = run_all(k, Device::cuda(), 91);
  set_conv_allow_tf32(true);
  const auto fast = run_all(k, Device::cuda(), 91);
  for (std::size_t i = 0; i < strict.size(); ++i) EXPECT_TRUE(test::all_close(fast[i], strict[i], 5e-2, 5e-2));
}

// Host threads converting at once share the device's cuDNN handle; each pass holds it from binding
// its stream to its last call, so concurrent runs give what one thread alone gives.
TEST(ConvCuda, ThreadsConvolvingAtOnceGetTheSingleThreadResults) {
  VG_REQUIRE_CUDA();
  ConvSettingsGuard guard;
  set_conv_deterministic(true);  // the same algorithms every run, so results can be compared bit for bit
  const std::vector<ConvCase> cases{make("threads", 2, 8, 16, {12, 12, 12}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}),
                                    transposed(make("threads_up", 2, 16, 8, {6, 6, 6}, {2, 2, 2}, {2, 2, 2}))};
  std::vector<std::vector<Values>> alone;
  for (const ConvCase& k : cases) alone.push_back(run_all(k, Device::cuda(), 71));
  constexpr int kThreads = 4, kRounds = 5;
  std::vector<std::vector<std::vector<Values>>> seen(kThreads);
  std::vector<std::string> errors(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      try {
        for (int r = 0; r < kRounds; ++r) seen[t].push_back(run_all(cases[(t + r) % cases.size()], Device::cuda(), 71));
      } catch (const std::exception& e) {
        errors[t] = e.what();
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(errors[t], "") << "thread " << t;
    for (std::size_t r = 0; r < seen[t].size(); ++r)
      EXPECT_EQ(seen[t][r], alone[(t + r) % cases.size()]) << "thread " << t << " round " << r;
  }
}

#if VOXGRAD_HAS_CUDA
// One cudnnFind per (shape, pass, settings): a second run of the same shape adds no cache entry.
TEST(ConvCuda, AlgorithmCacheFillsOncePerShape) {
  VG_REQUIRE_CUDA();
  const ConvCase k = make("cache", 1, 8, 8, {9, 10, 11}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1});
  run_all(k, Device::cuda(), 5);
  const std::int64_t after_first = kernels::cuda::conv3d_algorithm_cache_size();
  run_all(k, Device::cuda(), 6);
  EXPECT_EQ(kernels::cuda::conv3d_algorithm_cache_size(), after_first);
}
#endif

}  // namespace
}  // namespace voxgrad
