// Preprocessing: grid sizes, trilinear resampling against exact linear ramps and smooth images with
// analytic error bounds, label resampling (values kept, ties, a one-hot reference, Dice of a sphere
// there and back), z-score and CT normalisation with NaN and infinite voxels, numpy-style foreground
// percentiles, padding and cropping, and the checks preprocess_case makes (label range, spacing,
// memory) with the image-health report it returns.
#include "apps/pipeline/preprocess.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numbers>
#include <set>
#include <string>
#include <vector>

#include "engine/memory_budget.h"
#include "io/image_health.h"
#include "tests/test_support.h"

namespace {

using namespace voxgrad;
using namespace voxgrad::io;
using namespace voxgrad::pipeline;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

using voxgrad::test::error_of;

#define EXPECT_HAS(haystack, needle) EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)

// Input coordinate output voxel o samples along an axis of `in` voxels resampled to `out`, clamped.
double sample_coordinate(std::int64_t o, std::int64_t in, std::int64_t out) {
  return std::clamp((o + 0.5) * static_cast<double>(in) / static_cast<double>(out) - 0.5, 0.0,
                    static_cast<double>(in - 1));
}

// A (C, Z, Y, X) float32 image with v(c, z, y, x) = f(c, z, y, x).
Tensor image_of(const Shape& shape, const std::function<double(std::int64_t, double, double, double)>& f) {
  std::vector<float> v(static_cast<std::size_t>(shape_numel(shape)));
  std::size_t i = 0;
  for (std::int64_t c = 0; c < shape[0]; ++c)
    for (std::int64_t z = 0; z < shape[1]; ++z)
      for (std::int64_t y = 0; y < shape[2]; ++y)
        for (std::int64_t x = 0; x < shape[3]; ++x) v[i++] = static_cast<float>(f(c, z, y, x));
  return from_vector(v, shape);
}

// (Z, Y, X) int32 labels with l(z, y, x) = f(z, y, x).
Tensor labels_of(const Shape3& s, const std::function<int(std::int64_t, std::int64_t, std::int64_t)>& f) {
  std::vector<std::int32_t> v(static_cast<std::size_t>(s[0] * s[1] * s[2]));
  std::size_t i = 0;
  for (std::int64_t z = 0; z < s[0]; ++z)
    for (std::int64_t y = 0; y < s[1]; ++y)
      for (std::int64_t x = 0; x < s[2]; ++x) v[i++] = f(z, y, x);
  return from_vector(v, {s[0], s[1], s[2]});
}

// A small deterministic hash in [0, 1): random-looking test data without a generator.
double hash01(std::uint64_t i) {
  i = (i ^ (i >> 30)) * 0xbf58476d1ce4e5b9ULL;
  i = (i ^ (i >> 27)) * 0x94d049bb133111ebULL;
  i ^= i >> 31;
  return static_cast<double>(i >> 11) / 9007199254740992.0;
}

double dice(const std::vector<std::int32_t>& a, const std::vector<std::int32_t>& b, int cls) {
  double inter = 0, na = 0, nb = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    inter += (a[i] == cls && b[i] == cls);
    na += a[i] == cls;
    nb += b[i] == cls;
  }
  return 2 * inter / (na + nb);
}

// ---- grid sizes ------------------------------------------------------------------------------

TEST(Preprocess, NiftiSpacingTurnsIntoTensorOrder) {
  EXPECT_EQ(pipeline::spacing_zyx({0.8, 0.9, 2.0}), (pipeline::Spacing3{2.0, 0.9, 0.8}));
  EXPECT_EQ(pipeline::spacing_zyx({0.8, 0.9, 2.0, 1.5}), (pipeline::Spacing3{2.0, 0.9, 0.8}));  // time is not space
  EXPECT_EQ(pipeline::spacing_zyx({0.5, 0.6}), (pipeline::Spacing3{1.0, 0.6, 0.5}));             // a 2-D image
}

TEST(ResampledShape, RoundsEachAxisAndKeepsAtLeastOne) {
  // 30 * 0.7 is 20.999999999999996 in double: rounding, not truncation, gives 21.
  EXPECT_EQ(resampled_shape({10, 20, 30}, {2.5, 1.0, 0.7}, {1.0, 1.0, 1.0}), (Shape3{25, 20, 21}));
  // Halves round away from zero (5 * 1 / 2 = 2.5 -> 3), and a grid never shrinks below one voxel.
  EXPECT_EQ(resampled_shape({5, 7, 1}, {1.0, 1.0, 1.0}, {2.0, 3.0, 10.0}), (Shape3{3, 2, 1}));
  EXPECT_EQ(resampled_shape({64, 64, 64}, {1.5, 1.5, 1.5}, {1.5, 1.5, 1.5}), (Shape3{64, 64, 64}));
  EXPECT_HAS(error_of([] { resampled_shape({4, 4, 4}, {1, 1, 1}, {1, 0, 1}); }), "target spacing 0");
  EXPECT_HAS(error_of([] { resampled_shape({4, 4, 4}, {1, -2, 1}, {1, 1, 1}); }), "spacing -2");
}

// ---- images ----------------------------------------------------------------------------------

TEST(ResampleImage, SameShapeIsTheIdentity) {
  const Tensor img = image_of({2, 5, 6, 7}, [](auto c, double z, double y, double x) {
    return hash01(static_cast<std::uint64_t>(c * 1000 + z * 100 + y * 10 + x)) * 50 - 20;
  });
  const Tensor out = resample_image(img, {5, 6, 7});
  EXPECT_EQ(out.shape(), img.shape());
  EXPECT_NE(out.raw_data(), img.raw_data());  // a copy: the result may be edited freely
  EXPECT_EQ(out.to_vector<float>(), img.to_vector<float>());
}

// Trilinear interpolation reproduces any linear function exactly, so on a ramp every output voxel is
// the ramp at the (clamped) coordinate it samples: the exact interior and the repeated edges at once.
TEST(ResampleImage, LinearRampIsReproducedExactly) {
  const auto ramp = [](std::int64_t c, double z, double y, double x) {
    return 3.0 * z + 2.0 * y - x + 5.0 + 100.0 * c;
  };
  const Shape in{2, 6, 7, 8};
  const Tensor img = image_of(in, ramp);
  for (const Shape3& out : {Shape3{13, 17, 19}, Shape3{3, 4, 5}, Shape3{6, 14, 3}}) {
    const std::vector<float> got = resample_image(img, out).to_vector<float>();
    ASSERT_EQ(got.size(), static_cast<std::size_t>(2 * out[0] * out[1] * out[2]));
    std::vector<double> want, have(got.begin(), got.end());
    std::int64_t interior = 0;
    for (std::int64_t c = 0; c < 2; ++c)
      for (std::int64_t z = 0; z < out[0]; ++z)
        for (std::int64_t y = 0; y < out[1]; ++y)
          for (std::int64_t x = 0; x < out[2]; ++x) {
            const double cz = sample_coordinate(z, in[1], out[0]), cy = sample_coordinate(y, in[2], out[1]),
                         cx = sample_coordinate(x, in[3], out[2]);
            interior += cz > 0 && cz < in[1] - 1 && cy > 0 && cy < in[2] - 1 && cx > 0 && cx < in[3] - 1;
            want.push_back(ramp(c, cz, cy, cx));
          }
    EXPECT_GT(interior, 0);
    // Values up to ~140 in float32: 1e-5 relative is a few ulps.
    EXPECT_TRUE(test::all_close(have, want, 1e-5, 1e-5)) << "to (" << out[0] << ", " << out[1] << ", " << out[2] << ")";
  }
}

// A sum of one-period sines per axis, f = sum_a sin(w_a t_a + p_a), halved and brought back.
// The sum is additive over axes and trilinear weights sum to 1, so the error is the sum of 1-D
// linear-interpolation errors: halving samples midpoints (error <= h^2/8 |f''| with h = 1), and
// upsampling interpolates those values over h = 2 (adds <= 4/8 |f''|), so away from the clamped
// edge voxels |error| <= 5/8 * sum_a w_a^2 = 0.0453. At the edge voxels the clamp holds the value
// of a sample half a voxel inside, adding <= w_a / 2 per axis: at most 0.276 overall.
// Measured: 0.0359 inside, 0.162 overall.
TEST(ResampleImage, DownThenUpOfASmoothImageIsCloseToTheOriginal) {
  const double two_pi = 2 * std::numbers::pi;
  const double w[3] = {two_pi / 40, two_pi / 48, two_pi / 36};
  const auto f = [&](std::int64_t, double z, double y, double x) {
    return std::sin(w[0] * z + 0.3) + std::sin(w[1] * y + 1.1) + std::sin(w[2] * x + 2.0);
  };
  const Shape3 full{40, 48, 36};
  const Tensor img = image_of({1, 40, 48, 36}, f);
  const Tensor back = resample_image(resample_image(img, {20, 24, 18}), full);
  const std::vector<float> a = img.to_vector<float>(), b = back.to_vector<float>();
  double max_inside = 0, max_all = 0;
  std::size_t i = 0;
  for (std::int64_t z = 0; z < full[0]; ++z)
    for (std::int64_t y = 0; y < full[1]; ++y)
      for (std::int64_t x = 0; x < full[2]; ++x, ++i) {
        const double e = std::abs(static_cast<double>(a[i]) - b[i]);
        max_all = std::max(max_all, e);
        const bool edge = z == 0 || z == full[0] - 1 || y == 0 || y == full[1] - 1 || x == 0 || x == full[2] - 1;
        if (!edge) max_inside = std::max(max_inside, e);
      }
  const double inside_bound = 5.0 / 8.0 * (w[0] * w[0] + w[1] * w[1] + w[2] * w[2]);
  const double edge_bound = inside_bound + 0.5 * (w[0] + w[1] + w[2]);
  EXPECT_LE(max_inside, inside_bound);
  EXPECT_LE(max_all, edge_bound);
  EXPECT_GT(max_inside, 0.0);  // the round trip is lossy; zero would mean nothing was resampled
  RecordProperty("max_error_inside", std::to_string(max_inside));
  RecordProperty("max_error_all", std::to_string(max_all));
}

TEST(ResampleImage, ResultsDoNotDependOnThreadCount) {
  const Tensor img = image_of({2, 17, 19, 23}, [](auto c, double z, double y, double x) {
    return hash01(static_cast<std::uint64_t>(((c * 17 + z) * 19 + y) * 23 + x));
  });
  const Tensor labels = labels_of({17, 19, 23}, [](auto z, auto y, auto x) {
    return static_cast<int>(hash01(static_cast<std::uint64_t>((z * 19 + y) * 23 + x) + 7) * 4);
  });
  const int threads = omp_get_max_threads();
  std::vector<float> img_out[2];
  std::vector<std::int32_t> lab_out[2];
  for (int t = 0; t < 2; ++t) {
    omp_set_num_threads(t == 0 ? 1 : 3);
    img_out[t] = resample_image(img, {31, 11, 40}).to_vector<float>();
    lab_out[t] = resample_labels(labels, {31, 11, 40}, 4, LabelResampling::OneHotLinear).to_vector<std::int32_t>();
  }
  omp_set_num_threads(threads);
  EXPECT_EQ(img_out[0], img_out[1]);
  EXPECT_EQ(lab_out[0], lab_out[1]);
}

TEST(ResampleImage, RejectsBadInputs) {
  EXPECT_HAS(error_of([] { resample_image(zeros({4, 4, 4}), {2, 2, 2}); }), "(C, Z, Y, X)");
  EXPECT_HAS(error_of([] { resample_image(zeros({1, 4, 4, 4}, DType::Float64), {2, 2, 2}); }), "float32");
  EXPECT_HAS(error_of([] { resample_image(zeros({1, 4, 4, 4}), {2, 0, 2}); }), "at least 1");
}

// ---- labels ----------------------------------------------------------------------------------

TEST(ResampleLabels, BothModesKeepOnlyTheValuesPresent) {
  // Values 0, 2 and 5 of 7 classes in random blobs: interpolation must never invent 1, 3, 4 or 6.
  const Shape3 in{9, 10, 11};
  const Tensor labels = labels_of(in, [](auto z, auto y, auto x) {
    const double h = hash01(static_cast<std::uint64_t>((z / 2 * 10 + y / 2) * 11 + x / 3));
    return h < 0.4 ? 0 : h < 0.7 ? 2 : 5;
  });
  for (LabelResampling mode : {LabelResampling::Nearest, LabelResampling::OneHotLinear}) {
    for (const Shape3& out : {Shape3{17, 23, 7}, Shape3{4, 5, 6}, Shape3{9, 10, 11}}) {
      const std::vector<std::int32_t> v = resample_labels(labels, out, 7, mode).to_vector<std::int32_t>();
      const std::set<std::int32_t> values(v.begin(), v.end());
      EXPECT_TRUE(std::includes(std::set<std::int32_t>{0, 2, 5}.begin(), std::set<std::int32_t>{0, 2, 5}.end(),
                                values.begin(), values.end()))
          << "mode " << static_cast<int>(mode);
      EXPECT_GE(values.size(), 2u);
    }
  }
  EXPECT_EQ(resample_labels(labels, in, 7, LabelResampling::OneHotLinear).to_vector<std::int32_t>(),
            labels.to_vector<std::int32_t>());
}

// Two voxels 1 | 2 halved to one: the one-hot weights tie at 0.5 and the lowest class wins; the
// nearest centre of the single output voxel is the halfway point, which goes up to the second voxel.
TEST(ResampleLabels, TiesGoToTheLowestClassAndNearestHalvesGoUp) {
  const Tensor labels = from_vector(std::vector<std::int32_t>{1, 2}, {1, 1, 2});
  EXPECT_EQ(resample_labels(labels, {1, 1, 1}, 3, LabelResampling::OneHotLinear).item(), 1.0);
  EXPECT_EQ(resample_labels(labels, {1, 1, 1}, 3, LabelResampling::Nearest).item(), 2.0);
  const Tensor swapped = from_vector(std::vector<std::int32_t>{2, 1}, {1, 1, 2});
  EXPECT_EQ(resample_labels(swapped, {1, 1, 1}, 3, LabelResampling::OneHotLinear).item(), 1.0);
}

// The definition spelled out: every class's indicator resampled with resample_image, then argmax.
// The two agree except where the reference's two best classes are within float rounding.
TEST(ResampleLabels, OneHotLinearMatchesPerClassTrilinearThenArgmax) {
  const Shape3 in{7, 9, 8}, out{12, 5, 13};
  const int K = 4;
  const Tensor labels = labels_of(in, [](auto z, auto y, auto x) {
    return static_cast<int>(hash01(static_cast<std::uint64_t>((z * 9 + y) * 8 + x) + 99) * K);
  });
  const std::vector<std::int32_t> l = labels.to_vector<std::int32_t>();
  const std::vector<std::int32_t> got =
      resample_labels(labels, out, K, LabelResampling::OneHotLinear).to_vector<std::int32_t>();
  std::vector<std::vector<float>> prob;
  for (int k = 0; k < K; ++k) {
    std::vector<float> onehot(l.size());
    for (std::size_t i = 0; i < l.size(); ++i) onehot[i] = l[i] == k ? 1.0f : 0.0f;
    prob.push_back(resample_image(from_vector(onehot, {1, in[0], in[1], in[2]}), out).to_vector<float>());
  }
  int checked = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    int best = 0;
    for (int k = 1; k < K; ++k)
      if (prob[k][i] > prob[best][i]) best = k;
    float second = -1;
    for (int k = 0; k < K; ++k)
      if (k != best) second = std::max(second, prob[k][i]);
    if (prob[best][i] - second < 1e-5f) continue;
    ++checked;
    EXPECT_EQ(got[i], best) << "voxel " << i;
  }
  EXPECT_GT(checked, static_cast<int>(got.size()) * 9 / 10);
}

TEST(ResampleLabels, SphereToTwiceTheSizeAndBackKeepsItsDice) {
  const Shape3 in{32, 30, 34};
  const Tensor sphere = labels_of(in, [](auto z, auto y, auto x) {
    const double dz = z - 15.5, dy = y - 14.2, dx = x - 16.7;
    return dz * dz + dy * dy + dx * dx < 11.3 * 11.3 ? 1 : 0;
  });
  const Tensor up = resample_labels(sphere, {64, 60, 68}, 2, LabelResampling::OneHotLinear);
  const Tensor back = resample_labels(up, in, 2, LabelResampling::OneHotLinear);
  const double d = dice(sphere.to_vector<std::int32_t>(), back.to_vector<std::int32_t>(), 1);
  EXPECT_GT(d, 0.95);
  // The upsampled sphere is the same sphere on a finer grid: its volume is 8x within the boundary layer.
  const auto count = [](const Tensor& t) {
    const auto v = t.to_vector<std::int32_t>();
    return static_cast<double>(std::count(v.begin(), v.end(), 1));
  };
  EXPECT_NEAR(count(up) / (8 * count(sphere)), 1.0, 0.05);
}

TEST(ResampleLabels, RejectsValuesOutsideTheClasses) {
  const Tensor labels = from_vector(std::vector<std::int32_t>{0, 1, 3, 0}, {1, 2, 2});
  const std::string msg = error_of([&] { resample_labels(labels, {2, 4, 4}, 3, LabelResampling::OneHotLinear); });
  EXPECT_HAS(msg, "label value 3");
  EXPECT_HAS(msg, "(0, 1, 0)");
}

// ---- normalisation ---------------------------------------------------------------------------

TEST(Normalize, ZScoreGivesMeanZeroStdOneOverNonNaNVoxelsAndNaNBecomesZero) {
  const Shape shape{2, 6, 7, 9};
  Tensor img = image_of(shape, [](auto c, double z, double y, double x) {
    const double h = hash01(static_cast<std::uint64_t>(((c * 6 + z) * 7 + y) * 9 + x));
    if (h < 0.1) return std::numeric_limits<double>::quiet_NaN();
    return c == 0 ? 1000 + 300 * h : -5 + 0.01 * h;  // very different scales per channel
  });
  const std::vector<float> before = img.to_vector<float>();
  normalize_image(img, Normalization::ZScore);
  const std::vector<float> after = img.to_vector<float>();
  const std::size_t per = static_cast<std::size_t>(6 * 7 * 9);
  for (std::size_t c = 0; c < 2; ++c) {
    // The statistics by hand, numpy-style (ddof = 0), over the non-NaN voxels of the channel.
    double n = 0, sum = 0, sq = 0;
    for (std::size_t i = c * per; i < (c + 1) * per; ++i)
      if (!std::isnan(before[i])) n += 1, sum += before[i];
    const double mean = sum / n;
    for (std::size_t i = c * per; i < (c + 1) * per; ++i)
      if (!std::isnan(before[i])) sq += (before[i] - mean) * (before[i] - mean);
    const double std = std::sqrt(sq / n);
    double m2 = 0, s2 = 0;
    for (std::size_t i = c * per; i < (c + 1) * per; ++i) {
      if (std::isnan(before[i])) {
        EXPECT_EQ(after[i], 0.0f) << "NaN voxel " << i;
        continue;
      }
      EXPECT_NEAR(after[i], (before[i] - mean) / std, 1e-4) << "voxel " << i;
      m2 += after[i];
      s2 += static_cast<double>(after[i]) * after[i];
    }
    EXPECT_NEAR(m2 / n, 0.0, 1e-5) << "channel " << c;
    EXPECT_NEAR(std::sqrt(s2 / n - (m2 / n) * (m2 / n)), 1.0, 1e-4) << "channel " << c;
  }
}

TEST(Normalize, ConstantChannelUsesTheStdFloorAndAllNaNChannelBecomesZero) {
  Tensor img = image_of({3, 3, 4, 5}, [](auto c, double z, double, double x) {
    if (c == 1) return std::numeric_limits<double>::quiet_NaN();
    if (c == 2) return 7.0;
    return z + x;
  });
  normalize_image(img, Normalization::ZScore);
  const std::vector<float> v = img.to_vector<float>();
  for (std::size_t i = 0; i < v.size(); ++i) {
    ASSERT_FALSE(std::isnan(v[i])) << "voxel " << i;
    if (i >= 60) {
      EXPECT_EQ(v[i], 0.0f) << "voxel " << i;  // the NaN channel and the constant one
    }
  }
  Tensor ct = image_of({2, 2, 2, 2}, [](auto c, double, double, double x) {
    return c == 0 ? std::numeric_limits<double>::quiet_NaN() : x;
  });
  normalize_image(ct, Normalization::CT, {{-1, 1, 0, 1}, {0, 1, 0.5, 0.5}});
  const std::vector<float> w = ct.to_vector<float>();
  for (std::size_t i = 0; i < 8; ++i) EXPECT_EQ(w[i], 0.0f) << "voxel " << i;
  for (std::size_t i = 8; i < 16; ++i) EXPECT_FLOAT_EQ(w[i], i % 2 == 0 ? -1.0f : 1.0f) << "voxel " << i;
}

// Foreground 1..100 in case A and 101..200 in case B (label 1), background far outside, NaN voxels in
// the foreground. numpy: np.percentile(np.arange(1, 201), [0.5, 99.5]) == [1.995, 199.005], and after
// clipping to those the mean stays 100.5.
TEST(Normalize, ForegroundStatsMatchNumpyPercentilesAndCtClips) {
  const auto make_case = [](double base, Tensor& img, Tensor& lab) {
    std::vector<float> v(2 * 10 * 11);
    std::vector<std::int32_t> l(v.size(), 0);
    for (std::size_t i = 0; i < 100; ++i) v[2 * i] = static_cast<float>(base + i), l[2 * i] = 1;
    for (std::size_t i = 0; i < 100; ++i) v[2 * i + 1] = static_cast<float>(base > 50 ? 5000 : -5000);
    // 20 NaN foreground voxels: left out of the statistics and out of the sampling ranks.
    for (std::size_t i = 200; i < v.size(); ++i) v[i] = kNaN, l[i] = 1;
    img = from_vector(v, {1, 2, 10, 11});
    lab = from_vector(l, {2, 10, 11});
  };
  Tensor a_img, a_lab, b_img, b_lab;
  make_case(1, a_img, a_lab);
  make_case(101, b_img, b_lab);
  const std::vector<IntensityStats> stats = foreground_intensity_stats({a_img, b_img}, {a_lab, b_lab});
  ASSERT_EQ(stats.size(), 1u);
  EXPECT_NEAR(stats[0].lower, 1.995, 1e-9);
  EXPECT_NEAR(stats[0].upper, 199.005, 1e-9);
  EXPECT_NEAR(stats[0].mean, 100.5, 1e-9);
  double sq = 0;
  for (int v = 1; v <= 200; ++v) {
    const double x = std::clamp(static_cast<double>(v), 1.995, 199.005);
    sq += (x - 100.5) * (x - 100.5);
  }
  EXPECT_NEAR(stats[0].std, std::sqrt(sq / 200), 1e-9);

  // Evenly spaced samples: 10 of each case's 100 foreground voxels are ranks 0, 10, ..., 90, i.e.
  // 1, 11, ..., 91 and 101, ..., 191; numpy's 0.5 percentile of those 20 values: 1 + 0.095 * 10.
  const std::vector<IntensityStats> few = foreground_intensity_stats({a_img, b_img}, {a_lab, b_lab}, 10);
  EXPECT_NEAR(few[0].lower, 1.95, 1e-9);
  EXPECT_NEAR(few[0].upper, 191 - 0.095 * 10, 1e-9);

  // CT normalisation with those statistics: clip, then the global z-score.
  Tensor img = from_vector(std::vector<float>{-1e4f, 1.0f, 50.0f, 199.0f, 1e4f, kNaN}, {1, 1, 1, 6});
  normalize_image(img, Normalization::CT, stats);
  const std::vector<float> v = img.to_vector<float>();
  const double s = stats[0].std;
  const std::vector<double> want{(1.995 - 100.5) / s, (1.995 - 100.5) / s, (50 - 100.5) / s, (199 - 100.5) / s,
                                 (199.005 - 100.5) / s, 0.0};
  EXPECT_TRUE(test::all_close(std::vector<double>(v.begin(), v.end()), want, 1e-6, 1e-6));

  EXPECT_HAS(error_of([&] {
               foreground_intensity_stats({a_img}, {zeros({2, 10, 11}, DType::Int32)});
             }),
             "no finite foreground voxel");
  EXPECT_HAS(error_of([&] { normalize_image(img, Normalization::CT); }), "one IntensityStats per channel");
}

TEST(Normalize, ParseNormalizationNamesTheChoices) {
  EXPECT_EQ(parse_normalization("zscore"), Normalization::ZScore);
  EXPECT_EQ(parse_normalization("ct"), Normalization::CT);
  EXPECT_STREQ(normalization_name(parse_normalization("ct")), "ct");
  EXPECT_HAS(error_of([] { parse_normalization("minmax"); }), "zscore, ct");
}

TEST(Normalize, MedianSpacingPerAxis) {
  EXPECT_EQ(median_spacing({{3, 1, 1}, {1, 0.5, 2}, {2, 0.7, 5}}), (Spacing3{2, 0.7, 2}));
  EXPECT_EQ(median_spacing({{3, 1, 1}, {1, 0.5, 2}}), (Spacing3{2, 0.75, 1.5}));
}

// ---- padding and cropping --------------------------------------------------------------------

TEST(Pad, SplitsBeforeAndAfterAndCropInvertsIt) {
  std::vector<float> v(2 * 3 * 4 * 5);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i + 1);
  const Tensor t = from_vector(v, {2, 3, 4, 5});
  Shape3 before{-1, -1, -1};
  const Tensor p = pad_to_at_least(t, {6, 2, 8}, -7.5, &before);
  // z: 3 more, 1 before and 2 after (the extra voxel after); y already large enough; x: 3 more.
  EXPECT_EQ(p.shape(), (Shape{2, 6, 4, 8}));
  EXPECT_EQ(before, (Shape3{1, 0, 1}));
  const std::vector<float> pv = p.to_vector<float>();
  std::size_t i = 0;
  for (std::int64_t c = 0; c < 2; ++c)
    for (std::int64_t z = 0; z < 6; ++z)
      for (std::int64_t y = 0; y < 4; ++y)
        for (std::int64_t x = 0; x < 8; ++x, ++i) {
          const bool inside = z >= 1 && z < 4 && x >= 1 && x < 6;
          const float want = inside ? v[static_cast<std::size_t>(((c * 3 + z - 1) * 4 + y) * 5 + x - 1)] : -7.5f;
          ASSERT_EQ(pv[i], want) << "(" << c << ", " << z << ", " << y << ", " << x << ")";
        }
  EXPECT_EQ(crop_spatial(p, before, {3, 4, 5}).to_vector<float>(), v);

  // Integer labels without leading axes, padded with -1, and cropped back.
  const Tensor lab = from_vector(std::vector<std::int32_t>{1, 2, 3, 4}, {1, 2, 2});
  Shape3 lb{};
  const Tensor lp = pad_to_at_least(lab, {2, 3, 5}, -1, &lb);
  EXPECT_EQ(lb, (Shape3{0, 0, 1}));
  EXPECT_EQ(lp.to_vector<std::int32_t>(), (std::vector<std::int32_t>{-1, 1, 2, -1, -1, -1, 3, 4, -1, -1, -1, -1, -1,
                                                                     -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                                                     -1, -1, -1, -1, -1}));
  EXPECT_EQ(crop_spatial(lp, lb, {1, 2, 2}).to_vector<std::int32_t>(), lab.to_vector<std::int32_t>());
}

TEST(Pad, NoOpReturnsTheSameStorage) {
  const Tensor t = zeros({1, 3, 4, 5});
  Shape3 before{9, 9, 9};
  const Tensor p = pad_to_at_least(t, {3, 1, 5}, 0, &before);
  EXPECT_EQ(p.raw_data(), t.raw_data());
  EXPECT_EQ(before, (Shape3{0, 0, 0}));
  EXPECT_HAS(error_of([&] { crop_spatial(t, {1, 0, 0}, {3, 4, 5}); }), "does not fit");
  EXPECT_HAS(error_of([] { pad_to_at_least(zeros({2, 2, 2}, DType::UInt8), {3, 3, 3}, 0.5); }), "not a uint8");
}

// ---- whole cases -----------------------------------------------------------------------------

TEST(PreprocessCase, NormalisesACopyAndResamplesToThePlanSpacing) {
  const Tensor img = image_of({1, 4, 6, 8}, [](auto, double z, double y, double x) { return 10 * z + y + 0.1 * x; });
  const Tensor lab = labels_of({4, 6, 8}, [](auto z, auto, auto x) { return z >= 2 && x >= 4 ? 2 : 0; });
  const std::vector<float> original = img.to_vector<float>();
  PreprocessPlan plan;
  plan.classes = 3;
  plan.target_spacing = {1.0, 2.0, 1.0};
  const PreprocessedCase pc = preprocess_case(img, lab, {2.0, 2.0, 0.5}, plan);
  EXPECT_EQ(img.to_vector<float>(), original);  // the caller's image is untouched
  EXPECT_EQ(pc.original_shape, (Shape3{4, 6, 8}));
  EXPECT_EQ(pc.image.shape(), (Shape{1, 8, 6, 4}));
  EXPECT_EQ(pc.label.shape(), (Shape{8, 6, 4}));
  // Normalised before resampling: the result is the resampled z-score of the input.
  Tensor norm = img.clone();
  normalize_image(norm, Normalization::ZScore);
  EXPECT_EQ(pc.image.to_vector<float>(), resample_image(norm, {8, 6, 4}).to_vector<float>());
  EXPECT_EQ(pc.label.to_vector<std::int32_t>(),
            resample_labels(lab, {8, 6, 4}, 3, LabelResampling::OneHotLinear).to_vector<std::int32_t>());

  // On the plan's grid already: no resampling, no label given.
  plan.target_spacing = {2.0, 2.0, 0.5};
  const PreprocessedCase same = preprocess_case(img, Tensor(), {2.0, 2.0, 0.5}, plan);
  EXPECT_FALSE(same.label.defined());
  EXPECT_EQ(same.image.to_vector<float>(), norm.to_vector<float>());
}

TEST(PreprocessCase, RejectsLabelsOutOfRangeAndMismatchedShapes) {
  const Tensor img = zeros({1, 2, 3, 4});
  PreprocessPlan plan;
  plan.classes = 3;
  const Spacing3 sp{1, 1, 1};
  std::vector<std::int32_t> l(24, 0);
  l[13] = 3;
  EXPECT_HAS(error_of([&] { preprocess_case(img, from_vector(l, {2, 3, 4}), sp, plan); }), "label value 3");
  l[13] = -1;
  EXPECT_HAS(error_of([&] { preprocess_case(img, from_vector(l, {2, 3, 4}), sp, plan); }), "label value -1");
  const std::string shape_msg = error_of([&] { preprocess_case(img, zeros({2, 4, 3}, DType::Int32), sp, plan); });
  EXPECT_HAS(shape_msg, "(2, 4, 3)");
  EXPECT_HAS(shape_msg, "do not match");
  EXPECT_HAS(error_of([&] { preprocess_case(zeros({2, 3, 4}), Tensor(), sp, plan); }), "(C, Z, Y, X)");
  EXPECT_HAS(error_of([&] { preprocess_case(img, zeros({2, 3, 4}), sp, plan); }), "int32");
  EXPECT_HAS(error_of([&] { preprocess_case(zeros({1, 2, 3, 4}, DType::Float64), Tensor(), sp, plan); }),
             "float32");
  plan.normalization = Normalization::CT;  // without statistics
  EXPECT_HAS(error_of([&] { preprocess_case(img, Tensor(), sp, plan); }), "one IntensityStats per channel");
}

// ---- non-finite voxels, hostile spacings, memory -------------------------------------------

TEST(Normalize, InfiniteVoxelsAreTreatedExactlyAsNaN) {
  // One +Inf used to make the mean, and so every voxel, NaN: predict wrote all background.
  const Shape shape{2, 3, 4, 5};
  const auto value = [](auto c, double z, double y, double x) { return c == 0 ? z * 20 + y * 5 + x : 100 - x * y; };
  Tensor with_inf = image_of(shape, value), with_nan = image_of(shape, value);
  float* a = with_inf.data<float>();
  float* b = with_nan.data<float>();
  for (const std::size_t i : {3u, 17u, 59u, 60u, 119u}) {
    a[i] = (i % 2 == 0) ? kInf : -kInf;
    b[i] = kNaN;
  }
  a[100] = std::numeric_limits<float>::max();  // finite, however large: it stays in the statistics
  b[100] = std::numeric_limits<float>::max();
  normalize_image(with_inf, Normalization::ZScore);
  normalize_image(with_nan, Normalization::ZScore);
  EXPECT_EQ(with_inf.to_vector<float>(), with_nan.to_vector<float>());
  for (const float v : with_inf.to_vector<float>()) ASSERT_TRUE(std::isfinite(v));
  EXPECT_EQ(with_inf.to_vector<float>()[17], 0.0f);

  // CT clips finite values to [lower, upper]; an infinite one is not "very bright", it is unknown.
  Tensor ct = image_of({1, 1, 1, 4}, [](auto, double, double, double x) { return x; });
  ct.data<float>()[1] = kInf;
  ct.data<float>()[2] = -kInf;
  normalize_image(ct, Normalization::CT, {{0, 3, 1, 2}});
  EXPECT_EQ(ct.to_vector<float>(), (std::vector<float>{-0.5f, 0.0f, 0.0f, 1.0f}));
}

TEST(Normalize, ForegroundStatsLeaveInfiniteVoxelsOut) {
  std::vector<float> v{1, 2, kInf, 3, -kInf, 4};
  const std::vector<std::int32_t> l(6, 1);
  const std::vector<IntensityStats> s =
      foreground_intensity_stats({from_vector(v, {1, 1, 1, 6})}, {from_vector(l, {1, 1, 6})});
  ASSERT_EQ(s.size(), 1u);
  EXPECT_DOUBLE_EQ(s[0].lower, 1.015);  // np.percentile([1, 2, 3, 4], 0.5)
  EXPECT_DOUBLE_EQ(s[0].upper, 3.985);
  EXPECT_TRUE(std::isfinite(s[0].mean) && std::isfinite(s[0].std));
  // Nothing finite in the foreground: the user's data, named as such.
  const std::vector<float> none{kInf, kNaN, -kInf, kInf, kInf, kNaN};
  EXPECT_THROW(foreground_intensity_stats({from_vector(none, {1, 1, 1, 6})}, {from_vector(l, {1, 1, 6})}), InputError);
}

TEST(ImageHealth, CountsNonFiniteVoxelsAndFindsUnusableChannels) {
  Tensor img = image_of({3, 2, 3, 4}, [](auto c, double z, double y, double x) { return c == 2 ? 7.0 : z + y + x; });
  float* v = img.data<float>();
  v[0] = kInf;
  v[5] = kNaN;
  for (std::size_t i = 24; i < 48; ++i) v[i] = i % 2 ? kNaN : -kInf;  // channel 1: nothing finite
  v[48] = kNaN;                                                       // channel 2: 7.0 elsewhere
  const std::vector<ChannelHealth> h = image_health(img);
  ASSERT_EQ(h.size(), 3u);
  EXPECT_EQ(h[0].non_finite, 2);
  EXPECT_EQ(h[0].finite, 22);
  EXPECT_FALSE(h[0].no_finite() || h[0].constant());
  EXPECT_TRUE(h[1].no_finite());
  EXPECT_TRUE(h[2].constant());
  EXPECT_EQ(h[2].non_finite, 1);

  const std::vector<std::string> files{"a_0000.nii.gz", "a_0001.nii.gz", "a_0002.nii.gz"};
  EXPECT_EQ(health_warnings(h, files),
            (std::vector<std::string>{
                "a_0000.nii.gz: 2 of 24 voxels are not finite (NaN or infinite); they are left out of the intensity "
                "statistics and set to 0",
                "a_0001.nii.gz: no finite voxel (all 24 are NaN or infinite)",
                "a_0002.nii.gz: 1 of 24 voxels are not finite (NaN or infinite); they are left out of the intensity "
                "statistics and set to 0",
                "a_0002.nii.gz: every finite voxel holds the same value (7): zero variance, the channel carries no "
                "information"}));
  EXPECT_EQ(health_problems(h, {"brats.nii.gz"}),
            (std::vector<std::string>{
                "brats.nii.gz channel 1: no finite voxel (all 24 are NaN or infinite)",
                "brats.nii.gz channel 2: every finite voxel holds the same value (7): zero variance, the channel "
                "carries no information"}));
  // Counts do not depend on the number of threads (blocks of a fixed size, merged in order).
  std::vector<float> big(300000);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = i % 7 == 0 ? kInf : static_cast<float>(hash01(i));
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const ChannelHealth one = channel_health(big.data(), static_cast<std::int64_t>(big.size()));
  omp_set_num_threads(std::max(2, threads));
  const ChannelHealth many = channel_health(big.data(), static_cast<std::int64_t>(big.size()));
  omp_set_num_threads(threads);
  EXPECT_EQ(one.non_finite, 42858);
  EXPECT_EQ(many.non_finite, one.non_finite);
  EXPECT_EQ(many.min, one.min);
  EXPECT_EQ(many.max, one.max);
}

TEST(PreprocessCase, ReportsTheImageHealthAndNeverPassesAnInfiniteVoxelOn) {
  Tensor img = image_of({1, 2, 3, 4}, [](auto, double z, double y, double x) { return z + y + x; });
  img.data<float>()[7] = kInf;  // an scl_slope that overflows float32 gives this
  PreprocessPlan plan;
  plan.target_spacing = {1, 1, 0.5};
  const PreprocessedCase pc = preprocess_case(img, Tensor(), {1, 1, 1}, plan, "case.nii.gz");
  ASSERT_EQ(pc.health.size(), 1u);
  EXPECT_EQ(pc.health[0].non_finite, 1);
  for (const float v : pc.image.to_vector<float>()) ASSERT_TRUE(std::isfinite(v));
  EXPECT_EQ(health_warnings(pc.health, {"case.nii.gz"}).size(), 1u);
}

TEST(PreprocessCase, RefusesAResamplingThatCannotFitInMemory) {
  // A spacing in micrometres read as millimetres: 4 voxels of 10 m each become 40000 of 1 mm.
  const Tensor img = zeros({1, 4, 4, 4});
  PreprocessPlan plan;
  plan.target_spacing = {1, 1, 1};
  const std::string msg = error_of([&] { preprocess_case(img, Tensor(), {10000, 10000, 10000}, plan, "CASE.nii.gz"); });
  EXPECT_HAS(msg,
             "CASE.nii.gz: resampling from spacing (10000, 10000, 10000) mm to the target spacing (1, 1, 1) mm "
             "would need 232.8 TiB (a grid of 40000 x 40000 x 40000 voxels (x, y, z), 1 channel), more than the ");
  EXPECT_HAS(msg, " this machine has available");
  EXPECT_THROW(preprocess_case(img, Tensor(), {10000, 10000, 10000}, plan, "CASE.nii.gz"), InputError);
  // Spacings absurd enough to overflow any integer: saturated, never wrapped to a small size.
  EXPECT_EQ(preprocess_bytes(1, {4, 4, 4}, {1e300, 1e300, 1e300}, plan, true),
            std::numeric_limits<std::uint64_t>::max());
  EXPECT_HAS(error_of([&] {
               check_preprocess_fits("x.nii", 1, {4, 4, 4}, {1e300, 1, 1}, plan, false);
             }),
             "would need more than 16 EiB");
  // From the header alone, before any voxel is read; and what is needed: the copies and the grid.
  EXPECT_NO_THROW(check_preprocess_fits("x.nii", 2, {4, 4, 4}, {2, 2, 2}, plan, true));
  EXPECT_EQ(preprocess_bytes(2, {4, 4, 4}, {2, 2, 2}, plan, true), 2u * 64 * 4 + 64 * 4 + 2u * 512 * 4 + 512 * 4);
  EXPECT_EQ(preprocess_bytes(2, {4, 4, 4}, {1, 1, 1}, plan, false), 2u * 64 * 4);  // on the grid already
}

TEST(PreprocessCase, SpacingAndLabelProblemsAreTheUsersAndNameTheSource) {
  const Tensor img = zeros({1, 2, 3, 4});
  PreprocessPlan plan;
  plan.classes = 2;
  EXPECT_THROW(preprocess_case(img, Tensor(), {1, 0, 1}, plan), InputError);
  EXPECT_HAS(error_of([&] {
               preprocess_case(img, Tensor(), {1, 0, 1}, plan, "p.nii.gz");
             }),
             "p.nii.gz: spacing (1, 0, 1) mm (x, y, z) must be positive and finite");
  std::vector<std::int32_t> l(24, 0);
  l[5] = 7;
  EXPECT_THROW(preprocess_case(img, from_vector(l, {2, 3, 4}), {1, 1, 1}, plan, "p.nii.gz"), InputError);
  EXPECT_HAS(error_of([&] {
               preprocess_case(img, from_vector(l, {2, 3, 4}), {1, 1, 1}, plan, "p.nii.gz");
             }),
             "p.nii.gz (label): label value 7 at voxel (z, y, x) = (0, 1, 1) is outside [0, 2)");
  EXPECT_THROW(parse_normalization("minmax"), InputError);
}

TEST(ResampleImage, OutputsBeyondMemoryAreRefusedBeforeAllocation) {
  // 10^15 voxels: a caller that skipped check_preprocess_fits still gets an error, not bad_alloc.
  const std::string msg = error_of([] { resample_image(zeros({2, 2, 2, 2}), {100000, 100000, 100000}); });
  EXPECT_HAS(msg, "resampling an image to a grid of (100000, 100000, 100000) voxels (z, y, x) would need 7.1 PiB");
  EXPECT_THROW(resample_labels(zeros({2, 2, 2}, DType::Int32), {100000, 100000, 100000}, 2, LabelResampling::Nearest),
               InputError);
}

TEST(ResampledShape, AxesBeyondAnyMemoryAreRefusedNotWrapped) {
  // round(4 * 1e300) does not fit an int64: converting it was undefined behaviour.
  EXPECT_THROW(resampled_shape({4, 4, 4}, {1e300, 1, 1}, {1, 1, 1}), InputError);
  EXPECT_HAS(error_of([&] { resampled_shape({4, 4, 4}, {1, 1, 1e300}, {1, 1, 1}); }), "along axis x");
  EXPECT_THROW(resampled_shape({4, 4, 4}, {1, 1, 1}, {1, std::nan(""), 1}), InputError);
  const std::array<double, 3> e = resampled_extent({4, 4, 4}, {1e300, 1, 1}, {1e-300, 1, 1});
  EXPECT_TRUE(std::isinf(e[0]));
  EXPECT_EQ(e[1], 4.0);
}

}  // namespace
