// `voxgrad predict --model RUN --input FILE_OR_DIR --out DIR`: finds the cases of --input (nnU-Net's
// channel naming), decides which outputs may be written (never over an input, never over a file the
// run did not write unless told), and segments each case with voxgrad::Predictor: one label NIfTI per
// case on the input's grid (plus the softmax probabilities when asked), one JSON line on stdout.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "apps/cli/cli.h"
#include "apps/cli/cli_checks.h"
#include "apps/pipeline/case_parts.h"
#include "apps/pipeline/nnunet_model.h"
#include "apps/pipeline/output_folder.h"
#include "apps/pipeline/predictor.h"
#include "apps/pipeline/run_config.h"
#include "engine/error.h"
#include "engine/files.h"
#include "engine/json.h"
#include "engine/log.h"

namespace voxgrad::cli {

namespace {

namespace fs = std::filesystem;

struct PredictOptions {
  std::string model;       // run folder or nnU-Net trained-model folder
  std::string checkpoint;  // empty: the kind's default (best for a run folder, final for nnU-Net)
  std::string folds;       // nnU-Net only: empty for every fold present
  std::string input;
  std::string out;
  double overlap = 0.5;
  std::optional<double> step_size;  // nnU-Net's name for 1 - overlap
  bool tta = false;
  bool disable_tta = false;
  bool save_probabilities = false;
  bool overwrite = false;      // replace outputs that exist (never an input)
  bool skip_existing = false;  // --continue: skip cases whose outputs all exist
  int num_parts = 1;           // --num-parts N --part-id K: this job segments the K-th of N shares
  int part_id = 0;
};

struct InputCase {
  std::string id;
  std::vector<std::string> files;  // one per channel
};

bool is_nifti_name(const std::string& name) { return name.ends_with(".nii.gz") || name.ends_with(".nii"); }

std::string strip_nifti_ending(const std::string& name) {
  if (name.ends_with(".nii.gz")) return name.substr(0, name.size() - 7);
  if (name.ends_with(".nii")) return name.substr(0, name.size() - 4);
  return name;
}

// nnU-Net's naming (<case>_0000.nii.gz, one file per channel) when every file follows it; else,
// for one-channel models, every NIfTI file is a case of its own.
std::vector<InputCase> find_inputs(const std::string& input, int channels) {
  static const std::regex channel_file(R"((.+)_(\d{4}))");
  std::error_code ec;
  VG_USAGE_CHECK(fs::exists(input, ec), "--input " << input << ": no such file or folder");
  if (!fs::is_directory(input, ec)) {
    VG_USAGE_CHECK(is_nifti_name(input), "--input " << input << ": not a .nii or .nii.gz file");
    VG_USAGE_CHECK(channels == 1, "--input " << input << ": the model takes " << channels
                                             << " channels; give a folder holding <case>_0000.nii.gz ... files");
    std::string id = strip_nifti_ending(fs::path(input).filename().string());
    std::smatch m;
    if (std::regex_match(id, m, channel_file) && m[2] == "0000") id = m[1];
    return {{id, {input}}};
  }
  std::vector<std::string> names;
  for (const fs::directory_entry& e : fs::directory_iterator(input, ec))
    // Not only regular files: a FIFO or a dangling link named like a case is reported as a failed
    // case (the reader refuses it at once) rather than silently left out.
    if (!e.is_directory(ec) && is_nifti_name(e.path().filename().string()))
      names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  VG_USAGE_CHECK(!names.empty(), "--input " << input << ": holds no .nii or .nii.gz files");
  std::map<std::string, std::map<int, std::string>> grouped;
  bool all_channel_named = true;
  for (const std::string& name : names) {
    std::smatch m;
    const std::string stem = strip_nifti_ending(name);
    if (std::regex_match(stem, m, channel_file))
      grouped[m[1]][std::stoi(m[2])] = (fs::path(input) / name).string();
    else
      all_channel_named = false;
  }
  // For a one-channel model, names like liver_0001 may be case numbers rather than channels: the
  // nnU-Net reading holds only when every case has exactly its channel 0.
  bool channel_groups = all_channel_named;
  if (channels == 1)
    for (const auto& [id, files] : grouped) channel_groups = channel_groups && files.size() == 1 && files.count(0);
  std::vector<InputCase> cases;
  if (!channel_groups && channels == 1) {
    std::set<std::string> ids;
    for (const std::string& name : names) {
      const std::string id = strip_nifti_ending(name);
      VG_INPUT_CHECK(ids.insert(id).second,
                     "--input " << input << ": case " << id << " is there twice (.nii and .nii.gz); keep one");
      cases.push_back({id, {(fs::path(input) / name).string()}});
    }
    return cases;
  }
  char last[16];
  std::snprintf(last, sizeof last, "_%04d", channels - 1);
  VG_INPUT_CHECK(all_channel_named, "--input " << input << ": the model takes " << channels
                                               << " channels, so the files must be named <case>_0000.nii.gz ... <case>"
                                               << last << ".nii.gz (nnU-Net's naming)");
  for (const auto& [id, files] : grouped) {
    InputCase c{id, {}};
    for (int ch = 0; ch < channels; ++ch) {
      const auto it = files.find(ch);
      char expected[16];
      std::snprintf(expected, sizeof expected, "_%04d", ch);
      VG_INPUT_CHECK(it != files.end(), "--input " << input << ": case " << id << " has no channel " << ch << " file ("
                                                   << id << expected << ")");
      c.files.push_back(it->second);
    }
    VG_INPUT_CHECK(static_cast<int>(files.size()) == channels,
                   "--input " << input << ": case " << id << " has " << files.size()
                              << " channel files, the model takes " << channels);
    cases.push_back(std::move(c));
  }
  return cases;
}

// Where one case's results go.
struct CaseOutputs {
  std::string labels;
  std::string probabilities;  // empty without --save-probabilities
};

CaseOutputs outputs_of(const PredictOptions& o, const InputCase& c) {
  CaseOutputs out;
  out.labels = (fs::path(o.out) / (c.id + ".nii.gz")).string();
  if (o.save_probabilities) out.probabilities = (fs::path(o.out) / (c.id + "_probabilities.nii.gz")).string();
  return out;
}

// Decides, before anything is written, which cases run: never one whose output would land on an
// input (compared by file identity, so links and other spellings are caught), and never over a
// file this run did not write unless --overwrite (or skipped with --continue).
std::vector<std::size_t> cases_to_run(const PredictOptions& o, const std::vector<InputCase>& cases,
                                      const files::InputFiles& inputs) {
  std::vector<std::size_t> run;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const CaseOutputs out = outputs_of(o, cases[i]);
    std::vector<std::string> paths{out.labels};
    if (!out.probabilities.empty()) paths.push_back(out.probabilities);
    bool all_exist = true;
    for (const std::string& path : paths) {
      if (const auto input = inputs.overwritten_by(path))
        VG_INPUT_FAIL(path << ": would overwrite the input " << *input
                           << " (predict never writes over its inputs); choose another --out");
      all_exist = all_exist && fs::exists(fs::symlink_status(path));
    }
    if (o.skip_existing && all_exist) continue;
    if (!o.overwrite)
      for (const std::string& path : paths)
        VG_INPUT_CHECK(!fs::exists(fs::symlink_status(path)),
                       path << ": exists and was not written by this run (of case " << cases[i].id
                            << "); --overwrite replaces it, --continue skips cases already done");
    run.push_back(i);
  }
  return run;
}

// This job's share of the cases with --num-parts N --part-id K: cases_of_part over the bytes of
// each case's input files, which every job of the array sees alike.
std::vector<InputCase> this_part(const PredictOptions& o, const std::vector<InputCase>& cases) {
  if (o.num_parts == 1) return cases;
  std::vector<std::int64_t> sizes;
  for (const InputCase& c : cases) {
    std::int64_t bytes = 0;
    for (const std::string& f : c.files) {
      std::error_code ec;
      const auto size = fs::file_size(f, ec);
      bytes += ec ? 0 : static_cast<std::int64_t>(size);
    }
    sizes.push_back(bytes);
  }
  std::vector<InputCase> mine;
  for (std::size_t i : pipeline::cases_of_part(sizes, o.num_parts, o.part_id)) mine.push_back(cases[i]);
  logging::info("part " + std::to_string(o.part_id) + " of " + std::to_string(o.num_parts) + ": " +
                std::to_string(mine.size()) + " of " + std::to_string(cases.size()) + " cases");
  return mine;
}

int run_predict(const PredictOptions& o, const GlobalOptions& global) {
  // The command line first (exit 2), then the model and the inputs, then the outputs' places;
  // nothing is written before every check has passed.
  std::error_code ec;
  VG_USAGE_CHECK(
      fs::is_directory(o.model, ec),
      "--model '" << o.model << "': no such folder (a voxgrad run folder or an nnU-Net trained-model folder)");
  const bool nnunet = pipeline::nnunet::is_nnunet_model_folder(o.model);
  if (nnunet) {
    VG_USAGE_CHECK(o.checkpoint != "latest",
                   "--checkpoint latest: " << o.model << " is an nnU-Net model folder; choose final or best");
  } else {
    VG_USAGE_CHECK(o.checkpoint != "final",
                   "--checkpoint final: " << o.model << " is a voxgrad run folder; choose best or latest");
    VG_USAGE_CHECK(o.folds.empty(), "--folds: " << o.model << " is a voxgrad run folder, which has no folds");
  }
  pipeline::nnunet::parse_fold_list(o.folds);  // a bad list is a usage error before anything is read
  VG_USAGE_CHECK(o.part_id < o.num_parts, "--part-id " << o.part_id << ": must be below --num-parts " << o.num_parts
                                                       << " (parts are numbered 0 to " << o.num_parts - 1 << ")");
  PredictorOptions options;
  options.device = global.device;
  options.checkpoint = o.checkpoint;
  options.folds = o.folds;
  options.overlap = o.step_size ? 1.0 - *o.step_size : o.overlap;
  if (o.disable_tta)
    options.mirror = false;
  else if (o.tta)
    options.mirror = true;
  Predictor predictor(o.model, options, logging::stderr_sink());
  const std::vector<InputCase> all_cases = find_inputs(o.input, predictor.in_channels());
  const std::vector<InputCase> cases = this_part(o, all_cases);
  pipeline::OutputFolder folder(o.out, "--out");

  files::InputFiles inputs;
  for (const InputCase& c : cases)
    for (const std::string& f : c.files) inputs.add(f);
  for (const std::string& f : predictor.model_files()) inputs.add(f);
  const std::vector<std::size_t> todo = cases_to_run(o, cases, inputs);
  if (todo.size() < cases.size())
    logging::info("--continue: " + std::to_string(cases.size() - todo.size()) + " of " + std::to_string(cases.size()) +
                  " cases already have their outputs; skipping them");

  Json written = Json::array();
  std::vector<std::string> failed;
  logging::ProgressBar bar("predict", static_cast<std::int64_t>(todo.size()), "case");
  for (std::size_t k = 0; k < todo.size(); ++k) {
    const InputCase& c = cases[todo[k]];
    // Whole volumes can take a while on a CPU: the case bar also counts the windows.
    const auto on_window = [&](std::int64_t done, std::int64_t total) {
      bar.update(static_cast<std::int64_t>(k), c.id + " window " + std::to_string(done) + "/" + std::to_string(total));
    };
    // A bad case is reported and the others still run; the status says that something failed.
    try {
      const CaseOutputs paths = outputs_of(o, c);
      predictor.predict_files(c.files, paths.labels, paths.probabilities, on_window);
      folder.keep();
      Json entry = {{"case", c.id}, {"labels", paths.labels}};
      if (!paths.probabilities.empty()) entry["probabilities"] = paths.probabilities;
      written.push_back(entry);
    } catch (const Error& e) {
      logging::error("case " + c.id + ": " + e.what());
      failed.push_back(c.id);
    }
    bar.update(static_cast<std::int64_t>(k + 1), c.id);
  }
  bar.finish();
  Json summary = {{"out", o.out},
                  {"cases", static_cast<std::int64_t>(written.size())},
                  {"skipped", static_cast<std::int64_t>(cases.size() - todo.size())},
                  {"failed", failed},
                  {"files", written}};
  if (o.num_parts > 1)
    summary["part"] = {{"id", o.part_id},
                       {"of", o.num_parts},
                       {"cases", static_cast<std::int64_t>(cases.size())},
                       {"all_cases", static_cast<std::int64_t>(all_cases.size())}};
  write_json_line(std::cout, summary);
  if (failed.empty()) return kExitOk;
  std::string list;
  for (const std::string& id : failed) list += (list.empty() ? "" : ", ") + id;
  logging::error(std::to_string(failed.size()) + " of " + std::to_string(todo.size()) + " cases failed: " + list);
  return kExitFailure;
}

}  // namespace

Command predict_command() {
  return {"predict",
          "Segment volumes with a trained run or an nnU-Net v2 model: its preprocessing, Gaussian-weighted "
          "sliding-window inference, optional mirroring TTA, one label NIfTI per case on the input's grid",
          [](CLI::App& sub) -> RunFn {
            auto opt = std::make_shared<PredictOptions>();
            sub.add_option("--model", opt->model,
                           "Run folder written by voxgrad train, or an nnU-Net v2 trained-model folder (dataset.json, "
                           "plans.json, fold_K/checkpoint_final.pth)")
                ->type_name("MODEL")
                ->required();
            sub.add_option("--checkpoint", opt->checkpoint,
                           "Run folder: best (model_best.safetensors, default) or latest "
                           "(checkpoint_latest.safetensors). nnU-Net model: final (checkpoint_final.pth, default) or "
                           "best (checkpoint_best.pth)")
                ->check(one_of({"best", "latest", "final"}));
            sub.add_option("--folds", opt->folds,
                           "nnU-Net model: the folds to ensemble, e.g. 0,1,4, or all (fold_all); default every fold "
                           "present")
                ->type_name("LIST");
            sub.add_option("--input", opt->input,
                           "A .nii/.nii.gz volume, or a folder of them (<case>_0000.nii.gz ... for several channels)")
                ->type_name("FILE_OR_DIR")
                ->required();
            sub.add_option("--out", opt->out, "Folder for <case>.nii.gz (created when missing)")
                ->type_name("DIR")
                ->required();
            CLI::Option* overlap = sub.add_option("--overlap", opt->overlap, "Sliding-window overlap in [0, 1)")
                                       ->check(number_in_range(0.0, 0.99))
                                       ->capture_default_str();
            sub.add_option("--step-size", opt->step_size,
                           "Sliding-window step as a fraction of the patch, nnU-Net's name for 1 - overlap (0.5)")
                ->check(number_in_range(0.01, 1.0))
                ->type_name("S")
                ->excludes(overlap);
            CLI::Option* tta = sub.add_flag(
                "--tta", opt->tta,
                "Mirroring test-time augmentation: the mean over the flips (8 in 3-D; 8 times slower). On by default "
                "for nnU-Net models, over the axes their checkpoint allows");
            sub.add_flag("--disable-tta", opt->disable_tta,
                         "No mirroring (nnU-Net's flag; run folders mirror only with --tta)")
                ->excludes(tta);
            sub.add_flag("--save-probabilities", opt->save_probabilities,
                         "Also write <case>_probabilities.nii.gz: the softmax, float32, classes along the 4th axis");
            CLI::Option* overwrite = sub.add_flag("--overwrite", opt->overwrite,
                                                  "Replace outputs that already exist in --out (never an input file)");
            CLI::Option* num_parts =
                sub.add_option(
                       "--num-parts", opt->num_parts,
                       "Split the cases into N disjoint shares balanced by file size, for N jobs (with --part-id)")
                    ->check(number_above_zero())
                    ->capture_default_str();
            sub.add_option("--part-id", opt->part_id, "Which share this job segments, 0 to N-1 (with --num-parts)")
                ->check(number_above_zero(false))
                ->needs(num_parts)
                ->capture_default_str();
            sub.add_flag("--continue", opt->skip_existing,
                         "Skip cases whose outputs already exist in --out (resume an interrupted prediction)")
                ->excludes(overwrite);
            return [opt](const GlobalOptions& global) { return run_predict(*opt, global); };
          }};
}

}  // namespace voxgrad::cli
