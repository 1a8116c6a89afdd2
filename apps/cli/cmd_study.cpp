// `voxgrad study`: the statistics of a loss study folder that tools/loss-study built
// (apps/pipeline/loss_study.h). Reads every finished run, writes study.json, per_case.csv,
// results.md and plots/*.svg into the folder (or --out), and prints one JSON line: the outcome,
// the runs done and the files written. --earlier takes the presets this folder has no runs of
// from an earlier study's outputs, plots included.
#include <CLI/CLI.hpp>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "apps/cli/cli.h"
#include "apps/pipeline/loss_study.h"
#include "engine/files.h"
#include "engine/json.h"
#include "engine/log.h"
#include "io/gzip_stream.h"

namespace voxgrad::cli {

namespace {

struct StudyOptions {
  std::string work;
  std::string out;      // default: work
  std::string earlier;  // an earlier study's output folder, or empty
};

namespace fs = std::filesystem;

// The plots of the presets `analysis` carried from `earlier`, copied into `dir` unless they are
// there already (the earlier folder is the output folder).
std::vector<std::string> copy_carried_plots(const Json& analysis, const std::string& earlier, const std::string& dir) {
  std::vector<std::string> copied;
  for (const Json& p : analysis["per_preset"]) {
    if (!p.contains("carried_from")) continue;
    for (const std::string& name : pipeline::study::study_plot_names(p["preset"].get<std::string>())) {
      const std::string from = earlier + "/plots/" + name, to = dir + "/" + name;
      std::error_code ec;
      if (!fs::exists(from, ec)) continue;
      if (!fs::equivalent(from, to, ec)) files::write_file_atomically(to, io::read_file_bytes(from));
      copied.push_back(to);
    }
  }
  return copied;
}

int run_study(const StudyOptions& opt) {
  namespace study = pipeline::study;
  const study::StudyData data = study::load_study(opt.work);
  // Read whole before anything is written: --earlier may be the output folder.
  std::optional<study::EarlierStudy> earlier;
  if (!opt.earlier.empty()) earlier = study::read_earlier_study(opt.earlier);
  const study::EarlierStudy* from = earlier ? &*earlier : nullptr;
  const Json analysis = study::analyze_study(data, from);
  const std::string out = opt.out.empty() ? opt.work : opt.out;
  files::create_folder(out + "/plots", "--out");
  std::vector<std::string> plots;
  if (earlier) plots = copy_carried_plots(analysis, earlier->folder, out + "/plots");
  files::write_file_atomically(out + "/study.json", analysis.dump(2) + "\n");
  files::write_file_atomically(out + "/per_case.csv", study::per_case_csv(data, analysis, from));
  files::write_file_atomically(out + "/results.md", study::results_markdown(analysis));
  for (const std::string& plot : study::write_study_plots(data, analysis, out + "/plots")) plots.push_back(plot);
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
            sub.add_option("--earlier", opt->earlier,
                           "An earlier study's output folder (study.json, per_case.csv, plots): a preset with no "
                           "finished run in --work is taken from it, if it had runs of it and the same plan")
                ->type_name("DIR");
            return [opt](const GlobalOptions&) { return run_study(*opt); };
          }};
}

}  // namespace voxgrad::cli
