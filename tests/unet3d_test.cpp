// models/unet3d: state_dict names and the parameter count from the topology formula, output shapes
// with and without deep supervision, refusal of sizes the levels cannot divide, the batch-norm
// variant, a tiny U-Net that learns one volume on the CPU, and one that overfits two 16^3 volumes
// of three classes.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>

#include "engine/autograd.h"
#include "engine/losses.h"
#include "engine/metrics.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "models/unet3d.h"
#include "tests/test_support.h"

namespace voxgrad {
namespace {

std::map<std::string, Shape> shapes_of(const NamedTensors& list) {
  std::map<std::string, Shape> out;
  for (const auto& [n, t] : list) out[n] = t.shape();
  return out;
}

UNet3dConfig small_config() {
  UNet3dConfig c;
  c.in_channels = 1;
  c.classes = 3;
  c.base_features = 4;
  c.levels = 3;
  return c;
}

// Parameters of a conv (with bias) and of an affine norm.
std::int64_t conv_params(std::int64_t in, std::int64_t out, std::int64_t k) { return out * in * k * k * k + out; }
std::int64_t norm_params(std::int64_t c) { return 2 * c; }

// nnU-Net's topology counted by hand: per level two conv 3^3 + norm, per decoder level a
// transposed conv 2^3 and two conv + norm on the concatenation, and the heads.
std::int64_t expected_parameters(const UNet3dConfig& c) {
  std::vector<std::int64_t> f;
  for (int i = 0; i < c.levels; ++i) f.push_back(std::min<std::int64_t>(c.base_features << i, c.feature_cap));
  std::int64_t n = 0;
  for (int i = 0; i < c.levels; ++i) {
    const std::int64_t in = i == 0 ? c.in_channels : f[i - 1];
    n += conv_params(in, f[i], 3) + norm_params(f[i]) + conv_params(f[i], f[i], 3) + norm_params(f[i]);
  }
  for (int i = 0; i + 1 < c.levels; ++i)
    n += conv_params(f[i + 1], f[i], 2) + conv_params(2 * f[i], f[i], 3) + norm_params(f[i]) +
         conv_params(f[i], f[i], 3) + norm_params(f[i]);
  const int heads = c.deep_supervision ? c.levels - 1 : 1;
  for (int i = 0; i < heads; ++i) n += conv_params(f[i], c.classes, 1);
  return n;
}

TEST(UNet3d, StateDictNamesAndShapes) {
  UNet3d net(small_config());
  const auto shapes = shapes_of(net.state_dict());
  EXPECT_EQ(shapes.at("encoder.0.conv1.weight"), (Shape{4, 1, 3, 3, 3}));
  EXPECT_EQ(shapes.at("encoder.0.norm1.weight"), (Shape{4}));
  EXPECT_EQ(shapes.at("encoder.1.conv1.weight"), (Shape{8, 4, 3, 3, 3}));  // the stride-2 conv
  EXPECT_EQ(shapes.at("encoder.2.conv2.bias"), (Shape{16}));
  EXPECT_EQ(shapes.at("decoder.1.up.weight"), (Shape{16, 8, 2, 2, 2}));  // level 2 -> level 1
  EXPECT_EQ(shapes.at("decoder.1.conv1.weight"), (Shape{8, 16, 3, 3, 3}));  // on [up, skip]
  EXPECT_EQ(shapes.at("decoder.0.up.weight"), (Shape{8, 4, 2, 2, 2}));
  EXPECT_EQ(shapes.at("decoder.0.norm2.bias"), (Shape{4}));
  EXPECT_EQ(shapes.at("heads.0.weight"), (Shape{3, 4, 1, 1, 1}));
  EXPECT_EQ(shapes.at("heads.0.bias"), (Shape{3}));
  EXPECT_EQ(shapes.count("heads.1.weight"), 0u);
  EXPECT_EQ(shapes.count("decoder.2.up.weight"), 0u);
  // Stage order: "up" first, as it runs.
  const NamedTensors sd = net.state_dict();
  auto pos = [&](const std::string& name) {
    return std::find_if(sd.begin(), sd.end(), [&](const auto& e) { return e.first == name; }) - sd.begin();
  };
  EXPECT_LT(pos("decoder.0.up.weight"), pos("decoder.0.conv1.weight"));
  EXPECT_LT(pos("encoder.2.norm2.bias"), pos("decoder.0.up.weight"));
  EXPECT_LT(pos("decoder.1.norm2.bias"), pos("heads.0.weight"));
  EXPECT_EQ(sd.size(), shapes.size());  // no name twice
  EXPECT_TRUE(net.named_buffers().empty());  // instance norm keeps no statistics
  // "decoder" is a container (ModuleList); running it as a chain would be meaningless.
  EXPECT_EQ(net.children().at(1).first, "decoder");
  EXPECT_THROW(net.children().at(1).second->forward(randn({1, 16, 4, 4, 4})), Error);

  EXPECT_EQ(net.parameter_count(), expected_parameters(small_config()));
  EXPECT_EQ(net.parameter_count(), 21527);  // the same formula evaluated by hand
}

TEST(UNet3d, FeaturesDoubleUpToTheCap) {
  UNet3dConfig c = small_config();
  c.levels = 5;
  c.feature_cap = 20;
  EXPECT_EQ(unet3d_features(c, 0), 4);
  EXPECT_EQ(unet3d_features(c, 2), 16);
  EXPECT_EQ(unet3d_features(c, 3), 20);
  EXPECT_EQ(unet3d_features(c, 4), 20);
  UNet3d net(c);
  EXPECT_EQ(shapes_of(net.state_dict()).at("encoder.4.conv1.weight"), (Shape{20, 20, 3, 3, 3}));
  EXPECT_EQ(net.parameter_count(), expected_parameters(c));
}

TEST(UNet3d, OutputShapeAtFullResolution) {
  UNet3d net(small_config());
  Tensor y = net(randn({2, 1, 16, 16, 16}));
  EXPECT_EQ(y.shape(), (Shape{2, 3, 16, 16, 16}));
  // Anisotropic sizes that 4 divides, including 12 (three halvings would not divide it, two do).
  EXPECT_EQ(net(randn({1, 1, 12, 8, 20})).shape(), (Shape{1, 3, 12, 8, 20}));
}

TEST(UNet3d, DeepSupervisionOutputs) {
  UNet3dConfig c = small_config();
  c.levels = 4;
  c.deep_supervision = true;
  UNet3d net(c);
  const auto shapes = shapes_of(net.state_dict());
  EXPECT_EQ(shapes.at("heads.0.weight"), (Shape{3, 4, 1, 1, 1}));
  EXPECT_EQ(shapes.at("heads.2.weight"), (Shape{3, 16, 1, 1, 1}));
  EXPECT_EQ(shapes.count("heads.3.weight"), 0u);  // the bottleneck has no head
  EXPECT_EQ(net.parameter_count(), expected_parameters(c));

  Tensor x = randn({2, 1, 16, 8, 24});
  std::vector<Tensor> outs = net.forward_all(x);
  ASSERT_EQ(outs.size(), 3u);
  EXPECT_EQ(outs[0].shape(), (Shape{2, 3, 16, 8, 24}));
  EXPECT_EQ(outs[1].shape(), (Shape{2, 3, 8, 4, 12}));
  EXPECT_EQ(outs[2].shape(), (Shape{2, 3, 4, 2, 6}));
  std::vector<float> full = net(x).to_vector<float>(), first = outs[0].to_vector<float>();
  EXPECT_EQ(full, first);  // forward is the highest-resolution head
  // Every head's loss reaches the shared trunk.
  sum(outs[2]).backward();
  for (const auto& [n, p] : net.named_parameters()) {
    // outs[2] is heads.2 on decoder.2 (level 3 -> 2): the finer decoder levels and heads are not on its path.
    bool used = true;
    for (const char* off : {"heads.0.", "heads.1.", "decoder.0.", "decoder.1."}) used = used && n.rfind(off, 0) != 0;
    EXPECT_EQ(p.grad().defined(), used) << n;
  }
}

// Sets entries of a named tensor of the model from a function of their flat index and value.
void edit(UNet3d& net, const std::string& name, const std::function<float(std::int64_t, float)>& f) {
  for (const auto& [n, t] : net.state_dict())
    if (n == name) {
      std::vector<float> v = t.to_vector<float>();
      for (std::int64_t i = 0; i < static_cast<std::int64_t>(v.size()); ++i) v[i] = f(i, v[i]);
      NoGradGuard g;
      t.copy_(from_vector<float>(v, t.shape()));
      return;
    }
  FAIL() << "no tensor " << name;
}

// The skip connection carries full-resolution detail, and it is the SECOND half of the
// concatenation, as in nnU-Net's torch.cat((upsampled, skip), 1), so conv weights line up.
TEST(UNet3d, SkipIsConcatenatedAfterTheUpsampledFeatures) {
  UNet3dConfig c = small_config();
  c.levels = 2;
  UNet3d net(c);
  // With the upsampling silenced, only the skip can make the output depend on the input.
  edit(net, "decoder.0.up.weight", [](std::int64_t, float) { return 0.0f; });
  edit(net, "decoder.0.up.bias", [](std::int64_t, float) { return 0.0f; });
  Tensor a = randn({1, 1, 8, 8, 8}), b = randn({1, 1, 8, 8, 8});
  EXPECT_NE(net(a).to_vector<float>(), net(b).to_vector<float>()) << "the skip does not reach the output";
  // decoder.0.conv1.weight (4, 8, 3, 3, 3): input channels 4..7 are the skip's; without them the
  // output is a constant whatever the input.
  edit(net, "decoder.0.conv1.weight", [](std::int64_t i, float v) { return (i / 27) % 8 >= 4 ? 0.0f : v; });
  EXPECT_EQ(net(a).to_vector<float>(), net(b).to_vector<float>()) << "the skip is not the second half";
}

TEST(UNet3d, RefusesSizesTheLevelsCannotDivide) {
  UNet3d net(small_config());  // levels 3: multiples of 4
  try {
    net(randn({1, 1, 14, 16, 16}));
    FAIL() << "an input of depth 14 was accepted";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("input (1, 1, 14, 16, 16)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("D=14 is not divisible by 4 (levels 3 need multiples of 4: ..., 8, 12, 16, 20, ...)"),
              std::string::npos)
        << msg;
    EXPECT_EQ(msg.find("H="), std::string::npos) << msg;
  }
  try {
    UNet3dConfig c = small_config();
    c.levels = 4;
    UNet3d(c).check_input({1, 1, 30, 32, 6});
    FAIL() << "(30, 32, 6) was accepted with levels 4";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("D=30 is not divisible by 8 (levels 4 need multiples of 8: ..., 16, 24, 32, 40, ...)"),
              std::string::npos)
        << msg;
    EXPECT_NE(msg.find("W=6 is not divisible by 8 (levels 4 need multiples of 8: ..., 8, 16, ...)"),
              std::string::npos)
        << msg;
  }
  EXPECT_THROW(net(randn({1, 2, 16, 16, 16})), Error);  // wrong channel count
  EXPECT_THROW(net(randn({1, 16, 16, 16})), Error);     // no batch axis
  EXPECT_NO_THROW(net.check_input({1, 1, 12, 16, 4}));
}

TEST(UNet3d, BatchNormVariant) {
  UNet3dConfig c = small_config();
  c.norm = Norm::Batch;
  UNet3d net(c);
  const auto shapes = shapes_of(net.state_dict());
  EXPECT_EQ(shapes.at("encoder.1.norm2.running_mean"), (Shape{8}));
  EXPECT_EQ(shapes.at("decoder.0.norm1.running_var"), (Shape{4}));
  EXPECT_EQ(net.named_buffers().size(), 2u * 2 * (3 + 2));  // two buffers per norm, two norms per stage
  EXPECT_EQ(net.parameter_count(), expected_parameters(c));

  Tensor x = randn({2, 1, 8, 8, 8});
  Tensor y = net(x);
  EXPECT_EQ(y.shape(), (Shape{2, 3, 8, 8, 8}));
  auto running_mean = [&] {
    for (const auto& [n, t] : net.state_dict())
      if (n == "encoder.0.norm1.running_mean") return t.to_vector<float>();
    return std::vector<float>();
  };
  const std::vector<float> rm = running_mean();
  ASSERT_EQ(rm.size(), 4u);
  EXPECT_TRUE(std::any_of(rm.begin(), rm.end(), [](float v) { return v != 0.0f; }));  // training updated it
  net.eval();
  const std::vector<float> e1 = net(x).to_vector<float>(), e2 = net(x).to_vector<float>();
  EXPECT_EQ(e1, e2);  // eval is a fixed function...
  EXPECT_EQ(running_mean(), rm);  // ...that leaves the statistics alone
}

// A two-class 8^3 volume (a ball) whose image is the label plus noise: the loss must fall well
// below its start in 30 Adam steps.
TEST(UNet3d, TinyNetworkLearnsOneVolume) {
  Generator gen(5);
  UNet3dConfig c;
  c.in_channels = 1;
  c.classes = 2;
  c.base_features = 4;
  c.levels = 2;
  UNet3d net(c, gen);
  std::vector<std::int32_t> label(8 * 8 * 8);
  std::vector<float> image(label.size());
  std::vector<float> noise = randn({8 * 8 * 8}, gen).to_vector<float>();
  for (int z = 0; z < 8; ++z)
    for (int y = 0; y < 8; ++y)
      for (int x = 0; x < 8; ++x) {
        const int i = (z * 8 + y) * 8 + x;
        const double r2 = (z - 3.5) * (z - 3.5) + (y - 3.5) * (y - 3.5) + (x - 3.5) * (x - 3.5);
        label[i] = r2 < 6.0 ? 1 : 0;
        image[i] = static_cast<float>(label[i]) + 0.3f * noise[i];
      }
  Tensor xt = from_vector<float>(image, {1, 1, 8, 8, 8});
  Tensor lt = from_vector<std::int32_t>(label, {1, 8, 8, 8});
  AdamOptions opt;
  opt.lr = 1e-2;
  Adam adam(net.named_parameters(), opt);
  double first = 0, last = 0;
  for (int step = 0; step < 30; ++step) {
    adam.zero_grad();
    Tensor loss = cross_entropy_loss(net(xt), lt);
    loss.backward();
    adam.step();
    (step == 0 ? first : last) = loss.item();
  }
  EXPECT_LT(last, 0.25 * first) << "first " << first << ", last " << last;
  RecordProperty("loss_first_last", std::to_string(first) + " -> " + std::to_string(last));
}

// Two 16^3 volumes, each with a ball of class 1 and a box of class 2 whose intensities overlap
// under the noise (1.0 and 1.6, sigma 0.35), so shape and context matter as well as brightness.
// The nnU-Net-like net (3 levels, instance norm) must overfit them in 100 Adam steps on Dice+CE:
// the loss falls below 1/10 of its first value and the hard foreground Dice exceeds 0.9.
// About 5 s on two cores (Release); the time is recorded, not asserted, as shared machines vary.
TEST(UNet3d, TinyNetworkOverfitsTwoVolumes) {
  const auto start = std::chrono::steady_clock::now();
  constexpr int S = 16;
  Generator gen(11);
  UNet3dConfig c = small_config();  // in 1, classes 3, base 4, levels 3
  c.norm = Norm::Instance;
  UNet3d net(c, gen);
  struct Structures {
    double ball[3], radius;
    int box_lo[3], box_hi[3];  // half-open
  };
  const Structures layout[2] = {{{5, 5, 6}, 3.3, {9, 8, 3}, {14, 14, 9}},
                                {{10, 9, 9}, 3.6, {2, 2, 9}, {7, 8, 15}}};
  std::vector<std::int32_t> label(2 * S * S * S, 0);
  std::vector<float> image(label.size());
  const std::vector<float> noise = randn({2 * S * S * S}, gen).to_vector<float>();
  for (int v = 0; v < 2; ++v)
    for (int z = 0; z < S; ++z)
      for (int y = 0; y < S; ++y)
        for (int x = 0; x < S; ++x) {
          const Structures& l = layout[v];
          const int i = ((v * S + z) * S + y) * S + x;
          const double dz = z - l.ball[0], dy = y - l.ball[1], dx = x - l.ball[2];
          if (dz * dz + dy * dy + dx * dx < l.radius * l.radius) label[i] = 1;
          if (z >= l.box_lo[0] && z < l.box_hi[0] && y >= l.box_lo[1] && y < l.box_hi[1] && x >= l.box_lo[2] &&
              x < l.box_hi[2])
            label[i] = 2;
          const float mean = label[i] == 1 ? 1.0f : label[i] == 2 ? 1.6f : 0.0f;
          image[i] = mean + 0.35f * noise[i];
        }
  const Tensor xt = from_vector<float>(image, {2, 1, S, S, S});
  const Tensor lt = from_vector<std::int32_t>(label, {2, S, S, S});
  AdamOptions opt;
  opt.lr = 1e-2;
  Adam adam(net.named_parameters(), opt);
  double first = 0, last = 0;
  for (int step = 0; step < 100; ++step) {
    adam.zero_grad();
    Tensor loss = dice_ce_loss(net(xt), lt);
    loss.backward();
    adam.step();
    (step == 0 ? first : last) = loss.item();
  }
  double dice = 0;
  {
    NoGradGuard no_grad;
    dice = segmentation_metrics_from_logits(net(xt), lt).mean_dice;  // classes 1 and 2, both volumes
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(last, 0.1 * first) << "first " << first << ", last " << last;
  EXPECT_GT(dice, 0.9);
  RecordProperty("loss_first_last", std::to_string(first) + " -> " + std::to_string(last));
  RecordProperty("foreground_dice", std::to_string(dice));
  RecordProperty("seconds", std::to_string(seconds));
  std::printf("overfit: loss %.4f -> %.4f (x%.3f), foreground Dice %.4f, %.2f s\n", first, last, last / first, dice,
              seconds);
}

}  // namespace
}  // namespace voxgrad
