// Training as a library call: nnU-Net's recipe on a dataset folder (preprocessing, patches sampled on
// a background thread, forward, loss with optional deep supervision, backward, optimizer step, a
// sliding-window validation each epoch), keeping the run folder up to date: config.json, log.csv,
// metrics.json, checkpoint_latest / checkpoint_best, model_best and training_curve.svg. Installed as
// <voxgrad/trainer.h>; `voxgrad train` is one client of it.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "engine/communicator.h"
#include "engine/log.h"
#include "export.h"  // beside this header, here and where it is installed

namespace voxgrad {

// What to train. The fields are `voxgrad train`'s flags, and messages name them so ("--patch").
struct TrainOptions {
  std::string data;                                  // dataset folder (dataset.json, nnU-Net v2 or MSD layout)
  std::string out;                                   // run folder
  std::string device = "auto";                       // cpu | cuda | auto
  std::string loss = "dice_ce";                      // ce, wce, dice, jaccard, lovasz, dice_ce
  std::optional<std::array<std::int64_t, 3>> patch;  // D, H, W; unset: from the dataset's median shape
  std::int64_t batch_size = 2;
  std::int64_t epochs = 50;
  std::int64_t iters_per_epoch = 250;
  std::optional<double> lr;     // unset: 0.01 for sgd, 3e-4 for adam
  std::string optim = "sgd";    // sgd (Nesterov, momentum 0.99) or adam
  int base = 32;                // features at full resolution
  int levels = 4;               // resolution levels of the U-Net, 2 to 7
  std::string norm = "zscore";  // zscore or ct
  bool deep_supervision = false;
  // The loss's settings (engine/losses.h); unset: the loss's defaults. An option the loss does not
  // use is refused. All are recorded, resolved, in config.json.
  std::optional<std::string> loss_classes;  // all | fg | present: the classes a region loss averages
  std::optional<std::string> aggregate;     // per-image | batch: one set per image or per batch
  std::optional<double> eps;                // Dice and Jaccard smoothing (default 1e-5)
  // wce: one weight per class; unset or empty: inverse class frequency over the training cases,
  // computed once ("auto").
  std::optional<std::vector<double>> class_weights;
  std::optional<double> ce_weight, dice_weight;  // dice_ce (default 1 and 1)
  std::optional<std::int32_t> ignore_label;
  std::uint64_t seed = 0;                  // the initial weights
  std::optional<std::uint64_t> data_seed;  // the validation split and the sampler; unset: seed
  // A run folder (its checkpoint_latest weights) or a weights file (.safetensors) to start from,
  // with a fresh optimizer and schedule; the network must be the same.
  std::string init_from;
  // Write each layer's gradient norm (before clipping), averaged over every epoch's steps, to
  // RUN/grad_norms.csv: which loss starves which layer.
  bool log_grad_norms = false;
  bool resume = false;  // continue `out` from checkpoint_latest
  // Data-parallel training (set_communicator): the size of the gradient buckets whose all-reduce
  // starts while the backward pass goes on. Changes the speed, not the numbers.
  double bucket_mb = 4.0;
  // Options the caller set explicitly, by flag name ("--lr"): with `resume`, any of them that
  // disagrees with the run's config.json is an error, except --epochs (the schedule then stretches).
  std::set<std::string> given;
};

struct TrainResult {
  enum class Status {
    Completed,        // every epoch ran
    Stopped,          // stop() (or the stop check) ended it; checkpoint_latest holds the state
    AlreadyComplete,  // `resume` of a run that had done all its epochs: nothing ran
  };
  Status status = Status::Completed;
  std::string latest_checkpoint;  // checkpoint_latest.safetensors of the run
  std::int64_t epochs = 0;        // of the schedule
  std::int64_t steps = 0;         // done so far, over all sessions of the run
  double train_loss = 0;          // of the last epoch (NaN when none ended)
  double val_dice = 0;            // of the last epoch (NaN when none ended or no foreground)
  std::int64_t best_epoch = 0;    // 0 when no epoch has validated
  double best_val_dice = 0;       // NaN when best_epoch is 0
};

// One run. Every check (options, dataset, network, checkpoint) comes before the first write; the
// run folder is locked against a second process for the whole run. Errors throw voxgrad::Error
// (voxgrad::UsageError for a bad option, voxgrad::InputError for bad data or a non-finite loss).
class VG_API Trainer {
 public:
  // Messages and progress bars go to `sink` (logging::stderr_sink() is the command line's).
  explicit Trainer(TrainOptions options, logging::Sink& sink = logging::silent_sink());
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  TrainResult run();
  // From any thread (or a signal handler): the run saves checkpoint_latest after its current step
  // and returns Status::Stopped; `resume` continues it to the same numbers.
  void stop() { stop_requested_.store(true); }
  // Also stop when `check` returns true; polled after every step.
  void set_stop_check(std::function<bool()> check) { stop_check_ = std::move(check); }
  // Data-parallel training: this process is one of comm->size() ranks running the same options
  // together (a stop on any rank stops all). Each rank computes its share of every batch (the
  // batch size is the global batch, which the rank count must divide), the gradients are averaged
  // over the ranks in a fixed order, the validation cases are split among them, and rank 0 alone
  // writes the run folder. Null (the default): one process.
  void set_communicator(std::shared_ptr<Communicator> comm) { comm_ = std::move(comm); }

 private:
  TrainResult train();
  bool stop_requested() const { return stop_requested_.load() || (stop_check_ && stop_check_()); }
  TrainOptions options_;
  logging::Sink& sink_;
  std::shared_ptr<Communicator> comm_;
  bool started_together_ = false;  // the ranks agreed that every one of them started
  std::atomic<bool> stop_requested_{false};
  std::function<bool()> stop_check_;
};

// nnU-Net's deep-supervision weights for `outputs` heads (highest resolution first): 1 / 2^i, the
// lowest resolution 0, normalised to sum 1; {1} for a single output.
VG_API std::vector<double> deep_supervision_weights(int outputs);

}  // namespace voxgrad
