// What a training run folder's config.json records: the dataset it learned from, the network, the
// preprocessing plan and the training settings. `voxgrad train --resume` continues from it and
// `voxgrad predict` rebuilds the network and repeats the preprocessing from it.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "apps/pipeline/preprocess.h"
#include "engine/json.h"
#include "engine/losses.h"
#include "models/unet3d.h"

namespace voxgrad::pipeline {

// The loss's settings as the run used them, every default resolved (engine/losses.h): a run folder
// says exactly what was optimised. Runs recorded before these settings existed read as the
// defaults they ran with, wce weighting each batch by its own inverse class frequency.
struct LossSettings {
  std::string classes = "all";      // all | fg | present (region losses)
  std::string aggregate = "batch";  // per-image | batch (region losses)
  double eps = 1e-5;                // Dice and Jaccard smoothing
  // wce: one weight per class; empty: each batch's inverse class frequency (older runs only).
  std::vector<double> class_weights;
  std::string class_weights_from;             // "auto" (inverse frequency over the training cases), "given", or ""
  double ce_weight = 1.0, dice_weight = 1.0;  // dice_ce
  std::optional<std::int32_t> ignore_label;
};

struct TrainingSettings {
  std::string loss = "dice_ce";
  LossSettings loss_options;
  Shape3 patch{64, 64, 64};  // D, H, W
  std::int64_t batch_size = 2;
  std::int64_t epochs = 50;
  std::int64_t iters_per_epoch = 250;
  double lr = 0.01;
  std::string optim = "sgd";  // sgd (momentum 0.99, Nesterov, nnU-Net) | adam
  double weight_decay = 3e-5;
  double grad_clip = 12.0;  // nnU-Net clips the gradient norm at 12
  std::uint64_t seed = 0;   // the initial weights
  std::uint64_t data_seed = 0;  // the validation split and the patch sampler
  std::string init_from;        // the weights file the run started from; empty: seeded initialisation
  bool log_grad_norms = false;  // per-layer gradient norms per epoch in grad_norms.csv
  std::vector<std::string> train_cases, val_cases;  // case ids; may overlap when only one case exists
};

struct RunConfig {
  std::string dataset_root;
  std::string dataset_name;
  std::vector<std::string> channels;   // channel index -> name
  std::map<int, std::string> labels;   // value -> name
  UNet3dConfig model;
  PreprocessPlan plan;
  TrainingSettings training;
};

inline constexpr const char* kRunConfigFormat = "voxgrad-run-1";

Json run_config_to_json(const RunConfig& config);
// Throws an Error naming `source` (the file) and the key that is missing or of the wrong type.
RunConfig run_config_from_json(const Json& json, const std::string& source);
Json loss_settings_to_json(const LossSettings& s);
// The engine's options for the recorded settings.
LossOptions loss_options_of(const LossSettings& s);

// RUN/config.json: written atomically; read with one clear error when missing or malformed.
std::string run_config_path(const std::string& run_dir);
void write_run_config(const std::string& run_dir, const RunConfig& config);
RunConfig read_run_config(const std::string& run_dir);

// The files of a run folder.
std::string run_file(const std::string& run_dir, const std::string& name);  // run_dir/name

// The run's weights into `network`: `checkpoint` "best" is model_best (weights only), "latest" the
// model part of checkpoint_latest; either file's checksum is verified as it loads, and files of runs
// written with UNet3d's former names load too (unet3d_migrate_names).
void load_run_weights(UNet3d& network, const std::string& run_dir, const std::string& checkpoint);

}  // namespace voxgrad::pipeline
