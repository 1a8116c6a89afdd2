// Sliding-window inference as nnU-Net v2's predict_sliding_window_return_logits does it: windows at
// evenly spread starts, each window's logits (optionally the mean over the 8 mirrorings) weighted by
// a Gaussian and summed into a whole-volume accumulator, then divided by the summed weights.
#include "apps/pipeline/sliding_window.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "apps/pipeline/window_buffers.h"
#include "engine/autograd.h"

namespace voxgrad::pipeline {

namespace {

// The model's mode for the duration of one prediction: eval, then whatever it was before, also
// when a window throws, so a training loop that validates mid-epoch goes on training.
class EvalModeScope {
 public:
  explicit EvalModeScope(Module& model) : model_(model), was_training_(model.is_training()) { model_.eval(); }
  ~EvalModeScope() { model_.train(was_training_); }
  EvalModeScope(const EvalModeScope&) = delete;
  EvalModeScope& operator=(const EvalModeScope&) = delete;

 private:
  Module& model_;
  bool was_training_;
};

std::int64_t volume_of(const Shape3& s) { return s[0] * s[1] * s[2]; }

// The (K, d, h, w) logits of one (C, d, h, w) window, on the host.
std::vector<float> forward_window(UNet3d& model, const std::vector<float>& window, std::int64_t channels,
                                  const Shape3& patch, Device device) {
  const Tensor x = from_vector(window, {1, channels, patch[0], patch[1], patch[2]}, device);  // (1, C, d, h, w)
  const Tensor logits = model.forward(x);                                                     // (1, K, d, h, w)
  const Shape expected{1, model.config().classes, patch[0], patch[1], patch[2]};
  VG_CHECK(logits.shape() == expected, "sliding_window_logits: the model returned " << shape_str(logits.shape())
                                                                                    << " for a window, expected "
                                                                                    << shape_str(expected));
  return logits.to_vector<float>();
}

}  // namespace

std::vector<float> gaussian_importance_map(const Shape3& patch) {
  for (int a = 0; a < 3; ++a)
    VG_CHECK(patch[a] > 0, "gaussian_importance_map: patch size " << patch[a] << " on axis " << a << " must be > 0");
  // Separable: the 3-D Gaussian is the product of one 1-D profile per axis.
  std::array<std::vector<double>, 3> profile;
  for (int a = 0; a < 3; ++a) {
    const double sigma = static_cast<double>(patch[a]) / 8.0;
    const double centre = static_cast<double>(patch[a] - 1) / 2.0;
    for (std::int64_t i = 0; i < patch[a]; ++i) {
      const double d = static_cast<double>(i) - centre;
      profile[a].push_back(std::exp(-d * d / (2.0 * sigma * sigma)));
    }
  }
  // Even sizes put the centre between voxels, so the largest value is below 1 before scaling.
  double peak = 1.0;
  for (int a = 0; a < 3; ++a) peak *= *std::max_element(profile[a].begin(), profile[a].end());
  std::vector<float> map(static_cast<std::size_t>(volume_of(patch)));  // (d, h, w)
  float smallest = std::numeric_limits<float>::max();
  std::size_t i = 0;
  for (std::int64_t z = 0; z < patch[0]; ++z)
    for (std::int64_t y = 0; y < patch[1]; ++y)
      for (std::int64_t x = 0; x < patch[2]; ++x, ++i) {
        map[i] = static_cast<float>(profile[0][z] * profile[1][y] * profile[2][x] / peak);
        if (map[i] > 0.0f) smallest = std::min(smallest, map[i]);
      }
  for (float& v : map)
    if (v == 0.0f) v = smallest;
  return map;
}

std::vector<std::int64_t> sliding_window_starts(std::int64_t size, std::int64_t patch, double overlap) {
  VG_CHECK(patch > 0, "sliding_window_starts: patch size " << patch << " must be > 0");
  VG_CHECK(size >= patch, "sliding_window_starts: size " << size << " is smaller than the patch " << patch
                                                         << " (pad the image first)");
  VG_CHECK(overlap >= 0.0 && overlap < 1.0, "sliding_window_starts: overlap " << overlap << " must be in [0, 1)");
  const double target_step = static_cast<double>(patch) * (1.0 - overlap);
  const std::int64_t span = size - patch;
  const auto count = static_cast<std::int64_t>(std::ceil(static_cast<double>(span) / target_step)) + 1;
  std::vector<std::int64_t> starts;
  if (count == 1) return {0};
  const double step = static_cast<double>(span) / static_cast<double>(count - 1);
  // nearbyint in the default rounding mode rounds halves to even, as numpy's np.round does.
  for (std::int64_t i = 0; i < count; ++i)
    starts.push_back(static_cast<std::int64_t>(std::nearbyint(step * static_cast<double>(i))));
  return starts;
}

Tensor sliding_window_logits(UNet3d& model, const Tensor& image, const SlidingWindowOptions& options, Device device) {
  VG_CHECK(image.defined(), "sliding_window_logits: the image is an undefined tensor");
  VG_CHECK(image.dim() == 4, "sliding_window_logits: image " << shape_str(image.shape()) << " must be (C, Z, Y, X)");
  VG_CHECK(image.dtype() == DType::Float32,
           "sliding_window_logits: image must be float32, got " << dtype_name(image.dtype()));
  VG_CHECK(image.device().is_cpu(), "sliding_window_logits: image must be on the CPU, got " << image.device().str());
  const std::int64_t channels = image.size(0);
  VG_CHECK(channels == model.config().in_channels, "sliding_window_logits: image "
                                                       << shape_str(image.shape()) << " has " << channels
                                                       << " channels, the model takes " << model.config().in_channels);
  const Shape3 size{image.size(1), image.size(2), image.size(3)};
  for (int a = 0; a < 3; ++a)
    VG_CHECK(size[a] > 0, "sliding_window_logits: image " << shape_str(image.shape()) << " is empty");
  VG_CHECK(options.overlap >= 0.0 && options.overlap < 1.0,
           "sliding_window_logits: overlap " << options.overlap << " must be in [0, 1)");
  const Shape3& patch = options.patch;
  // The model's own message says which patch sizes its downsamplings accept.
  model.check_input({1, channels, patch[0], patch[1], patch[2]});
  const std::vector<Tensor> params = model.parameters();
  VG_CHECK(params.empty() || params.front().device() == device, "sliding_window_logits: the model's parameters are on "
                                                                    << params.front().device().str() << ", not on "
                                                                    << device.str() << " (move it with model.to)");

  // Padded grid: at least the patch on every axis, the padding split evenly, the extra voxel after.
  Shape3 padded{}, before{};
  std::array<std::vector<std::int64_t>, 3> starts;
  for (int a = 0; a < 3; ++a) {
    padded[a] = std::max(size[a], patch[a]);
    before[a] = (padded[a] - size[a]) / 2;
    starts[a] = sliding_window_starts(padded[a], patch[a], options.overlap);
  }
  const std::int64_t total = static_cast<std::int64_t>(starts[0].size() * starts[1].size() * starts[2].size());

  const std::vector<float> gaussian = gaussian_importance_map(patch);  // (d, h, w)
  const std::int64_t classes = model.config().classes;
  const std::int64_t voxels = volume_of(size), patch_voxels = volume_of(patch);
  // Accumulated on the host in float32 over the image's own grid: voxels of the padding are never
  // returned, so they need no accumulator (nnU-Net keeps the padded accumulator on the GPU when it
  // fits; host memory keeps large volumes possible and the per-window copy is small beside a forward).
  Tensor result = zeros({classes, size[0], size[1], size[2]});  // (K, Z, Y, X)
  float* sum = result.data<float>();
  std::vector<float> weight(static_cast<std::size_t>(voxels), 0.0f);  // (Z, Y, X)

  EvalModeScope eval_mode(model);
  NoGradGuard no_grad;
  const float* pixels = image.data<float>();
  std::int64_t done = 0;
  for (std::int64_t sz : starts[0])
    for (std::int64_t sy : starts[1])
      for (std::int64_t sx : starts[2]) {
        const Shape3 start{sz, sy, sx};
        const std::vector<float> window = read_window(pixels, channels, size, before, start, patch);  // (C, d, h, w)
        std::vector<float> logits = forward_window(model, window, channels, patch, device);           // (K, d, h, w)
        if (options.mirror) {
          // nnU-Net's test-time mirroring: the mean over every subset of the three axes flipped.
          for (int axes = 1; axes < 8; ++axes) {
            const std::vector<float> flipped =
                forward_window(model, flip_window(window, channels, patch, axes), channels, patch, device);
            const std::vector<float> back = flip_window(flipped, classes, patch, axes);
            for (std::size_t i = 0; i < logits.size(); ++i) logits[i] += back[i];
          }
          for (float& v : logits) v /= 8.0f;
        }
        // Add the window's voxels that lie inside the image (not in the padding).
        const std::int64_t oz = sz - before[0], oy = sy - before[1], ox = sx - before[2];
        const std::int64_t x_lo = std::max<std::int64_t>(0, -ox), x_hi = std::min(patch[2], size[2] - ox);
        for (std::int64_t z = 0; z < patch[0]; ++z) {
          const std::int64_t iz = oz + z;
          if (iz < 0 || iz >= size[0]) continue;
          for (std::int64_t y = 0; y < patch[1]; ++y) {
            const std::int64_t iy = oy + y;
            if (iy < 0 || iy >= size[1]) continue;
            const std::int64_t g_row = (z * patch[1] + y) * patch[2];
            const std::int64_t v_row = (iz * size[1] + iy) * size[2] + ox;
            for (std::int64_t x = x_lo; x < x_hi; ++x) weight[v_row + x] += gaussian[g_row + x];
            for (std::int64_t k = 0; k < classes; ++k) {
              const float* l = logits.data() + k * patch_voxels + g_row;
              const std::int64_t s = k * voxels + v_row;  // an index: v_row may be negative (ox < 0)
              for (std::int64_t x = x_lo; x < x_hi; ++x) sum[s + x] += l[x] * gaussian[g_row + x];
            }
          }
        }
        ++done;
        if (options.on_window) options.on_window(done, total);
      }

  // Every voxel lies in at least one window and the Gaussian has no zeros, so no weight is 0.
  for (std::int64_t k = 0; k < classes; ++k)
    for (std::int64_t v = 0; v < voxels; ++v) sum[k * voxels + v] /= weight[v];
  return result;
}

}  // namespace voxgrad::pipeline
