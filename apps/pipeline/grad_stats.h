// Where a loss pushes the logits: per class, the mean |∂loss/∂z_c| over the class's voxels, over
// the other voxels, and over the class's inner boundary, from host copies of a gradient and its
// labels. Plain vectors in, plain numbers out, so `voxgrad grad` and its tests share one definition.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace voxgrad::pipeline {

// The geometry of a gradient (N, K, D, H, W) and its labels (N, D, H, W).
struct GradGeometry {
  std::int64_t images = 1, channels = 1, depth = 1, height = 1, width = 1;
  std::int64_t voxels() const { return depth * height * width; }
};

// One channel's statistics. The means are NaN where their set is empty.
struct ClassGradStats {
  std::int64_t channel = 0;  // logit channel c of ∂loss/∂z_c
  std::int64_t label = 0;    // the class whose voxels are "inside" (the channel, or 1 for the hinge's one channel)
  double inside = 0, outside = 0, boundary = 0;
  std::int64_t voxels = 0, outside_voxels = 0, boundary_voxels = 0;
};

// 1 where a voxel is on the inner boundary of its own class: it is not ignored and one of its
// 6-connected neighbours in the same image is neither ignored nor of its class. An ignored
// neighbour carries no class, so it makes no boundary. labels (N, D, H, W) -> (N, D, H, W).
std::vector<std::uint8_t> inner_boundary(const std::vector<std::int32_t>& labels, const GradGeometry& g,
                                         std::optional<std::int32_t> ignore_label);

// grad (N, K, D, H, W), labels (N, D, H, W); ignored voxels enter no set. channel_label[c] is the
// class channel c scores; empty means channel c scores class c.
std::vector<ClassGradStats> gradient_stats(const std::vector<double>& grad, const std::vector<std::int32_t>& labels,
                                           const GradGeometry& g, std::optional<std::int32_t> ignore_label,
                                           const std::vector<std::int64_t>& channel_label = {});

}  // namespace voxgrad::pipeline
