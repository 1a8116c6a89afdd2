// `voxgrad study`: the statistics of a loss study folder that tools/loss-study built
// (apps/pipeline/loss_study.h). Reads every finished run, writes study.json, per_case.csv,
// results.md and plots/*.svg into the folder (or --out), and prints one JSON line: the outcome,
// the runs done and the files written.
#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>
#include <string>

#include "apps/cli/cli.h"
#include "apps/pipeline/loss_study.h"
#include "engine/files.h"
#include "engine/json.h"
#include "engine/log.h"

namespace voxgrad::cli {

namespace {

struct StudyOptions {
  std::string work;
  std::string out;  // default: work
};

int run_study(const StudyOptions& opt) {
  const pipeline::study::StudyData data = pipeline::study::load_study(opt.work);
  const Json analysis = pipeline::study::analyze_study(data);
  const std::string out = opt.out.empty() ? opt.work : opt.out;
  files::create_folder(out + "/plots", "--out");
  files::write_file_atomically(out + "/study.json", analysis.dump(2) + "\n");
  files::write_file_atomically(out + "/per_case.csv", pipeline::study::per_case_csv(data));
  files::write_file_atomically(out + "/results.md", pipeline::study::results_markdown(analysis));
  const std::vector<std::string> plots = pipeline::study::write_study_plots(data, analysis, out + "/plots");
  logging::info("study: " + analysis["outcome"].get<std::string>() + " (" + analysis["runs"]["done"].dump() + " of " +
                analysis["runs"]["planned"].dump() + " runs done); " + out + "/results.md");
  write_json_line(std::cout, {{"outcome", analysis["outcome"]},
                              {"runs", analysis["runs"]},
                              {"study", out + "/study.json"},
                              {"results", out + "/results.md"},
                              {"per_case", out + "/per_case.csv"},
                              {"plots", plots}});
  return kExitOk;
}

}  // namespace

Command study_command() {
  return {"study",
          "Compare the arms of a loss study folder (tools/loss-study): exact Wilcoxon tests with Holm's correction, "
          "bootstrap intervals, TOST equivalence and Kendall's tau; writes study.json, per_case.csv, results.md "
          "and SVG plots",
          [](CLI::App& sub) -> RunFn {
            auto opt = std::make_shared<StudyOptions>();
            sub.add_option("--work", opt->work, "Study folder holding plan.json and the runs tools/loss-study made")
                ->type_name("DIR")
                ->required();
            sub.add_option("--out", opt->out, "Folder for the outputs (default: --work)")->type_name("DIR");
            return [opt](const GlobalOptions&) { return run_study(*opt); };
          }};
}

}  // namespace voxgrad::cli
