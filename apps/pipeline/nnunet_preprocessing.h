// nnU-Net v2's preprocessing of one case before the network, step by step with plain parameters:
// the axis transposition, the crop to the nonzero region and the per-channel intensity normalisation
// schemes, each with the arithmetic (float32, numpy's summation order) nnU-Net's DefaultPreprocessor
// uses, so a case preprocessed here matches nnU-Net's voxel for voxel. Resampling lives elsewhere.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "apps/pipeline/resample.h"
#include "engine/tensor.h"

namespace voxgrad::pipeline::nnunet {

// A permutation of the three spatial axes (plans.json's transpose_forward / transpose_backward).
using AxisOrder = std::array<int, 3>;

// The last three axes of `t` (any leading axes, any dtype) permuted so that output spatial axis i is
// input spatial axis order[i]: numpy's data.transpose([0, *(i + 1 for i in order)]) for (C, Z, Y, X),
// and seg.transpose(order) for (Z, Y, X). A CPU tensor; returns a copy.
Tensor transpose_spatial(const Tensor& t, const AxisOrder& order);
// The inverse permutation (plans.json's transpose_backward for a transpose_forward).
AxisOrder inverse_axis_order(const AxisOrder& order);

// A half-open box [begin, end) per spatial axis, as nnU-Net stores bbox_used_for_cropping.
struct BoundingBox {
  Shape3 begin{0, 0, 0};
  Shape3 end{0, 0, 0};
  Shape3 shape() const { return {end[0] - begin[0], end[1] - begin[1], end[2] - begin[2]}; }
};

// The voxels where any channel of (C, Z, Y, X) float32 `data` is nonzero (NaN counts as nonzero),
// with the holes filled as scipy's binary_fill_holes does (background not connected to the volume's
// border through face neighbours becomes foreground): (Z, Y, X) uint8, 1 inside.
Tensor nonzero_mask(const Tensor& data);

// The smallest box holding every 1 of a (Z, Y, X) uint8 mask; the whole volume when the mask is empty
// (nnU-Net's get_bbox_from_mask).
BoundingBox mask_bounding_box(const Tensor& mask);

struct NonzeroCrop {
  Tensor data;  // (C, z, y, x) float32: the input inside `box`
  // (z, y, x) uint8: the hole-filled nonzero mask inside `box`. nnU-Net writes it into the case's
  // segmentation as 0 inside and -1 outside; use_mask_for_norm normalises where it is 1.
  Tensor mask;
  BoundingBox box;
};
// nnU-Net's crop_to_nonzero for a case without a segmentation (inference).
NonzeroCrop crop_to_nonzero(const Tensor& data);

// The block `box` of the last three axes of `t` (any leading axes, any dtype), a copy.
Tensor crop_to_box(const Tensor& t, const BoundingBox& box);

enum class NormalizationScheme { ZScore, CT, NoNormalization, RescaleTo01, RGBTo01 };
// plans.json's class names: "ZScoreNormalization", "CTNormalization", "NoNormalization",
// "RescaleTo01Normalization", "RGBTo01Normalization"; an InputError names the others.
NormalizationScheme parse_normalization_scheme(const std::string& class_name);
const char* normalization_scheme_name(NormalizationScheme s);

// One channel's foreground_intensity_properties_per_channel entry (only CT reads it).
struct IntensityProperties {
  double mean = 0.0, std = 1.0, percentile_00_5 = 0.0, percentile_99_5 = 0.0;
};

// Every channel c of (C, Z, Y, X) float32 CPU `data` in place with schemes[c], use_mask_for_norm[c]
// and properties[c] (properties may be empty when no channel uses CT), with nnU-Net's float32
// arithmetic. `mask` is crop_to_nonzero's (Z, Y, X) uint8 mask, read only by ZScore channels with
// use_mask_for_norm, which normalise the masked voxels with their own mean and std and leave the
// others as they are. `transpose_forward` is the transposition the data went through: numpy sums a
// transposed view in memory order, i.e. over the untransposed axes, and the last bits of a mean
// depend on that order. RGBTo01 throws InputError (naming `what`) for values outside [0, 255], which
// nnU-Net refuses too.
void normalize(Tensor& data, const std::vector<NormalizationScheme>& schemes,
               const std::vector<bool>& use_mask_for_norm, const std::vector<IntensityProperties>& properties,
               const Tensor& mask, const AxisOrder& transpose_forward = {0, 1, 2}, const std::string& what = "");

// numpy's float32 sum of n values: pairwise summation within blocks of 8192 values, the blocks added
// in order (what ndarray.sum, .mean and .std compute for a contiguous float32 array).
float numpy_float32_sum(const float* values, std::int64_t n);

}  // namespace voxgrad::pipeline::nnunet
