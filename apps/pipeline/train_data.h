// The data half of `voxgrad train`: reads and checks the dataset, makes the preprocessing plan
// (target spacing = the training cases' median, normalisation, CT statistics), preprocesses every
// training case once, splits them into training and validation cases, and picks a default patch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/log.h"
#include "io/dataset.h"
#include "apps/pipeline/preprocess.h"

namespace voxgrad::pipeline {

struct PreparedCase {
  std::string id;
  PreprocessedCase data;  // on the plan's grid, not padded
};

struct TrainingData {
  io::Dataset dataset;
  PreprocessPlan plan;
  std::vector<PreparedCase> cases;  // every training case, in dataset order
  Shape3 median_shape{};       // per-axis median of the preprocessed shapes
};

// Reads `root`, refuses datasets with problems (one Error listing them: missing files, labels
// outside the declared set, mismatched geometry) or without training cases, and preprocesses the
// training cases with a progress bar. `plan` supplies the normalisation; its spacing, classes and CT
// statistics are computed here unless `reuse_plan` (a resumed run repeats its recorded plan).
// Progress and warnings go to `sink`.
TrainingData prepare_training_data(const std::string& root, PreprocessPlan plan, bool reuse_plan,
                                   logging::Sink& sink = logging::sink());

// Validation cases as nnU-Net's fold 0 holds them out: a fifth of the cases (at least one), chosen
// by a shuffle with `seed`; the rest train. A single case both trains and validates (warned).
void split_cases(const std::vector<std::string>& ids, std::uint64_t seed, std::vector<std::string>& train,
                 std::vector<std::string>& val, logging::Sink& sink = logging::sink());

// The default patch: per axis the median shape rounded down to a multiple of 2^(levels-1) (what the
// U-Net accepts), at least that multiple and at most 128 voxels.
Shape3 default_patch(const Shape3& median_shape, int levels);

}  // namespace voxgrad::pipeline
