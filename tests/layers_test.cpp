// The layer Modules: PyTorch's parameter names and shapes, forwards that are exactly the ops with
// the layers' own tensors, nnU-Net's initialisation statistics, BatchNorm3d's train/eval
// behaviour through Module's mode, and a state_dict round trip through a model file.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/checkpoint.h"
#include "engine/layers.h"
#include "engine/ops.h"
#include "tests/test_support.h"

namespace voxgrad {
namespace {

std::vector<std::string> names_of(const NamedTensors& list) {
  std::vector<std::string> out;
  for (const auto& [n, t] : list) out.push_back(n);
  return out;
}

std::vector<double> values(const Tensor& t) {
  std::vector<float> v = t.cpu().to_vector<float>();
  return {v.begin(), v.end()};
}

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

double std_of(const std::vector<double>& v) {
  const double m = mean_of(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size()));
}

TEST(Layers, Conv3dNamesAndShapes) {
  Conv3d conv(3, 5, 3, 2, 1);
  EXPECT_EQ(names_of(conv.state_dict()), (std::vector<std::string>{"weight", "bias"}));
  EXPECT_EQ(conv.weight().shape(), (Shape{5, 3, 3, 3, 3}));
  EXPECT_EQ(conv.bias().shape(), (Shape{5}));
  Conv3d no_bias(3, 5, 1, 1, 0, false);
  EXPECT_EQ(names_of(no_bias.state_dict()), (std::vector<std::string>{"weight"}));
  EXPECT_FALSE(no_bias.bias().defined());
}

TEST(Layers, ConvTranspose3dNamesAndShapes) {
  ConvTranspose3d up(6, 4, 2, 2);
  EXPECT_EQ(names_of(up.state_dict()), (std::vector<std::string>{"weight", "bias"}));
  EXPECT_EQ(up.weight().shape(), (Shape{6, 4, 2, 2, 2}));  // (in, out, k, k, k) as PyTorch
  EXPECT_EQ(up.bias().shape(), (Shape{4}));
}

TEST(Layers, NormNamesAndShapes) {
  InstanceNorm3d in(7);
  EXPECT_EQ(names_of(in.state_dict()), (std::vector<std::string>{"weight", "bias"}));
  EXPECT_EQ(in.weight().shape(), (Shape{7}));
  EXPECT_TRUE(InstanceNorm3d(7, false).state_dict().empty());
  BatchNorm3d bn(7);
  EXPECT_EQ(names_of(bn.named_parameters()), (std::vector<std::string>{"weight", "bias"}));
  EXPECT_EQ(names_of(bn.named_buffers()), (std::vector<std::string>{"running_mean", "running_var"}));
  for (const auto& [n, t] : bn.state_dict()) EXPECT_EQ(t.shape(), (Shape{7})) << n;
  EXPECT_EQ(values(bn.running_mean()), std::vector<double>(7, 0.0));
  EXPECT_EQ(values(bn.running_var()), std::vector<double>(7, 1.0));
  EXPECT_EQ(values(bn.weight()), std::vector<double>(7, 1.0));
  EXPECT_EQ(values(in.bias()), std::vector<double>(7, 0.0));
}

TEST(Layers, RejectsBadArguments) {
  EXPECT_THROW(Conv3d(0, 4, 3), Error);
  EXPECT_THROW(Conv3d(2, 4, 3, 0), Error);
  EXPECT_THROW(ConvTranspose3d(2, 4, 2, 2, 0, 2), Error);  // output_padding must be < stride
  EXPECT_THROW(BatchNorm3d(4, 1.5), Error);
}

TEST(Layers, Conv3dForwardIsConv3dWithItsTensors) {
  Generator gen(7);
  Conv3d conv(2, 3, 3, 2, 1, true, gen);
  // A non-zero bias, so that dropping it in forward would show.
  { NoGradGuard g; conv.bias().copy_(from_vector<float>({0.5f, -1.0f, 2.0f}, {3})); }
  Tensor x = randn({2, 2, 6, 5, 4}, gen);  // (N, Ci, D, H, W)
  Tensor y = conv(x);
  EXPECT_EQ(y.shape(), (Shape{2, 3, 3, 3, 2}));
  Conv3dParams p;
  p.stride = {2, 2, 2};
  p.padding = {1, 1, 1};
  EXPECT_EQ(values(y), values(conv3d(x, conv.weight(), conv.bias(), p)));
  // Gradients reach the layer's own parameters.
  sum(y).backward();
  EXPECT_TRUE(conv.weight().grad().defined());
  EXPECT_EQ(values(conv.bias().grad()), std::vector<double>(3, 2.0 * 3 * 3 * 2));
}

TEST(Layers, ConvTranspose3dForwardIsConvTranspose3dWithItsTensors) {
  Generator gen(8);
  ConvTranspose3d up(4, 2, 2, 2, 0, 0, true, gen);
  { NoGradGuard g; up.bias().copy_(from_vector<float>({0.25f, -0.75f}, {2})); }
  Tensor x = randn({1, 4, 3, 2, 5}, gen);
  Tensor y = up(x);
  EXPECT_EQ(y.shape(), (Shape{1, 2, 6, 4, 10}));
  ConvTranspose3dParams p;
  p.stride = {2, 2, 2};
  EXPECT_EQ(values(y), values(conv_transpose3d(x, up.weight(), up.bias(), p)));
}

TEST(Layers, InstanceNorm3dForwardIsInstanceNorm3d) {
  Generator gen(9);
  InstanceNorm3d norm(3);
  { NoGradGuard g; norm.weight().copy_(from_vector<float>({1.f, 2.f, 3.f}, {3})); }
  Tensor x = randn({2, 3, 4, 4, 4}, gen);
  EXPECT_EQ(values(norm(x)), values(instance_norm3d(x, norm.weight(), norm.bias(), 1e-5)));
}

// kaiming_normal_(a = 0.01, fan_in): std = sqrt(2 / (1 + a^2) / fan_in); over ~100k draws the
// sample std is within 1% of it, which tells fan_in = in*k^3 from out*k^3 for these layers.
TEST(Layers, PerAxisKernelsKeepPyTorchsLayoutsAndFanIn) {
  Generator gen(11);
  Conv3d conv(2, 3, Triple{1, 3, 5}, Triple{1, 2, 2}, Triple{0, 1, 2}, true, gen);
  EXPECT_EQ(conv.weight().shape(), (Shape{3, 2, 1, 3, 5}));
  EXPECT_EQ(conv.params().stride, (Triple{1, 2, 2}));
  EXPECT_EQ(conv.params().padding, (Triple{0, 1, 2}));
  Tensor x = randn({1, 2, 3, 6, 7}, gen);
  Tensor y = conv(x);
  EXPECT_EQ(y.shape(), (Shape{1, 3, 3, 3, 4}));  // "same" padding (k - 1) / 2, then the stride
  EXPECT_EQ(values(y), values(conv3d(x, conv.weight(), conv.bias(), conv.params())));
  ConvTranspose3d up(3, 2, Triple{1, 2, 2}, Triple{1, 2, 2}, Triple{0, 0, 0}, Triple{0, 0, 0}, false, gen);
  EXPECT_EQ(up.weight().shape(), (Shape{3, 2, 1, 2, 2}));  // (in, out, kD, kH, kW)
  EXPECT_EQ(names_of(up.state_dict()), (std::vector<std::string>{"weight"}));
  EXPECT_EQ(up(y).shape(), (Shape{1, 2, 3, 6, 8}));
  // The cubic constructors are the per-axis ones with equal axes (same draws, same generator state).
  Generator g1(5), g2(5);
  Conv3d cubic(2, 4, 3, 2, 1, true, g1);
  Conv3d axes(2, 4, Triple{3, 3, 3}, Triple{2, 2, 2}, Triple{1, 1, 1}, true, g2);
  EXPECT_EQ(values(cubic.weight()), values(axes.weight()));
  EXPECT_EQ(cubic.params().stride, axes.params().stride);
  // fan_in = in * kD * kH * kW: a (64, 32, 1, 3, 3) weight has std sqrt(2 / 1.0001 / 288).
  Conv3d wide(32, 64, Triple{1, 3, 3}, Triple{1, 1, 1}, Triple{0, 1, 1}, true, gen);
  const double expected = std::sqrt(2.0 / (1.0 + 1e-4) / (32 * 9));
  EXPECT_NEAR(std_of(values(wide.weight())), expected, 0.03 * expected);
  EXPECT_THROW(Conv3d(2, 4, Triple{1, 0, 3}, Triple{1, 1, 1}, Triple{0, 0, 1}), Error);
  EXPECT_THROW(ConvTranspose3d(2, 4, Triple{1, 2, 2}, Triple{1, 2, 2}, Triple{0, 0, 0}, Triple{1, 0, 0}), Error);
}

TEST(Layers, BatchNorm3dWithoutAffineAndWithNumBatchesTracked) {
  BatchNorm3d plain(4, 0.1, 1e-5, /*affine=*/false);
  EXPECT_TRUE(plain.named_parameters().empty());
  EXPECT_EQ(names_of(plain.state_dict()), (std::vector<std::string>{"running_mean", "running_var"}));
  BatchNorm3d tracked(4, 0.1, 1e-3, true, /*track_num_batches=*/true);
  EXPECT_EQ(names_of(tracked.state_dict()),
            (std::vector<std::string>{"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}));
  EXPECT_EQ(tracked.num_batches_tracked().dtype(), DType::Int32);
  EXPECT_EQ(tracked.num_batches_tracked().shape(), Shape{});
  EXPECT_EQ(tracked.eps(), 1e-3);
  Generator gen(12);
  Tensor x = randn({2, 4, 3, 3, 3}, gen);
  tracked(x);
  tracked(x);
  EXPECT_EQ(tracked.num_batches_tracked().item(), 2.0);  // counted in training
  tracked.eval();
  Tensor y = tracked(x);
  EXPECT_EQ(tracked.num_batches_tracked().item(), 2.0);  // not at inference
  EXPECT_EQ(values(y), values(batch_norm3d(x, tracked.weight(), tracked.bias(), tracked.running_mean(),
                                           tracked.running_var(), false, 0.1, 1e-3)));
  plain.eval();
  EXPECT_EQ(values(plain(x)), values(batch_norm3d(x, {}, {}, plain.running_mean(), plain.running_var(), false)));
  // The counter goes on from a loaded value, and stops at the int32 maximum rather than wrapping.
  tracked.train();
  tracked.num_batches_tracked().copy_(from_vector<std::int32_t>({2147483646}, {}));
  tracked(x);
  EXPECT_EQ(tracked.num_batches_tracked().item(), 2147483647.0);
  tracked(x);
  EXPECT_EQ(tracked.num_batches_tracked().item(), 2147483647.0);
}

// On a GPU the counter is counted on the device (no read back per forward), as on the CPU.
TEST(Layers, BatchNorm3dCountsBatchesOnTheGpu) {
  VG_REQUIRE_CUDA();
  BatchNorm3d tracked(4, 0.1, 1e-5, true, /*track_num_batches=*/true);
  tracked.to(Device::cuda(0));
  tracked.num_batches_tracked().copy_(from_vector<std::int32_t>({5}, {}));
  Generator gen(12);
  const Tensor x = randn({2, 4, 3, 3, 3}, gen).to(Device::cuda(0));
  for (int i = 0; i < 3; ++i) tracked(x);
  EXPECT_TRUE(tracked.num_batches_tracked().device().is_cuda());
  EXPECT_EQ(tracked.num_batches_tracked().item(), 8.0);
  tracked.eval();
  tracked(x);
  EXPECT_EQ(tracked.num_batches_tracked().item(), 8.0);
}

TEST(Layers, AvgPool3dPoolsPerAxis) {
  AvgPool3d pool(Triple{1, 2, 2}, Triple{1, 2, 2});
  EXPECT_TRUE(pool.state_dict().empty());
  Tensor x = arange(0, 16).to(DType::Float32);
  x = reshape(x, {1, 1, 1, 4, 4});
  EXPECT_EQ(values(pool(x)), (std::vector<double>{2.5, 4.5, 10.5, 12.5}));
}

TEST(Layers, KaimingInitStatistics) {
  const double gain2 = 2.0 / (1.0 + 0.01 * 0.01);
  Generator gen(10);
  Conv3d conv(64, 16, 5, 1, 0, true, gen);  // fan_in 64 * 125 = 8000 (out * k^3 would be 2000)
  std::vector<double> w = values(conv.weight());
  ASSERT_EQ(w.size(), 16u * 64 * 125);
  EXPECT_NEAR(mean_of(w), 0.0, 0.01 * std::sqrt(gain2 / 8000));
  EXPECT_NEAR(std_of(w), std::sqrt(gain2 / 8000), 0.01 * std::sqrt(gain2 / 8000));
  EXPECT_EQ(values(conv.bias()), std::vector<double>(16, 0.0));

  // PyTorch reads fan_in from weight dim 1 (out channels) of a transposed conv: 16 * 4^3 = 1024.
  ConvTranspose3d up(64, 16, 4, 2, 0, 0, true, gen);
  std::vector<double> u = values(up.weight());
  EXPECT_NEAR(std_of(u), std::sqrt(gain2 / 1024), 0.01 * std::sqrt(gain2 / 1024));
  EXPECT_EQ(values(up.bias()), std::vector<double>(16, 0.0));
}

TEST(Layers, InitFollowsTheGenerator) {
  Generator a(3), b(3), c(4);
  EXPECT_EQ(values(Conv3d(2, 2, 3, 1, 0, true, a).weight()), values(Conv3d(2, 2, 3, 1, 0, true, b).weight()));
  EXPECT_NE(values(Conv3d(2, 2, 3, 1, 0, true, a).weight()), values(Conv3d(2, 2, 3, 1, 0, true, c).weight()));
}

TEST(Layers, BatchNorm3dTrainAndEvalThroughTheModule) {
  Generator gen(11);
  BatchNorm3d bn(2);
  Tensor x = add(mul(randn({4, 2, 3, 3, 3}, gen), 3.0), 5.0);  // mean ~5, var ~9
  const std::vector<double> xv = values(x);
  const std::int64_t per = 3 * 3 * 3;
  // Batch statistics of each channel (biased for normalising, unbiased for the running variance).
  std::vector<double> mean(2, 0.0), var(2, 0.0);
  const double count = 4.0 * per;
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(xv.size()); ++i) mean[(i / per) % 2] += xv[i] / count;
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(xv.size()); ++i) {
    const double d = xv[i] - mean[(i / per) % 2];
    var[(i / per) % 2] += d * d / count;
  }

  ASSERT_TRUE(bn.is_training());
  std::vector<double> y = values(bn(x));
  for (std::size_t i = 0; i < y.size(); ++i) {
    const int c = static_cast<int>((i / per) % 2);
    ASSERT_NEAR(y[i], (xv[i] - mean[c]) / std::sqrt(var[c] + 1e-5), 1e-4) << i;
  }
  const std::vector<double> rm = values(bn.running_mean()), rv = values(bn.running_var());
  for (int c = 0; c < 2; ++c) {
    EXPECT_NEAR(rm[c], 0.1 * mean[c], 1e-5);
    EXPECT_NEAR(rv[c], 0.9 + 0.1 * var[c] * count / (count - 1), 1e-4);
  }

  // Eval mode (set through a parent, as a model would) uses and keeps the running statistics.
  Sequential net({std::make_shared<LeakyReLU>(1.0)});
  auto shared = std::make_shared<BatchNorm3d>(2);
  net.push_back(shared);
  { NoGradGuard g; shared->running_mean().copy_(from_vector<float>({1.f, -2.f}, {2}));
    shared->running_var().copy_(from_vector<float>({4.f, 0.25f}, {2})); }
  net.eval();
  EXPECT_FALSE(shared->is_training());
  std::vector<double> z = values(net(x));
  for (std::size_t i = 0; i < z.size(); ++i) {
    const int c = static_cast<int>((i / per) % 2);
    const double m = c == 0 ? 1.0 : -2.0, v = c == 0 ? 4.0 : 0.25;
    ASSERT_NEAR(z[i], (xv[i] - m) / std::sqrt(v + 1e-5), 1e-4) << i;
  }
  EXPECT_EQ(values(shared->running_mean()), (std::vector<double>{1.0, -2.0}));
  EXPECT_EQ(values(shared->running_var()), (std::vector<double>{4.0, 0.25}));
}

// A layer stack whose every tensor differs between two seeds.
std::shared_ptr<Sequential> stack(std::uint64_t seed) {
  Generator gen(seed);
  auto net = std::make_shared<Sequential>();
  net->push_back(std::make_shared<Conv3d>(1, 3, 3, 1, 1, true, gen));
  net->push_back(std::make_shared<BatchNorm3d>(3));
  net->push_back(std::make_shared<InstanceNorm3d>(3));
  net->push_back(std::make_shared<ConvTranspose3d>(3, 2, 2, 2, 0, 0, true, gen));
  // Non-default biases and statistics, so a load that skipped them would show.
  NoGradGuard g;
  for (auto& [n, t] : net->state_dict())
    if (n.find("weight") == std::string::npos) t.copy_(rand(t.shape(), gen, t.dtype(), t.device(), 0.5, 1.5));
  return net;
}

TEST(Layers, StateDictRoundTripsThroughAModelFile) {
  auto a = stack(1), b = stack(2);
  EXPECT_EQ(names_of(a->state_dict()),
            (std::vector<std::string>{"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                                      "2.weight", "2.bias", "3.weight", "3.bias"}));
  const std::string path = test::temp_dir("layers") + "/stack.safetensors";
  save_model(path, *a);
  load_model(path, *b);
  NamedTensors sa = a->state_dict(), sb = b->state_dict();
  ASSERT_EQ(sa.size(), sb.size());
  for (std::size_t i = 0; i < sa.size(); ++i) EXPECT_EQ(values(sa[i].second), values(sb[i].second)) << sa[i].first;
  a->eval();
  b->eval();
  Tensor x = randn({1, 1, 4, 4, 4});
  EXPECT_EQ(values((*a)(x)), values((*b)(x)));
}

}  // namespace
}  // namespace voxgrad
