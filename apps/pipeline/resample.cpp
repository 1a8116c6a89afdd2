// Resampling between voxel grids: per-axis tap tables (two neighbours and a weight for every output
// coordinate) built once, then trilinear images and nearest / one-hot linear labels read through
// them. Every output voxel depends only on its inputs, so OpenMP over output slices is deterministic.
#include "apps/pipeline/resample.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>

#include "engine/error.h"
#include "engine/memory_budget.h"

namespace voxgrad::pipeline {

namespace {

// Where output voxel o of `out` samples an input axis of `in` voxels: input coordinate
// (o + 0.5) * in / out - 0.5 (align_corners=False), clamped to [0, in - 1] so edges repeat.
// The sample is (1 - w) * a[lo] + w * a[hi].
struct AxisTaps {
  std::vector<std::int64_t> lo, hi;
  std::vector<double> w;
};

double source_coordinate(std::int64_t o, std::int64_t in, std::int64_t out) {
  // Multiply before dividing: an exact result whenever in / out is, so equal sizes give c == o.
  return (static_cast<double>(o) + 0.5) * static_cast<double>(in) / static_cast<double>(out) - 0.5;
}

AxisTaps linear_taps(std::int64_t in, std::int64_t out) {
  AxisTaps t;
  t.lo.resize(static_cast<std::size_t>(out));
  t.hi.resize(static_cast<std::size_t>(out));
  t.w.resize(static_cast<std::size_t>(out));
  for (std::int64_t o = 0; o < out; ++o) {
    const double c = std::clamp(source_coordinate(o, in, out), 0.0, static_cast<double>(in - 1));
    const auto lo = std::min(static_cast<std::int64_t>(std::floor(c)), in - 1);
    const auto i = static_cast<std::size_t>(o);
    t.lo[i] = lo;
    t.hi[i] = std::min(lo + 1, in - 1);
    t.w[i] = c - static_cast<double>(lo);
  }
  return t;
}

// The input voxel whose centre is nearest to output voxel o's centre: floor of the unshifted
// coordinate (PyTorch's "nearest-exact"), so halfway cases go up consistently on every axis.
std::vector<std::int64_t> nearest_taps(std::int64_t in, std::int64_t out) {
  std::vector<std::int64_t> idx(static_cast<std::size_t>(out));
  for (std::int64_t o = 0; o < out; ++o) {
    const double c = source_coordinate(o, in, out) + 0.5;
    idx[static_cast<std::size_t>(o)] = std::clamp(static_cast<std::int64_t>(std::floor(c)), std::int64_t{0}, in - 1);
  }
  return idx;
}

void check_out_shape(const char* what, const Shape3& out_shape) {
  for (int a = 0; a < 3; ++a)
    VG_CHECK(out_shape[a] >= 1, what << ": output shape (" << out_shape[0] << ", " << out_shape[1] << ", "
                                     << out_shape[2] << ") must be at least 1 along every axis");
}

// Tensor axis a of (z, y, x), as people call it.
const char* axis_name(int a) { return a == 0 ? "z" : a == 1 ? "y" : "x"; }

std::string shape3_str(const Shape3& s) {
  std::ostringstream os;
  os << "(" << s[0] << ", " << s[1] << ", " << s[2] << ")";
  return os.str();
}

// The output grid comes from a file's spacing and dims: callers that know the file check first
// (check_preprocess_fits names it); this guard keeps any other caller from an allocation that
// cannot succeed.
void check_output_fits(const Shape3& out_shape, std::int64_t channels, const char* what) {
  memory::check_fits(memory::saturating_product({channels, out_shape[0], out_shape[1], out_shape[2], 4}),
                     std::string("resampling ") + what + " to a grid of " + shape3_str(out_shape) + " voxels (z, y, x)",
                     std::to_string(channels) + (channels == 1 ? " channel" : " channels"));
}

}  // namespace

std::array<double, 3> resampled_extent(const Shape3& shape, const Spacing3& spacing, const Spacing3& target) {
  std::array<double, 3> out{};
  for (int a = 0; a < 3; ++a) {
    VG_CHECK(shape[a] >= 1, "resampled_shape: shape " << shape3_str(shape) << " must be at least 1 along every axis");
    // Spacings come from headers and config files: a user's problem, named in plain words.
    VG_INPUT_CHECK(std::isfinite(spacing[a]) && spacing[a] > 0,
                   "spacing " << spacing[a] << " along axis " << axis_name(a) << " must be positive and finite");
    VG_INPUT_CHECK(std::isfinite(target[a]) && target[a] > 0,
                   "target spacing " << target[a] << " along axis " << axis_name(a) << " must be positive and finite");
    out[a] = std::max(1.0, std::round(static_cast<double>(shape[a]) * spacing[a] / target[a]));
  }
  return out;
}

Shape3 resampled_shape(const Shape3& shape, const Spacing3& spacing, const Spacing3& target) {
  const std::array<double, 3> extent = resampled_extent(shape, spacing, target);
  // Converting a double beyond int64's range is undefined; 2^53 is far beyond any memory anyway.
  constexpr double kMaxAxis = 9007199254740992.0;
  Shape3 out{};
  for (int a = 0; a < 3; ++a) {
    VG_INPUT_CHECK(extent[a] <= kMaxAxis, "resampling " << shape[a] << " voxels of " << spacing[a] << " mm to "
                                                        << target[a] << " mm along axis " << axis_name(a) << " gives "
                                                        << extent[a] << " voxels: far more than any memory");
    out[a] = static_cast<std::int64_t>(extent[a]);
  }
  return out;
}

Tensor resample_image(const Tensor& image, const Shape3& out_shape) {
  VG_CHECK(image.defined(), "resample_image: the image is undefined");
  VG_CHECK(image.dim() == 4, "resample_image: expected a (C, Z, Y, X) image, got shape " << shape_str(image.shape()));
  VG_CHECK(image.dtype() == DType::Float32, "resample_image: expected float32, got " << dtype_name(image.dtype()));
  VG_CHECK(image.device().is_cpu(), "resample_image: expected a CPU tensor, got " << image.device().str());
  VG_CHECK(image.numel() > 0, "resample_image: the image " << shape_str(image.shape()) << " holds no voxels");
  check_out_shape("resample_image", out_shape);
  const std::int64_t C = image.size(0), Z = image.size(1), Y = image.size(2), X = image.size(3);
  const std::int64_t OZ = out_shape[0], OY = out_shape[1], OX = out_shape[2];
  if (OZ == Z && OY == Y && OX == X) return image.clone();
  check_output_fits(out_shape, C, "an image");

  const AxisTaps tz = linear_taps(Z, OZ), ty = linear_taps(Y, OY), tx = linear_taps(X, OX);
  Tensor out = empty({C, OZ, OY, OX}, DType::Float32);  // (C, Z', Y', X')
  const float* src = image.data<float>();
  float* dst = out.data<float>();
#pragma omp parallel for schedule(static)
  for (std::int64_t cz = 0; cz < C * OZ; ++cz) {
    const std::int64_t c = cz / OZ;
    const auto oz = static_cast<std::size_t>(cz % OZ);
    const float* z0 = src + (c * Z + tz.lo[oz]) * Y * X;
    const float* z1 = src + (c * Z + tz.hi[oz]) * Y * X;
    const double wz = tz.w[oz];
    float* row_out = dst + cz * OY * OX;
    for (std::size_t oy = 0; oy < static_cast<std::size_t>(OY); ++oy) {
      const std::int64_t y0 = ty.lo[oy] * X, y1 = ty.hi[oy] * X;
      const double wy = ty.w[oy];
      for (std::size_t ox = 0; ox < static_cast<std::size_t>(OX); ++ox) {
        const std::int64_t x0 = tx.lo[ox], x1 = tx.hi[ox];
        const double wx = tx.w[ox];
        const auto lerp = [](double a, double b, double t) { return a + (b - a) * t; };
        const double v0 = lerp(lerp(z0[y0 + x0], z0[y0 + x1], wx), lerp(z0[y1 + x0], z0[y1 + x1], wx), wy);
        const double v1 = lerp(lerp(z1[y0 + x0], z1[y0 + x1], wx), lerp(z1[y1 + x0], z1[y1 + x1], wx), wy);
        row_out[static_cast<std::int64_t>(oy) * OX + static_cast<std::int64_t>(ox)] =
            static_cast<float>(lerp(v0, v1, wz));
      }
    }
  }
  return out;
}

Tensor resample_labels(const Tensor& labels, const Shape3& out_shape, int classes, LabelResampling mode) {
  VG_CHECK(labels.defined(), "resample_labels: the labels are undefined");
  VG_CHECK(labels.dim() == 3, "resample_labels: expected (Z, Y, X) labels, got shape " << shape_str(labels.shape()));
  VG_CHECK(labels.dtype() == DType::Int32, "resample_labels: expected int32, got " << dtype_name(labels.dtype()));
  VG_CHECK(labels.device().is_cpu(), "resample_labels: expected a CPU tensor, got " << labels.device().str());
  VG_CHECK(labels.numel() > 0, "resample_labels: the labels " << shape_str(labels.shape()) << " hold no voxels");
  VG_CHECK(classes >= 1, "resample_labels: classes must be at least 1, got " << classes);
  check_out_shape("resample_labels", out_shape);
  const std::int64_t Z = labels.size(0), Y = labels.size(1), X = labels.size(2);
  const std::int64_t OZ = out_shape[0], OY = out_shape[1], OX = out_shape[2];
  const std::int32_t* src = labels.data<std::int32_t>();
  // The one-hot path indexes by label value, so out-of-range values must never get that far.
  for (std::int64_t i = 0; i < labels.numel(); ++i)
    VG_CHECK(src[i] >= 0 && src[i] < classes, "resample_labels: label value " << src[i] << " at voxel (z, y, x) = ("
                                                  << i / (Y * X) << ", " << i / X % Y << ", " << i % X
                                                  << ") is outside [0, " << classes << ")");
  if (OZ == Z && OY == Y && OX == X) return labels.clone();
  check_output_fits(out_shape, 1, "a label map");

  Tensor out = empty({OZ, OY, OX}, DType::Int32);  // (Z', Y', X')
  std::int32_t* dst = out.data<std::int32_t>();
  if (mode == LabelResampling::Nearest) {
    const auto nz = nearest_taps(Z, OZ), ny = nearest_taps(Y, OY), nx = nearest_taps(X, OX);
#pragma omp parallel for schedule(static)
    for (std::int64_t oz = 0; oz < OZ; ++oz) {
      const std::int32_t* slice = src + nz[static_cast<std::size_t>(oz)] * Y * X;
      for (std::int64_t oy = 0; oy < OY; ++oy) {
        const std::int32_t* row = slice + ny[static_cast<std::size_t>(oy)] * X;
        std::int32_t* row_out = dst + (oz * OY + oy) * OX;
        for (std::int64_t ox = 0; ox < OX; ++ox) row_out[ox] = row[nx[static_cast<std::size_t>(ox)]];
      }
    }
    return out;
  }

  // One-hot linear: a class's resampled indicator at an output voxel is the sum of the trilinear
  // weights of the neighbours holding it, so only the (at most 8) classes present there compete and
  // no per-class volume is ever built. Ties go to the lowest class, as argmax does.
  const AxisTaps tz = linear_taps(Z, OZ), ty = linear_taps(Y, OY), tx = linear_taps(X, OX);
#pragma omp parallel for schedule(static)
  for (std::int64_t oz = 0; oz < OZ; ++oz) {
    const auto iz = static_cast<std::size_t>(oz);
    const std::int64_t zi[2] = {tz.lo[iz] * Y * X, tz.hi[iz] * Y * X};
    const double zw[2] = {1.0 - tz.w[iz], tz.w[iz]};
    for (std::int64_t oy = 0; oy < OY; ++oy) {
      const auto iy = static_cast<std::size_t>(oy);
      const std::int64_t yi[2] = {ty.lo[iy] * X, ty.hi[iy] * X};
      const double yw[2] = {1.0 - ty.w[iy], ty.w[iy]};
      for (std::int64_t ox = 0; ox < OX; ++ox) {
        const auto ix = static_cast<std::size_t>(ox);
        const std::int64_t xi[2] = {tx.lo[ix], tx.hi[ix]};
        const double xw[2] = {1.0 - tx.w[ix], tx.w[ix]};
        std::int32_t cls[8];
        double sum[8];
        int n = 0;
        for (int a = 0; a < 2; ++a)
          for (int b = 0; b < 2; ++b)
            for (int d = 0; d < 2; ++d) {
              const std::int32_t l = src[zi[a] + yi[b] + xi[d]];
              const double w = zw[a] * yw[b] * xw[d];
              int k = 0;
              while (k < n && cls[k] != l) ++k;
              if (k == n) {
                cls[n] = l;
                sum[n++] = 0.0;
              }
              sum[k] += w;
            }
        int best = 0;
        for (int k = 1; k < n; ++k)
          if (sum[k] > sum[best] || (sum[k] == sum[best] && cls[k] < cls[best])) best = k;
        dst[(oz * OY + oy) * OX + ox] = cls[best];
      }
    }
  }
  return out;
}

}  // namespace voxgrad::pipeline
