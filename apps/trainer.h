// `voxgrad train`: nnU-Net's training recipe on a dataset folder. Preprocesses the cases (apps/
// train_data), samples patches on a background thread (io/patch_sampler), runs forward, loss
// (with deep supervision when asked), backward and the optimizer step, validates each epoch with
// sliding-window inference, and keeps the run folder up to date: config.json, log.csv,
// metrics.json, checkpoint_latest / checkpoint_best (training checkpoints), model_best (weights)
// and training_curve.svg. Ctrl-C (or SIGTERM) saves checkpoint_latest after the current step; a
// NaN or Inf loss stops the run before anything is saved from it.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>

#include "apps/cli.h"
#include "io/resample.h"

namespace voxgrad::apps {

struct TrainOptions {
  std::string data;  // dataset folder (dataset.json)
  std::string out;   // run folder
  std::string loss = "dice_ce";
  std::optional<io::Shape3> patch;  // unset: from the dataset's median shape (see train_data.h)
  std::int64_t batch_size = 2;
  std::int64_t epochs = 50;
  std::int64_t iters_per_epoch = 250;
  std::optional<double> lr;  // unset: 0.01 for sgd, 3e-4 for adam
  std::string optim = "sgd";
  int base = 32;
  int levels = 4;
  std::string norm = "zscore";
  bool deep_supervision = false;
  std::uint64_t seed = 0;
  bool resume = false;
  // Flags the user gave explicitly ("--lr"): with --resume, any of them that disagrees with the
  // run's config.json is an error, except --epochs (the schedule then stretches, with a warning).
  std::set<std::string> given;
};

// Exit status: 0 when every epoch ran, 130 when interrupted (checkpoint_latest saved), and an
// Error (status 1) for bad input or a non-finite loss.
int run_train(const TrainOptions& options, const GlobalOptions& global);

// nnU-Net's deep-supervision weights for `outputs` heads (highest resolution first): 1 / 2^i, the
// lowest resolution 0, normalised to sum 1; {1} for a single output.
std::vector<double> deep_supervision_weights(int outputs);

}  // namespace voxgrad::apps
