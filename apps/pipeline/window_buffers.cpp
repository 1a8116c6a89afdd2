// Window cutting and mirroring, OpenMP over channels and rows once a window is large enough to pay
// for waking the threads.
#include "apps/pipeline/window_buffers.h"

#include <algorithm>

namespace voxgrad::pipeline {

namespace {

// Below this many values a loop runs on one thread: waking the team costs more than the work.
constexpr std::int64_t kParallelMinimum = 1 << 16;

std::int64_t volume_of(const Shape3& s) { return s[0] * s[1] * s[2]; }

}  // namespace

std::vector<float> read_window(const float* image, std::int64_t channels, const Shape3& size, const Shape3& before,
                               const Shape3& start, const Shape3& patch) {
  std::vector<float> window(static_cast<std::size_t>(channels * volume_of(patch)), 0.0f);
  const std::int64_t oz = start[0] - before[0], oy = start[1] - before[1], ox = start[2] - before[2];
  const std::int64_t x_lo = std::max<std::int64_t>(0, -ox), x_hi = std::min(patch[2], size[2] - ox);
  const bool parallel = channels * volume_of(patch) >= kParallelMinimum;
#pragma omp parallel for collapse(3) schedule(static) if (parallel)
  for (std::int64_t c = 0; c < channels; ++c)
    for (std::int64_t z = 0; z < patch[0]; ++z)
      for (std::int64_t y = 0; y < patch[1]; ++y) {
        const std::int64_t iz = oz + z, iy = oy + y;
        if (iz < 0 || iz >= size[0] || iy < 0 || iy >= size[1]) continue;
        // An index, not a row pointer moved by ox: ox < 0 would point before the array.
        const std::int64_t src = ((c * size[0] + iz) * size[1] + iy) * size[2] + ox;
        float* dst = window.data() + ((c * patch[0] + z) * patch[1] + y) * patch[2];
        for (std::int64_t x = x_lo; x < x_hi; ++x) dst[x] = image[src + x];
      }
  return window;
}

std::vector<float> flip_window(const std::vector<float>& x, std::int64_t channels, const Shape3& s, int axes) {
  std::vector<float> out(x.size());
  const bool fz = axes & 1, fy = axes & 2, fx = axes & 4;
  const bool parallel = static_cast<std::int64_t>(x.size()) >= kParallelMinimum;
#pragma omp parallel for collapse(3) schedule(static) if (parallel)
  for (std::int64_t c = 0; c < channels; ++c)
    for (std::int64_t z = 0; z < s[0]; ++z)
      for (std::int64_t y = 0; y < s[1]; ++y) {
        const std::int64_t tz = fz ? s[0] - 1 - z : z, ty = fy ? s[1] - 1 - y : y;
        const float* src = x.data() + ((c * s[0] + z) * s[1] + y) * s[2];
        float* dst = out.data() + ((c * s[0] + tz) * s[1] + ty) * s[2];
        for (std::int64_t i = 0; i < s[2]; ++i) dst[fx ? s[2] - 1 - i : i] = src[i];
      }
  return out;
}

}  // namespace voxgrad::pipeline
