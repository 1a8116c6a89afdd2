// nnU-Net's numerical steps against nnU-Net itself: tests/data/nnunet_steps/*.pth hold inputs and the
// outputs of nnunetv2 2.8.1's own functions (tools/make_nnunet_steps_fixtures.py): transposition,
// crop_to_nonzero, the normalisation schemes, the sliding-window steps, the Gaussian, a whole
// sliding-window pass with a fixed network, the folds' mean and the export. Exact unless a comparison
// says otherwise; the measured maxima of the inexact ones are in the comments.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "apps/pipeline/nnunet_export.h"
#include "apps/pipeline/nnunet_preprocessing.h"
#include "apps/pipeline/nnunet_sliding_window.h"
#include "engine/float16.h"
#include "engine/error.h"
#include "engine/ops.h"
#include "io/torch_checkpoint.h"
#include "tests/test_support.h"

namespace voxgrad {
namespace {

using namespace pipeline::nnunet;  // NOLINT: the suite tests this namespace
using pipeline::Shape3;

const io::PickleValue& fixture_file(const std::string& name) {
  static std::map<std::string, io::PickleValue> files;
  auto it = files.find(name);
  if (it == files.end())
    it = files.emplace(name, io::load_torch_checkpoint(test::source_path("tests/data/nnunet_steps/" + name + ".pth")))
             .first;
  return it->second;
}

Tensor fixture(const std::string& file, const std::string& key) {
  const io::PickleValue* v = fixture_file(file).get(key);
  if (v == nullptr || !v->is(io::PickleValue::Kind::Tensor)) throw std::runtime_error("fixture lacks " + key);
  return v->tensor;
}

std::vector<std::int64_t> ints(const std::string& file, const std::string& key) {
  std::vector<std::int64_t> out;
  for (std::int32_t v : fixture(file, key).to_vector<std::int32_t>()) out.push_back(v);
  return out;
}

std::vector<double> as_doubles(const Tensor& t) {
  if (t.dtype() == DType::Float32) {
    const std::vector<float> f = t.to_vector<float>();
    return {f.begin(), f.end()};
  }
  if (t.dtype() == DType::Int32) {
    const std::vector<std::int32_t> i = t.to_vector<std::int32_t>();
    return {i.begin(), i.end()};
  }
  if (t.dtype() == DType::UInt8) {
    const std::vector<std::uint8_t> i = t.to_vector<std::uint8_t>();
    return {i.begin(), i.end()};
  }
  return t.to_vector<double>();
}

// Bit-for-bit equality (NaN equal to NaN), with the first difference named.
::testing::AssertionResult identical(const Tensor& actual, const Tensor& expected) {
  if (actual.shape() != expected.shape())
    return ::testing::AssertionFailure() << "shape " << shape_str(actual.shape()) << " vs "
                                         << shape_str(expected.shape());
  const std::vector<double> a = as_doubles(actual), b = as_doubles(expected);
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!(a[i] == b[i] || (std::isnan(a[i]) && std::isnan(b[i]))))
      return ::testing::AssertionFailure() << "element " << i << ": " << a[i] << " vs " << b[i];
  return ::testing::AssertionSuccess();
}

// The largest |a - b| / |b| (|a - b| where b is 0).
double max_relative_error(const Tensor& actual, const Tensor& expected) {
  const std::vector<double> a = as_doubles(actual), b = as_doubles(expected);
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(a[i] - b[i]);
    worst = std::max(worst, b[i] == 0.0 ? d : d / std::fabs(b[i]));
  }
  return worst;
}

AxisOrder axis_order(const std::vector<std::int64_t>& v) {
  return {static_cast<int>(v[0]), static_cast<int>(v[1]), static_cast<int>(v[2])};
}

Tensor with_channel_axis(const Tensor& t) {  // (Z, Y, X) -> (1, Z, Y, X), a copy
  return reshape(t.clone(), {1, t.size(0), t.size(1), t.size(2)});
}

// ---- preprocessing --------------------------------------------------------------------------

TEST(NnunetPreprocessing, TransposeMatchesNumpy) {
  const Tensor input = fixture("preprocessing", "transpose/input");
  for (int i = 0; i < 3; ++i) {
    const std::string k = "transpose/" + std::to_string(i) + "/";
    const AxisOrder order = axis_order(ints("preprocessing", k + "order"));
    const Tensor forward = transpose_spatial(input, order);
    EXPECT_TRUE(identical(forward, fixture("preprocessing", k + "output"))) << k;
    EXPECT_TRUE(identical(transpose_spatial(forward, inverse_axis_order(order)), input)) << k;
  }
}

TEST(NnunetPreprocessing, CropToNonzeroMatchesNnunet) {
  for (const char* name : {"cavity", "empty", "slice_ring"}) {
    const std::string k = std::string("crop/") + name + "/";
    const NonzeroCrop crop = crop_to_nonzero(fixture("preprocessing", k + "input"));
    EXPECT_TRUE(identical(crop.data, fixture("preprocessing", k + "data"))) << name;
    const std::vector<std::int64_t> bbox = ints("preprocessing", k + "bbox");
    for (int a = 0; a < 3; ++a) {
      EXPECT_EQ(crop.box.begin[a], bbox[2 * a]) << name << " axis " << a;
      EXPECT_EQ(crop.box.end[a], bbox[2 * a + 1]) << name << " axis " << a;
    }
    // nnU-Net's seg is 0 inside the (hole-filled) mask and -1 outside.
    const std::vector<std::int32_t> seg = fixture("preprocessing", k + "seg").to_vector<std::int32_t>();
    const std::vector<std::uint8_t> mask = crop.mask.to_vector<std::uint8_t>();
    ASSERT_EQ(seg.size(), mask.size()) << name;
    for (std::size_t i = 0; i < seg.size(); ++i) ASSERT_EQ(mask[i] ? 0 : -1, seg[i]) << name << " voxel " << i;
  }
}

TEST(NnunetPreprocessing, ZScoreOnATransposedCropMatchesNumpyBitForBit) {
  // More than 8192 voxels after the crop, summed by numpy in memory order: the view's last bits.
  const Tensor input = fixture("preprocessing", "norm/view/input");
  const AxisOrder order{2, 0, 1};
  for (bool use_mask : {false, true}) {
    NonzeroCrop crop = crop_to_nonzero(transpose_spatial(input, order));
    ASSERT_GT(crop.data.numel(), 8192);
    normalize(crop.data, {NormalizationScheme::ZScore}, {use_mask}, {}, crop.mask, order);
    const Tensor expected = fixture("preprocessing", "norm/view/201/zscore_mask" + std::to_string(int(use_mask)));
    EXPECT_TRUE(identical(reshape(crop.data, expected.shape()), expected)) << "use_mask_for_norm " << use_mask;
  }
}

TEST(NnunetPreprocessing, SchemesMatchNnunetBitForBit) {
  const std::vector<double> p = fixture("preprocessing", "norm/small/ct_properties").to_vector<double>();
  const IntensityProperties ct{p[0], p[1], p[2], p[3]};
  const struct {
    NormalizationScheme scheme;
    const char* input;
    const char* output;
  } cases[] = {
      {NormalizationScheme::CT, "norm/small/input", "norm/small/ct"},
      {NormalizationScheme::NoNormalization, "norm/small/input", "norm/small/none"},
      {NormalizationScheme::RescaleTo01, "norm/small/input", "norm/small/rescale01"},
      {NormalizationScheme::ZScore, "norm/small/input", "norm/small/zscore"},
      {NormalizationScheme::RGBTo01, "norm/rgb/input", "norm/rgb/output"},
      {NormalizationScheme::ZScore, "norm/constant/input", "norm/constant/zscore"},
      {NormalizationScheme::RescaleTo01, "norm/constant/input", "norm/constant/rescale01"},
  };
  for (const auto& c : cases) {
    Tensor data = with_channel_axis(fixture("preprocessing", c.input));
    normalize(data, {c.scheme}, {false}, {ct}, Tensor());
    const Tensor expected = fixture("preprocessing", c.output);
    EXPECT_TRUE(identical(reshape(data, expected.shape()), expected)) << c.output;
  }
}

TEST(NnunetPreprocessing, SchemeNamesAndRefusals) {
  EXPECT_EQ(parse_normalization_scheme("CTNormalization"), NormalizationScheme::CT);
  EXPECT_EQ(parse_normalization_scheme("RGBTo01Normalization"), NormalizationScheme::RGBTo01);
  EXPECT_THROW(parse_normalization_scheme("ZScore"), InputError);
  Tensor bright = full({1, 2, 2, 2}, 256.0);
  EXPECT_THROW(normalize(bright, {NormalizationScheme::RGBTo01}, {false}, {}, Tensor(), {0, 1, 2}, "case.nii.gz"),
               InputError);
}

TEST(NnunetPreprocessing, NumpySumBlocksAndPairs) {
  // numpy's float32 sum of these 20000 values is 329503.78125 (8192-value blocks, pairwise inside);
  // one pairwise sum over all of them gives 329503.8125, a plain loop something else again.
  std::vector<float> v(20000);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>((i * 7919) % 997) * 0.013f + 10.0f;
  EXPECT_EQ(numpy_float32_sum(v.data(), static_cast<std::int64_t>(v.size())), 329503.78125f);
}

// ---- sliding window -------------------------------------------------------------------------

TEST(NnunetSlidingWindow, StepsMatchNnunet) {
  const struct {
    std::vector<std::int64_t> size, patch;
    double step;
  } cases[] = {{{110}, {64}, 0.5},
               {{64}, {64}, 0.5},
               {{65}, {64}, 0.5},
               {{200, 37, 50}, {96, 37, 24}, 0.5},
               {{129, 300}, {128, 112}, 0.7},
               {{97, 97, 97}, {32, 32, 32}, 0.33},
               {{17, 5, 9}, {4, 5, 3}, 1.0},
               {{75}, {10}, 0.25}};
  for (std::size_t i = 0; i < std::size(cases); ++i) {
    const auto steps = sliding_window_steps(cases[i].size, cases[i].patch, cases[i].step);
    ASSERT_EQ(steps.size(), cases[i].size.size());
    for (std::size_t a = 0; a < steps.size(); ++a)
      EXPECT_EQ(steps[a], ints("sliding_window", "steps/" + std::to_string(i) + "/" + std::to_string(a)))
          << "case " << i << " axis " << a;
  }
  EXPECT_THROW(sliding_window_steps({10}, {12}, 0.5), Error);
  EXPECT_THROW(sliding_window_steps({10}, {4}, 0.0), Error);
}

TEST(NnunetSlidingWindow, Float16RoundingMatchesTorch) {
  const Tensor input = fixture("sliding_window", "half/input");
  const std::vector<float> in = input.to_vector<float>();
  std::vector<float> rounded, from_double;
  for (float v : in) rounded.push_back(round_to_float16(v));
  for (float v : in) from_double.push_back(static_cast<float>(round_to_float16(static_cast<double>(v))));
  EXPECT_TRUE(identical(from_vector(rounded, input.shape()), fixture("sliding_window", "half/output")));
  EXPECT_TRUE(identical(from_vector(from_double, input.shape()), fixture("sliding_window", "half/output")));
  // From float64 in one rounding: just above a tie rounds up where a detour through float32 would tie to even.
  EXPECT_EQ(round_to_float16(1.0 + 0x1p-11 + 0x1p-40), 1.0 + 0x1p-10);
  EXPECT_EQ(round_to_float16(static_cast<float>(1.0 + 0x1p-11 + 0x1p-40)), 1.0f);
}

TEST(NnunetSlidingWindow, GaussianMatchesNnunet) {
  const struct {
    const char* name;
    std::vector<std::int64_t> patch;
  } cases[] = {{"3d", {8, 12, 20}}, {"2d", {12, 20}}, {"odd", {5, 7, 9}}};
  for (const auto& c : cases) {
    const std::string k = std::string("gaussian/") + c.name + "/";
    // float16, nnU-Net's dtype: exact, the zero fix in the corners included.
    EXPECT_TRUE(identical(gaussian_importance_map(c.patch), fixture("sliding_window", k + "float16"))) << c.name;
    // float32: scipy's float64 Gaussian rounded once; measured max relative error 0 (within 1e-6 asked).
    const Tensor f32 = gaussian_importance_map(c.patch, 1.0 / 8, 10.0, false);
    EXPECT_LE(max_relative_error(f32, fixture("sliding_window", k + "float32")), 1e-6) << c.name;
  }
}

// The fixture's network: per class k, ((x0 w[k,0] + x1 w[k,1]) + b[k]) + ramp[k] in float32, each
// operation rounded (torch's elementwise ops), the ramp a fixed tensor of the patch's shape.
struct ElementwiseNet {
  std::vector<float> weight, bias, ramp;  // (K, C), (K), (K, patch...)
  std::int64_t classes = 0, channels = 0;
  int calls = 0;

  Tensor operator()(const Tensor& x) {  // (1, C, d, h, w) -> (1, K, d, h, w)
    ++calls;
    const Tensor host = x.cpu();
    const std::int64_t voxels = host.numel() / channels;
    const float* in = host.data<float>();
    std::vector<float> out(static_cast<std::size_t>(classes * voxels));
    for (std::int64_t k = 0; k < classes; ++k)
      for (std::int64_t v = 0; v < voxels; ++v) {
        float acc = in[v] * weight[k * channels];
        for (std::int64_t c = 1; c < channels; ++c) acc = acc + in[c * voxels + v] * weight[k * channels + c];
        out[k * voxels + v] = (acc + bias[k]) + ramp[k * voxels + v];
      }
    return from_vector(out, {1, classes, x.size(2), x.size(3), x.size(4)}, x.device());
  }
};

ElementwiseNet fixture_net(const std::string& prefix) {
  ElementwiseNet net;
  net.weight = fixture("sliding_window", prefix + "weight").to_vector<float>();
  net.bias = fixture("sliding_window", prefix + "bias").to_vector<float>();
  net.ramp = fixture("sliding_window", prefix + "ramp").to_vector<float>();
  net.classes = static_cast<std::int64_t>(net.bias.size());
  net.channels = static_cast<std::int64_t>(net.weight.size()) / net.classes;
  return net;
}

SlidingWindowOptions fixture_options(const std::string& prefix, std::int64_t classes) {
  SlidingWindowOptions o;
  o.patch = ints("sliding_window", prefix + "patch");
  o.tile_step_size = fixture("sliding_window", prefix + "step").to_vector<double>()[0];
  for (std::int64_t a : ints("sliding_window", prefix + "mirror_axes")) o.mirror_axes.push_back(static_cast<int>(a));
  o.use_mirroring = !o.mirror_axes.empty();
  o.classes = static_cast<int>(classes);
  return o;
}

class NnunetSlidingWindowPass : public ::testing::TestWithParam<const char*> {};

TEST_P(NnunetSlidingWindowPass, MatchesNnunetBitForBit) {
  const std::string prefix = std::string("window/") + GetParam() + "/";
  ElementwiseNet net = fixture_net(prefix);
  const SlidingWindowOptions options = fixture_options(prefix, net.classes);
  const Tensor image = fixture("sliding_window", prefix + "image");
  const Tensor expected = fixture("sliding_window", prefix + "logits");
  std::int64_t last_done = 0, last_total = -1;
  SlidingWindowOptions counted = options;
  counted.on_tile = [&](std::int64_t done, std::int64_t total) { last_done = done, last_total = total; };
  const Tensor logits = sliding_window_logits(image, std::ref(net), counted);
  EXPECT_TRUE(identical(logits, expected));
  EXPECT_EQ(last_done, last_total);
  const std::int64_t mirrorings = options.use_mirroring ? (1 << options.mirror_axes.size()) : 1;
  EXPECT_EQ(net.calls, last_total * mirrorings);

  // float32 accumulation: nnU-Net's value up to its float16 roundings, away from the image's border.
  // Near the border a voxel is covered only by tile corners, whose float16 weights underflow to the
  // smallest subnormal and quantise nnU-Net's weighted sums coarsely (float32 keeps the true
  // Gaussian). Measured over the interior (a quarter patch from every tiled border): max |a - b| /
  // (|b| + 1) 1.4e-3, about three float16 steps of the weighted sums.
  SlidingWindowOptions f32 = options;
  f32.float16_accumulation = false;
  const std::vector<double> a = as_doubles(sliding_window_logits(image, std::ref(net), f32)), b = as_doubles(expected);
  const Shape3 size{image.size(1), image.size(2), image.size(3)};
  Shape3 margin{0, 0, 0};
  for (std::size_t i = 0; i < options.patch.size(); ++i) margin[3 - options.patch.size() + i] = options.patch[i] / 4;
  double worst = 0;
  std::size_t compared = 0;
  for (std::int64_t k = 0; k < net.classes; ++k)
    for (std::int64_t z = margin[0]; z < size[0] - margin[0]; ++z)
      for (std::int64_t y = margin[1]; y < size[1] - margin[1]; ++y)
        for (std::int64_t x = margin[2]; x < size[2] - margin[2]; ++x, ++compared) {
          const std::size_t i = static_cast<std::size_t>(((k * size[0] + z) * size[1] + y) * size[2] + x);
          worst = std::max(worst, std::fabs(a[i] - b[i]) / (std::fabs(b[i]) + 1.0));
        }
  EXPECT_GT(compared, 0u);
  EXPECT_LE(worst, 5e-3);

  if (test::has_cuda()) {  // tiles on the GPU, the same host arithmetic
    SlidingWindowOptions on_gpu = options;
    on_gpu.device = Device::cuda(0);
    EXPECT_TRUE(identical(sliding_window_logits(image, std::ref(net), on_gpu), expected));
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, NnunetSlidingWindowPass,
                         ::testing::Values("3d", "3d_mirror", "3d_mirror_yx_pad", "2d_mirror"));

TEST(NnunetSlidingWindow, FoldMeanMatchesNnunetBitForBit) {
  const std::string prefix = "window/3d/";
  ElementwiseNet first = fixture_net(prefix), second = first;
  second.weight = fixture("sliding_window", prefix + "fold2/weight").to_vector<float>();
  second.bias = fixture("sliding_window", prefix + "fold2/bias").to_vector<float>();
  second.ramp = fixture("sliding_window", prefix + "fold2/ramp").to_vector<float>();
  const SlidingWindowOptions options = fixture_options(prefix, first.classes);
  const Tensor image = fixture("sliding_window", prefix + "image");
  Tensor sum;
  add_fold_logits(sum, sliding_window_logits(image, std::ref(first), options));
  add_fold_logits(sum, sliding_window_logits(image, std::ref(second), options));
  finish_fold_mean(sum, 2);
  EXPECT_TRUE(identical(sum, fixture("sliding_window", prefix + "fold_mean")));
}

TEST(NnunetSlidingWindow, RefusesAWrongNetworkOutput) {
  SlidingWindowOptions o;
  o.patch = {2, 2, 2};
  o.classes = 3;
  const auto two_classes = [](const Tensor& x) { return zeros({1, 2, x.size(2), x.size(3), x.size(4)}); };
  EXPECT_THROW(sliding_window_logits(zeros({1, 3, 3, 3}), two_classes, o), Error);
}

// ---- export ---------------------------------------------------------------------------------

ExportGeometry fixture_geometry(const Tensor& logits) {
  ExportGeometry g;
  g.shape_after_cropping = {logits.size(1), logits.size(2), logits.size(3)};
  const std::vector<std::int64_t> bbox = ints("export", "export/bbox"),
                                  before = ints("export", "export/shape_before_cropping");
  for (int a = 0; a < 3; ++a) {
    g.box.begin[a] = bbox[2 * a];
    g.box.end[a] = bbox[2 * a + 1];
    g.shape_before_cropping[a] = before[a];
  }
  g.transpose_backward = inverse_axis_order(axis_order(ints("export", "export/transpose_forward")));
  return g;
}

TEST(NnunetExport, SoftmaxAndRegionsMatchNnunet) {
  for (const char* name : {"softmax", "regions"}) {
    const std::string k = std::string("export/") + name + "/";
    const Tensor logits = fixture("export", k + "logits");
    const std::vector<int> order = std::string(name) == "regions" ? std::vector<int>{1, 2, 3} : std::vector<int>{};
    const ExportGeometry g = fixture_geometry(logits);
    int resampled = 0;
    const LogitsResampler identity = [&](const Tensor& l, const Shape3& shape) {
      ++resampled;
      EXPECT_EQ(shape, g.shape_after_cropping);
      return l;
    };
    const ExportedPrediction labels_only = export_prediction(logits, identity, g, order, false);
    EXPECT_EQ(resampled, 1);
    EXPECT_FALSE(labels_only.probabilities.defined());
    EXPECT_TRUE(identical(labels_only.segmentation, fixture("export", k + "segmentation"))) << name;
    // A float64 resampler a hair off the float16 logits: float16_logits rounds it back onto them.
    const LogitsResampler float64_near = [](const Tensor& l, const Shape3&) {
      std::vector<double> v = l.to(DType::Float64).to_vector<double>();
      for (double& x : v) x *= 1.0 + 1e-5;
      return from_vector(v, l.shape());
    };
    EXPECT_TRUE(identical(export_prediction(logits, float64_near, g, order, false, true).segmentation,
                          fixture("export", k + "segmentation")))
        << name;
    const ExportedPrediction both = export_prediction(logits, {}, g, order, true);
    EXPECT_TRUE(identical(both.segmentation, fixture("export", k + "segmentation_from_probabilities"))) << name;
    // Softmax and sigmoid in float32 (torch's vectorised exp against the C library's): measured max
    // relative error 1.2e-7, within the 1e-6 asked.
    const Tensor expected = fixture("export", k + "probabilities");
    ASSERT_EQ(both.probabilities.shape(), expected.shape());
    EXPECT_LE(max_relative_error(both.probabilities, expected), 1e-6) << name;
    if (test::has_cuda()) {  // the nonlinearity on the GPU
      const ExportedPrediction gpu = export_prediction(logits.to(Device::cuda(0)), {}, g, order, true);
      EXPECT_TRUE(identical(gpu.segmentation, fixture("export", k + "segmentation_from_probabilities"))) << name;
      EXPECT_LE(max_relative_error(gpu.probabilities, expected), 1e-6) << name;
    }
  }
}

}  // namespace
}  // namespace voxgrad
