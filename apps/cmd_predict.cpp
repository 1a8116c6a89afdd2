// `voxgrad predict --model RUN --input FILE_OR_DIR --out DIR`: segments new volumes with a trained
// run: the run's preprocessing, sliding-window inference with Gaussian weighting (optionally with
// mirroring test-time augmentation), the logits resampled back to the input's grid, and one label
// NIfTI per case with the input's dims and affine (plus the softmax probabilities when asked).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "apps/cli.h"
#include "apps/cli_checks.h"
#include "apps/output_folder.h"
#include "apps/run_config.h"
#include "apps/sliding_window.h"
#include "engine/autograd.h"
#include "engine/checkpoint.h"
#include "engine/device.h"
#include "engine/error.h"
#include "engine/files.h"
#include "engine/json.h"
#include "engine/log.h"
#include "engine/memory_budget.h"
#include "engine/metrics.h"
#include "engine/ops.h"
#include "io/dataset.h"
#include "io/image_health.h"
#include "io/nifti.h"
#include "io/preprocess.h"
#include "io/volume.h"
#include "models/unet3d.h"

namespace voxgrad::apps {

namespace {

namespace fs = std::filesystem;

struct PredictOptions {
  std::string model;  // run folder
  std::string checkpoint = "best";
  std::string input;
  std::string out;
  double overlap = 0.5;
  bool tta = false;
  bool save_probabilities = false;
  bool overwrite = false;    // replace outputs that exist (never an input)
  bool skip_existing = false;  // --continue: skip cases whose outputs all exist
};

struct InputCase {
  std::string id;
  std::vector<std::string> files;  // one per channel
};

bool is_nifti_name(const std::string& name) {
  return name.ends_with(".nii.gz") || name.ends_with(".nii");
}

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
      VG_INPUT_CHECK(ids.insert(id).second, "--input " << input << ": case " << id
                                                       << " is there twice (.nii and .nii.gz); keep one");
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

// The channels of one case as (C, Z, Y, X) float32, with the first file's geometry.
struct LoadedCase {
  Tensor image;
  io::Volume reference;  // the first channel as read: dims, affine and spacing for the output
};

LoadedCase load_case(const InputCase& c) {
  LoadedCase loaded;
  std::vector<Tensor> channels;
  for (const std::string& file : c.files) {
    io::Volume v = io::read_nifti(file);
    // 3-D volumes, single slices (2-D, as train takes them) and 4-D files holding one volume.
    VG_INPUT_CHECK(v.ndim() == 2 || v.ndim() == 3 || (v.ndim() == 4 && v.data.size(0) == 1),
                   file << ": a " << v.ndim() << "-D image; voxgrad predict takes 2-D slices and 3-D volumes");
    Tensor data = v.to_float32();
    data = v.ndim() == 2 ? reshape(data, {1, data.size(0), data.size(1)})
                         : reshape(data, {data.size(-3), data.size(-2), data.size(-1)});
    if (!channels.empty()) {
      VG_INPUT_CHECK(data.shape() == channels[0].shape(), file << ": dims differ from " << c.files[0]);
      VG_INPUT_CHECK(io::affines_close(v.affine, loaded.reference.affine, 1e-4),
                     file << ": its affine differs from " << c.files[0] << "'s (the channels must share one grid)");
    }
    channels.push_back(data);
    if (loaded.reference.data.defined()) continue;
    loaded.reference = v;
  }
  const Shape spatial = channels[0].shape();
  Tensor image = empty({static_cast<std::int64_t>(channels.size()), spatial[0], spatial[1], spatial[2]});
  const std::int64_t n = channels[0].numel();
  for (std::size_t ch = 0; ch < channels.size(); ++ch)
    std::copy_n(channels[ch].data<float>(), n, image.data<float>() + static_cast<std::int64_t>(ch) * n);
  loaded.image = image;
  return loaded;
}

// The run's weights: model_best (weights only) or the model part of checkpoint_latest; either
// file's checksum is verified as it loads.
void load_weights(UNet3d& model, const PredictOptions& o) {
  std::error_code ec;
  if (o.checkpoint == "best") {
    const std::string path = run_file(o.model, "model_best.safetensors");
    VG_INPUT_CHECK(fs::exists(path, ec),
                   path << ": missing (the run has no validated epoch yet; try --checkpoint latest)");
    load_model(path, model);
    return;
  }
  const std::string path = run_file(o.model, "checkpoint_latest.safetensors");
  VG_INPUT_CHECK(fs::exists(path, ec), path << ": missing (is " << o.model << " a voxgrad train --out folder?)");
  load_checkpoint_weights(path, model);
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

// One case: read, preprocess, sliding-window inference, back to the input's grid, written.
Json predict_case(UNet3d& model, const RunConfig& config, const PredictOptions& o, const InputCase& c, Device dev,
                  const std::function<void(const std::string&)>& progress) {
  const LoadedCase loaded = load_case(c);
  if (loaded.reference.intent_code == 1002)
    logging::warning(c.files[0] + " is marked as a label map (NIfTI intent 1002); predicting on it anyway");
  const io::Spacing3 spacing = io::spacing_zyx(loaded.reference.spacing);
  const io::PreprocessedCase pre = io::preprocess_case(loaded.image, Tensor(), spacing, config.plan, c.files[0]);
  // Non-finite voxels (set to 0), an image with no finite voxel or one value everywhere: the
  // prediction still comes, but the user hears why it may be empty.
  for (const std::string& warning : io::health_warnings(pre.health, c.files)) logging::warning(warning);
  SlidingWindowOptions sw;
  sw.patch = config.training.patch;
  sw.overlap = o.overlap;
  sw.mirror = o.tta;
  // Whole volumes can take a while on a CPU: the case bar also counts the windows.
  sw.on_window = [&](std::int64_t done, std::int64_t total) {
    progress(c.id + " window " + std::to_string(done) + "/" + std::to_string(total));
  };
  Tensor logits = sliding_window_logits(model, pre.image, sw, dev);
  const io::Shape3 original = pre.original_shape;
  if (logits.size(1) != original[0] || logits.size(2) != original[1] || logits.size(3) != original[2]) {
    memory::check_fits(memory::saturating_product({logits.size(0), original[0], original[1], original[2], 4}),
                       c.files[0] + ": resampling the prediction back to the input's grid");
    logits = io::resample_image(logits, original);
  }

  // The engine's argmax (the first class on ties) and softmax over the class axis.
  Shape batched = logits.shape();
  batched.insert(batched.begin(), 1);
  Tensor labels = argmax_classes(reshape(logits, batched));
  if (config.plan.classes <= 256) labels = labels.to(DType::UInt8);
  const Tensor probabilities = o.save_probabilities ? softmax(logits, 0) : Tensor();

  const CaseOutputs paths = outputs_of(o, c);
  io::Volume out = io::make_volume(reshape(labels, loaded.reference.data.shape()), loaded.reference.affine);
  out.spacing = loaded.reference.spacing;
  out.xyzt_units = loaded.reference.xyzt_units;
  out.intent_code = 1002;  // NIFTI_INTENT_LABEL: viewers show it as a label map
  io::write_nifti(paths.labels, out);
  Json entry = {{"case", c.id}, {"labels", paths.labels}};
  if (probabilities.defined()) {
    io::Volume prob = io::make_volume(probabilities, loaded.reference.affine);
    for (int a = 0; a < 3; ++a) prob.spacing[a] = spacing[2 - a];
    io::write_nifti(paths.probabilities, prob, io::NiftiWriteType::Float32);
    entry["probabilities"] = paths.probabilities;
  }
  return entry;
}

int run_predict(const PredictOptions& o, const GlobalOptions& global) {
  // The command line first (exit 2), then the model and the inputs, then the outputs' places;
  // nothing is written before every check has passed.
  std::error_code ec;
  VG_USAGE_CHECK(fs::is_directory(o.model, ec), "--model '" << o.model << "': no such run folder");
  const Device dev = resolve_device(global.device);
  const RunConfig config = read_run_config(o.model);
  const std::vector<InputCase> cases = find_inputs(o.input, config.model.in_channels);
  OutputFolder folder(o.out, "--out");

  files::InputFiles inputs;
  for (const InputCase& c : cases)
    for (const std::string& f : c.files) inputs.add(f);
  for (const char* f : {"config.json", "model_best.safetensors", "checkpoint_latest.safetensors"})
    inputs.add(run_file(o.model, f));
  const std::vector<std::size_t> todo = cases_to_run(o, cases, inputs);
  if (todo.size() < cases.size())
    logging::info("--continue: " + std::to_string(cases.size() - todo.size()) + " of " + std::to_string(cases.size()) +
                  " cases already have their outputs; skipping them");

  UNet3d model(config.model);
  load_weights(model, o);
  model.to(dev);
  model.eval();

  Json written = Json::array();
  std::vector<std::string> failed;
  logging::ProgressBar bar("predict", static_cast<std::int64_t>(todo.size()), "case");
  for (std::size_t k = 0; k < todo.size(); ++k) {
    const InputCase& c = cases[todo[k]];
    const auto progress = [&](const std::string& fields) { bar.update(static_cast<std::int64_t>(k), fields); };
    // A bad case is reported and the others still run; the status says that something failed.
    try {
      written.push_back(predict_case(model, config, o, c, dev, progress));
      folder.keep();
    } catch (const Error& e) {
      logging::error("case " + c.id + ": " + e.what());
      failed.push_back(c.id);
    }
    bar.update(static_cast<std::int64_t>(k + 1), c.id);
  }
  bar.finish();
  write_json_line(std::cout, {{"out", o.out},
                              {"cases", static_cast<std::int64_t>(written.size())},
                              {"skipped", static_cast<std::int64_t>(cases.size() - todo.size())},
                              {"failed", failed},
                              {"files", written}});
  if (failed.empty()) return kExitOk;
  std::string list;
  for (const std::string& id : failed) list += (list.empty() ? "" : ", ") + id;
  logging::error(std::to_string(failed.size()) + " of " + std::to_string(todo.size()) + " cases failed: " + list);
  return kExitFailure;
}

}  // namespace

Command predict_command() {
  return {"predict",
          "Segment volumes with a trained run: its preprocessing, Gaussian-weighted sliding-window inference, optional "
          "mirroring TTA, one label NIfTI per case on the input's grid",
          [](CLI::App& sub) -> RunFn {
            auto opt = std::make_shared<PredictOptions>();
            sub.add_option("--model", opt->model, "Run folder written by voxgrad train")->type_name("RUN")->required();
            sub.add_option("--checkpoint", opt->checkpoint,
                           "best (model_best.safetensors) or latest (checkpoint_latest.safetensors)")
                ->check(one_of({"best", "latest"}))
                ->capture_default_str();
            sub.add_option("--input", opt->input,
                           "A .nii/.nii.gz volume, or a folder of them (<case>_0000.nii.gz ... for several channels)")
                ->type_name("FILE_OR_DIR")
                ->required();
            sub.add_option("--out", opt->out, "Folder for <case>.nii.gz (created when missing)")
                ->type_name("DIR")
                ->required();
            sub.add_option("--overlap", opt->overlap, "Sliding-window overlap in [0, 1)")
                ->check(number_in_range(0.0, 0.99))
                ->capture_default_str();
            sub.add_flag("--tta", opt->tta, "Mirroring test-time augmentation (mean over the 8 flips; 8 times slower)");
            sub.add_flag("--save-probabilities", opt->save_probabilities,
                         "Also write <case>_probabilities.nii.gz: the softmax, float32, classes along the 4th axis");
            CLI::Option* overwrite = sub.add_flag(
                "--overwrite", opt->overwrite, "Replace outputs that already exist in --out (never an input file)");
            sub.add_flag("--continue", opt->skip_existing,
                         "Skip cases whose outputs already exist in --out (resume an interrupted prediction)")
                ->excludes(overwrite);
            return [opt](const GlobalOptions& global) { return run_predict(*opt, global); };
          }};
}

}  // namespace voxgrad::apps
