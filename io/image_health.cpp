// Counting non-finite voxels and finding unusable channels (none finite, or one value everywhere),
// and the plain-words lines a command prints for them. Counts, minima and maxima do not depend on
// the order of summation, so per-slice parts give the same result for any thread count.
#include "io/image_health.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "engine/error.h"

namespace voxgrad::io {

ChannelHealth channel_health(const float* values, std::int64_t n) {
  // Blocks of a fixed size, independent of the thread count, merged in order.
  constexpr std::int64_t kBlock = 1 << 16;
  const std::int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<ChannelHealth> parts(static_cast<std::size_t>(blocks));
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < blocks; ++b) {
    ChannelHealth h;
    double lo = 0.0, hi = 0.0;
    for (const float* p = values + b * kBlock; p != values + std::min(n, (b + 1) * kBlock); ++p) {
      if (!std::isfinite(*p)) {
        ++h.non_finite;
        continue;
      }
      const double v = *p;
      lo = h.finite == 0 ? v : std::min(lo, v);
      hi = h.finite == 0 ? v : std::max(hi, v);
      ++h.finite;
    }
    h.min = lo;
    h.max = hi;
    parts[static_cast<std::size_t>(b)] = h;
  }
  ChannelHealth total;
  for (const ChannelHealth& h : parts) {
    total.non_finite += h.non_finite;
    if (h.finite == 0) continue;
    total.min = total.finite == 0 ? h.min : std::min(total.min, h.min);
    total.max = total.finite == 0 ? h.max : std::max(total.max, h.max);
    total.finite += h.finite;
  }
  return total;
}

std::vector<ChannelHealth> image_health(const Tensor& image) {
  VG_CHECK(image.defined() && image.dim() == 4 && image.dtype() == DType::Float32 && image.device().is_cpu(),
           "image_health: expected a (C, Z, Y, X) float32 CPU image, got "
               << (image.defined() ? image.str() : std::string("undefined")));
  const std::int64_t channels = image.size(0), per_channel = image.numel() / std::max<std::int64_t>(1, channels);
  std::vector<ChannelHealth> health;
  for (std::int64_t c = 0; c < channels; ++c)
    health.push_back(channel_health(image.data<float>() + c * per_channel, per_channel));
  return health;
}

std::string channel_source(const std::vector<std::string>& files, std::size_t channel, std::size_t channels) {
  if (files.size() == channels && channel < files.size()) return files[channel];
  const std::string file = files.empty() ? std::string("the image") : files[0];
  return channels == 1 ? file : file + " channel " + std::to_string(channel);
}

namespace {

std::string voxels(std::int64_t n) { return std::to_string(n) + (n == 1 ? " voxel" : " voxels"); }

// The problem of one channel, or "" when it is usable.
std::string problem_of(const ChannelHealth& h, const std::string& source) {
  if (h.no_finite()) return source + ": no finite voxel (all " + std::to_string(h.non_finite) + " are NaN or infinite)";
  if (h.constant()) {
    std::ostringstream os;
    os << source << ": every finite voxel holds the same value (" << h.min
       << "): zero variance, the channel carries no information";
    return os.str();
  }
  return "";
}

}  // namespace

std::vector<std::string> health_warnings(const std::vector<ChannelHealth>& health,
                                         const std::vector<std::string>& files) {
  std::vector<std::string> lines;
  for (std::size_t c = 0; c < health.size(); ++c) {
    const ChannelHealth& h = health[c];
    const std::string source = channel_source(files, c, health.size());
    if (h.non_finite > 0 && !h.no_finite())
      lines.push_back(source + ": " + std::to_string(h.non_finite) + " of " + voxels(h.finite + h.non_finite) +
                      " are not finite (NaN or infinite); they are left out of the intensity statistics and set to 0");
    if (std::string p = problem_of(h, source); !p.empty()) lines.push_back(std::move(p));
  }
  return lines;
}

std::vector<std::string> health_problems(const std::vector<ChannelHealth>& health,
                                         const std::vector<std::string>& files) {
  std::vector<std::string> lines;
  for (std::size_t c = 0; c < health.size(); ++c)
    if (std::string p = problem_of(health[c], channel_source(files, c, health.size())); !p.empty())
      lines.push_back(std::move(p));
  return lines;
}

}  // namespace voxgrad::io
