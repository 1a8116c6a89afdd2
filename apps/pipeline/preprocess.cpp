// nnU-Net's per-case preprocessing: z-score or CT normalisation with non-finite voxels left out of
// every statistic, resampling to the plan's spacing, the dataset statistics a plan holds, and padding /
// cropping of the last three axes. Sums run per slice in double and are added in slice order, so
// results are the same for any OpenMP thread count.
#include "apps/pipeline/preprocess.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include "engine/error.h"
#include "engine/memory_budget.h"

namespace voxgrad::pipeline {

namespace {

constexpr double kStdFloor = 1e-8;

std::string shape3_str(const Shape3& s) {
  std::ostringstream os;
  os << "(" << s[0] << ", " << s[1] << ", " << s[2] << ")";
  return os.str();
}

// Mean and population standard deviation (numpy's default, ddof = 0) of the finite values of
// `v[0 .. slices * slice_len)`, two passes for accuracy; count 0 when no value is finite. An
// infinite voxel is left out exactly as NaN is: one would make the mean, and so every voxel, NaN.
struct Moments {
  std::int64_t count = 0;
  double mean = 0.0, std = 0.0;
};

Moments nan_moments(const float* v, std::int64_t slices, std::int64_t slice_len) {
  std::vector<double> part_sum(static_cast<std::size_t>(slices), 0.0);
  std::vector<std::int64_t> part_count(static_cast<std::size_t>(slices), 0);
#pragma omp parallel for schedule(static)
  for (std::int64_t s = 0; s < slices; ++s) {
    double sum = 0.0;
    std::int64_t count = 0;
    for (const float* p = v + s * slice_len; p != v + (s + 1) * slice_len; ++p) {
      if (!std::isfinite(*p)) continue;
      sum += *p;
      ++count;
    }
    part_sum[static_cast<std::size_t>(s)] = sum;
    part_count[static_cast<std::size_t>(s)] = count;
  }
  Moments m;
  double sum = 0.0;
  for (std::int64_t s = 0; s < slices; ++s) {
    sum += part_sum[static_cast<std::size_t>(s)];
    m.count += part_count[static_cast<std::size_t>(s)];
  }
  if (m.count == 0) return m;
  m.mean = sum / static_cast<double>(m.count);
#pragma omp parallel for schedule(static)
  for (std::int64_t s = 0; s < slices; ++s) {
    double sq = 0.0;
    for (const float* p = v + s * slice_len; p != v + (s + 1) * slice_len; ++p) {
      if (!std::isfinite(*p)) continue;
      const double d = *p - m.mean;
      sq += d * d;
    }
    part_sum[static_cast<std::size_t>(s)] = sq;
  }
  double sq = 0.0;
  for (std::int64_t s = 0; s < slices; ++s) sq += part_sum[static_cast<std::size_t>(s)];
  m.std = std::sqrt(sq / static_cast<double>(m.count));
  return m;
}

// numpy.percentile's default ("linear"): position q / 100 * (n - 1) in the sorted values.
double percentile_sorted(const std::vector<double>& sorted, double q) {
  const double pos = q / 100.0 * static_cast<double>(sorted.size() - 1);
  const auto lo = static_cast<std::size_t>(std::floor(pos));
  const std::size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - static_cast<double>(lo));
}

// (z, y, x) spacings and shapes as a NIfTI header shows them: x first.
std::string xyz_str(const Spacing3& s) {
  std::ostringstream os;
  os << "(" << s[2] << ", " << s[1] << ", " << s[0] << ")";
  return os.str();
}

// `what` names the file ("CASE.nii.gz") or the plan ("the plan's target spacing").
void check_spacing(const std::string& what, const Spacing3& s) {
  for (int a = 0; a < 3; ++a)
    VG_INPUT_CHECK(std::isfinite(s[a]) && s[a] > 0,
                   what << ": spacing " << xyz_str(s) << " mm (x, y, z) must be positive and finite");
}

void check_labels_in_range(const std::string& what, const Tensor& label, int classes) {
  const std::int64_t Y = label.size(1), X = label.size(2);
  const std::int32_t* l = label.data<std::int32_t>();
  for (std::int64_t i = 0; i < label.numel(); ++i)
    VG_INPUT_CHECK(l[i] >= 0 && l[i] < classes, what << ": label value " << l[i] << " at voxel (z, y, x) = ("
                                                     << i / (Y * X) << ", " << i / X % Y << ", " << i % X
                                                     << ") is outside [0, " << classes << ") (the plan has " << classes
                                                     << " classes)");
}

std::string source_name(const std::string& source) { return source.empty() ? "the image" : source; }

// Writes `n` copies of `value` converted to `t`; integer dtypes need a whole value in range.
void fill_as(void* dst, std::int64_t n, DType t, double value, const char* what) {
  switch (t) {
    case DType::Float32:
      std::fill_n(static_cast<float*>(dst), n, static_cast<float>(value));
      return;
    case DType::Float64:
      std::fill_n(static_cast<double*>(dst), n, value);
      return;
    case DType::Int32:
      VG_CHECK(value == std::floor(value) && value >= std::numeric_limits<std::int32_t>::min() &&
                   value <= std::numeric_limits<std::int32_t>::max(),
               what << ": padding value " << value << " is not an int32");
      std::fill_n(static_cast<std::int32_t*>(dst), n, static_cast<std::int32_t>(value));
      return;
    case DType::UInt8:
      VG_CHECK(value == std::floor(value) && value >= 0 && value <= 255, what << ": padding value " << value
                                                                              << " is not a uint8");
      std::fill_n(static_cast<std::uint8_t*>(dst), n, static_cast<std::uint8_t>(value));
      return;
  }
}

// Copies the (sz, sy, sx) block of rows between two tensors with the same leading axes: source
// block at `src_start` inside (Z, Y, X), destination block at `dst_start` inside (DZ, DY, DX).
void copy_block(const Tensor& src, const Shape3& src_start, Tensor& dst, const Shape3& dst_start, const Shape3& block) {
  const int r = src.dim();
  const std::int64_t Z = src.size(r - 3), Y = src.size(r - 2), X = src.size(r - 1);
  const std::int64_t DZ = dst.size(r - 3), DY = dst.size(r - 2), DX = dst.size(r - 1);
  std::int64_t lead = 1;
  for (int a = 0; a < r - 3; ++a) lead *= src.size(a);
  const std::size_t es = dtype_size(src.dtype());
  const auto* s = static_cast<const unsigned char*>(src.raw_data());
  auto* d = static_cast<unsigned char*>(dst.raw_data());
  const std::size_t row_bytes = static_cast<std::size_t>(block[2]) * es;
#pragma omp parallel for schedule(static)
  for (std::int64_t lz = 0; lz < lead * block[0]; ++lz) {
    const std::int64_t l = lz / block[0], z = lz % block[0];
    for (std::int64_t y = 0; y < block[1]; ++y) {
      const std::int64_t si = ((l * Z + src_start[0] + z) * Y + src_start[1] + y) * X + src_start[2];
      const std::int64_t di = ((l * DZ + dst_start[0] + z) * DY + dst_start[1] + y) * DX + dst_start[2];
      std::memcpy(d + static_cast<std::size_t>(di) * es, s + static_cast<std::size_t>(si) * es, row_bytes);
    }
  }
}

}  // namespace

Normalization parse_normalization(const std::string& name) {
  if (name == "zscore") return Normalization::ZScore;
  if (name == "ct") return Normalization::CT;
  VG_INPUT_FAIL("unknown normalization \"" << name << "\" (choices: zscore, ct)");
}

const char* normalization_name(Normalization n) {
  switch (n) {
    case Normalization::ZScore: return "zscore";
    case Normalization::CT: return "ct";
  }
  return "?";
}

Spacing3 spacing_zyx(const std::vector<double>& pixdim) {
  Spacing3 zyx{1.0, 1.0, 1.0};
  for (std::size_t i = 0; i < 3 && i < pixdim.size(); ++i) zyx[2 - i] = pixdim[i];
  return zyx;
}

Spacing3 median_spacing(const std::vector<Spacing3>& spacings) {
  VG_CHECK(!spacings.empty(), "median_spacing: no spacings given");
  for (const Spacing3& s : spacings) check_spacing("a case", s);
  Spacing3 out{};
  for (int a = 0; a < 3; ++a) {
    std::vector<double> v;
    v.reserve(spacings.size());
    for (const Spacing3& s : spacings) v.push_back(s[a]);
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    out[a] = n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  }
  return out;
}

std::vector<IntensityStats> foreground_intensity_stats(const std::vector<Tensor>& images,
                                                       const std::vector<Tensor>& labels,
                                                       std::int64_t samples_per_case) {
  VG_CHECK(!images.empty(), "foreground_intensity_stats: no cases given");
  VG_CHECK(images.size() == labels.size(), "foreground_intensity_stats: " << images.size() << " images but "
                                                                          << labels.size() << " labels");
  VG_CHECK(samples_per_case >= 1, "foreground_intensity_stats: samples_per_case must be at least 1, got "
                                      << samples_per_case);
  std::int64_t channels = -1;
  std::vector<std::vector<double>> pooled;  // per channel, every case's samples
  for (std::size_t ci = 0; ci < images.size(); ++ci) {
    const Tensor& img = images[ci];
    const Tensor& lab = labels[ci];
    VG_CHECK(img.defined() && img.dim() == 4 && img.dtype() == DType::Float32 && img.device().is_cpu(),
             "foreground_intensity_stats: case " << ci << ": expected a (C, Z, Y, X) float32 CPU image, got "
                                                 << (img.defined() ? img.str() : std::string("undefined")));
    VG_CHECK(lab.defined() && lab.dim() == 3 && lab.dtype() == DType::Int32 && lab.device().is_cpu(),
             "foreground_intensity_stats: case " << ci << ": expected (Z, Y, X) int32 CPU labels, got "
                                                 << (lab.defined() ? lab.str() : std::string("undefined")));
    const Shape spatial(img.shape().begin() + 1, img.shape().end());
    VG_CHECK(lab.shape() == spatial, "foreground_intensity_stats: case " << ci << ": image " << shape_str(img.shape())
                                                                         << " and labels " << shape_str(lab.shape())
                                                                         << " differ in (Z, Y, X)");
    if (channels < 0) {
      channels = img.size(0);
      pooled.resize(static_cast<std::size_t>(channels));
    }
    VG_CHECK(img.size(0) == channels, "foreground_intensity_stats: case " << ci << " has " << img.size(0)
                                                                          << " channels, case 0 has " << channels);
    const std::int64_t n = lab.numel();
    const std::int32_t* l = lab.data<std::int32_t>();
    for (std::int64_t c = 0; c < channels; ++c) {
      const float* v = img.data<float>() + c * n;
      std::int64_t fg = 0;
      for (std::int64_t i = 0; i < n; ++i) fg += (l[i] > 0 && std::isfinite(v[i])) ? 1 : 0;
      if (fg == 0) continue;
      // Evenly spaced ranks among the usable voxels: sample k is rank floor(k * fg / m).
      const std::int64_t m = std::min(fg, samples_per_case);
      std::vector<double>& out = pooled[static_cast<std::size_t>(c)];
      std::int64_t rank = 0, k = 0;
      auto next_rank = [&](std::int64_t kk) {
        return static_cast<std::int64_t>(static_cast<unsigned __int128>(kk) * static_cast<unsigned __int128>(fg) /
                                         static_cast<unsigned __int128>(m));
      };
      std::int64_t want = next_rank(0);
      for (std::int64_t i = 0; i < n && k < m; ++i) {
        if (!(l[i] > 0 && std::isfinite(v[i]))) continue;
        if (rank == want) {
          out.push_back(v[i]);
          want = next_rank(++k);
        }
        ++rank;
      }
    }
  }

  std::vector<IntensityStats> stats(static_cast<std::size_t>(channels));
  for (std::int64_t c = 0; c < channels; ++c) {
    std::vector<double>& s = pooled[static_cast<std::size_t>(c)];
    VG_INPUT_CHECK(!s.empty(), "ct normalisation: channel "
                                   << c << " has no finite foreground voxel (label > 0) in any of the " << images.size()
                                   << " cases");
    std::sort(s.begin(), s.end());
    IntensityStats& st = stats[static_cast<std::size_t>(c)];
    st.lower = percentile_sorted(s, 0.5);
    st.upper = percentile_sorted(s, 99.5);
    double sum = 0.0;
    for (double& x : s) {
      x = std::clamp(x, st.lower, st.upper);
      sum += x;
    }
    st.mean = sum / static_cast<double>(s.size());
    double sq = 0.0;
    for (double x : s) sq += (x - st.mean) * (x - st.mean);
    st.std = std::sqrt(sq / static_cast<double>(s.size()));
  }
  return stats;
}

void normalize_image(Tensor& image, Normalization scheme, const std::vector<IntensityStats>& ct_stats) {
  VG_CHECK(image.defined(), "normalize_image: the image is undefined");
  VG_CHECK(image.dim() == 4, "normalize_image: expected a (C, Z, Y, X) image, got shape " << shape_str(image.shape()));
  VG_CHECK(image.dtype() == DType::Float32, "normalize_image: expected float32, got " << dtype_name(image.dtype()));
  VG_CHECK(image.device().is_cpu(), "normalize_image: expected a CPU tensor, got " << image.device().str());
  const std::int64_t C = image.size(0), Z = image.size(1), slice = image.size(2) * image.size(3);
  if (scheme == Normalization::CT) {
    // A run's config.json holds the statistics: one edited by hand can disagree with the image.
    VG_INPUT_CHECK(static_cast<std::int64_t>(ct_stats.size()) == C,
                   "ct normalisation needs one IntensityStats per channel: " << ct_stats.size() << " given for " << C
                                                                             << " channels");
    for (std::size_t c = 0; c < ct_stats.size(); ++c) {
      const IntensityStats& s = ct_stats[c];
      VG_INPUT_CHECK(std::isfinite(s.lower) && std::isfinite(s.upper) && s.lower <= s.upper && std::isfinite(s.mean) &&
                         std::isfinite(s.std) && s.std >= 0,
                     "ct normalisation: channel " << c << " statistics (lower " << s.lower << ", upper " << s.upper
                                                  << ", mean " << s.mean << ", std " << s.std
                                                  << ") need finite values, lower <= upper and std >= 0");
    }
  }
  for (std::int64_t c = 0; c < C; ++c) {
    float* v = image.data<float>() + c * Z * slice;
    double lower = -std::numeric_limits<double>::infinity(), upper = std::numeric_limits<double>::infinity();
    double mean = 0.0, std = 1.0;
    if (scheme == Normalization::CT) {
      const IntensityStats& s = ct_stats[static_cast<std::size_t>(c)];
      lower = s.lower;
      upper = s.upper;
      mean = s.mean;
      std = s.std;
    } else {
      const Moments m = nan_moments(v, Z, slice);
      mean = m.mean;
      std = m.std;
    }
    const double inv = 1.0 / std::max(std, kStdFloor);
#pragma omp parallel for schedule(static)
    for (std::int64_t z = 0; z < Z; ++z) {
      for (float* p = v + z * slice; p != v + (z + 1) * slice; ++p) {
        const double clipped = std::clamp(static_cast<double>(*p), lower, upper);
        *p = std::isfinite(*p) ? static_cast<float>((clipped - mean) * inv) : 0.0f;
      }
    }
  }
}

std::uint64_t preprocess_bytes(std::int64_t channels, const Shape3& shape, const Spacing3& spacing,
                               const PreprocessPlan& plan, bool with_label) {
  const std::array<double, 3> extent = resampled_extent(shape, spacing, plan.target_spacing);
  constexpr std::int64_t kFloat = 4, kLabel = 4;  // float32 image, int32 labels
  std::uint64_t bytes = memory::saturating_product({channels, shape[0], shape[1], shape[2], kFloat});
  if (with_label)
    bytes = memory::saturating_add(bytes, memory::saturating_product({shape[0], shape[1], shape[2], kLabel}));
  // 2^62 per axis is already saturation in any product below; the cap keeps the conversion defined.
  constexpr double kCap = 4611686018427387904.0;
  Shape3 grid{};
  for (int a = 0; a < 3; ++a)
    grid[a] = extent[a] >= kCap ? static_cast<std::int64_t>(kCap) : static_cast<std::int64_t>(extent[a]);
  if (grid == shape) return bytes;  // already on the plan's grid: no resampled copies
  bytes = memory::saturating_add(bytes, memory::saturating_product({channels, grid[0], grid[1], grid[2], kFloat}));
  if (with_label)
    bytes = memory::saturating_add(bytes, memory::saturating_product({grid[0], grid[1], grid[2], kLabel}));
  return bytes;
}

void check_preprocess_fits(const std::string& source, std::int64_t channels, const Shape3& shape,
                           const Spacing3& spacing, const PreprocessPlan& plan, bool with_label) {
  check_spacing(source_name(source), spacing);
  check_spacing("the target spacing", plan.target_spacing);
  const std::uint64_t bytes = preprocess_bytes(channels, shape, spacing, plan, with_label);
  const std::array<double, 3> extent = resampled_extent(shape, spacing, plan.target_spacing);
  std::ostringstream what, detail;
  what << source_name(source) << ": resampling from spacing " << xyz_str(spacing) << " mm to the target spacing "
       << xyz_str(plan.target_spacing) << " mm";
  // Whole numbers without an exponent up to 1e15; beyond that the size of the number is the point.
  detail.precision(15);
  detail << "a grid of " << extent[2] << " x " << extent[1] << " x " << extent[0] << " voxels (x, y, z), " << channels
         << (channels == 1 ? " channel" : " channels");
  memory::check_fits(bytes, what.str(), detail.str());
}

PreprocessedCase preprocess_case(const Tensor& image, const Tensor& label, const Spacing3& spacing,
                                 const PreprocessPlan& plan, const std::string& source) {
  VG_CHECK(image.defined(), "preprocess_case: the image is undefined");
  VG_CHECK(image.dim() == 4, "preprocess_case: expected a (C, Z, Y, X) image, got shape " << shape_str(image.shape()));
  VG_CHECK(image.dtype() == DType::Float32, "preprocess_case: expected a float32 image, got "
                                                << dtype_name(image.dtype()));
  VG_CHECK(image.numel() > 0, "preprocess_case: the image " << shape_str(image.shape()) << " holds no voxels");
  VG_CHECK(plan.classes >= 1, "preprocess_case: the plan's classes must be at least 1, got " << plan.classes);
  const Shape3 original{image.size(1), image.size(2), image.size(3)};
  // Before any copy: a spacing far from the plan's must be refused, not attempted.
  check_preprocess_fits(source, image.size(0), original, spacing, plan, label.defined());
  Tensor lab;
  if (label.defined()) {
    VG_CHECK(label.dtype() == DType::Int32,
             "preprocess_case: expected int32 labels, got " << dtype_name(label.dtype()));
    VG_CHECK(label.dim() == 3 && label.size(0) == original[0] && label.size(1) == original[1] &&
                 label.size(2) == original[2],
             "preprocess_case: labels " << shape_str(label.shape()) << " do not match the image's (Z, Y, X) "
                                        << shape3_str(original) << " (image " << shape_str(image.shape()) << ")");
    lab = label.device().is_cpu() ? label.clone() : label.cpu();
    check_labels_in_range(source_name(source) + " (label)", lab, plan.classes);
  }

  PreprocessedCase out;
  out.original_shape = original;
  Tensor work = image.device().is_cpu() ? image.clone() : image.cpu();  // the caller's image stays as it was
  out.health = io::image_health(work);
  normalize_image(work, plan.normalization, plan.ct_stats);
  const Shape3 target = resampled_shape(original, spacing, plan.target_spacing);
  if (target == original) {
    out.image = work;
    out.label = lab;
  } else {
    out.image = resample_image(work, target);
    if (lab.defined()) out.label = resample_labels(lab, target, plan.classes, plan.label_resampling);
  }
  return out;
}

Tensor pad_to_at_least(const Tensor& t, const Shape3& min_shape, double value, Shape3* before) {
  VG_CHECK(t.defined(), "pad_to_at_least: the tensor is undefined");
  VG_CHECK(t.dim() >= 3, "pad_to_at_least: expected at least 3 axes, got shape " << shape_str(t.shape()));
  VG_CHECK(t.device().is_cpu(), "pad_to_at_least: expected a CPU tensor, got " << t.device().str());
  const int r = t.dim();
  Shape3 pad_before{}, padded{};
  bool any = false;
  for (int a = 0; a < 3; ++a) {
    const std::int64_t size = t.size(r - 3 + a);
    const std::int64_t extra = std::max<std::int64_t>(0, min_shape[a] - size);
    pad_before[a] = extra / 2;  // the odd voxel goes after
    padded[a] = size + extra;
    any = any || extra > 0;
  }
  if (before) *before = pad_before;
  if (!any) return t;
  Shape shape = t.shape();
  for (int a = 0; a < 3; ++a) shape[static_cast<std::size_t>(r - 3 + a)] = padded[a];
  Tensor out = empty(shape, t.dtype());
  fill_as(out.raw_data(), out.numel(), t.dtype(), value, "pad_to_at_least");
  copy_block(t, Shape3{0, 0, 0}, out, pad_before, Shape3{t.size(r - 3), t.size(r - 2), t.size(r - 1)});
  return out;
}

Tensor crop_spatial(const Tensor& t, const Shape3& start, const Shape3& shape) {
  VG_CHECK(t.defined(), "crop_spatial: the tensor is undefined");
  VG_CHECK(t.dim() >= 3, "crop_spatial: expected at least 3 axes, got shape " << shape_str(t.shape()));
  VG_CHECK(t.device().is_cpu(), "crop_spatial: expected a CPU tensor, got " << t.device().str());
  const int r = t.dim();
  for (int a = 0; a < 3; ++a) {
    const std::int64_t size = t.size(r - 3 + a);
    VG_CHECK(start[a] >= 0 && shape[a] >= 1 && start[a] + shape[a] <= size,
             "crop_spatial: block at " << shape3_str(start) << " of shape " << shape3_str(shape)
                                       << " does not fit the last three axes of " << shape_str(t.shape()));
  }
  Shape out_shape = t.shape();
  for (int a = 0; a < 3; ++a) out_shape[static_cast<std::size_t>(r - 3 + a)] = shape[a];
  Tensor out = empty(out_shape, t.dtype());
  copy_block(t, start, out, Shape3{0, 0, 0}, shape);
  return out;
}

}  // namespace voxgrad::pipeline
