// nnU-Net's networks against dynamic_network_architectures itself: fixtures made by
// tools/make_nnunet_network_fixtures.py hold an architecture entry, seeded weights, an input and
// PyTorch's logits; voxgrad must list the same state_dict names in the same order, load the weights
// strictly and reproduce the logits (float64 to 1e-9, float32 to 1e-3 of the largest logit).
#include "models/nnunet_networks.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <set>

#include "engine/ops.h"
#include "io/torch_checkpoint.h"
#include "tests/test_support.h"

namespace voxgrad {
namespace {

using voxgrad::test::max_abs;
using voxgrad::test::max_abs_diff;

using io::PickleValue;
using Kind = PickleValue::Kind;

const char* const kFixtures[] = {"plain3d_anisotropic",   "plain2d",
                                 "resenc_m_like",         "resenc2d_stem",
                                 "batchnorm_relu_nobias", "nonlin_first_dropout"};

std::string fixture_path(const std::string& name) {
  return test::source_path("tests/data/nnunet_networks/" + name + ".pth");
}

struct Fixture {
  std::string path;
  Json architecture;
  std::int64_t in_channels = 0, num_classes = 0;
  NamedTensors weights;
  Tensor input, logits64, logits32;
};

// A checkpoint's dict of tensors as the NamedTensors strict loading takes.
NamedTensors named_tensors(const PickleValue& dict) {
  NamedTensors out;
  for (const auto& [key, value] : dict.entries()) {
    EXPECT_TRUE(key.is(Kind::String) && value.is(Kind::Tensor));
    out.emplace_back(key.text, value.tensor);
  }
  return out;
}

Fixture load_fixture(const std::string& name) {
  Fixture f;
  f.path = fixture_path(name);
  const PickleValue root = io::load_torch_checkpoint(f.path);
  f.architecture = Json::parse(root.get("architecture")->text);
  f.in_channels = root.get("in_channels")->integer;
  f.num_classes = root.get("num_classes")->integer;
  f.weights = named_tensors(*root.get("state_dict"));
  f.input = root.get("input")->tensor;
  f.logits64 = root.get("logits_float64")->tensor;
  f.logits32 = root.get("logits_float32")->tensor;
  return f;
}

// Zero-initialised unless asked: the weights come from the fixture.
std::shared_ptr<NnunetNetwork> network_for(const Fixture& f, DType dtype, NnunetInit init = NnunetInit::Zeros) {
  return build_nnunet_network(parse_nnunet_architecture(f.architecture, f.path), f.in_channels, f.num_classes, dtype,
                              init);
}

// A 2-D network runs on (N, C, 1, H, W): the fixture's (N, C, H, W) input gains a depth of 1.
Tensor as_network_input(const NnunetNetwork& net, const Tensor& x) {
  if (net.architecture().spatial_dims == 3) return x;
  return reshape(x, {x.size(0), x.size(1), 1, x.size(2), x.size(3)});
}

std::vector<double> values(const Tensor& t) { return t.to(DType::Float64).to_vector<double>(); }

std::vector<std::string> names_of(const NamedTensors& list) {
  std::vector<std::string> out;
  for (const auto& [n, t] : list) out.push_back(n);
  return out;
}

std::string input_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected an InputError, got: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected an InputError, nothing was thrown";
  return "";
}

class NnunetFixture : public ::testing::TestWithParam<const char*> {};

TEST_P(NnunetFixture, StateDictNamesAndOrderEqualPyTorchs) {
  const Fixture f = load_fixture(GetParam());
  auto net = network_for(f, DType::Float32, NnunetInit::Kaiming);
  const NamedTensors mine = net->state_dict();
  EXPECT_EQ(names_of(mine), names_of(f.weights));
  // Aliases (conv / all_modules.0, decoder.encoder.*) are listed in the state_dict but are one parameter.
  std::set<const TensorImpl*> unique;
  for (const auto& [n, t] : mine) unique.insert(t.impl());
  std::size_t parameters_and_buffers = net->named_parameters().size() + net->named_buffers().size();
  EXPECT_EQ(parameters_and_buffers, unique.size());
  EXPECT_LT(unique.size(), mine.size());
  // The size known before building is that of the convolution weights built.
  std::uint64_t conv_weights = 0;
  for (const auto& [name, t] : net->named_parameters())
    if (t.dim() == 5) conv_weights += static_cast<std::uint64_t>(t.numel());
  EXPECT_EQ(nnunet_weight_count(net->architecture(), f.in_channels, f.num_classes), conv_weights);
}

TEST_P(NnunetFixture, Float64LogitsMatchPyTorchWithin1e9) {
  const Fixture f = load_fixture(GetParam());
  auto net = network_for(f, DType::Float64);
  load_nnunet_weights(*net, f.weights, f.path);
  NoGradGuard no_grad;
  Tensor logits = net->forward(as_network_input(*net, f.input));
  const std::vector<double> got = values(logits), want = values(f.logits64);
  ASSERT_EQ(logits.numel(), f.logits64.numel());
  EXPECT_EQ(shape_numel(logits.shape()), shape_numel(f.logits64.shape()));
  const double err = max_abs_diff(got, want);
  RecordProperty("max_abs_error_float64", std::to_string(err));
  std::printf("%s: float64 max |voxgrad - PyTorch| = %.3g (max |logit| %.3g)\n", GetParam(), err, max_abs(want));
  EXPECT_LE(err, 1e-9);  // absolute
}

TEST_P(NnunetFixture, Float32LogitsMatchPyTorchWithin1e3OfTheLargest) {
  const Fixture f = load_fixture(GetParam());
  auto net = network_for(f, DType::Float32);
  load_nnunet_weights(*net, f.weights, f.path);  // float64 weights, converted on load
  EXPECT_EQ(net->parameters()[0].dtype(), DType::Float32);
  NoGradGuard no_grad;
  Tensor logits = net->forward(as_network_input(*net, f.input.to(DType::Float32)));
  EXPECT_EQ(logits.dtype(), DType::Float32);
  const std::vector<double> got = values(logits), want32 = values(f.logits32), want64 = values(f.logits64);
  const double scale = max_abs(want64);
  const double err32 = max_abs_diff(got, want32), err64 = max_abs_diff(got, want64);
  std::printf("%s: float32 max |voxgrad - PyTorch float32| = %.3g, vs float64 %.3g (max |logit| %.3g)\n", GetParam(),
              err32, err64, scale);
  EXPECT_LE(err32, 1e-3 * scale);
  EXPECT_LE(err64, 1e-3 * scale);
}

// The same float32 network moved to the GPU (cuDNN convolutions, CUDA norms): PyTorch's logits to the
// same tolerance. Weights load into a network already on the device, as the Predictor does it.
TEST_P(NnunetFixture, CudaFloat32LogitsMatchPyTorch) {
  VG_REQUIRE_CUDA();
  const Fixture f = load_fixture(GetParam());
  auto net = network_for(f, DType::Float32);
  net->to(Device::cuda());
  load_nnunet_weights(*net, f.weights, f.path);
  for (const auto& [name, t] : net->state_dict()) EXPECT_TRUE(t.device().is_cuda()) << name;
  NoGradGuard no_grad;
  Tensor logits = net->forward(as_network_input(*net, f.input.to(DType::Float32).to(Device::cuda())));
  const std::vector<double> got = values(logits.cpu()), want = values(f.logits32);
  const double scale = max_abs(values(f.logits64)), err = max_abs_diff(got, want);
  std::printf("%s: CUDA float32 max |voxgrad - PyTorch float32| = %.3g (max |logit| %.3g)\n", GetParam(), err, scale);
  EXPECT_LE(err, 1e-3 * scale);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, NnunetFixture, ::testing::ValuesIn(kFixtures));

TEST(NnunetNetworks, BatchNormNumBatchesTrackedIsConsumed) {
  const Fixture f = load_fixture("batchnorm_relu_nobias");
  auto net = network_for(f, DType::Float32);
  load_nnunet_weights(*net, f.weights, f.path);
  int tracked = 0;
  for (const auto& [name, t] : net->state_dict())
    if (name.ends_with("num_batches_tracked")) {
      EXPECT_EQ(t.dtype(), DType::Int32);
      EXPECT_EQ(t.item(), 7.0) << name;
      ++tracked;
    }
  EXPECT_GT(tracked, 0);
}

TEST(NnunetNetworks, DeepSupervisionHeadsAreAllRun) {
  const Fixture f = load_fixture("plain3d_anisotropic");
  auto net = network_for(f, DType::Float64);
  load_nnunet_weights(*net, f.weights, f.path);
  NoGradGuard no_grad;
  const std::vector<Tensor> heads = net->forward_all(f.input);
  ASSERT_EQ(heads.size(), 3u);
  EXPECT_EQ(heads[0].shape(), f.logits64.shape());
  EXPECT_EQ(heads[1].shape(), (Shape{1, 3, 4, 8, 4}));  // stride (1, 2, 2) below full resolution
  EXPECT_EQ(heads[2].shape(), (Shape{1, 3, 2, 4, 2}));
  EXPECT_LE(max_abs_diff(values(heads[0]), values(f.logits64)), 1e-9);
}

TEST(NnunetNetworks, LoadListsEveryDifferenceInOneError) {
  const Fixture f = load_fixture("plain3d_anisotropic");
  auto net = network_for(f, DType::Float32);
  NamedTensors weights;
  for (const auto& [name, t] : f.weights) {
    if (name == "decoder.seg_layers.2.bias") continue;  // missing
    if (name == "decoder.transpconvs.0.weight") {
      weights.emplace_back(name, zeros({8, 8, 2, 2}, DType::Float64));  // wrong shape
      continue;
    }
    weights.emplace_back(name, t);
  }
  weights.emplace_back("decoder.seg_layers.3.weight", zeros({3, 4, 1, 1, 1}));  // unexpected
  const Tensor before = net->state_dict()[0].second.clone();
  const std::string message = input_error_of([&] { load_nnunet_weights(*net, weights, f.path); });
  EXPECT_NE(message.find(f.path), std::string::npos) << message;
  EXPECT_NE(message.find("missing from the file (1):\n    decoder.seg_layers.2.bias (3,)"), std::string::npos)
      << message;
  EXPECT_NE(message.find("unexpected in the file (1):\n    decoder.seg_layers.3.weight (3, 4, 1, 1, 1)"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("decoder.transpconvs.0.weight: the file has (8, 8, 2, 2), the network expects "
                         "(8, 8, 2, 2, 2)"),
            std::string::npos)
      << message;
  EXPECT_FALSE(test::has_source_text(message)) << message;
  // Nothing was written.
  EXPECT_EQ(values(net->state_dict()[0].second), values(before));
}

TEST(NnunetNetworks, AliasesHoldingDifferentValuesAreRefused) {
  const Fixture f = load_fixture("plain2d");
  auto net = network_for(f, DType::Float32);
  NamedTensors weights = f.weights;
  for (auto& [name, t] : weights)
    if (name == "decoder.encoder.stages.0.0.convs.0.all_modules.0.bias") t = add(t, 1.0);
  const std::string message = input_error_of([&] { load_nnunet_weights(*net, weights, f.path); });
  EXPECT_NE(message.find("encoder.stages.0.0.convs.0.conv.bias and "
                         "decoder.encoder.stages.0.0.convs.0.all_modules.0.bias name one tensor"),
            std::string::npos)
      << message;
}

TEST(NnunetNetworks, TwoDimensionalWeightsLoadOnlyIntoATwoDimensionalNetwork) {
  const Fixture f = load_fixture("plain2d");
  auto net = network_for(f, DType::Float32);
  NamedTensors lifted;  // the 2-D file's weights with a depth of 1 load as they are
  for (const auto& [name, t] : f.weights)
    lifted.emplace_back(name, t.dim() == 4 ? reshape(t, {t.size(0), t.size(1), 1, t.size(2), t.size(3)}) : t);
  load_state_dict_strict(*net, lifted, f.path);
  const std::string message = input_error_of([&] { load_state_dict_strict(*net, f.weights, f.path, false); });
  EXPECT_NE(message.find("encoder.stages.0.0.convs.0.conv.weight: the file has (4, 1, 3, 3), the network expects "
                         "(4, 1, 1, 3, 3)"),
            std::string::npos)
      << message;
}

TEST(NnunetNetworks, TwoDimensionalNetworkTakesDepthOneAndDivisibleSizes) {
  const Fixture f = load_fixture("plain2d");
  auto net = network_for(f, DType::Float32);
  EXPECT_NE(input_error_of([&] { net->check_input({1, 1, 2, 16, 12}); }).find("(N, C, 1, H, W)"), std::string::npos);
  const std::string message = input_error_of([&] { net->check_input({1, 1, 1, 16, 11}); });
  EXPECT_NE(message.find("W=11 is not a multiple of 2"), std::string::npos) << message;
  net->check_input({1, 1, 1, 16, 12});
}

// ---- architecture entries voxgrad cannot build -----------------------------------------------------

Json plain_entry() { return load_fixture("plain3d_anisotropic").architecture; }

std::string parse_error(const Json& entry) {
  return input_error_of([&] { parse_nnunet_architecture(entry, "plans.json (3d_fullres)"); });
}

TEST(NnunetArchitecture, UnknownNetworkClassIsRefusedByName) {
  Json e = plain_entry();
  e["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualUNet";
  const std::string m = parse_error(e);
  EXPECT_NE(m.find("plans.json (3d_fullres)"), std::string::npos) << m;
  EXPECT_NE(m.find("ResidualUNet is not supported"), std::string::npos) << m;
  EXPECT_NE(m.find("PlainConvUNet and ResidualEncoderUNet"), std::string::npos) << m;
}

TEST(NnunetArchitecture, UnsupportedNormAndNonlinAreRefusedByName) {
  Json e = plain_entry();
  e["arch_kwargs"]["norm_op"] = "torch.nn.modules.normalization.GroupNorm";
  std::string m = parse_error(e);
  EXPECT_NE(m.find("norm_op is GroupNorm"), std::string::npos) << m;
  EXPECT_NE(m.find("InstanceNorm3d, BatchNorm3d or null"), std::string::npos) << m;

  e = plain_entry();
  e["arch_kwargs"]["norm_op"] = "torch.nn.modules.instancenorm.InstanceNorm2d";  // 2-D norm, 3-D conv
  m = parse_error(e);
  EXPECT_NE(m.find("norm_op is InstanceNorm2d, which voxgrad cannot build with a 3d conv_op"), std::string::npos) << m;

  e = plain_entry();
  e["arch_kwargs"]["nonlin"] = "torch.nn.GELU";
  m = parse_error(e);
  EXPECT_NE(m.find("nonlin is GELU"), std::string::npos) << m;
  EXPECT_NE(m.find("LeakyReLU, ReLU or null"), std::string::npos) << m;

  e = plain_entry();
  e["arch_kwargs"]["nonlin_kwargs"] = {{"negative_slope", 0.1}, {"alpha", 1}};
  m = parse_error(e);
  EXPECT_NE(m.find("nonlin_kwargs has \"alpha\""), std::string::npos) << m;
}

TEST(NnunetArchitecture, OtherUnbuildableFieldsNameFieldAndValue) {
  Json e = plain_entry();
  e["arch_kwargs"]["conv_op"] = "torch.nn.modules.conv.Conv1d";
  EXPECT_NE(parse_error(e).find("conv_op is \"torch.nn.modules.conv.Conv1d\""), std::string::npos);

  e = plain_entry();
  e["arch_kwargs"]["kernel_sizes"] = {{3, 3, 3}, {3, 3}, {3, 3, 3}, {3, 3, 3}};
  EXPECT_NE(parse_error(e).find("kernel_sizes[1] is [3,3]"), std::string::npos);

  e = plain_entry();
  e["arch_kwargs"]["n_conv_per_stage_decoder"] = {2, 2};
  EXPECT_NE(parse_error(e).find("n_conv_per_stage_decoder is [2,2], expected an integer or a list of 3 integers"),
            std::string::npos);

  e = plain_entry();
  e["arch_kwargs"]["stem_channels"] = 8;  // a ResidualEncoderUNet argument
  EXPECT_NE(parse_error(e).find("stem_channels is not an argument of PlainConvUNet"), std::string::npos);

  e = plain_entry();
  e["arch_kwargs"].erase("strides");
  EXPECT_NE(parse_error(e).find("strides is missing"), std::string::npos);

  e = load_fixture("resenc_m_like").architecture;
  e["arch_kwargs"]["block"] = "dynamic_network_architectures.building_blocks.residual.BottleneckD";
  EXPECT_NE(parse_error(e).find("BottleneckD residual blocks are not supported yet"), std::string::npos);
}

TEST(NnunetArchitecture, ANetworkTooLargeForThisMachineIsRefusedBeforeAllocating) {
  Json e = plain_entry();
  e["arch_kwargs"]["features_per_stage"] = {1 << 20, 1 << 20, 1 << 20, 1 << 20};
  const NnunetArchitecture a = parse_nnunet_architecture(e, "plans.json");
  EXPECT_GT(nnunet_weight_count(a, 1, 2), std::uint64_t{1} << 42);
  const std::string m = input_error_of([&] { build_nnunet_network(a, 1, 2); });
  EXPECT_NE(m.find("the nnU-Net network of this architecture"), std::string::npos) << m;
  e["arch_kwargs"]["features_per_stage"] = {4, 8, 16, (1 << 20) + 1};
  EXPECT_NE(parse_error(e).find("features_per_stage[3] is 1048577, expected an integer in [1, 1048576]"),
            std::string::npos);
}

TEST(NnunetArchitecture, IntsBroadcastAndTwoDimensionalEntriesLiftToDepthOne) {
  Json e = load_fixture("resenc2d_stem").architecture;
  const NnunetArchitecture a = parse_nnunet_architecture(e, "plans.json");
  EXPECT_EQ(a.network_class, NnunetNetworkClass::ResidualEncoderUNet);
  EXPECT_EQ(a.spatial_dims, 2);
  EXPECT_EQ(a.kernel_sizes, (std::vector<Triple>{{1, 3, 3}, {1, 3, 3}, {1, 3, 3}}));
  EXPECT_EQ(a.strides, (std::vector<Triple>{{1, 1, 1}, {1, 2, 2}, {1, 2, 2}}));
  EXPECT_EQ(a.n_conv_per_stage_decoder, (std::vector<int>{1, 1}));
  EXPECT_EQ(a.norm, NnunetNorm::Instance);
  EXPECT_FALSE(a.norm_affine);
  EXPECT_EQ(a.norm_eps, 1e-3);
  EXPECT_EQ(a.negative_slope, 0.2);
  EXPECT_EQ(a.stem_channels, 6);
  EXPECT_FALSE(a.conv_bias);
}

}  // namespace
}  // namespace voxgrad
