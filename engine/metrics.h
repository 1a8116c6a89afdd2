// Hard Dice and Jaccard of a segmentation: from the argmax of logits, or from a predicted label
// map, against the ground-truth labels, per (volume, class), with means that leave out the classes
// absent from both (nnU-Net's convention) and say how many were left out.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "tensor.h"

namespace voxgrad {

struct MetricsOptions {
  std::optional<std::int32_t> ignore_label;  // voxels with this ground-truth label are left out
  bool include_background = false;           // whether class 0 enters the means (nnU-Net: no)
};

// Dice 2|A∩B| / (|A| + |B|) and Jaccard |A∩B| / |A∪B| with A the predicted and B the ground-truth
// voxels of a class in one volume; NaN where the class is absent from both.
struct SegmentationMetrics {
  std::int64_t volumes = 0, classes = 0;
  std::int64_t first_class = 1;                     // the means average classes first_class..K-1
  std::vector<std::int64_t> predicted;              // (N, K) |A|
  std::vector<std::int64_t> reference;              // (N, K) |B|
  std::vector<std::int64_t> intersection;           // (N, K) |A∩B|
  std::vector<double> dice, jaccard;                // (N, K), NaN where absent from both
  std::vector<double> class_dice, class_jaccard;    // (K) mean over the volumes where defined, NaN if none
  std::vector<std::int64_t> class_left_out;         // (K) volumes where the class is absent from both
  std::vector<double> volume_dice, volume_jaccard;  // (N) mean over the averaged classes where defined
  std::vector<std::int64_t> volume_left_out;        // (N) averaged classes absent from both in that volume
  double mean_dice = 0.0, mean_jaccard = 0.0;       // mean over the averaged classes of class_dice / class_jaccard
  std::int64_t left_out = 0;                        // (volume, averaged class) pairs absent from both

  double dice_at(std::int64_t volume, std::int64_t c) const { return dice[volume * classes + c]; }
  double jaccard_at(std::int64_t volume, std::int64_t c) const { return jaccard[volume * classes + c]; }
};

// The class of the largest logit per voxel: logits (N, K, spatial...) float -> (N, spatial...) int32,
// the first class on ties. Not differentiable (records nothing).
Tensor argmax_classes(const Tensor& logits);

// prediction and labels: int32 or uint8 of one shape (N, spatial...) on one device, values in
// [0, classes) (labels may also hold the ignore label), else an Error.
SegmentationMetrics segmentation_metrics(const Tensor& prediction, const Tensor& labels, std::int64_t classes,
                                         const MetricsOptions& options = {});
SegmentationMetrics segmentation_metrics_from_logits(const Tensor& logits, const Tensor& labels,
                                                     const MetricsOptions& options = {});

}  // namespace voxgrad
