// Calibration of predicted probabilities against a reference, one class against the rest: voxels
// binned by the probability given to the class (15 equal-width bins over [0, 1]), the expected
// calibration error over those bins, and the soft volume (the probabilities' sum).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace voxgrad::pipeline {

struct ClassCalibration {
  static constexpr int kBins = 15;
  // Bin b holds probabilities in [b/15, (b+1)/15), the last one 1 too.
  std::array<std::int64_t, kBins> voxels{};
  std::array<std::int64_t, kBins> positives{};  // voxels whose reference is the class
  std::array<double, kBins> probability_sum{};
  double soft_volume = 0;  // sum of the class's probability over every voxel

  // ECE = sum over bins of (voxels_b / N) * |positives_b / voxels_b - mean probability_b|
  //     = (1 / N) * sum over bins of |positives_b - probability_sum_b|; NaN for no voxels.
  double expected_calibration_error() const;
  std::int64_t total_voxels() const;
  // Pools another set of voxels (other cases) into these bins.
  void add(const ClassCalibration& other);
};

// Per class 0..K-1: `probabilities` (K, N) float32 scored against `ref` (N); a probability outside
// [0, 1] counts as the nearest end. `clamped` (may be null) receives how many values were outside.
// Every value must be finite (the caller checks).
std::vector<ClassCalibration> calibrate(const float* probabilities, const std::int32_t* ref, std::int64_t n,
                                        int classes, std::int64_t* clamped = nullptr);

}  // namespace voxgrad::pipeline
