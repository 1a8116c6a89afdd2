// apps/pipeline/sliding_window: window starts against nnU-Net's compute_steps_for_sliding_window worked by
// hand, the Gaussian importance map, and whole-volume logits of a small U-Net against a brute-force
// reference written here (its own starts, Gaussian, flips and padding), the model's mode kept, the
// progress callback, and the refusal of bad inputs.
#include "apps/pipeline/sliding_window.h"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "tests/test_support.h"

namespace {

using namespace voxgrad;
using pipeline::sliding_window_logits;
using pipeline::sliding_window_starts;
using pipeline::SlidingWindowOptions;

constexpr std::int64_t kPatch = 8;

UNet3dConfig small_config(Norm norm = Norm::Instance) {
  UNet3dConfig c;
  c.in_channels = 1;
  c.classes = 3;
  c.base_features = 4;
  c.levels = 2;
  c.norm = norm;
  return c;
}

SlidingWindowOptions options_8(bool mirror = false) {
  SlidingWindowOptions o;
  o.patch = {kPatch, kPatch, kPatch};
  o.overlap = 0.5;
  o.mirror = mirror;
  return o;
}

using voxgrad::test::error_of;

std::vector<double> as_double(const Tensor& t) {
  const std::vector<float> v = t.to_vector<float>();
  return {v.begin(), v.end()};
}

// A smooth image with some texture, so windows and flips see different content.
Tensor test_image(std::int64_t z, std::int64_t y, std::int64_t x, std::uint64_t seed = 7) {
  Generator gen(seed);
  return randn({1, z, y, x}, gen);
}

// ---- the brute-force reference: plain loops, nothing from apps/pipeline/sliding_window ----------------

// Value of voxel (c, z, y, x) of a (C, Z, Y, X) image, 0 outside it.
float voxel(const std::vector<float>& img, const Shape& s, std::int64_t c, std::int64_t z, std::int64_t y,
            std::int64_t x) {
  if (z < 0 || y < 0 || x < 0 || z >= s[1] || y >= s[2] || x >= s[3]) return 0.0f;
  return img[static_cast<std::size_t>(((c * s[1] + z) * s[2] + y) * s[3] + x)];
}

// Gaussian weight of patch voxel (z, y, x) up to a constant factor (it cancels in the division).
double reference_weight(std::int64_t z, std::int64_t y, std::int64_t x) {
  const double sigma = kPatch / 8.0, c = (kPatch - 1) / 2.0;
  const double d2 = (z - c) * (z - c) + (y - c) * (y - c) + (x - c) * (x - c);
  return std::exp(-d2 / (2 * sigma * sigma));
}

// Logits (K, P, P, P) of the window whose corner is `corner` in image coordinates, mean over the
// 8 flips when `mirror`: each flip reads the window mirrored and writes the logits mirrored back.
std::vector<double> reference_window(UNet3d& model, const std::vector<float>& img, const Shape& s,
                                     std::array<std::int64_t, 3> corner, bool mirror) {
  const std::int64_t K = model.config().classes, P = kPatch, V = P * P * P;
  std::vector<double> out(static_cast<std::size_t>(K * V), 0.0);
  const int flips = mirror ? 8 : 1;
  for (int f = 0; f < flips; ++f) {
    auto m = [&](int axis, std::int64_t i) { return (f >> axis) & 1 ? P - 1 - i : i; };
    std::vector<float> in(static_cast<std::size_t>(s[0] * V));
    for (std::int64_t c = 0; c < s[0]; ++c)
      for (std::int64_t z = 0; z < P; ++z)
        for (std::int64_t y = 0; y < P; ++y)
          for (std::int64_t x = 0; x < P; ++x)
            in[static_cast<std::size_t>(((c * P + z) * P + y) * P + x)] =
                voxel(img, s, c, corner[0] + m(0, z), corner[1] + m(1, y), corner[2] + m(2, x));
    NoGradGuard no_grad;
    const std::vector<float> logits = model.forward(from_vector(in, {1, s[0], P, P, P})).to_vector<float>();
    for (std::int64_t k = 0; k < K; ++k)
      for (std::int64_t z = 0; z < P; ++z)
        for (std::int64_t y = 0; y < P; ++y)
          for (std::int64_t x = 0; x < P; ++x)
            out[static_cast<std::size_t>(((k * P + m(0, z)) * P + m(1, y)) * P + m(2, x))] +=
                logits[static_cast<std::size_t>(((k * P + z) * P + y) * P + x)] / flips;
  }
  return out;
}

// Gaussian-weighted mean of the window logits over windows with corners starts[0] x starts[1] x
// starts[2] (image coordinates, negative where the image is padded in front), (K, Z, Y, X).
std::vector<double> reference_logits(UNet3d& model, const Tensor& image,
                                     const std::array<std::vector<std::int64_t>, 3>& starts, bool mirror) {
  model.eval();
  const Shape s = image.shape();
  const std::vector<float> img = image.to_vector<float>();
  const std::int64_t K = model.config().classes, P = kPatch, N = s[1] * s[2] * s[3];
  std::vector<double> sum(static_cast<std::size_t>(K * N), 0.0), weight(static_cast<std::size_t>(N), 0.0);
  for (std::int64_t a : starts[0])
    for (std::int64_t b : starts[1])
      for (std::int64_t c : starts[2]) {
        const std::vector<double> w = reference_window(model, img, s, {a, b, c}, mirror);
        for (std::int64_t z = 0; z < P; ++z)
          for (std::int64_t y = 0; y < P; ++y)
            for (std::int64_t x = 0; x < P; ++x) {
              const std::int64_t iz = a + z, iy = b + y, ix = c + x;
              if (iz < 0 || iy < 0 || ix < 0 || iz >= s[1] || iy >= s[2] || ix >= s[3]) continue;
              const std::int64_t v = (iz * s[2] + iy) * s[3] + ix;
              const double g = reference_weight(z, y, x);
              weight[static_cast<std::size_t>(v)] += g;
              for (std::int64_t k = 0; k < K; ++k)
                sum[static_cast<std::size_t>(k * N + v)] +=
                    g * w[static_cast<std::size_t>(((k * P + z) * P + y) * P + x)];
            }
      }
  for (std::int64_t k = 0; k < K; ++k)
    for (std::int64_t v = 0; v < N; ++v)
      sum[static_cast<std::size_t>(k * N + v)] /= weight[static_cast<std::size_t>(v)];
  return sum;
}

// ---- window starts and the Gaussian --------------------------------------------------------

TEST(SlidingWindowStarts, MatchNnunetWorkedByHand) {
  // target step 32, ceil(36 / 32) + 1 = 3 windows, actual step 36 / 2 = 18.
  EXPECT_EQ(sliding_window_starts(100, 64, 0.5), (std::vector<std::int64_t>{0, 18, 36}));
  EXPECT_EQ(sliding_window_starts(64, 64, 0.5), (std::vector<std::int64_t>{0}));
  EXPECT_EQ(sliding_window_starts(160, 128, 0.5), (std::vector<std::int64_t>{0, 32}));
  // No overlap: target step 64, ceil(36 / 64) + 1 = 2 windows, so they still overlap to cover 100.
  EXPECT_EQ(sliding_window_starts(100, 64, 0.0), (std::vector<std::int64_t>{0, 36}));
  // target step 48, ceil(136 / 48) + 1 = 4, actual step 45.33: 0, 45.33, 90.67, 136.
  EXPECT_EQ(sliding_window_starts(200, 64, 0.25), (std::vector<std::int64_t>{0, 45, 91, 136}));
  // np.round rounds halves to even: step 2.5 gives 0, 2 (not 3), 5; step 3.5 gives 0, 4, 7.
  EXPECT_EQ(sliding_window_starts(13, 8, 0.5), (std::vector<std::int64_t>{0, 2, 5}));
  EXPECT_EQ(sliding_window_starts(15, 8, 0.5), (std::vector<std::int64_t>{0, 4, 7}));
  EXPECT_EQ(sliding_window_starts(10, 8, 0.5), (std::vector<std::int64_t>{0, 2}));
  EXPECT_EQ(sliding_window_starts(16, 8, 0.5), (std::vector<std::int64_t>{0, 4, 8}));
}

TEST(SlidingWindowStarts, RefuseBadArguments) {
  EXPECT_NE(error_of([] { sliding_window_starts(7, 8, 0.5); }).find("smaller than the patch"), std::string::npos);
  EXPECT_NE(error_of([] { sliding_window_starts(16, 8, 1.0); }).find("overlap"), std::string::npos);
  EXPECT_NE(error_of([] { sliding_window_starts(16, 8, -0.1); }).find("overlap"), std::string::npos);
  EXPECT_NE(error_of([] { sliding_window_starts(16, 0, 0.5); }).find("patch size"), std::string::npos);
}

TEST(GaussianImportanceMap, PeakOneSymmetricNoZerosSigmaOneEighth) {
  // Odd sizes: the centre is a voxel and holds exactly 1.
  const pipeline::Shape3 odd{9, 9, 9};
  const std::vector<float> g = pipeline::gaussian_importance_map(odd);
  ASSERT_EQ(g.size(), 729u);
  auto at = [&](const std::vector<float>& m, const pipeline::Shape3& s, std::int64_t z, std::int64_t y,
                std::int64_t x) {
    return m[static_cast<std::size_t>((z * s[1] + y) * s[2] + x)];
  };
  EXPECT_FLOAT_EQ(at(g, odd, 4, 4, 4), 1.0f);
  const double sigma = 9.0 / 8.0;
  EXPECT_NEAR(at(g, odd, 4, 4, 0), std::exp(-16.0 / (2 * sigma * sigma)), 1e-6);
  EXPECT_NEAR(at(g, odd, 2, 4, 4), std::exp(-4.0 / (2 * sigma * sigma)), 1e-6);

  // Even, non-cubic: four central voxels share the maximum 1; mirror symmetric on every axis.
  const pipeline::Shape3 s{8, 6, 10};
  const std::vector<float> m = pipeline::gaussian_importance_map(s);
  ASSERT_EQ(m.size(), 480u);
  float peak = 0.0f, low = 1.0f;
  for (float v : m) peak = std::max(peak, v), low = std::min(low, v);
  EXPECT_FLOAT_EQ(peak, 1.0f);
  EXPECT_FLOAT_EQ(at(m, s, 3, 2, 4), 1.0f);
  EXPECT_FLOAT_EQ(at(m, s, 4, 3, 5), 1.0f);
  EXPECT_GT(low, 0.0f);
  for (std::int64_t z = 0; z < s[0]; ++z)
    for (std::int64_t y = 0; y < s[1]; ++y)
      for (std::int64_t x = 0; x < s[2]; ++x) {
        const float v = at(m, s, z, y, x);
        ASSERT_FLOAT_EQ(v, at(m, s, s[0] - 1 - z, y, x));
        ASSERT_FLOAT_EQ(v, at(m, s, z, s[1] - 1 - y, x));
        ASSERT_FLOAT_EQ(v, at(m, s, z, y, s[2] - 1 - x));
      }
  // sigma = 10 / 8 along x: from the central voxel (offset 0.5) to the edge (offset 4.5).
  const double sx = 10.0 / 8.0;
  EXPECT_NEAR(at(m, s, 3, 2, 0), std::exp(-(4.5 * 4.5 - 0.5 * 0.5) / (2 * sx * sx)), 1e-6);
  // The corner is the smallest value and is still well above 0 in float.
  EXPECT_FLOAT_EQ(low, at(m, s, 0, 0, 0));
}

// ---- whole-volume logits -----------------------------------------------------------------

TEST(SlidingWindowLogits, ImageOfPatchSizeIsOneForward) {
  Generator gen(1);
  UNet3d model(small_config(), gen);
  model.eval();
  const Tensor image = test_image(kPatch, kPatch, kPatch);
  const Tensor out = sliding_window_logits(model, image, options_8(), Device::cpu());
  EXPECT_EQ(out.shape(), (Shape{3, kPatch, kPatch, kPatch}));
  EXPECT_TRUE(out.device().is_cpu());
  NoGradGuard no_grad;
  const Tensor ref = model.forward(reshape(image, {1, 1, kPatch, kPatch, kPatch}));
  EXPECT_TRUE(voxgrad::test::all_close(as_double(out), as_double(ref), 1e-5, 1e-5));
}

TEST(SlidingWindowLogits, LargerImageIsGaussianWeightedMeanOfWindows) {
  Generator gen(2);
  UNet3d model(small_config(), gen);
  const Tensor image = test_image(13, 16, 10);
  SlidingWindowOptions opt = options_8();
  std::vector<std::pair<std::int64_t, std::int64_t>> calls;
  opt.on_window = [&](std::int64_t done, std::int64_t total) { calls.emplace_back(done, total); };
  const Tensor out = sliding_window_logits(model, image, opt, Device::cpu());
  ASSERT_EQ(out.shape(), (Shape{3, 13, 16, 10}));
  // Starts worked by hand: 13 -> 0, 2, 5; 16 -> 0, 4, 8; 10 -> 0, 2 (18 windows).
  const std::vector<double> ref = reference_logits(model, image, {{{0, 2, 5}, {0, 4, 8}, {0, 2}}}, false);
  EXPECT_TRUE(voxgrad::test::all_close(as_double(out), ref, 1e-5, 1e-4));
  ASSERT_EQ(calls.size(), 18u);
  for (std::size_t i = 0; i < calls.size(); ++i) {
    EXPECT_EQ(calls[i].first, static_cast<std::int64_t>(i + 1));
    EXPECT_EQ(calls[i].second, 18);
  }
}

TEST(SlidingWindowLogits, MirroringIsMeanOverEightFlips) {
  Generator gen(3);
  UNet3d model(small_config(), gen);
  const Tensor image = test_image(10, 8, 13);
  const Tensor plain = sliding_window_logits(model, image, options_8(false), Device::cpu());
  SlidingWindowOptions opt = options_8(true);
  std::int64_t windows = 0;
  opt.on_window = [&](std::int64_t, std::int64_t total) {
    ++windows;
    EXPECT_EQ(total, 6);  // windows, not forwards: 2 x 1 x 3
  };
  const Tensor mirrored = sliding_window_logits(model, image, opt, Device::cpu());
  EXPECT_EQ(windows, 6);
  const std::vector<double> ref = reference_logits(model, image, {{{0, 2}, {0}, {0, 2, 5}}}, true);
  EXPECT_TRUE(voxgrad::test::all_close(as_double(mirrored), ref, 1e-5, 1e-4));
  // A random network is not flip invariant, so mirroring has to change the result.
  EXPECT_FALSE(voxgrad::test::all_close(as_double(plain), ref, 1e-3, 1e-3));
}

TEST(SlidingWindowLogits, SmallImageIsPaddedAndCroppedBack) {
  Generator gen(4);
  UNet3d model(small_config(), gen);
  model.eval();
  // Z 5 -> 8 (1 in front, 2 behind), Y 6 -> 8 (1, 1), X 11 stays (windows 0 and 3).
  const Tensor image = test_image(5, 6, 11);
  const Tensor out = sliding_window_logits(model, image, options_8(), Device::cpu());
  ASSERT_EQ(out.shape(), (Shape{3, 5, 6, 11}));
  const std::vector<double> ref = reference_logits(model, image, {{{-1}, {-1}, {0, 3}}}, false);
  EXPECT_TRUE(voxgrad::test::all_close(as_double(out), ref, 1e-5, 1e-4));

  // Smaller on every axis: one window, so the result is the forward of the padded image, cropped.
  const Tensor tiny = test_image(5, 6, 7);
  const Tensor tiny_out = sliding_window_logits(model, tiny, options_8(), Device::cpu());
  ASSERT_EQ(tiny_out.shape(), (Shape{3, 5, 6, 7}));
  const std::vector<float> t = tiny.to_vector<float>();
  std::vector<float> padded(512, 0.0f);  // (1, 8, 8, 8), the image at (1, 1, 0)
  for (std::int64_t z = 0; z < 5; ++z)
    for (std::int64_t y = 0; y < 6; ++y)
      for (std::int64_t x = 0; x < 7; ++x)
        padded[static_cast<std::size_t>(((z + 1) * 8 + y + 1) * 8 + x)] =
            t[static_cast<std::size_t>((z * 6 + y) * 7 + x)];
  NoGradGuard no_grad;
  const std::vector<float> full = model.forward(from_vector(padded, {1, 1, 8, 8, 8})).to_vector<float>();
  std::vector<double> cropped;
  for (std::int64_t k = 0; k < 3; ++k)
    for (std::int64_t z = 0; z < 5; ++z)
      for (std::int64_t y = 0; y < 6; ++y)
        for (std::int64_t x = 0; x < 7; ++x)
          cropped.push_back(full[static_cast<std::size_t>(((k * 8 + z + 1) * 8 + y + 1) * 8 + x)]);
  EXPECT_TRUE(voxgrad::test::all_close(as_double(tiny_out), cropped, 1e-5, 1e-5));
}

TEST(SlidingWindowLogits, RunsInEvalModeAndRestoresTheMode) {
  // Batch norm differs between modes: training mode would normalise with the window's statistics.
  Generator gen(5);
  UNet3d model(small_config(Norm::Batch), gen);
  const Tensor image = test_image(kPatch, kPatch, kPatch);
  model.eval();
  std::vector<double> eval_ref;
  {
    NoGradGuard no_grad;
    eval_ref = as_double(model.forward(reshape(image, {1, 1, kPatch, kPatch, kPatch})));
  }
  model.train();
  const Tensor out = sliding_window_logits(model, image, options_8(), Device::cpu());
  EXPECT_TRUE(model.is_training());
  EXPECT_TRUE(voxgrad::test::all_close(as_double(out), eval_ref, 1e-5, 1e-5));

  model.eval();
  sliding_window_logits(model, image, options_8(), Device::cpu());
  EXPECT_FALSE(model.is_training());

  // Also when a window throws.
  model.train();
  SlidingWindowOptions opt = options_8();
  opt.on_window = [](std::int64_t, std::int64_t) { VG_FAIL("stop"); };
  EXPECT_NE(error_of([&] { sliding_window_logits(model, image, opt, Device::cpu()); }).find("stop"), std::string::npos);
  EXPECT_TRUE(model.is_training());
}

TEST(SlidingWindowLogits, RefusesBadInputs) {
  Generator gen(6);
  UNet3d model(small_config(), gen);
  const Tensor image = test_image(8, 8, 8);
  auto run = [&](const Tensor& img, const SlidingWindowOptions& opt) {
    return error_of([&] { sliding_window_logits(model, img, opt, Device::cpu()); });
  };
  EXPECT_NE(run(zeros({8, 8, 8}), options_8()).find("must be (C, Z, Y, X)"), std::string::npos);
  EXPECT_NE(run(zeros({1, 8, 8, 8}, DType::Float64), options_8()).find("must be float32"), std::string::npos);
  EXPECT_NE(run(zeros({2, 8, 8, 8}), options_8()).find("has 2 channels, the model takes 1"), std::string::npos);
  SlidingWindowOptions odd = options_8();
  odd.patch = {8, 7, 8};
  const std::string patch_error = run(image, odd);
  EXPECT_NE(patch_error.find("H=7 is not divisible by 2"), std::string::npos) << patch_error;
  for (double overlap : {1.0, -0.25, std::nan("")}) {
    SlidingWindowOptions o = options_8();
    o.overlap = overlap;
    EXPECT_NE(run(image, o).find("must be in [0, 1)"), std::string::npos) << overlap;
  }
  EXPECT_NE(run(Tensor(), options_8()).find("undefined"), std::string::npos);
  // The model still works after the refusals: nothing was left half-done.
  EXPECT_EQ(sliding_window_logits(model, image, options_8(), Device::cpu()).shape(), (Shape{3, 8, 8, 8}));
}

TEST(SlidingWindowLogits, CudaMatchesCpu) {
  VG_REQUIRE_CUDA();
  Generator gen(8);
  UNet3d model(small_config(), gen);
  const Tensor image = test_image(13, 16, 10);
  const Tensor cpu = sliding_window_logits(model, image, options_8(true), Device::cpu());
  model.to(Device::cuda());
  const Tensor gpu = sliding_window_logits(model, image, options_8(true), Device::cuda());
  EXPECT_TRUE(gpu.device().is_cpu());
  EXPECT_TRUE(voxgrad::test::all_close(as_double(gpu), as_double(cpu), 1e-4, 1e-3));
  // The model lives on the GPU now: asking for the CPU is a clear error.
  EXPECT_NE(error_of([&] { sliding_window_logits(model, image, options_8(), Device::cpu()); }).find("model.to"),
            std::string::npos);
}

}  // namespace
