// Autograd semantics: topological order on diamonds, accumulation for reused tensors and across
// backward calls, no-grad mode, released saved tensors and the freed-graph error.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/allocator.h"
#include "engine/ops.h"
#include "tests/test_support.h"

namespace voxgrad {
namespace {

Tensor param(std::vector<double> v) {
  const Shape s{static_cast<std::int64_t>(v.size())};
  return from_vector(v, s).requires_grad_();
}

TEST(Autograd, DiamondGraphSumsBothPaths) {
  // y = sum(a*b + exp(a)) with a used on two paths: dy/da = b + exp(a), dy/db = a.
  Tensor a = param({0.5, -1.0, 2.0}), b = param({3.0, 4.0, -5.0});
  Tensor y = sum(a * b + exp(a));
  y.backward();
  const auto ga = a.grad().to_vector<double>(), gb = b.grad().to_vector<double>();
  const std::vector<double> av{0.5, -1.0, 2.0}, bv{3.0, 4.0, -5.0};
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(ga[i], bv[i] + std::exp(av[i]), 1e-12);
    EXPECT_NEAR(gb[i], av[i], 1e-12);
  }
}

TEST(Autograd, TensorUsedTwiceInOneOpAccumulates) {
  Tensor a = param({1.0, -2.0});
  sum(a * a).backward();  // d/da a^2 = 2a
  EXPECT_EQ(a.grad().to_vector<double>(), (std::vector<double>{2.0, -4.0}));
}

TEST(Autograd, DeepDiamondVisitsEachNodeOnce) {
  // x -> h1 = x*2; h2 = h1 + h1; h3 = h2 * h1; y = sum(h3): y = 8 x^2, dy/dx = 16 x.
  Tensor x = param({1.0, 3.0});
  Tensor h1 = x * 2.0;
  Tensor h2 = h1 + h1;
  Tensor y = sum(h2 * h1);
  y.backward();
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{16.0, 48.0}));
}

TEST(Autograd, GradientsAccumulateAcrossBackwardCallsUntilZeroed) {
  Tensor a = param({1.0, 2.0});
  sum(a * 3.0).backward();
  sum(a * 3.0).backward();
  EXPECT_EQ(a.grad().to_vector<double>(), (std::vector<double>{6.0, 6.0}));
  a.zero_grad();
  EXPECT_FALSE(a.grad().defined());
  sum(a).backward();
  EXPECT_EQ(a.grad().to_vector<double>(), (std::vector<double>{1.0, 1.0}));
}

TEST(Autograd, LeafGradientDoesNotAliasOtherGradients) {
  // add's backward hands the same gradient to both inputs; each leaf must own a copy.
  Tensor a = param({1.0}), b = param({2.0});
  sum(a + b).backward();
  b.grad().copy_(from_vector(std::vector<double>{100.0}, {1}));
  EXPECT_EQ(a.grad().to_vector<double>(), (std::vector<double>{1.0}));
}

TEST(Autograd, NoGradGuardRecordsNothing) {
  Tensor a = param({1.0, 2.0});
  {
    NoGradGuard guard;
    EXPECT_FALSE(grad_mode_enabled());
    Tensor y = a * 2.0;
    EXPECT_FALSE(y.requires_grad());
    EXPECT_EQ(y.grad_fn(), nullptr);
    EXPECT_THROW(sum(y).backward(), Error);
  }
  EXPECT_TRUE(grad_mode_enabled());
  EXPECT_TRUE((a * 2.0).requires_grad());
}

TEST(Autograd, ConstantsGetNoGradientAndNeedNone) {
  Tensor a = param({1.0, 2.0});
  Tensor c = from_vector(std::vector<double>{5.0, 6.0}, {2});
  sum(a * c).backward();
  EXPECT_FALSE(c.grad().defined());
  EXPECT_EQ(a.grad().to_vector<double>(), (std::vector<double>{5.0, 6.0}));
  EXPECT_FALSE((c * c).requires_grad());
}

TEST(Autograd, BackwardThroughFreedGraphFailsClearly) {
  Tensor a = param({1.0, 2.0});
  Tensor y = sum(exp(a));
  y.backward();
  try {
    y.backward();
    FAIL() << "second backward did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("freed graph"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("retain_graph"), std::string::npos) << e.what();
  }
}

TEST(Autograd, RetainGraphAllowsASecondBackward) {
  Tensor a = param({0.0, 1.0});
  Tensor y = sum(exp(a));
  y.backward(true);
  y.backward();
  EXPECT_NEAR(a.grad().to_vector<double>()[1], 2 * std::exp(1.0), 1e-12);
}

TEST(Autograd, SavedTensorsAreReleasedAfterBackward) {
  Tensor a = from_vector(std::vector<double>(100000, 0.5), {100000}).requires_grad_();
  Tensor y = sum(exp(a));  // exp saves its 800 kB output inside the graph
  const auto with_graph = host_allocator_stats().bytes_in_use;
  y.backward();
  const auto after = host_allocator_stats().bytes_in_use;
  // Released: exp's saved output; added: a's gradient (same size). Net: not more than before.
  EXPECT_LE(after, with_graph);
  Tensor z = sum(exp(a));
  const auto graph_again = host_allocator_stats().bytes_in_use;
  EXPECT_GE(graph_again, after + 800000);
  z.backward();
  EXPECT_LE(host_allocator_stats().bytes_in_use, graph_again - 800000);
}

TEST(Autograd, RequiresGradOnlyForFloatingLeaves) {
  Tensor a = param({1.0});
  Tensor y = a * 2.0;
  EXPECT_FALSE(y.is_leaf());
  EXPECT_THROW(y.requires_grad_(), Error);
  EXPECT_THROW(zeros({2}, DType::Int32).requires_grad_(), Error);
  EXPECT_THROW(sum(a * 1.0 + 1.0).backward(ones({2}, DType::Float64)), Error);  // wrong grad_output shape
}

TEST(Autograd, NonScalarBackwardNeedsGradOutput) {
  Tensor a = param({1.0, 2.0});
  Tensor y = a * 2.0;
  EXPECT_THROW(y.backward(), Error);
  y.backward(from_vector(std::vector<double>{1.0, 10.0}, {2}));
  EXPECT_EQ(a.grad().to_vector<double>(), (std::vector<double>{2.0, 20.0}));
}

TEST(Autograd, CudaGraphRunsOnTheDevice) {
  VG_REQUIRE_CUDA();
  Tensor a = from_vector(std::vector<float>{0.5f, -1.0f, 2.0f}, {3}, Device::cuda()).requires_grad_();
  Tensor b = from_vector(std::vector<float>{3.0f, 4.0f, -5.0f}, {3}, Device::cuda()).requires_grad_();
  sum(a * b + exp(a)).backward();
  EXPECT_EQ(a.grad().device(), Device::cuda());
  const auto ga = a.grad().to_vector<float>();
  EXPECT_NEAR(ga[0], 3.0f + std::exp(0.5f), 1e-5);
  EXPECT_NEAR(b.grad().to_vector<float>()[2], 2.0f, 1e-6);
}

}  // namespace
}  // namespace voxgrad
