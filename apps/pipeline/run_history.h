// The history of a training run: a record per finished epoch and the running state a resumed run
// needs (kept as JSON inside checkpoint_latest), and the reports written from it: log.csv,
// metrics.json and training_curve.svg, rewritten whole (atomically) after every epoch so they
// always agree with the checkpoint beside them.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "engine/json.h"

namespace voxgrad::pipeline {

// One finished epoch, as log.csv and metrics.json report it.
struct EpochRecord {
  std::int64_t epoch = 0;  // 1-based, as the progress lines count them
  double lr = 0.0;
  double train_loss = 0.0;
  double val_dice = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> val_dice_per_class;  // (K), NaN where undefined (background included, NaN)
  double seconds = 0.0;
  // With --log-grad-norms: per layer (TrainingProgress::grad_norm_layers), the mean over the
  // epoch's steps of the layer's gradient L2 norm before clipping; empty otherwise.
  std::vector<double> grad_norms;
};

// What checkpoint_latest holds besides tensors, as JSON in TrainingState::config.
struct TrainingProgress {
  std::vector<EpochRecord> history;
  double epoch_loss_sum = 0.0;  // over the iterations of the current epoch done so far
  double best_dice = -1.0;
  std::int64_t best_epoch = 0;  // 1-based; 0: none yet
  // --log-grad-norms: the layers (parameter names less their last part: "encoder.0.conv1") and the
  // current epoch's running sums of their per-step norms; both empty when not logging.
  std::vector<std::string> grad_norm_layers;
  std::vector<double> grad_norm_sums;
};

// The progress as the JSON string TrainingState::config holds, and back (an Error naming `source`
// when it is unreadable). Doubles are written with 17 significant digits: they come back bit for bit.
std::string progress_to_json(const TrainingProgress& p);
TrainingProgress progress_from_json(const std::string& text, const std::string& source);

// RUN/log.csv (epoch, lr, train_loss, val_dice, val_dice_<class> for classes 1..K-1, seconds),
// RUN/metrics.json (every epoch, the best) and RUN/training_curve.svg; with gradient norms logged,
// RUN/grad_norms.csv (epoch, then one column per layer).
void write_run_reports(const std::string& run_dir, const TrainingProgress& p, int classes, const std::string& title);

// JSON null for NaN and Inf, the number otherwise; and a number as CSV text ("nan" when not finite).
Json number_or_null(double v);
std::string csv_number(double v);

}  // namespace voxgrad::pipeline
