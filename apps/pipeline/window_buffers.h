// Sliding-window buffers on the host: one window cut out of a (C, Z, Y, X) image through its zero
// padding, and a window mirrored along some of its axes. Both sliding-window paths (voxgrad's own
// and nnU-Net's) cut and mirror their tiles with these.
#pragma once

#include <cstdint>
#include <vector>

#include "apps/pipeline/resample.h"

namespace voxgrad::pipeline {

// The (C, d, h, w) block of a (C, Z, Y, X) float32 image (`size` = (Z, Y, X)) whose first voxel
// sits at `start` on the padded grid, i.e. at start - before on the image; voxels outside the
// image read 0 (nnU-Net pads with 0). Reading through the padding instead of building a padded
// copy saves a copy of the image.
std::vector<float> read_window(const float* image, std::int64_t channels, const Shape3& size, const Shape3& before,
                               const Shape3& start, const Shape3& patch);

// A (C, d, h, w) buffer reversed along the spatial axes whose bit is set in `axes` (1 = d, 2 = h,
// 4 = w). Its own inverse, so it both flips a window and flips its logits back.
std::vector<float> flip_window(const std::vector<float>& x, std::int64_t channels, const Shape3& s, int axes);

}  // namespace voxgrad::pipeline
