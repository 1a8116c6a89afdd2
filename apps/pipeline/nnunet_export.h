// nnU-Net v2's export of one case's logits (convert_predicted_logits_to_segmentation_with_correct_shape):
// the logits resampled to the cropped grid (by the caller's resampler), softmax or, for region-based
// models, sigmoid, argmax or the region order rule, pasted into the uncropped volume and transposed
// back to the input's axis order.
#pragma once

#include <functional>
#include <vector>

#include "apps/pipeline/nnunet_preprocessing.h"
#include "engine/tensor.h"

namespace voxgrad::pipeline::nnunet {

// nnU-Net's inference nonlinearity on (K, Z, Y, X) float32 logits, on their device: softmax over
// the classes, or the sigmoid of each region when `regions` (float32, as nnU-Net computes it).
Tensor logits_to_probabilities(const Tensor& logits, bool regions);

// Labels (Z, Y, X) int32 from (K, Z, Y, X) float32 probabilities or logits. Without a region order:
// the first class with the largest value (numpy's argmax). With one (regions_class_order, one label
// per region): 0, then for region i in order every voxel with probability > 0.5 gets label
// regions_class_order[i], later regions overwriting earlier ones.
Tensor probabilities_to_segmentation(const Tensor& probabilities, const std::vector<int>& regions_class_order);
// The same from logits, as nnU-Net's convert_logits_to_segmentation: argmax of the logits
// themselves, or the sigmoid first for regions.
Tensor logits_to_segmentation(const Tensor& logits, const std::vector<int>& regions_class_order);

// The cropped (Z', Y', X') labels placed at `box` in a volume of `shape_before_cropping`, 0 outside.
Tensor uncrop_segmentation(const Tensor& segmentation, const BoundingBox& box, const Shape3& shape_before_cropping);
// The cropped (K, Z', Y', X') probabilities placed at `box`: outside, background (channel 0) is 1
// and the rest 0, or all 0 for region-based models (nnU-Net's revert_cropping_on_probabilities).
Tensor uncrop_probabilities(const Tensor& probabilities, const BoundingBox& box, const Shape3& shape_before_cropping,
                            bool regions);

// The caller's resampling of (K, z, y, x) logits at the configuration's spacing to `shape` (the
// cropped grid at the input's spacing), as the configuration's resampling_fn_probabilities does.
// nnU-Net hands it the predictor's float16 logits and gets float16 back; an empty resampler means
// the logits are on the cropped grid already.
using LogitsResampler = std::function<Tensor(const Tensor& logits, const Shape3& shape)>;

struct ExportGeometry {
  Shape3 shape_after_cropping{};   // properties' shape_after_cropping_and_before_resampling
  BoundingBox box;                 // properties' bbox_used_for_cropping
  Shape3 shape_before_cropping{};  // properties' shape_before_cropping (transposed axis order)
  AxisOrder transpose_backward{0, 1, 2};
};

struct ExportedPrediction {
  Tensor segmentation;   // (Z, Y, X) int32 in the input's axis order
  Tensor probabilities;  // (K, Z, Y, X) float32, only when asked for
};

// The whole export of `logits` (K, z, y, x) float32 (CPU, or any device when the resampler takes
// it). The resampler may return float32 or float64. With `with_probabilities` the labels are the
// argmax of the probabilities, as nnU-Net's return_probabilities path computes them; else of the
// logits. nnU-Net's resampled logits are float16 (its resampling computes in float64 and stores into
// an array of the float16 logits' dtype): `float16_logits` rounds the resampler's result the same
// way (from float64 in one rounding), which labels matching nnU-Net's bit for bit need.
ExportedPrediction export_prediction(const Tensor& logits, const LogitsResampler& resample,
                                     const ExportGeometry& geometry, const std::vector<int>& regions_class_order,
                                     bool with_probabilities, bool float16_logits = false);

}  // namespace voxgrad::pipeline::nnunet
