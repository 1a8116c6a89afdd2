// nnU-Net v2's sliding-window prediction (nnUNetPredictor.predict_sliding_window_return_logits) with
// the network as a callback: the padding to the patch size, the tile starts, the Gaussian importance
// map, test-time mirroring, the weighted accumulation and the division, in nnU-Net's order and, by
// default, with its float16 accumulators, so the logits match nnU-Net's bit for bit when the
// network's do. 2-D configurations predict slice by slice with depth-1 tiles.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "engine/device.h"
#include "engine/tensor.h"

namespace voxgrad::pipeline::nnunet {

// nnU-Net's compute_steps_for_sliding_window: per axis, ceil((size - patch) / (patch * step)) + 1
// starts spread evenly from 0 to size - patch, rounded half to even. Needs size >= patch and
// tile_step_size in (0, 1].
std::vector<std::vector<std::int64_t>> sliding_window_steps(const std::vector<std::int64_t>& image_size,
                                                            const std::vector<std::int64_t>& patch,
                                                            double tile_step_size);

// nnU-Net's compute_gaussian over a patch of 2 or 3 axes: scipy's gaussian_filter (sigma = patch *
// sigma_scale, truncated at 4 sigma) of a unit impulse at patch // 2, scaled to a maximum of
// value_scaling_factor, zeros raised to the smallest nonzero value. nnU-Net keeps it in float16
// (`float16` true: the values are rounded to float16 before the zero fix); the result is float32
// with the patch's shape.
Tensor gaussian_importance_map(const std::vector<std::int64_t>& patch, double sigma_scale = 1.0 / 8,
                               double value_scaling_factor = 10.0, bool float16 = true);

// The network: (1, C, pz, py, px) in, (1, K, pz, py, px) float32 logits out (pz = 1 for 2-D patches),
// on the device the options name; a 2-D network reshapes to (1, C, py, px) itself. Put it in eval
// mode; sliding_window_logits runs it under NoGradGuard.
using TileNetwork = std::function<Tensor(const Tensor& tile)>;

struct SlidingWindowOptions {
  // plans.json's patch_size as it is: 3 entries (z, y, x), or 2 (y, x) for a 2-D configuration, which
  // predicts slice by slice. Not [1, y, x]: a depth-1 3-D patch gets other tile starts and weights.
  std::vector<std::int64_t> patch;
  double tile_step_size = 0.5;
  bool use_gaussian = true;
  // Test-time mirroring: every non-empty combination of these axes (indices into `patch`, as
  // allowed_mirroring_axes), the flipped predictions flipped back and averaged with the plain one.
  bool use_mirroring = false;
  std::vector<int> mirror_axes;
  // nnU-Net 2.8.1 keeps the summed logits, the summed weights and the Gaussian in float16 on every
  // device (CPU included) and so rounds each tile's sum; true repeats that rounding exactly, false
  // accumulates in float32 (closer to the exact sums, not nnU-Net's bits).
  bool float16_accumulation = true;
  // The Gaussian as nnU-Net defines it, in float16: its smallest weights (a tile's corners) are
  // quantised and raised to the smallest nonzero value, which decides how overlapping tiles blend
  // there, by far more than a float16 step. False: the float32 Gaussian (not nnU-Net's blend).
  // float16_accumulation implies it.
  bool float16_importance_map = true;
  Device device = Device::cpu();  // where tiles are given to the network
  int classes = 0;                // K, the network's output channels
  // Called after each tile with (tiles done, tiles total); may be empty.
  std::function<void(std::int64_t, std::int64_t)> on_tile;
};

// The logits for a whole preprocessed (C, Z, Y, X) float32 CPU image: (K, Z, Y, X) float32 on the
// CPU. An image smaller than the patch is padded with 0 (pad_nd_image: the padding split evenly, the
// extra voxel after) and the result cropped back. Tiles are cut and accumulated on the host; only
// the network runs on options.device. With float16_accumulation every value is a float16 value.
Tensor sliding_window_logits(const Tensor& image, const TileNetwork& network, const SlidingWindowOptions& options);

// Ensembles (several folds' logits of one case) as nnU-Net's predict_logits_from_preprocessed_data
// averages them: add each fold's logits into `sum` (undefined before the first), then divide by the
// fold count. With float16 true every addition and the division round to float16, as nnU-Net's
// float16 logits do.
void add_fold_logits(Tensor& sum, const Tensor& fold_logits, bool float16 = true);
void finish_fold_mean(Tensor& sum, std::int64_t folds, bool float16 = true);

}  // namespace voxgrad::pipeline::nnunet
