// Resampling of (C, Z, Y, X) images and (Z, Y, X) label volumes to a new grid, as nnU-Net does it
// between the original spacing and the training spacing: trilinear for images, nearest or one-hot
// linear for labels. Voxel centres are aligned the PyTorch align_corners=False way, so a volume
// resampled to its own shape is returned unchanged and resampling there and back is close to the
// identity on smooth images. Host code (CPU tensors), OpenMP over output slices.
#pragma once

#include <array>
#include <cstdint>

#include "engine/tensor.h"

namespace voxgrad::pipeline {

// Spatial sizes and spacings in tensor order (z, y, x): NIfTI's x-first order reversed.
using Shape3 = std::array<std::int64_t, 3>;
using Spacing3 = std::array<double, 3>;

// The grid a volume of `shape` voxels of `spacing` mm gets at `target` mm:
// round(shape * spacing / target) along each axis, at least 1. Spacings must be positive and
// finite, and no axis may exceed 2^53 voxels (InputError: a spacing far from the target's, e.g.
// micrometres read as millimetres); check_preprocess_fits refuses far smaller grids first.
Shape3 resampled_shape(const Shape3& shape, const Spacing3& spacing, const Spacing3& target);

// The same in floating point, without the axis limit (an axis may be huge or infinite): for
// sizing a grid before deciding whether it can be made.
std::array<double, 3> resampled_extent(const Shape3& shape, const Spacing3& spacing, const Spacing3& target);

// Trilinear resampling of every channel of a (C, Z, Y, X) float32 tensor to (C, out...): output voxel
// o samples input coordinate (o + 0.5) * in / out - 0.5, clamped to the volume (edge values repeat).
Tensor resample_image(const Tensor& image, const Shape3& out_shape);

enum class LabelResampling {
  Nearest,       // the label of the nearest input voxel centre
  OneHotLinear,  // each class's indicator resampled trilinearly, then the largest wins (lowest on ties):
                 // nnU-Net's order-1 segmentation resampling, smooth boundaries without new values
};
// (Z, Y, X) int32 labels with values in [0, classes) to (out...) int32.
Tensor resample_labels(const Tensor& labels, const Shape3& out_shape, int classes, LabelResampling mode);

}  // namespace voxgrad::pipeline
