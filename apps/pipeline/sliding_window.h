// Whole-volume inference with a patch-trained network, as nnU-Net does it: overlapping windows,
// each window's logits weighted by a Gaussian importance map (sigma = patch / 8, so a voxel counts
// most from the window it sits in the middle of), optional mirroring test-time augmentation
// (the mean over the 8 flips of the three axes), the weighted sum divided by the summed weights.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "engine/device.h"
#include "engine/tensor.h"
#include "apps/pipeline/resample.h"
#include "models/unet3d.h"

namespace voxgrad::pipeline {

// Gaussian importance map over a patch (D, H, W), row-major: exp(-d^2 / (2 sigma^2)) per axis with
// sigma = size / 8 around the patch centre ((size - 1) / 2), scaled to a maximum of 1; values that
// underflow to 0 are raised to the smallest nonzero value so no voxel divides by 0.
std::vector<float> gaussian_importance_map(const Shape3& patch);

// Window start positions along one axis, nnU-Net's compute_steps_for_sliding_window: with
// target step patch * (1 - overlap), ceil((size - patch) / step) + 1 windows spread evenly from 0
// to size - patch. Requires size >= patch and overlap in [0, 1).
std::vector<std::int64_t> sliding_window_starts(std::int64_t size, std::int64_t patch, double overlap);

struct SlidingWindowOptions {
  Shape3 patch{64, 64, 64};
  double overlap = 0.5;
  bool mirror = false;  // test-time augmentation over the 8 flips
  // Called after each window with (windows done, windows total); may be empty.
  std::function<void(std::int64_t, std::int64_t)> on_window;
};

// The network's logits for a whole (C, Z, Y, X) float32 CPU image: (K, Z, Y, X) float32 on the CPU.
// Images smaller than the patch are padded with 0 and the result cropped back. Runs under
// NoGradGuard with the model in eval mode (restored afterwards) on the model's device `device`.
Tensor sliding_window_logits(UNet3d& model, const Tensor& image, const SlidingWindowOptions& options,
                             Device device);

}  // namespace voxgrad::pipeline
