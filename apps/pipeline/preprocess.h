// nnU-Net's preprocessing of one case, shared by training and inference: intensity normalisation
// (per-case z-score, or `ct`: clip to the foreground 0.5-99.5 percentiles and a global z-score),
// non-finite voxels (NaN, ±Inf) left out of every statistic and set to 0, then resampling to the
// plan's target spacing, checked against the machine's memory first. Also the dataset-level
// statistics the plan is made of, and the padding to a patch size.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "io/image_health.h"
#include "apps/pipeline/resample.h"

namespace voxgrad::pipeline {

enum class Normalization {
  ZScore,  // per case and channel: (v - mean) / max(std, 1e-8) over the finite voxels
  CT,      // clip to [lower, upper] of the dataset's foreground intensities, then (v - mean) / max(std, 1e-8)
};
Normalization parse_normalization(const std::string& name);  // "zscore", "ct"; an Error lists the choices
const char* normalization_name(Normalization n);

// One channel's dataset-wide foreground statistics (the `ct` scheme): the 0.5 and 99.5 percentiles
// of the sampled foreground intensities, and the mean and standard deviation of those samples after
// clipping to them.
struct IntensityStats {
  double lower = 0.0, upper = 0.0, mean = 0.0, std = 1.0;
};

// What training decided and inference repeats.
struct PreprocessPlan {
  Spacing3 target_spacing{1.0, 1.0, 1.0};  // z, y, x in mm
  Normalization normalization = Normalization::ZScore;
  std::vector<IntensityStats> ct_stats;  // one per channel when normalization is CT, else empty
  int classes = 2;                       // label values 0 .. classes-1
  LabelResampling label_resampling = LabelResampling::OneHotLinear;
};

// A NIfTI spacing list (pixdim[1..], x first, as Volume::spacing and NiftiHeader::spacing() give it)
// in tensor order (z, y, x); 1 mm for axes the list lacks (2-D images).
Spacing3 spacing_zyx(const std::vector<double>& pixdim);

// The per-axis median of the cases' spacings (z, y, x), nnU-Net's default target spacing.
Spacing3 median_spacing(const std::vector<Spacing3>& spacings);

// Dataset foreground statistics per channel from images (C, Z, Y, X) float32 and labels (Z, Y, X)
// int32 (voxels with label > 0 are foreground; NaN and infinite voxels are skipped). At most
// `samples_per_case` voxels per case enter, taken evenly spaced over its foreground voxels, so
// the result does not depend on thread count. Throws InputError when no case has a finite
// foreground voxel in some channel.
std::vector<IntensityStats> foreground_intensity_stats(const std::vector<Tensor>& images,
                                                       const std::vector<Tensor>& labels,
                                                       std::int64_t samples_per_case = 10000);

// In place on a (C, Z, Y, X) float32 CPU tensor: the scheme per channel over the finite voxels,
// then every non-finite voxel (NaN, +Inf, -Inf) -> 0, so one Inf cannot turn a whole case into
// NaN. A channel with no finite voxel becomes 0. `ct_stats` must hold C entries for CT.
void normalize_image(Tensor& image, Normalization scheme, const std::vector<IntensityStats>& ct_stats = {});

// A case on the plan's grid.
struct PreprocessedCase {
  Tensor image;  // (C, Z', Y', X') float32, normalised, every voxel finite
  Tensor label;  // (Z', Y', X') int32, undefined when no label was given
  Shape3 original_shape{};  // (Z, Y, X) before resampling: where predictions go back to
  // The input image's voxels per channel: non-finite counts, channels with no finite voxel or zero
  // variance. preprocess_case prints nothing: the caller, who knows the files, turns this into
  // warnings (health_warnings) or refuses the case (health_problems).
  std::vector<io::ChannelHealth> health;
};

// Normalises a copy of `image` (C, Z, Y, X) float32 (the input is left untouched), then resamples
// image and label (Z, Y, X) int32 (may be undefined) from `spacing` (z, y, x) to the plan's spacing.
// `source` names the case's file in errors ("" says "the image"). InputError, before anything
// large is allocated, when the spacing is not positive and finite, a label is outside
// [0, plan.classes) (naming the value and voxel), or the work would not fit in memory
// (check_preprocess_fits).
PreprocessedCase preprocess_case(const Tensor& image, const Tensor& label, const Spacing3& spacing,
                                 const PreprocessPlan& plan, const std::string& source = "");

// Bytes preprocess_case allocates for an image of `channels` x `shape` (z, y, x) at `spacing`
// (z, y, x): the normalised copy, the label copy, and both resampled to the plan's grid; saturated
// at UINT64_MAX when the grid is absurd (never wrapped).
std::uint64_t preprocess_bytes(std::int64_t channels, const Shape3& shape, const Spacing3& spacing,
                               const PreprocessPlan& plan, bool with_label);

// Throws InputError when preprocess_bytes exceeds the memory this machine has available, e.g.
//   "CASE.nii.gz: resampling from spacing (0.001, 0.001, 0.001) mm to the target spacing (1, 1, 1)
//    mm would need 13.8 TiB (a grid of ... voxels (x, y, z), 1 channel), more than the 21.5 GiB
//    this machine has available"
// (spacings in NIfTI's x, y, z order, as the header shows them). Needs only the header's dims and
// spacing, so a command can call it before it reads any voxel; preprocess_case calls it too.
void check_preprocess_fits(const std::string& source, std::int64_t channels, const Shape3& shape,
                           const Spacing3& spacing, const PreprocessPlan& plan, bool with_label);

// Pads the last three axes of `t` (any leading axes, any dtype) with `value` up to at least
// `min_shape`, split evenly before and after (the extra voxel after); returns `t` itself when no
// axis is smaller. `before` (optional) receives the padding in front of each axis, for cropping back.
Tensor pad_to_at_least(const Tensor& t, const Shape3& min_shape, double value, Shape3* before = nullptr);

// The inverse: the block of the last three axes starting at `start` with `shape` (a copy).
Tensor crop_spatial(const Tensor& t, const Shape3& start, const Shape3& shape);

}  // namespace voxgrad::pipeline
