// nnU-Net v2's transposition, nonzero crop and normalisation schemes, with numpy's float32
// arithmetic: the means and deviations are numpy's blocked pairwise sums in float32, the scalars
// nnU-Net divides by are rounded to float32 where numpy rounds them.
#include "apps/pipeline/nnunet_preprocessing.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "apps/pipeline/numpy_sum.h"
#include "engine/error.h"

namespace voxgrad::pipeline::nnunet {

namespace {

void check_spatial(const Tensor& t, const char* what) {
  VG_CHECK(t.defined() && t.dim() >= 3, what << ": needs a tensor with three spatial axes, got "
                                             << (t.defined() ? shape_str(t.shape()) : "an undefined tensor"));
  VG_CHECK(t.device().is_cpu(), what << ": needs a CPU tensor, got one on " << t.device().str());
}

std::int64_t leading_count(const Tensor& t) {
  std::int64_t n = 1;
  for (int a = 0; a + 3 < t.dim(); ++a) n *= t.size(a);
  return n;
}

Shape3 spatial_shape(const Tensor& t) { return {t.size(-3), t.size(-2), t.size(-1)}; }

// Mean and population deviation of float32 values lying in memory order, as ndarray.mean() and
// ndarray.std() compute them: the mean divides the float32 sum by the count in double, the mean
// inside std divides in float32 (numpy divides an array there), the squared deviations sum in float32.
struct MeanStd {
  float mean, std;
};
MeanStd numpy_mean_std(const std::vector<float>& values) {
  const auto n = static_cast<std::int64_t>(values.size());
  const float sum = numpy_float32_sum(values.data(), n);
  const auto mean = static_cast<float>(static_cast<double>(sum) / static_cast<double>(n));
  const float mean_in_var = sum / static_cast<float>(n);
  std::vector<float> squares(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    const float d = values[i] - mean_in_var;
    squares[i] = d * d;
  }
  const float square_sum = numpy_float32_sum(squares.data(), n);
  const auto variance = static_cast<float>(static_cast<double>(square_sum) / static_cast<double>(n));
  return {mean, std::sqrt(variance)};
}

// max(std, eps) as Python compares a numpy float32 with the float 1e-8, then rounded to float32 as
// numpy does when it divides a float32 array by either.
float divisor_at_least_eps(double value) { return static_cast<float>(value < 1e-8 ? 1e-8 : value); }

void zscore(float* v, std::int64_t n, const Shape3& shape, bool use_mask, const std::uint8_t* mask,
            const AxisOrder& transpose_forward) {
  if (use_mask) {
    // image[mask] gathers in the array's logical (C) order.
    std::vector<float> inside;
    for (std::int64_t i = 0; i < n; ++i)
      if (mask[i]) inside.push_back(v[i]);
    if (inside.empty()) return;  // nnU-Net's mean is NaN then, but it writes no voxel with it
    const MeanStd s = numpy_mean_std(inside);
    const float divisor = divisor_at_least_eps(s.std);
    for (std::int64_t i = 0; i < n; ++i)
      if (mask[i]) v[i] = (v[i] - s.mean) / divisor;
    return;
  }
  // The whole channel: numpy reduces a transposed view in memory order, the untransposed axes.
  const AxisOrder back = inverse_axis_order(transpose_forward);
  const bool transposed = back != AxisOrder{0, 1, 2};
  const std::vector<float> in_memory_order =
      transposed ? transpose_spatial(from_vector(std::vector<float>(v, v + n), {shape[0], shape[1], shape[2]}), back)
                       .to_vector<float>()
                 : std::vector<float>(v, v + n);
  const MeanStd s = numpy_mean_std(in_memory_order);
  const float divisor = divisor_at_least_eps(s.std);
  for (std::int64_t i = 0; i < n; ++i) v[i] = (v[i] - s.mean) / divisor;
}

void normalize_channel(float* v, std::int64_t n, const Shape3& shape, NormalizationScheme scheme, bool use_mask,
                       const std::uint8_t* mask, const IntensityProperties& p, const AxisOrder& transpose_forward,
                       const std::string& what) {
  switch (scheme) {
    case NormalizationScheme::ZScore:
      zscore(v, n, shape, use_mask, mask, transpose_forward);
      return;
    case NormalizationScheme::CT: {
      // numpy casts the Python-float bounds and statistics to float32 before the float32 operations.
      const auto lower = static_cast<float>(p.percentile_00_5), upper = static_cast<float>(p.percentile_99_5);
      const auto mean = static_cast<float>(p.mean);
      const float divisor = divisor_at_least_eps(p.std);
      for (std::int64_t i = 0; i < n; ++i) {
        float x = v[i];
        if (!std::isnan(x)) x = std::min(std::max(x, lower), upper);
        v[i] = (x - mean) / divisor;
      }
      return;
    }
    case NormalizationScheme::NoNormalization:
      return;
    case NormalizationScheme::RescaleTo01: {
      if (n == 0) return;
      // np.min / np.max propagate NaN.
      float lo = v[0];
      for (std::int64_t i = 0; i < n && !std::isnan(lo); ++i) lo = std::isnan(v[i]) ? v[i] : std::min(lo, v[i]);
      for (std::int64_t i = 0; i < n; ++i) v[i] -= lo;
      float hi = v[0];
      for (std::int64_t i = 0; i < n && !std::isnan(hi); ++i) hi = std::isnan(v[i]) ? v[i] : std::max(hi, v[i]);
      const float divisor = std::isnan(hi) ? hi : divisor_at_least_eps(hi);
      for (std::int64_t i = 0; i < n; ++i) v[i] /= divisor;
      return;
    }
    case NormalizationScheme::RGBTo01: {
      for (std::int64_t i = 0; i < n; ++i)
        VG_INPUT_CHECK(v[i] >= 0.0f && v[i] <= 255.0f,
                       (what.empty() ? std::string("the image") : what)
                           << ": RGBTo01Normalization needs values in [0, 255] (8-bit RGB), found " << v[i]);
      for (std::int64_t i = 0; i < n; ++i) v[i] /= 255.0f;
      return;
    }
  }
}

// Flood fill of the background from every border voxel through face neighbours (6-connectivity,
// scipy's default structure for binary_fill_holes).
template <class Index>
void mark_outside(const std::vector<std::uint8_t>& inside, std::vector<std::uint8_t>& outside, const Shape3& s) {
  std::vector<Index> queue;
  auto visit = [&](std::int64_t i) {
    if (!inside[i] && !outside[i]) {
      outside[i] = 1;
      queue.push_back(static_cast<Index>(i));
    }
  };
  for (std::int64_t z = 0; z < s[0]; ++z)
    for (std::int64_t y = 0; y < s[1]; ++y)
      for (std::int64_t x = 0; x < s[2]; ++x)
        if (z == 0 || y == 0 || x == 0 || z == s[0] - 1 || y == s[1] - 1 || x == s[2] - 1)
          visit((z * s[1] + y) * s[2] + x);
  const std::int64_t plane = s[1] * s[2];
  for (std::size_t head = 0; head < queue.size(); ++head) {
    const auto i = static_cast<std::int64_t>(queue[head]);
    const std::int64_t x = i % s[2], y = (i / s[2]) % s[1], z = i / plane;
    if (z > 0) visit(i - plane);
    if (z + 1 < s[0]) visit(i + plane);
    if (y > 0) visit(i - s[2]);
    if (y + 1 < s[1]) visit(i + s[2]);
    if (x > 0) visit(i - 1);
    if (x + 1 < s[2]) visit(i + 1);
  }
}

}  // namespace

float numpy_float32_sum(const float* values, std::int64_t n) {
  constexpr std::int64_t kBlock = 8192;  // numpy's reduction buffer
  float sum = 0.0f;
  for (std::int64_t start = 0; start < n; start += kBlock)
    sum += numpy_pairwise_sum(values + start, std::min(kBlock, n - start));
  return sum;
}

AxisOrder inverse_axis_order(const AxisOrder& order) {
  AxisOrder inverse{};
  for (int i = 0; i < 3; ++i) {
    VG_CHECK(order[i] >= 0 && order[i] < 3, "inverse_axis_order: axis " << order[i] << " is not 0, 1 or 2");
    inverse[order[i]] = i;
  }
  return inverse;
}

Tensor transpose_spatial(const Tensor& t, const AxisOrder& order) {
  check_spatial(t, "transpose_spatial");
  inverse_axis_order(order);  // checks that `order` is a permutation
  const Shape3 in = spatial_shape(t);
  const Shape3 out{in[order[0]], in[order[1]], in[order[2]]};
  Shape out_shape(t.shape().begin(), t.shape().end() - 3);
  out_shape.insert(out_shape.end(), out.begin(), out.end());
  Tensor result = empty(out_shape, t.dtype());
  const std::size_t element = dtype_size(t.dtype());
  const std::int64_t in_stride[3] = {in[1] * in[2], in[2], 1};
  const std::int64_t step[3] = {in_stride[order[0]], in_stride[order[1]], in_stride[order[2]]};
  const std::int64_t volume = in[0] * in[1] * in[2];
  const auto* src = static_cast<const unsigned char*>(t.raw_data());
  auto* dst = static_cast<unsigned char*>(result.raw_data());
  const std::int64_t lead = leading_count(t);
  for (std::int64_t l = 0; l < lead; ++l) {
    std::int64_t o = l * volume;
    for (std::int64_t a = 0; a < out[0]; ++a)
      for (std::int64_t b = 0; b < out[1]; ++b)
        for (std::int64_t c = 0; c < out[2]; ++c, ++o) {
          const std::int64_t i = l * volume + a * step[0] + b * step[1] + c * step[2];
          std::memcpy(dst + o * element, src + i * element, element);
        }
  }
  return result;
}

Tensor nonzero_mask(const Tensor& data) {
  check_spatial(data, "nonzero_mask");
  VG_CHECK(data.dim() == 4 && data.dtype() == DType::Float32,
           "nonzero_mask: needs (C, Z, Y, X) float32, got " << data.str());
  const Shape3 s = spatial_shape(data);
  const std::int64_t volume = s[0] * s[1] * s[2];
  const float* v = data.data<float>();
  std::vector<std::uint8_t> inside(static_cast<std::size_t>(volume), 0);
  for (std::int64_t c = 0; c < data.size(0); ++c)
    for (std::int64_t i = 0; i < volume; ++i)
      if (v[c * volume + i] != 0.0f) inside[i] = 1;  // NaN != 0 too
  // binary_fill_holes: background reachable from the border through face neighbours stays
  // background, every other voxel becomes foreground. 32-bit indices halve the queue of large volumes.
  std::vector<std::uint8_t> outside(static_cast<std::size_t>(volume), 0);
  if (volume <= static_cast<std::int64_t>(UINT32_MAX))
    mark_outside<std::uint32_t>(inside, outside, s);
  else
    mark_outside<std::int64_t>(inside, outside, s);
  Tensor mask = empty({s[0], s[1], s[2]}, DType::UInt8);
  std::uint8_t* m = mask.data<std::uint8_t>();
  for (std::int64_t i = 0; i < volume; ++i) m[i] = outside[i] ? 0 : 1;
  return mask;
}

BoundingBox mask_bounding_box(const Tensor& mask) {
  VG_CHECK(mask.defined() && mask.dim() == 3 && mask.dtype() == DType::UInt8 && mask.device().is_cpu(),
           "mask_bounding_box: needs a (Z, Y, X) uint8 CPU mask");
  const Shape3 s = spatial_shape(mask);
  const std::uint8_t* m = mask.data<std::uint8_t>();
  BoundingBox box;
  box.begin = s;
  box.end = {0, 0, 0};
  bool any = false;
  for (std::int64_t z = 0, i = 0; z < s[0]; ++z)
    for (std::int64_t y = 0; y < s[1]; ++y)
      for (std::int64_t x = 0; x < s[2]; ++x, ++i)
        if (m[i]) {
          any = true;
          const std::int64_t p[3] = {z, y, x};
          for (int a = 0; a < 3; ++a) {
            box.begin[a] = std::min(box.begin[a], p[a]);
            box.end[a] = std::max(box.end[a], p[a] + 1);
          }
        }
  if (!any) return {{0, 0, 0}, s};  // an empty mask keeps the whole volume, as get_bbox_from_mask does
  return box;
}

Tensor crop_to_box(const Tensor& t, const BoundingBox& box) {
  check_spatial(t, "crop_to_box");
  const Shape3 in = spatial_shape(t), out = box.shape();
  for (int a = 0; a < 3; ++a)
    VG_CHECK(box.begin[a] >= 0 && box.end[a] <= in[a] && box.begin[a] < box.end[a],
             "crop_to_box: box [" << box.begin[a] << ", " << box.end[a] << ") on axis " << a << " does not fit "
                                  << shape_str(t.shape()));
  Shape out_shape(t.shape().begin(), t.shape().end() - 3);
  out_shape.insert(out_shape.end(), out.begin(), out.end());
  Tensor result = empty(out_shape, t.dtype());
  const std::size_t element = dtype_size(t.dtype());
  const auto* src = static_cast<const unsigned char*>(t.raw_data());
  auto* dst = static_cast<unsigned char*>(result.raw_data());
  const std::int64_t lead = leading_count(t), row = out[2] * static_cast<std::int64_t>(element);
  for (std::int64_t l = 0; l < lead; ++l)
    for (std::int64_t z = 0; z < out[0]; ++z)
      for (std::int64_t y = 0; y < out[1]; ++y) {
        const std::int64_t i = ((l * in[0] + box.begin[0] + z) * in[1] + box.begin[1] + y) * in[2] + box.begin[2];
        const std::int64_t o = ((l * out[0] + z) * out[1] + y) * out[2];
        std::memcpy(dst + o * element, src + i * element, static_cast<std::size_t>(row));
      }
  return result;
}

NonzeroCrop crop_to_nonzero(const Tensor& data) {
  const Tensor mask = nonzero_mask(data);
  const BoundingBox box = mask_bounding_box(mask);
  return {crop_to_box(data, box), crop_to_box(mask, box), box};
}

NormalizationScheme parse_normalization_scheme(const std::string& class_name) {
  for (auto s : {NormalizationScheme::ZScore, NormalizationScheme::CT, NormalizationScheme::NoNormalization,
                 NormalizationScheme::RescaleTo01, NormalizationScheme::RGBTo01})
    if (class_name == normalization_scheme_name(s)) return s;
  VG_INPUT_FAIL("normalization scheme \"" << class_name
                                          << "\" is not one voxgrad knows (ZScoreNormalization, CTNormalization, "
                                             "NoNormalization, RescaleTo01Normalization, RGBTo01Normalization)");
}

const char* normalization_scheme_name(NormalizationScheme s) {
  switch (s) {
    case NormalizationScheme::ZScore:
      return "ZScoreNormalization";
    case NormalizationScheme::CT:
      return "CTNormalization";
    case NormalizationScheme::NoNormalization:
      return "NoNormalization";
    case NormalizationScheme::RescaleTo01:
      return "RescaleTo01Normalization";
    case NormalizationScheme::RGBTo01:
      return "RGBTo01Normalization";
  }
  return "?";
}

void normalize(Tensor& data, const std::vector<NormalizationScheme>& schemes,
               const std::vector<bool>& use_mask_for_norm, const std::vector<IntensityProperties>& properties,
               const Tensor& mask, const AxisOrder& transpose_forward, const std::string& what) {
  check_spatial(data, "normalize");
  VG_CHECK(data.dim() == 4 && data.dtype() == DType::Float32,
           "normalize: needs (C, Z, Y, X) float32, got " << data.str());
  const std::int64_t channels = data.size(0);
  VG_CHECK(static_cast<std::int64_t>(schemes.size()) == channels &&
               static_cast<std::int64_t>(use_mask_for_norm.size()) == channels,
           "normalize: " << channels << " channels, " << schemes.size() << " schemes, " << use_mask_for_norm.size()
                         << " use_mask_for_norm entries");
  const Shape3 s = spatial_shape(data);
  const std::int64_t volume = s[0] * s[1] * s[2];
  for (std::int64_t c = 0; c < channels; ++c) {
    const bool use_mask = use_mask_for_norm[c] && schemes[c] == NormalizationScheme::ZScore;
    if (use_mask)
      VG_CHECK(mask.defined() && mask.dtype() == DType::UInt8 && mask.numel() == volume,
               "normalize: channel " << c << " normalises inside the nonzero mask, which must be (Z, Y, X) uint8");
    const bool needs_properties = schemes[c] == NormalizationScheme::CT;
    VG_CHECK(!needs_properties || static_cast<std::int64_t>(properties.size()) > c,
             "normalize: channel " << c << " uses CTNormalization without intensity properties");
    const IntensityProperties p = needs_properties ? properties[c] : IntensityProperties{};
    normalize_channel(data.data<float>() + c * volume, volume, s, schemes[c], use_mask,
                      use_mask ? mask.data<std::uint8_t>() : nullptr, p, transpose_forward, what);
  }
}

}  // namespace voxgrad::pipeline::nnunet
