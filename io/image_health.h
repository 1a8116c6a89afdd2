// What an image's voxel values say before a network sees them: how many are not finite (NaN or
// infinite, which preprocessing leaves out of every statistic and sets to 0), and whether a channel
// has no finite voxel at all or a single value everywhere (nothing to normalise or learn from).
// Training reports the last two as dataset problems; predict warns about all three.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace voxgrad::io {

struct ChannelHealth {
  std::int64_t finite = 0;
  std::int64_t non_finite = 0;  // NaN, +Inf and -Inf voxels
  double min = 0.0, max = 0.0;  // over the finite voxels; 0 when there are none
  bool no_finite() const { return finite == 0; }
  bool constant() const { return finite > 0 && min == max; }  // zero variance
};

// One channel's counts over `n` float32 values (OpenMP; the result does not depend on threads).
ChannelHealth channel_health(const float* values, std::int64_t n);

// Per channel of a (C, Z, Y, X) float32 CPU image.
std::vector<ChannelHealth> image_health(const Tensor& image);

// Where a channel's voxels came from, for messages: `files` holds one file per channel, or one
// file holding them all along NIfTI's 4th axis; "FILE" or "FILE channel K".
std::string channel_source(const std::vector<std::string>& files, std::size_t channel, std::size_t channels);

// The lines a command prints as warnings, one per channel that has any (in channel order):
// "FILE: 3 of 120 voxels are not finite (NaN or infinite); they are left out of the intensity
// statistics and set to 0", and the two problems below.
std::vector<std::string> health_warnings(const std::vector<ChannelHealth>& health,
                                         const std::vector<std::string>& files);

// Only what makes an image unusable for training: a channel with no finite voxel, or with zero
// variance. "FILE: no finite voxel (all 120 are NaN or infinite)", "FILE: every voxel holds the
// same value (3.5): zero variance, the channel carries no information".
std::vector<std::string> health_problems(const std::vector<ChannelHealth>& health,
                                         const std::vector<std::string>& files);

}  // namespace voxgrad::io
