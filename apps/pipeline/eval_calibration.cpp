// Binning predicted probabilities for eval's calibration numbers. Counts stay integers and sums
// double, so the pooled numbers over many cases are the same whatever order the cases come in.
#include "apps/pipeline/eval_calibration.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace voxgrad::pipeline {

double ClassCalibration::expected_calibration_error() const {
  const std::int64_t n = total_voxels();
  if (n == 0) return std::numeric_limits<double>::quiet_NaN();
  double gap = 0;
  for (int b = 0; b < kBins; ++b) gap += std::abs(static_cast<double>(positives[b]) - probability_sum[b]);
  return gap / static_cast<double>(n);
}

std::int64_t ClassCalibration::total_voxels() const {
  std::int64_t n = 0;
  for (const std::int64_t v : voxels) n += v;
  return n;
}

void ClassCalibration::add(const ClassCalibration& other) {
  for (int b = 0; b < kBins; ++b) {
    voxels[b] += other.voxels[b];
    positives[b] += other.positives[b];
    probability_sum[b] += other.probability_sum[b];
  }
  soft_volume += other.soft_volume;
}

std::vector<ClassCalibration> calibrate(const float* probabilities, const std::int32_t* ref, std::int64_t n,
                                        int classes, std::int64_t* clamped) {
  std::vector<ClassCalibration> out(static_cast<std::size_t>(classes));
  std::int64_t outside = 0;
  for (int k = 0; k < classes; ++k) {
    ClassCalibration& c = out[static_cast<std::size_t>(k)];
    const float* p = probabilities + static_cast<std::int64_t>(k) * n;
    for (std::int64_t i = 0; i < n; ++i) {
      double v = p[i];
      if (v < 0 || v > 1) {
        ++outside;
        v = v < 0 ? 0.0 : 1.0;
      }
      const int b = std::min(static_cast<int>(v * ClassCalibration::kBins), ClassCalibration::kBins - 1);
      c.voxels[b] += 1;
      c.positives[b] += ref[i] == k;
      c.probability_sum[b] += v;
      c.soft_volume += v;
    }
  }
  if (clamped) *clamped = outside;
  return out;
}

}  // namespace voxgrad::pipeline
