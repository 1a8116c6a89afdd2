// The per-class gradient statistics of `voxgrad grad`: one pass over the labels for the boundary
// mask, one pass over the gradient per channel, all sums in double.
#include "apps/pipeline/grad_stats.h"

#include <cmath>
#include <limits>

#include "engine/error.h"

namespace voxgrad::pipeline {

std::vector<std::uint8_t> inner_boundary(const std::vector<std::int32_t>& labels, const GradGeometry& g,
                                         std::optional<std::int32_t> ignore_label) {
  const std::int64_t S = g.voxels();
  VG_CHECK(static_cast<std::int64_t>(labels.size()) == g.images * S,
           "inner_boundary: " << labels.size() << " labels for " << g.images << " images of " << S << " voxels");
  std::vector<std::uint8_t> mask(labels.size(), 0);
  auto ignored = [&](std::int32_t l) { return ignore_label && l == *ignore_label; };
  for (std::int64_t n = 0; n < g.images; ++n) {
    const std::int32_t* y = labels.data() + n * S;  // one image: neighbours never cross into the next
    std::uint8_t* m = mask.data() + n * S;
    for (std::int64_t z = 0; z < g.depth; ++z)
      for (std::int64_t r = 0; r < g.height; ++r)
        for (std::int64_t x = 0; x < g.width; ++x) {
          const std::int64_t i = (z * g.height + r) * g.width + x;
          const std::int32_t l = y[i];
          if (ignored(l)) continue;
          auto differs = [&](std::int64_t j) { return !ignored(y[j]) && y[j] != l; };
          const bool edge = (x > 0 && differs(i - 1)) || (x + 1 < g.width && differs(i + 1)) ||
                            (r > 0 && differs(i - g.width)) || (r + 1 < g.height && differs(i + g.width)) ||
                            (z > 0 && differs(i - g.height * g.width)) ||
                            (z + 1 < g.depth && differs(i + g.height * g.width));
          m[i] = edge ? 1 : 0;
        }
  }
  return mask;
}

std::vector<ClassGradStats> gradient_stats(const std::vector<double>& grad, const std::vector<std::int32_t>& labels,
                                           const GradGeometry& g, std::optional<std::int32_t> ignore_label,
                                           const std::vector<std::int64_t>& channel_label) {
  const std::int64_t S = g.voxels(), K = g.channels;
  VG_CHECK(static_cast<std::int64_t>(grad.size()) == g.images * K * S,
           "gradient_stats: " << grad.size() << " gradient values for shape (" << g.images << ", " << K << ", "
                              << g.depth << ", " << g.height << ", " << g.width << ")");
  VG_CHECK(channel_label.empty() || static_cast<std::int64_t>(channel_label.size()) == K,
           "gradient_stats: " << channel_label.size() << " channel labels for " << K << " channels");
  const std::vector<std::uint8_t> edge = inner_boundary(labels, g, ignore_label);

  std::vector<ClassGradStats> stats(static_cast<std::size_t>(K));
  for (std::int64_t c = 0; c < K; ++c) {
    ClassGradStats& st = stats[static_cast<std::size_t>(c)];
    st.channel = c;
    st.label = channel_label.empty() ? c : channel_label[static_cast<std::size_t>(c)];
    double in = 0, out = 0, bd = 0;
    for (std::int64_t n = 0; n < g.images; ++n) {
      const double* gc = grad.data() + (n * K + c) * S;  // ∂loss/∂z_c of image n
      const std::int32_t* y = labels.data() + n * S;
      const std::uint8_t* e = edge.data() + n * S;
      for (std::int64_t i = 0; i < S; ++i) {
        if (ignore_label && y[i] == *ignore_label) continue;
        const double a = std::fabs(gc[i]);
        if (y[i] == st.label) {
          in += a;
          ++st.voxels;
          if (e[i]) {
            bd += a;
            ++st.boundary_voxels;
          }
        } else {
          out += a;
          ++st.outside_voxels;
        }
      }
    }
    constexpr double nan = std::numeric_limits<double>::quiet_NaN();
    st.inside = st.voxels > 0 ? in / static_cast<double>(st.voxels) : nan;
    st.outside = st.outside_voxels > 0 ? out / static_cast<double>(st.outside_voxels) : nan;
    st.boundary = st.boundary_voxels > 0 ? bd / static_cast<double>(st.boundary_voxels) : nan;
  }
  return stats;
}

}  // namespace voxgrad::pipeline
