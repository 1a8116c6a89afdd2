// The CPU softmax's float exp against the library's: within 2 ulp over the range the softmax
// uses (x <= 0 after the max is subtracted) and beyond, exact at 0, 0 below the smallest normal
// float and for -inf.
#include "kernels/cpu/vector_exp.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace voxgrad::kernels::cpu {
namespace {

// Distance in units in the last place between two positive normal floats.
double ulps_apart(float a, float b) {
  return std::fabs(static_cast<double>(a) - b) / std::ldexp(1.0, std::ilogb(b) - 23);
}

TEST(VectorExp, WithinTwoUlpOfTheLibrary) {
  double worst = 0;
  for (float x = -87.0f; x <= 88.0f; x += 0.0007f) worst = std::max(worst, ulps_apart(vector_exp(x), std::exp(x)));
  EXPECT_LE(worst, 2.0);
  EXPECT_EQ(vector_exp(0.0f), 1.0f);
  EXPECT_EQ(vector_exp(-0.0f), 1.0f);
}

TEST(VectorExp, UnderflowsToZero) {
  EXPECT_EQ(vector_exp(-88.0f), 0.0f);
  EXPECT_EQ(vector_exp(-1e30f), 0.0f);
  EXPECT_EQ(vector_exp(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_GT(vector_exp(-87.3f), 0.0f);
}

}  // namespace
}  // namespace voxgrad::kernels::cpu
