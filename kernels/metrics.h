// Hard segmentation metrics: the argmax of logits (N, K, S) over the classes, and per (image, class)
// the voxel counts |A| (predicted), |B| (ground truth) and |A∩B| that Dice and Jaccard come from.
#pragma once

#include "kernels/common.h"

namespace voxgrad::kernels {

// The first class of the largest logit (numpy / PyTorch argmax on ties).
template <class T>
VG_HD std::int32_t argmax_position(const T* z, std::int64_t classes, std::int64_t stride) {
  std::int32_t best = 0;
  T best_value = z[0];
  for (std::int64_t c = 1; c < classes; ++c) {
    if (z[c * stride] > best_value) {
      best_value = z[c * stride];
      best = static_cast<std::int32_t>(c);
    }
  }
  return best;
}

enum OverlapCount : int { kPredicted = 0, kReference = 1, kIntersection = 2, kOverlapCounts = 3 };

// A value outside [0, K) met while counting: found (0/1), the value, which input
// (0 the prediction, 1 the labels) and the voxel (flat over (N, S)).
struct InvalidClass {
  std::int64_t found = 0, value = 0, input = 0, voxel = 0;
};

struct OverlapProblem {
  const std::int32_t* prediction = nullptr;  // (N, S)
  const std::int32_t* labels = nullptr;      // (N, S)
  std::int32_t* counts = nullptr;            // (N, K, kOverlapCounts) out
  std::int64_t images = 0, classes = 0, voxels = 0;
  bool has_ignore_label = false;  // voxels whose label is the ignore label are left out
  std::int32_t ignore_label = 0;
};

namespace cpu {
template <class T>
void argmax_classes(const T* logits, std::int32_t* prediction, std::int64_t images, std::int64_t classes,
                    std::int64_t voxels);
InvalidClass overlap_counts(const OverlapProblem& problem);
}  // namespace cpu

namespace cuda {
void argmax_classes(const float* logits, std::int32_t* prediction, std::int64_t images, std::int64_t classes,
                    std::int64_t voxels, Stream s);
// Waits for the stream once, to return the invalid-value report; counts are integers, so the
// atomics leave them exact and deterministic.
InvalidClass overlap_counts(const OverlapProblem& problem, Scratch& scratch, Stream s);
}  // namespace cuda

}  // namespace voxgrad::kernels
