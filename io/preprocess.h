// nnU-Net's preprocessing of one case, shared by training and inference: intensity normalisation
// (per-case z-score, or `ct`: clip to the foreground 0.5-99.5 percentiles and a global z-score),
// NaN voxels left out of every statistic and set to 0, then resampling to the plan's target
// spacing. Also the dataset-level statistics the plan is made of, and the padding to a patch size.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "io/resample.h"

namespace voxgrad::io {

enum class Normalization {
  ZScore,  // per case and channel: (v - mean) / max(std, 1e-8) over the non-NaN voxels
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
// int32 (voxels with label > 0 are foreground; NaN voxels are skipped). At most
// `samples_per_case` voxels per case enter, taken evenly spaced over its foreground voxels, so
// the result does not depend on thread count. Throws when no case has a non-NaN foreground voxel.
std::vector<IntensityStats> foreground_intensity_stats(const std::vector<Tensor>& images,
                                                       const std::vector<Tensor>& labels,
                                                       std::int64_t samples_per_case = 10000);

// In place on a (C, Z, Y, X) float32 CPU tensor: the scheme per channel, then NaN -> 0.
// A channel that is entirely NaN becomes 0. `ct_stats` must hold C entries for CT.
void normalize_image(Tensor& image, Normalization scheme, const std::vector<IntensityStats>& ct_stats = {});

// A case on the plan's grid.
struct PreprocessedCase {
  Tensor image;  // (C, Z', Y', X') float32, normalised, no NaN
  Tensor label;  // (Z', Y', X') int32, undefined when no label was given
  Shape3 original_shape{};  // (Z, Y, X) before resampling: where predictions go back to
};

// Normalises a copy of `image` (C, Z, Y, X) float32 (the input is left untouched), then resamples
// image and label (Z, Y, X) int32 (may be undefined) from `spacing` (z, y, x) to the plan's spacing.
// Labels outside [0, plan.classes) are an Error naming the value.
PreprocessedCase preprocess_case(const Tensor& image, const Tensor& label, const Spacing3& spacing,
                                 const PreprocessPlan& plan);

// Pads the last three axes of `t` (any leading axes, any dtype) with `value` up to at least
// `min_shape`, split evenly before and after (the extra voxel after); returns `t` itself when no
// axis is smaller. `before` (optional) receives the padding in front of each axis, for cropping back.
Tensor pad_to_at_least(const Tensor& t, const Shape3& min_shape, double value, Shape3* before = nullptr);

// The inverse: the block of the last three axes starting at `start` with `shape` (a copy).
Tensor crop_spatial(const Tensor& t, const Shape3& start, const Shape3& shape);

}  // namespace voxgrad::io
