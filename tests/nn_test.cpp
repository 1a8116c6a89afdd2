// The Module API: PyTorch state_dict names for nested modules, train/eval propagation, moves
// between devices that every handle follows, Sequential and LeakyReLU, and Kaiming-normal init.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/nn.h"
#include "engine/ops.h"
#include "tests/test_support.h"

namespace voxgrad {
namespace {

std::vector<std::string> names_of(const NamedTensors& list) {
  std::vector<std::string> out;
  for (const auto& [n, t] : list) out.push_back(n);
  return out;
}

// y = weight * x + bias per channel; a buffer that counts nothing but must be carried along.
class Affine : public Module {
 public:
  explicit Affine(std::int64_t channels) {
    weight_ = register_parameter("weight", ones({channels}));
    bias_ = register_parameter("bias", zeros({channels}));
    register_buffer("running_mean", zeros({channels}));
  }
  Tensor forward(const Tensor& x) override { return x * weight_ + bias_; }
  const Tensor& weight() const { return weight_; }

 private:
  Tensor weight_, bias_;
};

// A module with a child of its own, to get a two-level name ("1.inner.bias").
class Block : public Module {
 public:
  Block() {
    scale_ = register_parameter("scale", full({1}, 2.0));
    inner_ = register_module("inner", std::make_shared<Affine>(3));
  }
  Tensor forward(const Tensor& x) override { return inner_->forward(x) * scale_; }
  Affine& inner() { return *inner_; }

 private:
  Tensor scale_;
  std::shared_ptr<Affine> inner_;
};

TEST(Nn, StateDictNamesFollowPyTorch) {
  Sequential net({std::make_shared<Affine>(3), std::make_shared<Block>(), std::make_shared<LeakyReLU>()});
  EXPECT_EQ(names_of(net.named_parameters()),
            (std::vector<std::string>{"0.weight", "0.bias", "1.scale", "1.inner.weight", "1.inner.bias"}));
  EXPECT_EQ(names_of(net.named_buffers()), (std::vector<std::string>{"0.running_mean", "1.inner.running_mean"}));
  EXPECT_EQ(names_of(net.state_dict()),
            (std::vector<std::string>{"0.weight", "0.bias", "0.running_mean", "1.scale", "1.inner.weight",
                                      "1.inner.bias", "1.inner.running_mean"}));
  EXPECT_EQ(net.parameters().size(), 5u);
  for (const Tensor& p : net.parameters()) EXPECT_TRUE(p.requires_grad());
  for (const auto& [n, b] : net.named_buffers()) EXPECT_FALSE(b.requires_grad()) << n;
  // The registry holds the very tensors the layers use.
  auto& block = dynamic_cast<Block&>(net[1]);
  EXPECT_EQ(net.named_parameters()[3].second.impl(), block.inner().weight().impl());
}

TEST(Nn, RegistrationRefusesDuplicateAndDottedNames) {
  struct Bad : Module {
    explicit Bad(const std::string& second) {
      register_parameter("w", ones({1}));
      register_buffer(second, ones({1}));
    }
    Tensor forward(const Tensor& x) override { return x; }
  };
  EXPECT_THROW(Bad("w"), Error);
  EXPECT_THROW(Bad("a.b"), Error);
  EXPECT_NO_THROW(Bad("b"));
}

// nnU-Net's ConvDropoutNormReLU holds its conv as `conv` and again inside `all_modules`.
TEST(Nn, AChildRegisteredTwiceIsListedTwiceInTheStateDictOnceInParameters) {
  struct Twice : Module {
    Twice() {
      auto affine = register_module("conv", std::make_shared<Affine>(2));
      register_module("all_modules", std::make_shared<Sequential>(std::vector<std::shared_ptr<Module>>{affine}));
    }
    Tensor forward(const Tensor& x) override { return x; }
  };
  Twice net;
  EXPECT_EQ(names_of(net.state_dict()),
            (std::vector<std::string>{"conv.weight", "conv.bias", "conv.running_mean", "all_modules.0.weight",
                                      "all_modules.0.bias", "all_modules.0.running_mean"}));
  EXPECT_EQ(names_of(net.named_parameters()), (std::vector<std::string>{"conv.weight", "conv.bias"}));
  EXPECT_EQ(names_of(net.named_buffers()), (std::vector<std::string>{"conv.running_mean"}));
  EXPECT_EQ(net.parameters().size(), 2u);
  const NamedTensors sd = net.state_dict();
  EXPECT_EQ(sd[0].second.impl(), sd[3].second.impl());  // one tensor, two names
}

TEST(Nn, ToDTypeConvertsFloatingTensorsInPlaceAndKeepsIntegerBuffers) {
  struct Mixed : Module {
    Mixed() {
      weight = register_parameter("weight", from_vector<float>({1.5f, -2.25f}, {2}));
      count = register_buffer("count", zeros({}, DType::Int32));
    }
    Tensor forward(const Tensor& x) override { return x * weight; }
    Tensor weight, count;
  };
  Mixed m;
  const Tensor handle = m.weight;
  m.to(DType::Float64);
  EXPECT_EQ(handle.dtype(), DType::Float64);  // every handle follows
  EXPECT_EQ(handle.to_vector<double>(), (std::vector<double>{1.5, -2.25}));
  EXPECT_TRUE(handle.requires_grad());
  EXPECT_EQ(m.count.dtype(), DType::Int32);
  m.to(DType::Float32);
  EXPECT_EQ(m.weight.to_vector<float>(), (std::vector<float>{1.5f, -2.25f}));
  EXPECT_THROW(m.to(DType::Int32), Error);
}

TEST(Nn, ZeroInitGuardSkipsTheDrawsWhileAlive) {
  Generator gen(3);
  Tensor w = ones({64});
  {
    ZeroInitGuard outer;
    {
      ZeroInitGuard inner;
      EXPECT_TRUE(ZeroInitGuard::active());
    }
    kaiming_normal_(w, 8, 0.01, gen);  // still inside the outer guard
  }
  EXPECT_EQ(w.to_vector<float>(), std::vector<float>(64, 0.f));
  EXPECT_EQ(gen.offset(), 0u);
  EXPECT_FALSE(ZeroInitGuard::active());
  kaiming_normal_(w, 8, 0.01, gen);
  EXPECT_GT(gen.offset(), 0u);
  EXPECT_NE(w.to_vector<float>(), std::vector<float>(64, 0.f));
}

TEST(Nn, ReLUIsRelu) {
  ReLU r;
  EXPECT_EQ(r(from_vector<float>({-1.f, 0.f, 2.f}, {3})).to_vector<float>(), (std::vector<float>{0.f, 0.f, 2.f}));
}

TEST(Nn, TrainEvalPropagatesToEveryChild) {
  auto block = std::make_shared<Block>();
  Sequential net({std::make_shared<Affine>(3), block});
  EXPECT_TRUE(net.is_training());
  net.eval();
  EXPECT_FALSE(net.is_training());
  EXPECT_FALSE(block->is_training());
  EXPECT_FALSE(block->inner().is_training());
  net.train();
  EXPECT_TRUE(block->inner().is_training());
  // A child added to a module in eval mode joins it in eval mode.
  net.eval();
  net.push_back(std::make_shared<Affine>(3));
  EXPECT_FALSE(net[2].is_training());
}

TEST(Nn, SequentialRunsChildrenInOrderAndBackpropagates) {
  Sequential net({std::make_shared<Affine>(2), std::make_shared<LeakyReLU>(0.1)});
  Tensor x = from_vector<float>({1, -2, 3, -4}, {2, 2});
  Tensor y = net(x);
  EXPECT_EQ(y.to_vector<float>(), (std::vector<float>{1, -0.2f, 3, -0.4f}));
  sum(y).backward();
  const Tensor& gw = net.named_parameters()[0].second.grad();
  ASSERT_TRUE(gw.defined());
  // d/dw of sum(leaky(w x + b)) per channel: 1 + 3 for channel 0, 0.1 (-2) + 0.1 (-4) for channel 1.
  const auto g = gw.to_vector<float>();
  EXPECT_NEAR(g[0], 4.0f, 1e-6f);
  EXPECT_NEAR(g[1], -0.6f, 1e-6f);
  net.zero_grad();
  EXPECT_FALSE(net.named_parameters()[0].second.grad().defined());
}

TEST(Nn, ToCpuKeepsHandlesAndRequiresGrad) {
  Affine layer(3);
  Tensor before = layer.weight();
  layer.to(Device::cpu());
  EXPECT_EQ(layer.weight().impl(), before.impl());
  EXPECT_TRUE(layer.weight().requires_grad());
  EXPECT_TRUE(layer.weight().device().is_cpu());
}

TEST(Nn, ToCudaAndBackMovesParametersBuffersAndGradients) {
  VG_REQUIRE_CUDA();
  Sequential net({std::make_shared<Affine>(3), std::make_shared<Block>()});
  sum(net(from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3}))).backward();
  const auto before = net.state_dict();
  std::vector<std::vector<float>> values;
  for (const auto& [n, t] : before) values.push_back(t.to_vector<float>());
  net.to(Device::cuda());
  auto& block = dynamic_cast<Block&>(net[1]);
  EXPECT_TRUE(block.inner().weight().device().is_cuda());  // the layer's own handle moved
  for (const auto& [n, t] : net.state_dict()) EXPECT_TRUE(t.device().is_cuda()) << n;
  for (const Tensor& p : net.parameters()) {
    EXPECT_TRUE(p.requires_grad());
    EXPECT_TRUE(p.grad().device().is_cuda());
  }
  Tensor y = net(from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3}, Device::cuda()));
  EXPECT_TRUE(y.device().is_cuda());
  net.to(Device::cpu());
  const auto after = net.state_dict();
  for (std::size_t i = 0; i < after.size(); ++i) EXPECT_EQ(after[i].second.to_vector<float>(), values[i]);
}

TEST(Nn, KaimingNormalHasNnUNetStd) {
  Generator gen(1234);
  // A Conv3d weight (32, 16, 3, 3, 3): fan_in = 16 * 27.
  Tensor w = zeros({32, 16, 3, 3, 3}, DType::Float64);
  const std::int64_t fan_in = 16 * 27;
  kaiming_normal_(w, fan_in, 0.01, gen);
  const auto v = w.to_vector<double>();
  double mean = 0, sq = 0;
  for (double x : v) mean += x;
  mean /= static_cast<double>(v.size());
  for (double x : v) sq += (x - mean) * (x - mean);
  const double std = std::sqrt(sq / static_cast<double>(v.size() - 1));
  const double expected = std::sqrt(2.0 / (1.0 + 0.01 * 0.01)) / std::sqrt(static_cast<double>(fan_in));
  // 13824 draws: the sample std is within about 0.6 % (1 sigma) of the true one.
  EXPECT_NEAR(std, expected, 0.03 * expected);
  EXPECT_NEAR(mean, 0.0, 0.05 * expected);
  // The slope enters the gain: a = 1 halves the variance of a = 0.
  Tensor w1 = zeros({20000}, DType::Float64);
  kaiming_normal_(w1, 10, 1.0, gen);
  double sq1 = 0;
  for (double x : w1.to_vector<double>()) sq1 += x * x;
  EXPECT_NEAR(std::sqrt(sq1 / 20000), 1.0 / std::sqrt(10.0), 0.03 / std::sqrt(10.0));
  EXPECT_THROW(kaiming_normal_(w1, 0), Error);
}

}  // namespace
}  // namespace voxgrad
