// `voxgrad eval --pred DIR --ref DIR --out summary.json`: scores label volumes against references,
// per case and class (Dice, Jaccard, TP/FP/FN), in the shape of nnU-Net's summary.json, with a CSV
// beside it and one PNG per case (middle axial slice, contours); with --components, detection of each
// reference component, with --probabilities, calibration. Reads files only: never touches CUDA.
// Every check that needs no voxel (flags, pairing, grids, output places) runs before the first
// voxel is read, and nothing is written until every case is scored.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "apps/cli/cli.h"
#include "apps/cli/cli_checks.h"
#include "apps/pipeline/eval_outputs.h"
#include "apps/pipeline/eval_summary.h"
#include "apps/pipeline/evaluation.h"
#include "engine/error.h"
#include "engine/files.h"
#include "engine/json.h"
#include "engine/log.h"

namespace voxgrad::cli {

using namespace pipeline;

namespace {

namespace fs = std::filesystem;

struct EvalOptions {
  std::string pred, ref, out, images, probabilities;
  std::vector<int> labels;
  bool ignore_geometry = false;
  bool components = false;
};

int run_eval(const EvalOptions& opt) {
  EvalOutputs outputs(opt.out, opt.components);
  std::vector<EvalCase> cases = pair_eval_cases({opt.pred, opt.ref, opt.images, opt.probabilities}, logging::sink());
  match_eval_grids(cases, opt.ignore_geometry, logging::sink(), opt.labels);

  files::InputFiles inputs;
  std::vector<std::string> names;
  for (const EvalCase& c : cases) {
    inputs.add(c.ref_path);
    inputs.add(c.pred_path);
    if (!c.image_path.empty()) inputs.add(c.image_path);
    if (!c.probabilities_path.empty()) inputs.add(c.probabilities_path);
    names.push_back(c.name);
  }
  outputs.refuse_inputs(inputs, names);
  outputs.prepare();

  const std::vector<CaseScores> scores = score_eval_cases(cases, outputs, logging::sink(), {opt.components});

  EvalSummary s = summarize(scores, opt.labels);
  if (opt.components) s.summary["components"]["table"] = outputs.components_csv_path();
  if (!opt.probabilities.empty()) s.summary["calibration"]["probabilities"] = opt.probabilities;
  outputs.commit(s.summary.dump(2) + "\n", s.csv, s.components_csv);
  if (s.left_out > 0)
    logging::info(std::to_string(s.left_out) +
                  " (case, class) pair(s) had the class in neither volume: null, left out of the means");

  Json line = {{"foreground_mean", s.foreground_mean},
               {"cases", scores.size()},
               {"classes", s.classes},
               {"left_out", s.left_out},
               {"summary", outputs.summary_path()},
               {"csv", outputs.csv_path()},
               {"png_dir", outputs.picture_dir()}};
  if (opt.components) line["components_csv"] = outputs.components_csv_path();
  write_json_line(std::cout, line);
  return kExitOk;
}

}  // namespace

Command eval_command() {
  return {"eval",
          "Score predicted label volumes against references: Dice and Jaccard per case and class (nnU-Net's "
          "summary.json), a CSV and a PNG per case",
          [](CLI::App& sub) -> RunFn {
            auto opt = std::make_shared<EvalOptions>();
            sub.add_option("--pred", opt->pred, "Folder of predicted label volumes (<case>.nii.gz)")
                ->type_name("DIR")
                ->required();
            sub.add_option("--ref", opt->ref, "Folder of reference label volumes, matched to --pred by file name")
                ->type_name("DIR")
                ->required();
            sub.add_option("--out", opt->out,
                           "summary.json to write; <stem>.csv and png/<case>.png go beside it")
                ->type_name("FILE")
                ->required();
            sub.add_option("--labels", opt->labels,
                           "Classes to score, e.g. 1,2 (default: every value > 0 found in the references)")
                ->delimiter(',')
                ->check(number_above_zero(false))
                ->type_name("L,...");
            sub.add_option("--images", opt->images,
                           "Folder of images (<case>_0000.nii.gz, nnU-Net v2 naming) shown behind the contours")
                ->type_name("DIR");
            sub.add_flag("--components", opt->components,
                         "Also score each connected component (26-connectivity) of every reference class: detected "
                         "when at least one of its voxels is predicted as its class; recall per size bin in the "
                         "summary, one row per component in <stem>_components.csv");
            sub.add_option("--probabilities", opt->probabilities,
                           "Folder of <case>_probabilities.nii.gz (voxgrad predict --save-probabilities): adds per "
                           "class the expected calibration error (15 bins, one class against the rest) and the "
                           "predicted/reference volume ratios, hard and soft")
                ->type_name("DIR");
            sub.add_flag("--ignore-geometry", opt->ignore_geometry,
                         "Score a prediction whose grid differs from its reference's (beyond flipped or permuted "
                         "axes, which are always reoriented) voxel by voxel as stored, with a warning, instead of "
                         "failing");
            // --device is accepted like everywhere and ignored: counting voxels needs no device.
            return [opt](const GlobalOptions&) { return run_eval(*opt); };
          }};
}

}  // namespace voxgrad::cli
