// The CPU convolution's SIMD variants (AVX-512, AVX2+FMA) against the baseline build of the same
// micro-kernel: forward, input, weight and bias gradients in float32 and float64, at sizes whose
// channel counts and output positions are not multiples of the register block (so the partial
// tiles run), and the variant switch itself. A variant this CPU lacks is skipped by name.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/conv.h"
#include "kernels/conv3d.h"
#include "tests/test_support.h"

namespace voxgrad {
namespace {

using Values = std::vector<double>;

struct SimdCase {
  std::string name;
  bool transpose = false;
  std::int64_t n, ci, co;
  Triple in, kernel, stride, padding, output_padding{0, 0, 0};

  Shape x_shape() const { return {n, ci, in[0], in[1], in[2]}; }
  Shape w_shape() const {
    return transpose ? Shape{ci, co, kernel[0], kernel[1], kernel[2]} : Shape{co, ci, kernel[0], kernel[1], kernel[2]};
  }
};

// The register block is 6 rows by one 64-byte vector (16 floats, 8 doubles); every size below
// leaves a remainder in both directions, and "many_tiles" spans several vol2col tiles.
std::vector<SimdCase> simd_cases() {
  return {
      {"odd_k3_pad1", false, 2, 5, 7, {7, 9, 11}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}},
      {"odd_k3_stride2", false, 1, 3, 13, {9, 8, 7}, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}},
      {"odd_k1", false, 3, 11, 1, {5, 3, 7}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}},
      {"many_tiles", false, 1, 17, 9, {17, 19, 21}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}},
      {"t_k2_s2", true, 2, 11, 5, {5, 6, 7}, {2, 2, 2}, {2, 2, 2}, {0, 0, 0}},
      {"t_k3_s2_op1", true, 1, 7, 3, {5, 4, 3}, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, {1, 1, 1}},
  };
}

Values values_of(const Tensor& t) { return t.cpu().to(DType::Float64).to_vector<double>(); }

// y, dx, dw, db of L = <op(x, w, b), r> for fixed random operands, as float64 host values.
std::vector<Values> run_case(const SimdCase& k, DType t) {
  Generator gen(7);
  Tensor x = randn(k.x_shape(), gen, t), w = randn(k.w_shape(), gen, t), b = randn({k.co}, gen, t);
  x.requires_grad_();
  w.requires_grad_();
  b.requires_grad_();
  const Tensor y = k.transpose
                       ? conv_transpose3d(x, w, b, ConvTranspose3dParams{k.stride, k.padding, k.output_padding, {1, 1, 1}})
                       : conv3d(x, w, b, Conv3dParams{k.stride, k.padding, {1, 1, 1}});
  const Tensor r = randn(y.shape(), gen, t);
  y.backward(r);
  return {values_of(y), values_of(x.grad()), values_of(w.grad()), values_of(b.grad())};
}

// Restores the variant the process started with, whatever a test switched to.
class ConvSimd : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { initial_ = kernels::cpu::conv3d_simd_variant(); }
  void TearDown() override { ASSERT_TRUE(kernels::cpu::set_conv3d_simd_variant(initial_.c_str())); }
  std::string initial_;
};

TEST_P(ConvSimd, MatchesBaselineVariant) {
  const std::string isa = GetParam();
  if (!kernels::cpu::set_conv3d_simd_variant(isa.c_str())) GTEST_SKIP() << "this CPU lacks " << isa;
  const char* names[] = {"y", "dx", "dw", "db"};
  for (const SimdCase& k : simd_cases()) {
    for (const DType t : {DType::Float32, DType::Float64}) {
      ASSERT_TRUE(kernels::cpu::set_conv3d_simd_variant(isa.c_str()));
      ASSERT_EQ(std::string(kernels::cpu::conv3d_simd_variant()), isa);
      const std::vector<Values> got = run_case(k, t);
      ASSERT_TRUE(kernels::cpu::set_conv3d_simd_variant("baseline"));
      const std::vector<Values> want = run_case(k, t);
      // Only the rounding differs: FMA contraction and the order within a vector. y and dx sum a
      // few hundred products of unit-scale values; dw and db sum one per output position, and
      // their partial sums (so their rounding) grow as the square root of that count.
      const double positions = static_cast<double>(want[0].size()) / static_cast<double>(k.co);
      const double base = t == DType::Float32 ? 2e-5 : 1e-12;
      for (std::size_t i = 0; i < want.size(); ++i) {
        const double tol = i < 2 ? base : base * std::max(1.0, std::sqrt(positions / 400.0));
        EXPECT_TRUE(test::all_close(got[i], want[i], tol, tol))
            << isa << " vs baseline, " << k.name << ", " << dtype_name(t) << ", " << names[i];
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, ConvSimd, ::testing::Values("avx512", "avx2", "baseline"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

TEST(ConvSimdSelection, UnknownNameIsRefusedAndChangesNothing) {
  const std::string before = kernels::cpu::conv3d_simd_variant();
  EXPECT_FALSE(kernels::cpu::set_conv3d_simd_variant("sse9"));
  EXPECT_FALSE(kernels::cpu::set_conv3d_simd_variant(nullptr));
  EXPECT_EQ(kernels::cpu::conv3d_simd_variant(), before);
  EXPECT_TRUE(kernels::cpu::set_conv3d_simd_variant("baseline"));  // available on every CPU
  EXPECT_STREQ(kernels::cpu::conv3d_simd_variant(), "baseline");
  EXPECT_TRUE(kernels::cpu::set_conv3d_simd_variant(before.c_str()));
}

}  // namespace
}  // namespace voxgrad
