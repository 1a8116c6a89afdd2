// nnU-Net v2's sliding-window prediction around a network callback. The tiles are cut from the
// host image and their weighted logits summed on the host over the image's own grid (voxels of the
// padding are never returned, so they need no accumulator), in nnU-Net's tile order, so the float16
// rounding of every partial sum happens where nnU-Net's does.
#include "apps/pipeline/nnunet_sliding_window.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "apps/pipeline/numpy_sum.h"
#include "apps/pipeline/resample.h"
#include "apps/pipeline/window_buffers.h"
#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/float16.h"

namespace voxgrad::pipeline::nnunet {

namespace {

std::int64_t volume_of(const Shape3& s) { return s[0] * s[1] * s[2]; }

// Below this many values a loop runs on one thread: waking the team costs more than the work.
constexpr std::int64_t kParallelMinimum = 1 << 16;

// scipy's _gaussian_kernel1d(sigma, 0, radius): exp(-0.5 / sigma^2 * x^2) for x in [-radius, radius],
// divided by its sum.
std::vector<double> gaussian_kernel(double sigma, std::int64_t radius) {
  const double sigma2 = sigma * sigma;
  const double factor = -0.5 / sigma2;
  std::vector<double> phi;
  for (std::int64_t x = -radius; x <= radius; ++x) phi.push_back(std::exp(factor * static_cast<double>(x * x)));
  const double sum = numpy_pairwise_sum(phi.data(), static_cast<std::int64_t>(phi.size()));
  for (double& p : phi) p = p / sum;
  return phi;
}

std::vector<float> run_network(const TileNetwork& network, const std::vector<float>& tile, std::int64_t channels,
                               std::int64_t classes, const Shape3& patch, Device device) {
  const Tensor x = from_vector(tile, {1, channels, patch[0], patch[1], patch[2]}, device);  // (1, C, d, h, w)
  const Tensor logits = network(x);                                                         // (1, K, d, h, w)
  const Shape expected{1, classes, patch[0], patch[1], patch[2]};
  VG_CHECK(logits.defined() && logits.shape() == expected && logits.dtype() == DType::Float32,
           "sliding_window_logits: the network returned "
               << (logits.defined() ? logits.str() + " " + shape_str(logits.shape()) : std::string("nothing"))
               << " for a tile, expected float32 " << shape_str(expected));
  return logits.device().is_cpu() ? logits.to_vector<float>() : logits.cpu().to_vector<float>();
}

// itertools.combinations of the mirror axes by growing size, as bit sets over (d, h, w).
std::vector<int> mirror_combinations(const std::vector<int>& axes, int axis_offset) {
  std::vector<int> combos;
  const int m = static_cast<int>(axes.size());
  for (int size = 1; size <= m; ++size) {
    std::vector<int> pick(static_cast<std::size_t>(size));
    for (int i = 0; i < size; ++i) pick[i] = i;
    while (true) {
      int bits = 0;
      for (int i : pick) bits |= 1 << (axes[i] + axis_offset);
      combos.push_back(bits);
      int i = size - 1;
      while (i >= 0 && pick[i] == m - size + i) --i;
      if (i < 0) break;
      ++pick[i];
      for (int j = i + 1; j < size; ++j) pick[j] = pick[j - 1] + 1;
    }
  }
  return combos;
}

}  // namespace

std::vector<std::vector<std::int64_t>> sliding_window_steps(const std::vector<std::int64_t>& image_size,
                                                            const std::vector<std::int64_t>& patch,
                                                            double tile_step_size) {
  VG_CHECK(image_size.size() == patch.size(),
           "sliding_window_steps: " << image_size.size() << " image axes, " << patch.size() << " patch axes");
  VG_CHECK(tile_step_size > 0.0 && tile_step_size <= 1.0,
           "sliding_window_steps: tile_step_size " << tile_step_size << " must be in (0, 1]");
  std::vector<std::vector<std::int64_t>> steps;
  for (std::size_t a = 0; a < patch.size(); ++a) {
    VG_CHECK(patch[a] > 0 && image_size[a] >= patch[a], "sliding_window_steps: image size "
                                                            << image_size[a] << " on axis " << a
                                                            << " is smaller than the patch " << patch[a]);
    const double target_step = static_cast<double>(patch[a]) * tile_step_size;
    const auto span = static_cast<double>(image_size[a] - patch[a]);
    const auto count = static_cast<std::int64_t>(std::ceil(span / target_step)) + 1;
    const double actual_step = count > 1 ? span / static_cast<double>(count - 1) : 0.0;
    std::vector<std::int64_t> starts;
    // nearbyint in the default rounding mode rounds halves to even, as np.round does.
    for (std::int64_t i = 0; i < count; ++i)
      starts.push_back(static_cast<std::int64_t>(std::nearbyint(actual_step * static_cast<double>(i))));
    steps.push_back(std::move(starts));
  }
  return steps;
}

Tensor gaussian_importance_map(const std::vector<std::int64_t>& patch, double sigma_scale, double value_scaling_factor,
                               bool float16) {
  VG_CHECK(patch.size() == 2 || patch.size() == 3, "gaussian_importance_map: patch must have 2 or 3 axes");
  for (std::int64_t p : patch) VG_CHECK(p > 0, "gaussian_importance_map: patch size " << p << " must be > 0");
  // scipy filters axis by axis; with one impulse each value is the product of one kernel tap per
  // axis, multiplied in axis order.
  std::vector<std::vector<double>> taps;
  for (std::int64_t p : patch) {
    const double sigma = static_cast<double>(p) * sigma_scale;
    const auto radius = static_cast<std::int64_t>(4.0 * sigma + 0.5);  // truncate = 4
    const std::vector<double> kernel = gaussian_kernel(sigma, radius);
    const std::int64_t centre = p / 2;
    std::vector<double> axis_taps(static_cast<std::size_t>(p), 0.0);
    for (std::int64_t i = 0; i < p; ++i) {
      const std::int64_t d = i - centre;
      if (d >= -radius && d <= radius) axis_taps[i] = kernel[d + radius];
    }
    taps.push_back(std::move(axis_taps));
  }
  if (taps.size() == 2) taps.insert(taps.begin(), std::vector<double>{1.0});
  const Shape3 s{static_cast<std::int64_t>(taps[0].size()), static_cast<std::int64_t>(taps[1].size()),
                 static_cast<std::int64_t>(taps[2].size())};
  std::vector<double> raw(static_cast<std::size_t>(volume_of(s)));
  std::size_t i = 0;
  for (std::int64_t z = 0; z < s[0]; ++z)
    for (std::int64_t y = 0; y < s[1]; ++y)
      for (std::int64_t x = 0; x < s[2]; ++x, ++i) raw[i] = (taps[0][z] * taps[1][y]) * taps[2][x];
  const double divisor = *std::max_element(raw.begin(), raw.end()) / value_scaling_factor;
  std::vector<float> map(raw.size());
  for (std::size_t j = 0; j < raw.size(); ++j) {
    // torch converts float64 to float16 through float32.
    const auto v = static_cast<float>(raw[j] / divisor);
    map[j] = float16 ? round_to_float16(v) : v;
  }
  float smallest = std::numeric_limits<float>::infinity();
  for (float v : map)
    if (v != 0.0f) smallest = std::min(smallest, v);
  for (float& v : map)
    if (v == 0.0f) v = smallest;
  return from_vector(map, Shape(patch.begin(), patch.end()));
}

Tensor sliding_window_logits(const Tensor& image, const TileNetwork& network, const SlidingWindowOptions& options) {
  VG_CHECK(image.defined() && image.dim() == 4 && image.dtype() == DType::Float32 && image.device().is_cpu(),
           "sliding_window_logits: the image must be a (C, Z, Y, X) float32 CPU tensor");
  VG_CHECK(network, "sliding_window_logits: no network given");
  VG_CHECK(options.classes > 0, "sliding_window_logits: options.classes must be > 0");
  const std::size_t dims = options.patch.size();
  VG_CHECK(dims == 2 || dims == 3, "sliding_window_logits: the patch must have 2 or 3 axes, got " << dims);
  const std::int64_t channels = image.size(0), classes = options.classes;
  const Shape3 size{image.size(1), image.size(2), image.size(3)};
  for (int a = 0; a < 3; ++a) VG_CHECK(size[a] > 0, "sliding_window_logits: the image is empty");
  const int offset = 3 - static_cast<int>(dims);  // a 2-D patch covers (h, w) of a depth-1 tile
  Shape3 patch{1, 1, 1};
  for (std::size_t a = 0; a < dims; ++a) patch[a + offset] = options.patch[a];

  // pad_nd_image: at least the patch on the patch's axes, the padding split evenly, the extra voxel after.
  Shape3 padded{}, before{};
  for (int a = 0; a < 3; ++a) {
    padded[a] = a < offset ? size[a] : std::max(size[a], patch[a]);
    before[a] = (padded[a] - size[a]) / 2;
  }
  std::array<std::vector<std::int64_t>, 3> starts;
  {
    const std::vector<std::int64_t> tiled(padded.begin() + offset, padded.end());
    const std::vector<std::vector<std::int64_t>> steps =
        sliding_window_steps(tiled, options.patch, options.tile_step_size);
    for (int a = 0; a < offset; ++a)  // 2-D: every slice
      for (std::int64_t z = 0; z < size[a]; ++z) starts[a].push_back(z);
    for (std::size_t a = 0; a < dims; ++a) starts[a + offset] = steps[a];
  }
  const auto total = static_cast<std::int64_t>(starts[0].size() * starts[1].size() * starts[2].size());

  std::vector<float> gaussian(static_cast<std::size_t>(volume_of(patch)), 1.0f);  // (d, h, w)
  if (options.use_gaussian)
    gaussian = gaussian_importance_map(options.patch, 1.0 / 8, 10.0,
                                       options.float16_accumulation || options.float16_importance_map)
                   .to_vector<float>();
  std::vector<int> mirrorings;
  if (options.use_mirroring) {
    for (int axis : options.mirror_axes)
      VG_CHECK(axis >= 0 && axis < static_cast<int>(dims),
               "sliding_window_logits: mirror axis " << axis << " is not an axis of the patch");
    mirrorings = mirror_combinations(options.mirror_axes, offset);
  }

  const bool f16 = options.float16_accumulation;
  const std::int64_t voxels = volume_of(size), patch_voxels = volume_of(patch);
  std::vector<float> sum(static_cast<std::size_t>(classes * voxels), 0.0f);  // (K, Z, Y, X)
  std::vector<float> weight(static_cast<std::size_t>(voxels), 0.0f);         // (Z, Y, X)
  NoGradGuard no_grad;                                                       // a network's forward records nothing here
  const float* pixels = image.data<float>();
  std::int64_t done = 0;
  for (std::int64_t sz : starts[0])
    for (std::int64_t sy : starts[1])
      for (std::int64_t sx : starts[2]) {
        const std::vector<float> tile = read_window(pixels, channels, size, before, {sz, sy, sx}, patch);
        std::vector<float> logits = run_network(network, tile, channels, classes, patch, options.device);
        if (!mirrorings.empty()) {
          // _internal_maybe_mirror_and_predict: a float32 sum in combination order, then the division.
          for (int axes : mirrorings) {
            const std::vector<float> flipped = run_network(network, flip_window(tile, channels, patch, axes), channels,
                                                           classes, patch, options.device);
            const std::vector<float> back = flip_window(flipped, classes, patch, axes);
            const auto n = static_cast<std::int64_t>(logits.size());
#pragma omp parallel for schedule(static) if (n >= kParallelMinimum)
            for (std::int64_t i = 0; i < n; ++i) logits[i] += back[i];
          }
          const auto count = static_cast<float>(mirrorings.size() + 1);
          for (float& v : logits) v /= count;
        }
        // Add the tile's voxels that lie inside the image (not in the padding).
        const std::int64_t oz = sz - before[0], oy = sy - before[1], ox = sx - before[2];
        const std::int64_t x_lo = std::max<std::int64_t>(0, -ox), x_hi = std::min(patch[2], size[2] - ox);
        // Rows of the tile are disjoint rows of the accumulators: the threads never share a voxel.
#pragma omp parallel for collapse(2) schedule(static) if (classes * patch_voxels >= kParallelMinimum)
        for (std::int64_t z = 0; z < patch[0]; ++z)
          for (std::int64_t y = 0; y < patch[1]; ++y) {
            const std::int64_t iz = oz + z, iy = oy + y;
            if (iz < 0 || iz >= size[0] || iy < 0 || iy >= size[1]) continue;
            const std::int64_t g_row = (z * patch[1] + y) * patch[2];
            const std::int64_t v_row = (iz * size[1] + iy) * size[2] + ox;  // an index: ox may be < 0
            for (std::int64_t x = x_lo; x < x_hi; ++x) {
              // float16 + float16 is computed in float32 and rounded back, as torch does on the CPU.
              const float w = weight[v_row + x] + gaussian[g_row + x];
              weight[v_row + x] = f16 ? round_to_float16(w) : w;
            }
            for (std::int64_t k = 0; k < classes; ++k) {
              const float* l = logits.data() + k * patch_voxels + g_row;
              float* s = sum.data() + k * voxels + v_row;
              for (std::int64_t x = x_lo; x < x_hi; ++x) {
                const float weighted = options.use_gaussian ? l[x] * gaussian[g_row + x] : l[x];
                const float v = s[x] + weighted;
                s[x] = f16 ? round_to_float16(v) : v;
              }
            }
          }
        ++done;
        if (options.on_tile) options.on_tile(done, total);
      }

  Tensor result = empty({classes, size[0], size[1], size[2]});  // (K, Z, Y, X)
  float* out = result.data<float>();
  bool overflow = false;
#pragma omp parallel for collapse(2) schedule(static) reduction(|| : overflow) if (classes * voxels >= kParallelMinimum)
  for (std::int64_t k = 0; k < classes; ++k)
    for (std::int64_t v = 0; v < voxels; ++v) {
      const float q = sum[k * voxels + v] / weight[v];
      out[k * voxels + v] = f16 ? round_to_float16(q) : q;
      overflow = overflow || std::isinf(out[k * voxels + v]);
    }
  // nnU-Net refuses the same way: its float16 sums cannot hold logits this large.
  VG_INPUT_CHECK(!overflow,
                 "the network's logits overflowed the float16 accumulators nnU-Net predicts with "
                 "(values beyond 65504 after weighting); predict with float32 accumulation instead");
  return result;
}

void add_fold_logits(Tensor& sum, const Tensor& fold_logits, bool float16) {
  VG_CHECK(fold_logits.defined() && fold_logits.dtype() == DType::Float32 && fold_logits.device().is_cpu(),
           "add_fold_logits: the logits must be a float32 CPU tensor");
  if (!sum.defined()) {
    sum = fold_logits.clone();
    return;
  }
  VG_CHECK(sum.shape() == fold_logits.shape(), "add_fold_logits: logits " << shape_str(fold_logits.shape())
                                                                          << " do not match the sum's "
                                                                          << shape_str(sum.shape()));
  float* s = sum.data<float>();
  const float* l = fold_logits.data<float>();
  for (std::int64_t i = 0; i < sum.numel(); ++i) s[i] = float16 ? round_to_float16(s[i] + l[i]) : s[i] + l[i];
}

void finish_fold_mean(Tensor& sum, std::int64_t folds, bool float16) {
  VG_CHECK(sum.defined() && sum.dtype() == DType::Float32 && sum.device().is_cpu() && folds > 0,
           "finish_fold_mean: needs the summed float32 CPU logits and a fold count > 0");
  if (folds == 1) return;  // nnU-Net divides only when there are several
  float* s = sum.data<float>();
  const auto n = static_cast<float>(folds);
  for (std::int64_t i = 0; i < sum.numel(); ++i) s[i] = float16 ? round_to_float16(s[i] / n) : s[i] / n;
}

}  // namespace voxgrad::pipeline::nnunet
