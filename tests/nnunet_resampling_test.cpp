// nnU-Net's default resampling against nnU-Net itself: tests/data/nnunet_resampling/cases.pth holds
// inputs and nnunetv2's resample_data_or_seg_to_shape / compute_new_shape outputs
// (tools/make_nnunet_resampling_fixtures.py); plus the settings parser and the refusals of bad input.
#include "apps/pipeline/nnunet_resampling.h"
#include "engine/float16.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/error.h"
#include "io/torch_checkpoint.h"
#include "tests/test_support.h"

namespace voxgrad {
namespace {

using pipeline::Shape3;
using pipeline::Spacing3;
using pipeline::nnunet::ResamplingSettings;

const io::PickleValue& fixtures() {
  static const io::PickleValue cases =
      io::load_torch_checkpoint(test::source_path("tests/data/nnunet_resampling/cases.pth"));
  return cases;
}

Tensor tensor(const std::string& key) {
  const io::PickleValue* v = fixtures().get(key);
  if (v == nullptr || !v->is(io::PickleValue::Kind::Tensor)) throw std::runtime_error("fixture lacks " + key);
  return v->tensor;
}

std::vector<double> values(const std::string& key) { return tensor(key).to_vector<double>(); }

// The larger of the gaps between float32 (or float16) value v and its neighbours.
double narrow_step(double v, bool half) {
  if (half) {
    int exponent = 0;
    std::frexp(v, &exponent);
    return std::ldexp(1.0, std::max(exponent, -13) - 11);
  }
  const auto f = static_cast<float>(v);
  return std::max(std::nextafter(f, INFINITY) - f, f - std::nextafter(f, -INFINITY));
}

class NnunetResampling : public ::testing::TestWithParam<const char*> {};

TEST_P(NnunetResampling, MatchesNnunet) {
  const std::string name = GetParam();
  const Tensor input64 = tensor(name + ".input");    // (C, Z, Y, X) float64
  const Tensor expected = tensor(name + ".output");  // (C, Z', Y', X') float64
  const std::vector<double> sp = values(name + ".spacing"), nsp = values(name + ".new_spacing");
  const std::vector<double> ns = values(name + ".new_shape"), st = values(name + ".settings");
  const Spacing3 spacing{sp[0], sp[1], sp[2]}, new_spacing{nsp[0], nsp[1], nsp[2]};
  const Shape3 new_shape{static_cast<std::int64_t>(ns[0]), static_cast<std::int64_t>(ns[1]),
                         static_cast<std::int64_t>(ns[2])};
  ResamplingSettings settings;
  settings.order = static_cast<int>(st[0]);
  settings.order_z = static_cast<int>(st[1]);
  settings.force_separate_z = st[2] < 0 ? std::nullopt : std::optional<bool>(st[2] > 0);
  // nnU-Net's input dtype: float64, float32, or float16 (given here as float32, which holds it exactly).
  const int input_dtype = static_cast<int>(st[3]);
  const bool shape_from_spacing = st[4] > 0;
  // Orders 0 and 1 sum scipy's terms in scipy's order: the same bits, which keeps the argmax of
  // resampled probabilities nnU-Net's even where two classes tie to the last bit.
  const bool bit_exact = settings.order <= 1 && settings.order_z <= 1;
  const Tensor input = input_dtype == 0 ? input64 : input64.to(DType::Float32);
  const auto precision = input_dtype == 2 ? pipeline::nnunet::ResultPrecision::HalfInFloat32
                                          : pipeline::nnunet::ResultPrecision::SameAsInput;

  if (shape_from_spacing) {
    const Shape3 old_shape{input.size(1), input.size(2), input.size(3)};
    EXPECT_EQ(pipeline::nnunet::compute_new_shape(old_shape, spacing, new_spacing), new_shape);
  }
  const std::vector<double> in = input64.to_vector<double>();
  const auto [lo, hi] = std::minmax_element(in.begin(), in.end());
  const double range = *hi - *lo;

  const Tensor got = pipeline::nnunet::resample_to_shape(input, new_shape, spacing, new_spacing, settings, precision);
  ASSERT_EQ(got.dtype(), input.dtype());
  ASSERT_EQ(got.shape(), expected.shape());
  if (input_dtype != 0) {
    // nnU-Net and voxgrad round float64 results that agree to 1e-16 to float32 or float16: a pair
    // may still straddle a rounding boundary, so these outputs may differ by one step of the narrow
    // type; full precision is compared below on the float64 result nnU-Net gives for the same values.
    const std::vector<float> have = got.to_vector<float>();
    const std::vector<double> want = expected.to_vector<double>();
    int steps = 0;
    for (std::size_t i = 0; i < want.size(); ++i) {
      if (have[i] == want[i]) continue;
      ++steps;
      EXPECT_LE(std::abs(have[i] - want[i]), narrow_step(want[i], input_dtype == 2))
          << name << " voxel " << i << ": " << have[i] << " vs " << want[i];
    }
    if (bit_exact) {
      EXPECT_EQ(steps, 0) << name;
    }
    std::printf("  %-28s voxels one %s rounding step apart: %d of %zu\n", name.c_str(),
                input_dtype == 2 ? "float16" : "float32", steps, want.size());
  }
  const Tensor got64 =
      input_dtype != 0 ? pipeline::nnunet::resample_to_shape(input64, new_shape, spacing, new_spacing, settings) : got;
  const std::vector<double> want =
      tensor(name + (input_dtype != 0 ? ".output_float64" : ".output")).to_vector<double>();
  const std::vector<double> have = got64.to_vector<double>();
  ASSERT_EQ(have.size(), want.size());
  double worst = 0;
  for (std::size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(have[i] - want[i]));
  const double relative = worst / range;
  RecordProperty("max_abs_error_over_range", std::to_string(relative));
  std::printf("  %-28s max |voxgrad - nnU-Net| / range = %.3g\n", name.c_str(), relative);
  EXPECT_LE(relative, 1e-13) << name;
  if (bit_exact) {
    EXPECT_EQ(worst, 0.0) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, NnunetResampling,
                         ::testing::Values("iso_up_order3", "iso_down_order3_2ch", "iso_up_order1",
                                           "iso_down_order1_float32_2ch", "sepz_up_order3", "sepz_down_order3_2ch",
                                           "sepz_from_new_spacing", "sepz_axis1_order1_float32", "sepz_axis2_order3",
                                           "sepz_order_z1", "sepz_order_z3", "force_sepz_true", "force_sepz_false",
                                           "ambiguous_axis", "size1_axis_sepz", "size1_axis_upsampled",
                                           "one_axis_unchanged", "unchanged_shape", "order0", "order0_halfway",
                                           "sepz_halfway", "to_one_voxel_order3", "to_one_voxel_order1",
                                           "upsample_sevenfold", "logits_float16_sepz", "logits_float16_iso"));

TEST(NnunetResamplingPrecision, RoundsToFloat16AsNumpyDoes) {
  const Tensor rows = tensor("float16_rounding");  // (N, 2): x, numpy's float16(x)
  const std::vector<double> v = rows.to_vector<double>();
  int wrong = 0;
  for (std::int64_t r = 0; r < rows.size(0); ++r) {
    const double x = v[static_cast<std::size_t>(2 * r)], want = v[static_cast<std::size_t>(2 * r + 1)];
    const double got = voxgrad::round_to_float16(x);
    if (got != want || std::signbit(got) != std::signbit(want)) {
      if (++wrong <= 5) ADD_FAILURE() << "float16(" << x << "): got " << got << ", numpy " << want;
    }
  }
  EXPECT_EQ(wrong, 0) << "of " << rows.size(0);
  EXPECT_TRUE(std::isnan(voxgrad::round_to_float16(std::numeric_limits<double>::quiet_NaN())));
}

TEST(NnunetResamplingShape, ComputeNewShapeMatchesNnunetAndRefusesAnEmptyAxis) {
  const Tensor rows = tensor("compute_new_shape");  // (N, 12): old shape, spacing, new spacing, new shape
  const std::vector<double> v = rows.to_vector<double>();
  ASSERT_GT(rows.size(0), 0);
  for (std::int64_t r = 0; r < rows.size(0); ++r) {
    const double* row = v.data() + r * 12;
    const Shape3 old_shape{static_cast<std::int64_t>(row[0]), static_cast<std::int64_t>(row[1]),
                           static_cast<std::int64_t>(row[2])};
    const Spacing3 spacing{row[3], row[4], row[5]}, new_spacing{row[6], row[7], row[8]};
    const Shape3 want{static_cast<std::int64_t>(row[9]), static_cast<std::int64_t>(row[10]),
                      static_cast<std::int64_t>(row[11])};
    if (std::min({want[0], want[1], want[2]}) < 1) {
      // nnU-Net returns 0 there and fails later; voxgrad says why at once.
      EXPECT_THROW(pipeline::nnunet::compute_new_shape(old_shape, spacing, new_spacing), InputError) << r;
    } else {
      EXPECT_EQ(pipeline::nnunet::compute_new_shape(old_shape, spacing, new_spacing), want) << r;
    }
  }
}

TEST(NnunetResamplingShape, HalvesRoundToEvenAsPythonDoes) {
  // 5 * 0.5 = 2.5 -> 2, 7 * 0.5 = 3.5 -> 4, 3 * 0.5 = 1.5 -> 2.
  EXPECT_EQ(pipeline::nnunet::compute_new_shape({5, 7, 3}, {1, 1, 1}, {2, 2, 2}), (Shape3{2, 4, 2}));
}

TEST(NnunetResamplingAxis, SeparateAxisFollowsNnunetsRules) {
  using pipeline::nnunet::separate_axis;
  ResamplingSettings automatic;
  automatic.force_separate_z = std::nullopt;
  EXPECT_FALSE(separate_axis({1, 1, 1}, {2, 2, 2}, automatic).separate);
  EXPECT_EQ(separate_axis({4, 1, 1}, {1, 1, 1}, automatic).axis, 0);               // the current grid's coarse axis
  EXPECT_EQ(separate_axis({1, 1, 1}, {1, 3.5, 1}, automatic).axis, 1);             // else the new grid's
  EXPECT_FALSE(separate_axis({3, 1, 1}, {1, 1, 1}, automatic).separate);           // a ratio of 3 is not above 3
  EXPECT_FALSE(separate_axis({0.24, 1.25, 1.25}, {1, 1, 1}, automatic).separate);  // two coarse axes
  ResamplingSettings forced = automatic;
  forced.force_separate_z = true;
  EXPECT_EQ(separate_axis({1, 1, 1.2}, {1, 1, 1}, forced).axis, 2);
  EXPECT_FALSE(separate_axis({1, 1, 1}, {5, 1, 1}, forced).separate);  // all three share the largest
  ResamplingSettings never = automatic;
  never.force_separate_z = false;
  EXPECT_FALSE(separate_axis({5, 1, 1}, {5, 1, 1}, never).separate);
}

TEST(NnunetResamplingInput, UnchangedShapeReturnsTheDataItself) {
  const Tensor data = tensor("unchanged_shape.input");
  const Tensor got = pipeline::nnunet::resample_to_shape(data, {data.size(1), data.size(2), data.size(3)}, {1, 1, 1},
                                                         {1, 1, 1}, ResamplingSettings{});
  EXPECT_EQ(got.data<double>(), data.data<double>());
  // Asked for float16 results, the same grid comes back as a copy rounded to float16 values.
  const Tensor half =
      pipeline::nnunet::resample_to_shape(data, {data.size(1), data.size(2), data.size(3)}, {1, 1, 1}, {1, 1, 1},
                                          ResamplingSettings{}, pipeline::nnunet::ResultPrecision::HalfInFloat32);
  ASSERT_EQ(half.dtype(), DType::Float32);
  const std::vector<double> in = data.to_vector<double>();
  const std::vector<float> out = half.to_vector<float>();
  for (std::size_t i = 0; i < in.size(); ++i) ASSERT_EQ(out[i], voxgrad::round_to_float16(in[i])) << i;
}

void expect_input_error(const std::string& words, const std::function<void()>& f) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one saying: " << words;
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
  }
}

TEST(NnunetResamplingInput, BadSpacingsAndShapesAreInputErrors) {
  using pipeline::nnunet::compute_new_shape;
  using pipeline::nnunet::resample_to_shape;
  const Tensor data = zeros({1, 3, 4, 5}, DType::Float32);
  const ResamplingSettings s;
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  expect_input_error("spacing 0 along axis y must be positive and finite", [&] {
    resample_to_shape(data, {4, 4, 4}, {1, 0, 1}, {1, 1, 1}, s);
  });
  expect_input_error("new spacing -2 along axis z must be positive and finite", [&] {
    resample_to_shape(data, {4, 4, 4}, {1, 1, 1}, {-2, 1, 1}, s);
  });
  expect_input_error("along axis x", [&] { resample_to_shape(data, {4, 4, 4}, {1, 1, nan}, {1, 1, 1}, s); });
  expect_input_error("new spacing inf along axis y", [&] { compute_new_shape({3, 4, 5}, {1, 1, 1}, {1, inf, 1}); });
  expect_input_error("the new shape (4, 0, 4) has an empty axis", [&] {
    resample_to_shape(data, {4, 0, 4}, {1, 1, 1}, {1, 1, 1}, s);
  });
  expect_input_error("the shape (3, 0, 5) has an empty axis", [&] {
    compute_new_shape({3, 0, 5}, {1, 1, 1}, {1, 1, 1});
  });
  expect_input_error("leaves no voxel", [&] { compute_new_shape({3, 4, 5}, {1e-300, 1, 1}, {1e300, 1, 1}); });
  expect_input_error("far more than any memory", [&] { compute_new_shape({3, 4, 5}, {1e300, 1, 1}, {1e-300, 1, 1}); });
  expect_input_error("data with voxels", [&] {
    resample_to_shape(zeros({1, 0, 4, 5}), {4, 4, 4}, {1, 1, 1}, {1, 1, 1}, s);
  });
  expect_input_error("(C, Z, Y, X)", [&] { resample_to_shape(zeros({3, 4, 5}), {4, 4, 4}, {1, 1, 1}, {1, 1, 1}, s); });
  ResamplingSettings quadratic;
  quadratic.order = 2;
  expect_input_error("spline order 2 is not supported", [&] {
    resample_to_shape(data, {4, 4, 4}, {1, 1, 1}, {1, 1, 1}, quadratic);
  });
}

TEST(NnunetResamplingSettings, ParsesThePlansKwargs) {
  using pipeline::nnunet::parse_resampling_settings;
  const ResamplingSettings data = parse_resampling_settings(
      "resample_data_or_seg_to_shape",
      Json::parse(R"({"is_seg": false, "order": 3, "order_z": 0, "force_separate_z": null})"), "plans.json");
  EXPECT_EQ(data.order, 3);
  EXPECT_EQ(data.order_z, 0);
  EXPECT_FALSE(data.force_separate_z.has_value());
  EXPECT_EQ(data.separate_z_anisotropy_threshold, 3.0);
  const Json kwargs = {{"is_seg", false},
                       {"order", 1},
                       {"order_z", 0},
                       {"force_separate_z", true},
                       {"separate_z_anisotropy_threshold", 2.5}};
  const ResamplingSettings probabilities =
      parse_resampling_settings("resample_data_or_seg_to_shape", kwargs, "plans.json");
  EXPECT_EQ(probabilities.order, 1);
  EXPECT_EQ(probabilities.force_separate_z, std::optional<bool>(true));
  EXPECT_EQ(probabilities.separate_z_anisotropy_threshold, 2.5);
  // Keys left out take the Python function's defaults: order 3, order_z 0, force_separate_z False.
  const ResamplingSettings defaults =
      parse_resampling_settings("resample_data_or_seg_to_shape", Json::object(), "plans.json");
  EXPECT_EQ(defaults.order, 3);
  EXPECT_EQ(defaults.force_separate_z, std::optional<bool>(false));
}

TEST(NnunetResamplingSettings, RefusesWhatItCannotReproduce) {
  using pipeline::nnunet::parse_resampling_settings;
  const auto parse = [](const std::string& fn, const std::string& kwargs) {
    return [fn, kwargs] { parse_resampling_settings(fn, Json::parse(kwargs), "plans.json"); };
  };
  expect_input_error("plans.json: resampling function \"resample_torch_fornnunet\" is not supported",
                     parse("resample_torch_fornnunet", "{}"));
  expect_input_error("\"is_seg\": true", parse("resample_data_or_seg_to_shape", R"({"is_seg": true})"));
  expect_input_error("spline order 5 is not supported", parse("resample_data_or_seg_to_shape", R"({"order": 5})"));
  expect_input_error("\"order\" must be a whole number, got 1000000000000",
                     parse("resample_data_or_seg_to_shape", R"({"order": 1000000000000})"));
  expect_input_error("\"order\" must be a whole number", parse("resample_data_or_seg_to_shape", R"({"order": 1.5})"));
  expect_input_error("\"order_z\" must be a whole", parse("resample_data_or_seg_to_shape", R"({"order_z": "0"})"));
  expect_input_error("null, true or false", parse("resample_data_or_seg_to_shape", R"({"force_separate_z": 1})"));
  expect_input_error("unknown resampling kwarg \"antialias\"",
                     parse("resample_data_or_seg_to_shape", R"({"antialias": true})"));
  expect_input_error("must be a JSON object", parse("resample_data_or_seg_to_shape", "[3]"));
}

}  // namespace
}  // namespace voxgrad
