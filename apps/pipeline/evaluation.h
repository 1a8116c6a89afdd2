// Evaluation as `voxgrad eval` runs it: pairing, grid matching and scoring (see evaluation.cpp).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "apps/pipeline/eval_outputs.h"
#include "apps/pipeline/eval_summary.h"
#include "engine/log.h"
#include "io/grid_match.h"

namespace voxgrad::pipeline {

// The folders: predictions, references, (optional, "" for none) the images shown in pictures and
// the probabilities `voxgrad predict --save-probabilities` wrote (<case>_probabilities.nii.gz).
struct EvalInputs {
  std::string pred, ref, images, probabilities;
};

// One reference and its prediction, and how the prediction's voxels map onto the reference grid.
struct EvalCase {
  std::string name, ref_path, pred_path, image_path;
  std::optional<io::AxisMap> reorient;  // set when the prediction's axes are flipped or permuted
  std::string probabilities_path;       // "" without --probabilities
  std::optional<io::AxisMap> probabilities_reorient;
  std::int64_t probability_classes = 0;  // the probabilities' 4th axis
};

// What to score beyond the label counts.
struct EvalExtras {
  bool components = false;  // each reference component (26-connectivity): detected, size
};

// Every reference with its prediction, matched by file name before any voxel is read (so a bad
// pairing fails at once); predictions without a reference are a warning.
std::vector<EvalCase> pair_eval_cases(const EvalInputs& inputs, logging::Sink& sink);

// Compares every prediction's grid with its reference's from the headers alone. Axes flipped or
// permuted: the prediction is reoriented (and the sink told). Any other difference fails naming
// the case, unless `ignore_geometry` asks to score voxel by voxel as stored. A probabilities file
// must hold the reference's grid (axes flipped or permuted are reoriented) with the classes on a
// 4th axis, as many in every case and more than any class in `labels`; otherwise the error names
// the file and its dims.
void match_eval_grids(std::vector<EvalCase>& cases, bool ignore_geometry, logging::Sink& sink,
                      const std::vector<int>& labels = {});

// Reads and scores every case (per-class counts, and what `extras` and the probabilities ask for),
// staging its picture in `outputs`.
std::vector<CaseScores> score_eval_cases(const std::vector<EvalCase>& cases, EvalOutputs& outputs, logging::Sink& sink,
                                         const EvalExtras& extras = {});

}  // namespace voxgrad::pipeline
