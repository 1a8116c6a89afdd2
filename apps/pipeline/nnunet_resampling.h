// nnU-Net v2's default resampling (resample_data_or_seg_to_shape with is_seg False), bit for bit at
// orders 0 and 1 and to rounding at order 3: the shape rule, the choice of a separately resampled
// axis, skimage's resize (scipy's B-spline zoom, mode 'edge', clipped) and scipy's map_coordinates.
#pragma once

#include <optional>
#include <string>

#include "apps/pipeline/resample.h"
#include "engine/json.h"
#include "engine/tensor.h"

namespace voxgrad::pipeline::nnunet {

// The plans' resampling_fn_*_kwargs. Orders 0, 1 and 3 are supported (nnU-Net's plans use 3 for
// images, 1 for probabilities and 0 along a separate axis). The defaults are what plans write.
struct ResamplingSettings {
  int order = 3;
  int order_z = 0;
  std::optional<bool> force_separate_z;          // nullopt: decided from the spacings
  double separate_z_anisotropy_threshold = 3.0;  // nnunetv2.configuration.ANISO_THRESHOLD
};

// A plans file's resampling function name and kwargs (e.g. "resampling_fn_data" and
// "resampling_fn_data_kwargs"). Only "resample_data_or_seg_to_shape" with is_seg false is known;
// any other name, an unknown key or a value of the wrong kind is an InputError naming `where`.
// Keys left out take the Python function's defaults (force_separate_z False, not None).
ResamplingSettings parse_resampling_settings(const std::string& function_name, const Json& kwargs,
                                             const std::string& where);

// nnU-Net's compute_new_shape: round(old_spacing / new_spacing * old_shape) per axis, with Python's
// round (halves to even). Non-positive or non-finite spacings, and a result with an empty or
// absurdly long axis, are InputErrors.
Shape3 compute_new_shape(const Shape3& old_shape, const Spacing3& old_spacing, const Spacing3& new_spacing);

// Whether one axis is resampled apart from the other two, and which (determine_do_sep_z_and_axis):
// forced, or when either grid's largest / smallest spacing exceeds the threshold, the axis holding
// the largest spacing, unless two or three axes share it.
struct SeparateAxis {
  bool separate = false;
  int axis = -1;  // 0, 1 or 2 when separate
};
SeparateAxis separate_axis(const Spacing3& current_spacing, const Spacing3& new_spacing,
                           const ResamplingSettings& settings);

// How the float64 result is stored. resample_data_or_seg returns its input's dtype, and
// nnUNetPredictor accumulates logits in float16, so the probabilities nnUNetv2_predict resamples
// come back as float16 values: HalfInFloat32 rounds each result to the nearest float16 (as numpy
// casts float64 to float16) and stores it in float32, which holds every float16 exactly.
enum class ResultPrecision { SameAsInput, HalfInFloat32 };

// `data` (C, Z, Y, X), CPU, float32 or float64, resampled to (C, new_shape...) in nnU-Net's array
// order, computed in float64 and returned in data's dtype (or see ResultPrecision). When new_shape
// equals data's spatial shape, data is returned itself (SameAsInput) or rounded to float16 values.
// Otherwise each channel is resized with spline order `order` (edge values repeat beyond the
// border, the result clipped to the channel's range), or, with a separate axis, each slice across
// that axis is resized so (clipped to the slice's range) and the axis is then resampled with order
// `order_z`, unclipped.
Tensor resample_to_shape(const Tensor& data, const Shape3& new_shape, const Spacing3& current_spacing,
                         const Spacing3& new_spacing, const ResamplingSettings& settings,
                         ResultPrecision precision = ResultPrecision::SameAsInput);


}  // namespace voxgrad::pipeline::nnunet
