// Eval's numbers: voxel counts per label value in one pass, then Dice, Jaccard and counts per case
// and class, the means (absent classes null and left out, nnU-Net's convention), as nnU-Net's
// summary.json and as a CSV with one row per case and class; with --components, detection of each
// reference component and recall per size bin; with --probabilities, calibration and volume ratios.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "apps/pipeline/connected_components.h"
#include "apps/pipeline/eval_calibration.h"
#include "engine/json.h"

namespace voxgrad::pipeline {

// Voxel counts of one label value in one case; FP = n_pred - TP and FN = n_ref - TP.
struct Counts {
  std::int64_t tp = 0, n_ref = 0, n_pred = 0;
};

struct CaseScores {
  std::string name, ref_path, pred_path;
  std::int64_t voxels = 0;
  std::map<std::int32_t, Counts> counts;  // every value present in the reference or the prediction
  std::array<std::int64_t, 3> shape{1, 1, 1};                 // (Z, Y, X) of one volume, for the components' places
  double voxel_mm3 = 1;                                       // the product of the voxel's spacings
  std::optional<std::vector<ReferenceComponent>> components;  // with --components
  std::vector<ClassCalibration> calibration;                  // with --probabilities: classes 0..K-1
};

// Component size bins (voxels), log-spaced: [1, 100), [100, 1000), [1000, 10000), [10000, inf).
struct SizeBin {
  const char* name;
  std::int64_t min_voxels, max_voxels;  // max_voxels -1: no upper end
};
const std::vector<SizeBin>& component_size_bins();

// Per value, |ref|, |pred| and the voxels where both hold it, over `n` voxels on one grid.
std::map<std::int32_t, Counts> count_labels(const std::int32_t* ref, const std::int32_t* pred, std::int64_t n);

struct EvalSummary {
  Json summary;  // nnU-Net's summary.json shape, plus classes, cases and left_out counts
  std::string csv;
  std::string components_csv;  // one row per reference component; empty without components
  Json foreground_mean;
  std::vector<std::int32_t> classes;
  std::int64_t left_out = 0;  // (case, foreground class) pairs with the class in neither volume
};

// Scores of every case for `labels` (empty: every value > 0 some reference holds).
EvalSummary summarize(const std::vector<CaseScores>& cases, const std::vector<int>& labels);

}  // namespace voxgrad::pipeline
