// nnU-Net's default resampling. Orders 0 and 1 evaluate scipy's tensor-product sum term by term in
// its order, so they round as scipy does; order 3 runs one axis at a time (scipy's prefilter on a
// line padded with 12 edge values, then its weights at the align_corners=False coordinates), which
// equals scipy's all-axes evaluation up to rounding. OpenMP over output rows or blocks of lines.
#include "apps/pipeline/nnunet_resampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <vector>

#include "engine/error.h"
#include "engine/float16.h"
#include "engine/memory_budget.h"

namespace voxgrad::pipeline::nnunet {

namespace {

const char* axis_name(int a) { return a == 0 ? "z" : a == 1 ? "y" : "x"; }

std::string shape3_str(const Shape3& s) {
  std::ostringstream os;
  os << "(" << s[0] << ", " << s[1] << ", " << s[2] << ")";
  return os.str();
}

void check_spacing(const Spacing3& spacing, const char* what) {
  for (int a = 0; a < 3; ++a)
    VG_INPUT_CHECK(std::isfinite(spacing[a]) && spacing[a] > 0,
                   what << " " << spacing[a] << " along axis " << axis_name(a) << " must be positive and finite");
}

void check_settings(const ResamplingSettings& s) {
  for (const int order : {s.order, s.order_z})
    VG_INPUT_CHECK(order == 0 || order == 1 || order == 3,
                   "resampling spline order " << order << " is not supported (0, 1 and 3 are)");
  VG_INPUT_CHECK(std::isfinite(s.separate_z_anisotropy_threshold),
                 "the separate-axis anisotropy threshold " << s.separate_z_anisotropy_threshold << " must be finite");
}

// scipy pads a line by this many edge values before the cubic prefilter (mode 'nearest'), whose
// own boundary rule (the half-sample mirror) then only touches the constant padding.
constexpr std::int64_t kSplinePad = 12;
// The one pole of the cubic B-spline prefilter, sqrt(3) - 2, as scipy writes it.
constexpr double kCubicPole = -0.267949192431122706472553658494127633;

// Where each output position of one axis reads: `width` tap indices into the (padded) input line,
// clamped to it (edge values repeat), and their weights (order 0: one tap of weight 1).
struct AxisPlan {
  int order = 0;
  std::int64_t in_len = 0, out_len = 0, pad = 0, width = 1;
  std::vector<std::int64_t> taps;  // (out_len, width)
  std::vector<double> weights;     // (out_len, width)
  std::int64_t padded_len() const { return in_len + 2 * pad; }
};

// scipy's B-spline weights at fractional offset x in [0, 1) (odd orders); the last weight is one
// minus the others, as scipy computes it.
void spline_weights(double x, int order, double* w) {
  if (order == 1) {
    w[0] = 1.0 - x;
  } else {
    const double y = x, z = 1.0 - x;
    w[1] = (y * y * (y - 2.0) * 3.0 + 4.0) / 6.0;
    w[2] = (z * z * (z - 2.0) * 3.0 + 4.0) / 6.0;
    w[0] = z * z * z / 6.0;
  }
  w[order] = 1.0;
  for (int i = 0; i < order; ++i) w[order] -= w[i];
}

AxisPlan plan_axis(std::int64_t in_len, std::int64_t out_len, int order) {
  AxisPlan p;
  p.order = order;
  p.in_len = in_len;
  p.out_len = out_len;
  p.pad = order > 1 ? kSplinePad : 0;
  p.width = order + 1;
  const auto taps = static_cast<std::size_t>(p.width);
  p.taps.resize(static_cast<std::size_t>(out_len) * taps);
  p.weights.assign(p.taps.size(), 1.0);
  // The grid-mode zoom factor in / out, and the sample coordinate in the order scipy rounds it.
  const double scale = static_cast<double>(in_len) / static_cast<double>(out_len);
  for (std::int64_t k = 0; k < out_len; ++k) {
    double c = static_cast<double>(k);
    c += 0.5;
    c *= scale;
    c -= 0.5;
    c += static_cast<double>(p.pad);
    const double base = order % 2 == 1 ? std::floor(c) : std::floor(c + 0.5);
    const auto start = static_cast<std::int64_t>(base) - order / 2;
    const std::size_t row = static_cast<std::size_t>(k) * taps;
    for (int l = 0; l <= order; ++l)
      p.taps[row + static_cast<std::size_t>(l)] = std::clamp<std::int64_t>(start + l, 0, p.padded_len() - 1);
    if (order > 0) spline_weights(c - std::floor(c), order, &p.weights[row]);
  }
  return p;
}

// An axis left as it is: each output position reads its own input position with weight 1, which
// is exactly what scipy's order-1 weights (1, 0) at a whole-number coordinate give.
AxisPlan identity_axis(std::int64_t len) {
  AxisPlan p;
  p.in_len = p.out_len = len;
  p.taps.resize(static_cast<std::size_t>(len));
  for (std::int64_t k = 0; k < len; ++k) p.taps[static_cast<std::size_t>(k)] = k;
  p.weights.assign(p.taps.size(), 1.0);
  return p;
}

// scipy's cubic prefilter (gain, causal and anticausal passes with the half-sample mirror's
// initial values) on `width` interleaved lines of length n: element i of line j is c[i * width + j].
// `sum` is scratch for `width` values.
void cubic_prefilter(double* c, std::int64_t n, std::int64_t width, double* sum) {
  const double z = kCubicPole;
  const double gain = (1.0 - z) * (1.0 - 1.0 / z);
  for (std::int64_t i = 0; i < n * width; ++i) c[i] *= gain;
  const double z_n = std::pow(z, static_cast<double>(n));
  const double causal_scale = z / (1 - z_n * z_n);
  for (std::int64_t j = 0; j < width; ++j) sum[j] = c[j] + z_n * c[(n - 1) * width + j];
  double z_i = z;
  for (std::int64_t i = 1; i < n; ++i) {
    const double* forward = c + i * width;
    const double* mirrored = c + (n - 1 - i) * width;
    for (std::int64_t j = 0; j < width; ++j) sum[j] += z_i * (forward[j] + z_n * mirrored[j]);
    z_i *= z;
  }
  for (std::int64_t j = 0; j < width; ++j) c[j] += sum[j] * causal_scale;
  for (std::int64_t i = 1; i < n; ++i)
    for (std::int64_t j = 0; j < width; ++j) c[i * width + j] += z * c[(i - 1) * width + j];
  const double anticausal_scale = z / (z - 1);
  for (std::int64_t j = 0; j < width; ++j) c[(n - 1) * width + j] *= anticausal_scale;
  for (std::int64_t i = n - 2; i >= 0; --i)
    for (std::int64_t j = 0; j < width; ++j) c[i * width + j] = z * (c[(i + 1) * width + j] - c[i * width + j]);
}

// A (d0, d1, d2) float64 volume.
struct Grid {
  Shape3 shape{};
  std::vector<double> values;
  Grid() = default;
  explicit Grid(const Shape3& s) : shape(s), values(static_cast<std::size_t>(s[0] * s[1] * s[2])) {}
};

// `in` resampled along `axis` to plan.out_len positions. Lines along the axis are handled in blocks
// of up to kBlock neighbours along the contiguous inner axes, so every pass reads whole rows.
Grid resample_axis(const Grid& in, int axis, const AxisPlan& plan) {
  constexpr std::int64_t kBlock = 64;
  Shape3 out_shape = in.shape;
  out_shape[axis] = plan.out_len;
  Grid out(out_shape);
  std::int64_t outer = 1, inner = 1;
  for (int a = 0; a < axis; ++a) outer *= in.shape[a];
  for (int a = axis + 1; a < 3; ++a) inner *= in.shape[a];
  const std::int64_t n = plan.in_len, m = plan.out_len, padded = plan.padded_len(), pad = plan.pad;
  const std::int64_t blocks = (inner + kBlock - 1) / kBlock;
  const std::int64_t taps = plan.width;
  const double* src = in.values.data();
  double* dst = out.values.data();
#pragma omp parallel
  {
    std::vector<double> line(static_cast<std::size_t>(padded * kBlock));  // (padded, width)
    std::vector<double> scratch(static_cast<std::size_t>(kBlock));
#pragma omp for schedule(static)
    for (std::int64_t task = 0; task < outer * blocks; ++task) {
      const std::int64_t o = task / blocks, j0 = (task % blocks) * kBlock;
      const std::int64_t width = std::min(kBlock, inner - j0);
      double* c = line.data();
      for (std::int64_t i = 0; i < padded; ++i) {
        const std::int64_t from = std::clamp<std::int64_t>(i - pad, 0, n - 1);
        const double* row = src + (o * n + from) * inner + j0;
        std::copy(row, row + width, c + i * width);
      }
      if (plan.order > 1) cubic_prefilter(c, padded, width, scratch.data());
      for (std::int64_t k = 0; k < m; ++k) {
        double* row_out = dst + (o * m + k) * inner + j0;
        const std::int64_t* tap = &plan.taps[static_cast<std::size_t>(k * taps)];
        const double* w = &plan.weights[static_cast<std::size_t>(k * taps)];
        for (std::int64_t j = 0; j < width; ++j) {
          double t = 0.0;
          for (std::int64_t l = 0; l < taps; ++l) t += c[tap[l] * width + j] * w[l];
          row_out[j] = t;
        }
      }
    }
  }
  return out;
}

// `in` resampled on all three axes at once, each output voxel summing value * w0 * w1 * w2 over the
// taps in scipy's order (the last axis fastest) and rounding as scipy does: for orders 0 and 1,
// where the sum is short, this makes the result bit for bit scipy's.
Grid resample_tensor_product(const Grid& in, const std::array<AxisPlan, 3>& plans) {
  Grid out({plans[0].out_len, plans[1].out_len, plans[2].out_len});
  const std::int64_t Y = in.shape[1], X = in.shape[2];
  const std::int64_t OY = out.shape[1], OX = out.shape[2];
  const std::int64_t n0 = plans[0].width, n1 = plans[1].width, n2 = plans[2].width;
  const double* src = in.values.data();
  double* dst = out.values.data();
#pragma omp parallel for schedule(static)
  for (std::int64_t row = 0; row < out.shape[0] * OY; ++row) {
    const auto k0 = static_cast<std::size_t>(row / OY), k1 = static_cast<std::size_t>(row % OY);
    const std::int64_t* t0 = &plans[0].taps[k0 * static_cast<std::size_t>(n0)];
    const std::int64_t* t1 = &plans[1].taps[k1 * static_cast<std::size_t>(n1)];
    const double* w0 = &plans[0].weights[k0 * static_cast<std::size_t>(n0)];
    const double* w1 = &plans[1].weights[k1 * static_cast<std::size_t>(n1)];
    for (std::int64_t k2 = 0; k2 < OX; ++k2) {
      const std::int64_t* t2 = &plans[2].taps[static_cast<std::size_t>(k2 * n2)];
      const double* w2 = &plans[2].weights[static_cast<std::size_t>(k2 * n2)];
      double t = 0.0;
      for (std::int64_t a = 0; a < n0; ++a)
        for (std::int64_t b = 0; b < n1; ++b)
          for (std::int64_t c = 0; c < n2; ++c) {
            double coeff = src[(t0[a] * Y + t1[b]) * X + t2[c]];
            coeff *= w0[a];
            coeff *= w1[b];
            coeff *= w2[c];
            t += coeff;
          }
      dst[row * OX + k2] = t;
    }
  }
  return out;
}

// The range skimage clips a resize to: the smallest and largest non-NaN input value (NaN when all
// are NaN, as numpy's nanmin gives).
struct Range {
  double lo = std::numeric_limits<double>::infinity(), hi = -std::numeric_limits<double>::infinity();
  void add(double v) {
    if (std::isnan(v)) return;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  void finish() {
    if (lo > hi) lo = hi = std::numeric_limits<double>::quiet_NaN();
  }
};

// numpy's clip: NaN in the value or the bounds stays NaN.
double clip(double v, const Range& r) {
  if (std::isnan(v) || std::isnan(r.lo)) return std::numeric_limits<double>::quiet_NaN();
  return v < r.lo ? r.lo : v > r.hi ? r.hi : v;
}

// Per-slice ranges across `axis` (one Range for the whole grid when axis is -1).
std::vector<Range> slice_ranges(const Grid& g, int axis) {
  std::vector<Range> ranges(axis < 0 ? 1 : static_cast<std::size_t>(g.shape[axis]));
  std::size_t i = 0;
  for (std::int64_t a = 0; a < g.shape[0]; ++a)
    for (std::int64_t b = 0; b < g.shape[1]; ++b)
      for (std::int64_t x = 0; x < g.shape[2]; ++x) {
        const std::int64_t s = axis == 0 ? a : axis == 1 ? b : axis == 2 ? x : 0;
        ranges[static_cast<std::size_t>(s)].add(g.values[i++]);
      }
  for (Range& r : ranges) r.finish();
  return ranges;
}

void clip_slices(Grid& g, int axis, const std::vector<Range>& ranges) {
  std::size_t i = 0;
  for (std::int64_t a = 0; a < g.shape[0]; ++a)
    for (std::int64_t b = 0; b < g.shape[1]; ++b)
      for (std::int64_t x = 0; x < g.shape[2]; ++x) {
        const std::int64_t s = axis == 0 ? a : axis == 1 ? b : axis == 2 ? x : 0;
        g.values[i] = clip(g.values[i], ranges[static_cast<std::size_t>(s)]);
        ++i;
      }
}

// skimage.transform.resize(..., order, mode='edge', anti_aliasing=False) over the axes flagged in
// `axes` (the others are batch axes: resize of every slice across them), clipped per resize call.
Grid resize_axes(Grid g, const Shape3& out_shape, int order, const std::array<bool, 3>& axes) {
  int batch_axis = -1;
  for (int a = 0; a < 3; ++a)
    if (!axes[a]) batch_axis = a;
  const std::vector<Range> ranges = slice_ranges(g, batch_axis);
  bool changed = false;
  if (order <= 1) {
    std::array<AxisPlan, 3> plans;
    for (int a = 0; a < 3; ++a) {
      const bool zoom = axes[a] && g.shape[a] != out_shape[a];
      plans[a] = zoom ? plan_axis(g.shape[a], out_shape[a], order) : identity_axis(g.shape[a]);
      changed = changed || zoom;
    }
    if (changed) {
      g = resample_tensor_product(g, plans);
      clip_slices(g, batch_axis, ranges);
    }
    return g;
  }
  for (int a = 0; a < 3; ++a) {
    if (!axes[a] || g.shape[a] == out_shape[a]) continue;  // scipy's evaluation there is the identity, to rounding
    g = resample_axis(g, a, plan_axis(g.shape[a], out_shape[a], order));
    changed = true;
  }
  if (changed) clip_slices(g, batch_axis, ranges);
  return g;
}

}  // namespace

ResamplingSettings parse_resampling_settings(const std::string& function_name, const Json& kwargs,
                                             const std::string& where) {
  VG_INPUT_CHECK(function_name == "resample_data_or_seg_to_shape",
                 where << ": resampling function \"" << function_name
                       << "\" is not supported (only \"resample_data_or_seg_to_shape\" is)");
  VG_INPUT_CHECK(kwargs.is_object(), where << ": the resampling kwargs must be a JSON object");
  ResamplingSettings s;
  s.force_separate_z = false;  // the function's own default when the plans leave it out
  // Spline orders are small whole numbers; anything else is refused before it can wrap an int.
  const auto whole = [&](const Json& v, const std::string& key) {
    VG_INPUT_CHECK(v.is_number() && std::trunc(v.get<double>()) == v.get<double>() && std::abs(v.get<double>()) < 1e9,
                   where << ": resampling kwarg \"" << key << "\" must be a whole number, got " << v.dump());
    return static_cast<int>(v.get<double>());
  };
  for (const auto& [key, value] : kwargs.items()) {
    if (key == "is_seg") {
      VG_INPUT_CHECK(value.is_boolean(), where << ": resampling kwarg \"is_seg\" must be true or false");
      VG_INPUT_CHECK(!value.get<bool>(), where << ": segmentation resampling (\"is_seg\": true) is not supported");
    } else if (key == "order") {
      s.order = whole(value, key);
    } else if (key == "order_z") {
      s.order_z = whole(value, key);
    } else if (key == "force_separate_z") {
      VG_INPUT_CHECK(value.is_null() || value.is_boolean(),
                     where << ": resampling kwarg \"force_separate_z\" must be null, true or false");
      s.force_separate_z = value.is_null() ? std::nullopt : std::optional<bool>(value.get<bool>());
    } else if (key == "separate_z_anisotropy_threshold") {
      VG_INPUT_CHECK(value.is_number(),
                     where << ": resampling kwarg \"separate_z_anisotropy_threshold\" must be a number");
      s.separate_z_anisotropy_threshold = value.get<double>();
    } else {
      VG_INPUT_FAIL(where << ": unknown resampling kwarg \"" << key << "\"");
    }
  }
  for (const int order : {s.order, s.order_z})
    VG_INPUT_CHECK(order == 0 || order == 1 || order == 3,
                   where << ": resampling spline order " << order << " is not supported (0, 1 and 3 are)");
  VG_INPUT_CHECK(std::isfinite(s.separate_z_anisotropy_threshold),
                 where << ": the separate-axis anisotropy threshold must be finite");
  return s;
}

Shape3 compute_new_shape(const Shape3& old_shape, const Spacing3& old_spacing, const Spacing3& new_spacing) {
  check_spacing(old_spacing, "spacing");
  check_spacing(new_spacing, "new spacing");
  // Far beyond any memory, and still exact in a double and an int64.
  constexpr double kMaxAxis = 9007199254740992.0;
  Shape3 out{};
  for (int a = 0; a < 3; ++a) {
    VG_INPUT_CHECK(old_shape[a] >= 1, "the shape " << shape3_str(old_shape) << " has an empty axis");
    // Python's round() takes halves to even, as nearbyint does in the default rounding mode.
    const double size = std::nearbyint(old_spacing[a] / new_spacing[a] * static_cast<double>(old_shape[a]));
    VG_INPUT_CHECK(size >= 1, "resampling " << old_shape[a] << " voxels of " << old_spacing[a] << " mm to "
                                            << new_spacing[a] << " mm along axis " << axis_name(a)
                                            << " leaves no voxel");
    VG_INPUT_CHECK(size <= kMaxAxis, "resampling " << old_shape[a] << " voxels of " << old_spacing[a] << " mm to "
                                                   << new_spacing[a] << " mm along axis " << axis_name(a) << " gives "
                                                   << size << " voxels: far more than any memory");
    out[a] = static_cast<std::int64_t>(size);
  }
  return out;
}

namespace {

// get_lowres_axis: the axes whose spacing equals the largest (max / s == 1, as nnU-Net tests it).
std::vector<int> largest_spacing_axes(const Spacing3& s) {
  const double largest = std::max({s[0], s[1], s[2]});
  std::vector<int> axes;
  for (int a = 0; a < 3; ++a)
    if (largest / s[a] == 1.0) axes.push_back(a);
  return axes;
}

bool anisotropic(const Spacing3& s, double threshold) {
  return std::max({s[0], s[1], s[2]}) / std::min({s[0], s[1], s[2]}) > threshold;
}

}  // namespace

SeparateAxis separate_axis(const Spacing3& current_spacing, const Spacing3& new_spacing,
                           const ResamplingSettings& settings) {
  check_spacing(current_spacing, "spacing");
  check_spacing(new_spacing, "new spacing");
  std::vector<int> axes;
  if (settings.force_separate_z.has_value()) {
    if (*settings.force_separate_z) axes = largest_spacing_axes(current_spacing);
  } else if (anisotropic(current_spacing, settings.separate_z_anisotropy_threshold)) {
    axes = largest_spacing_axes(current_spacing);
  } else if (anisotropic(new_spacing, settings.separate_z_anisotropy_threshold)) {
    axes = largest_spacing_axes(new_spacing);
  }
  // Two or three axes sharing the largest spacing (e.g. 0.24 x 1.25 x 1.25 mm): no single axis.
  if (axes.size() != 1) return {};
  return {true, axes[0]};
}

Tensor resample_to_shape(const Tensor& data, const Shape3& new_shape, const Spacing3& current_spacing,
                         const Spacing3& new_spacing, const ResamplingSettings& settings, ResultPrecision precision) {
  VG_CHECK(data.defined(), "resample_to_shape: the data is undefined");
  VG_CHECK(data.device().is_cpu(), "resample_to_shape: expected a CPU tensor, got " << data.device().str());
  VG_INPUT_CHECK(data.dim() == 4, "resampling expects (C, Z, Y, X) data, got shape " << shape_str(data.shape()));
  VG_INPUT_CHECK(data.dtype() == DType::Float32 || data.dtype() == DType::Float64,
                 "resampling expects float32 or float64 data, got " << dtype_name(data.dtype()));
  VG_INPUT_CHECK(data.numel() > 0, "resampling expects data with voxels, got shape " << shape_str(data.shape()));
  for (int a = 0; a < 3; ++a)
    VG_INPUT_CHECK(new_shape[a] >= 1, "the new shape " << shape3_str(new_shape) << " has an empty axis");
  check_settings(settings);
  const SeparateAxis sep = separate_axis(current_spacing, new_spacing, settings);
  const std::int64_t C = data.size(0);
  const Shape3 shape{data.size(1), data.size(2), data.size(3)};
  const bool half = precision == ResultPrecision::HalfInFloat32;
  if (shape == new_shape && !half) return data;
  // The result, and two float64 grids per pass, none larger than the larger size on every axis.
  memory::check_fits(
      memory::saturating_add(
          memory::saturating_product(
              {C, new_shape[0], new_shape[1], new_shape[2], static_cast<std::int64_t>(dtype_size(data.dtype()))}),
          memory::saturating_product({2, std::max(shape[0], new_shape[0]), std::max(shape[1], new_shape[1]),
                                      std::max(shape[2], new_shape[2]), 8})),
      "resampling to a grid of " + shape3_str(new_shape) + " voxels (z, y, x)");
  const std::int64_t in_voxels = shape[0] * shape[1] * shape[2];
  const std::int64_t out_voxels = new_shape[0] * new_shape[1] * new_shape[2];

  const DType out_dtype = half ? DType::Float32 : data.dtype();
  Tensor out = empty({C, new_shape[0], new_shape[1], new_shape[2]}, out_dtype);  // (C, Z', Y', X')
  for (std::int64_t c = 0; c < C; ++c) {
    Grid g(shape);
    if (data.dtype() == DType::Float64) {
      const double* src = data.data<double>() + c * in_voxels;
      std::copy(src, src + in_voxels, g.values.begin());
    } else {
      const float* src = data.data<float>() + c * in_voxels;
      std::copy(src, src + in_voxels, g.values.begin());  // float to double is exact
    }
    if (shape == new_shape) {
      // nothing to resample: only the rounding to float16 below
    } else if (!sep.separate) {
      g = resize_axes(std::move(g), new_shape, settings.order, {true, true, true});
    } else {
      std::array<bool, 3> in_plane{true, true, true};
      in_plane[sep.axis] = false;
      g = resize_axes(std::move(g), new_shape, settings.order, in_plane);
      if (g.shape[sep.axis] != new_shape[sep.axis])
        g = resample_axis(g, sep.axis, plan_axis(g.shape[sep.axis], new_shape[sep.axis], settings.order_z));
    }
    if (out_dtype == DType::Float64) {
      std::copy(g.values.begin(), g.values.end(), out.data<double>() + c * out_voxels);
    } else {
      float* dst = out.data<float>() + c * out_voxels;
      for (std::int64_t i = 0; i < out_voxels; ++i) {
        const double v = g.values[static_cast<std::size_t>(i)];
        dst[i] = static_cast<float>(half ? round_to_float16(v) : v);
      }
    }
  }
  return out;
}

}  // namespace voxgrad::pipeline::nnunet
