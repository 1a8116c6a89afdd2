// `voxgrad train --data DIR --out RUN`: the command line of voxgrad::Trainer (nnU-Net's recipe on a
// dataset folder, with the loss of the user's choice). Ctrl-C, SIGTERM and SIGHUP stop the run after
// its current step with checkpoint_latest saved (exit 130); one JSON line on stdout when it ends.
#include <CLI/CLI.hpp>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "apps/cli/cli.h"
#include "apps/cli/cli_checks.h"
#include "apps/cli/interrupt.h"
#include "apps/cli/loss_flags.h"
#include "apps/distributed/failure.h"
#include "apps/distributed/mpi_world.h"
#include "apps/distributed/nccl_world.h"
#include "apps/pipeline/run_history.h"
#include "apps/pipeline/trainer.h"
#include "engine/device.h"
#include "engine/json.h"
#include "engine/log.h"

namespace voxgrad::cli {

namespace {

// The loss flags given on the command line, as the Trainer's options (unset ones stay the loss's
// defaults; the Trainer refuses those the loss does not use).
void apply_loss_flags(const LossFlags& f, const CLI::App& sub, TrainOptions& o) {
  auto given = [&](const char* flag) { return sub.count(flag) > 0; };
  if (given("--loss-classes")) o.loss_classes = f.classes;
  if (given("--aggregate")) o.aggregate = f.aggregate;
  if (given("--eps")) o.eps = f.eps;
  if (given("--class-weights")) o.class_weights = class_weights_of(f.class_weights).value_or(std::vector<double>{});
  if (given("--ce-weight")) o.ce_weight = f.ce_weight;
  if (given("--dice-weight")) o.dice_weight = f.dice_weight;
  if (given("--ignore-label")) o.ignore_label = f.ignore_label;
}

constexpr int kExitInterrupted = 130;  // 128 + SIGINT, what shells report for Ctrl-C

int run_train(TrainOptions options, bool distributed, const GlobalOptions& global) {
  options.device = global.device;
  std::shared_ptr<Communicator> comm;
  if (distributed) {
    comm = distributed::mpi_world("--distributed");
    if (comm->rank() != 0) logging::set_sink(logging::silent_sink());  // rank 0 speaks for the job
  }
  const bool rank0 = comm == nullptr || comm->rank() == 0;  // the rank that speaks and writes
  InterruptGuard interrupt;
  TrainResult r;
  try {
    if (comm) comm = distributed::communicator_for(comm, options.device);
    Trainer trainer(options, rank0 ? logging::stderr_sink() : logging::silent_sink());
    trainer.set_communicator(comm);
    trainer.set_stop_check(&InterruptGuard::requested);
    r = trainer.run();
  } catch (const std::exception& e) {
    if (comm == nullptr || comm->size() == 1) throw;
    return distributed::handle_failure(e, *comm);
  }
  if (r.status == TrainResult::Status::AlreadyComplete) return kExitOk;
  if (r.status == TrainResult::Status::Stopped) {
    if (rank0) logging::info("continue with `voxgrad train --out " + options.out + " --resume`");
    return kExitInterrupted;
  }
  if (!rank0) return kExitOk;
  write_json_line(std::cout, {{"out", options.out},
                              {"epochs", r.epochs},
                              {"steps", r.steps},
                              {"train_loss", pipeline::number_or_null(r.train_loss)},
                              {"val_dice", pipeline::number_or_null(r.val_dice)},
                              {"best_epoch", r.best_epoch > 0 ? Json(r.best_epoch) : Json(nullptr)},
                              {"best_val_dice", r.best_epoch > 0 ? Json(r.best_val_dice) : Json(nullptr)}});
  return kExitOk;
}

}  // namespace

Command train_command() {
  return {"train",
          "Train a 3D U-Net on a dataset folder (nnU-Net v2 or MSD layout) with nnU-Net's preprocessing, patch "
          "sampling and schedule, and the loss of your choice",
          [](CLI::App& sub) -> RunFn {
            auto opt = std::make_shared<TrainOptions>();
            auto patch = std::make_shared<std::string>();
            auto lr = std::make_shared<double>(0.0);
            auto loss_flags = std::make_shared<LossFlags>();
            auto data_seed = std::make_shared<std::uint64_t>(0);
            auto distributed = std::make_shared<bool>(false);
            sub.add_option("--data", opt->data, "Dataset folder holding dataset.json (nnU-Net v2 raw or MSD layout)")
                ->type_name("DIR");
            sub.add_option("--out", opt->out, "Run folder: config.json, log.csv, metrics.json, checkpoints, curve")
                ->type_name("RUN")
                ->required();
            sub.add_option("--loss", opt->loss, "ce, wce, dice, jaccard, lovasz or dice_ce")
                ->check(one_of({"ce", "wce", "dice", "jaccard", "lovasz", "dice_ce"}))
                ->capture_default_str();
            sub.add_option("--patch", *patch, "Patch size D,H,W or S (default: from the median case shape, <= 128)")
                ->check(patch_validator());
            sub.add_option("--batch-size", opt->batch_size, "Patches per step")
                ->check(number_above_zero())
                ->capture_default_str();
            sub.add_option("--epochs", opt->epochs, "Epochs")->check(number_above_zero())->capture_default_str();
            sub.add_option("--iters-per-epoch", opt->iters_per_epoch, "Steps per epoch")
                ->check(number_above_zero())
                ->capture_default_str();
            sub.add_option("--lr", *lr,
                           "Initial learning rate, decayed by poly(0.9) per epoch (default 0.01 sgd, 3e-4 adam)")
                ->check(number_above_zero());
            sub.add_option("--optim", opt->optim, "sgd (momentum 0.99, Nesterov) or adam")
                ->check(one_of({"sgd", "adam"}))
                ->capture_default_str();
            sub.add_option("--base", opt->base, "Features at full resolution (doubled per level, capped at 320)")
                ->check(number_in_range(1, 320))
                ->capture_default_str();
            sub.add_option("--levels", opt->levels, "Resolution levels of the U-Net, 2 to 7 (levels - 1 downsamplings)")
                ->check(number_in_range(2, 7))
                ->capture_default_str();
            sub.add_option("--norm", opt->norm,
                           "Intensity normalisation: zscore (per case) or ct (dataset percentiles)")
                ->check(one_of({"zscore", "ct"}))
                ->capture_default_str();
            sub.add_flag("--deep-supervision", opt->deep_supervision,
                         "Add the loss of every decoder level (nnU-Net's weights 1/2^i, lowest 0)");
            add_loss_flags(sub, *loss_flags, /*classes_alias=*/false,
                           "inverse class frequency over the training cases, computed once");
            sub.add_option("--seed", opt->seed,
                           "Seed of the initial weights (and of the validation split and the sampler unless "
                           "--data-seed)")
                ->check(whole_number(0, std::numeric_limits<std::uint64_t>::max()))
                ->capture_default_str();
            sub.add_option("--data-seed", *data_seed,
                           "Seed of the validation split and the patch sampler (default: --seed)")
                ->check(whole_number(0, std::numeric_limits<std::uint64_t>::max()));
            sub.add_option("--init-from", opt->init_from,
                           "Start from the weights of run RUN (its checkpoint_latest) with a fresh optimizer and "
                           "schedule, e.g. to fine-tune a cross-entropy run with another loss")
                ->type_name("RUN");
            sub.add_flag("--log-grad-norms", opt->log_grad_norms,
                         "Write each layer's gradient norm (before clipping), averaged per epoch, to "
                         "RUN/grad_norms.csv");
            sub.add_flag("--resume", opt->resume, "Continue RUN from checkpoint_latest.safetensors");
            sub.add_option("--bucket-mb", opt->bucket_mb,
                           "With --distributed: MB of gradients per all-reduce, started while the backward pass "
                           "goes on")
                ->check(CLI::Range(0.01, 4096.0))
                ->capture_default_str();
            sub.add_flag("--distributed", *distributed,
                         "Data-parallel training: run as mpirun -np P voxgrad train ... (or under srun); the "
                         "--batch-size patches of every step are split across the P ranks and their gradients "
                         "averaged, rank 0 writes RUN");
            return [opt, patch, lr, loss_flags, data_seed, distributed, &sub](const GlobalOptions& global) {
              for (const char* flag :
                   {"--data", "--loss", "--patch", "--batch-size", "--epochs", "--iters-per-epoch", "--lr", "--optim",
                    "--base", "--levels", "--norm", "--deep-supervision", "--seed", "--log-grad-norms"})
                if (sub.count(flag) > 0) opt->given.insert(flag);
              if (!patch->empty()) opt->patch = parse_patch(*patch);  // validated above
              if (sub.count("--lr") > 0) opt->lr = *lr;
              if (sub.count("--data-seed") > 0) opt->data_seed = *data_seed;
              apply_loss_flags(*loss_flags, sub, *opt);
              return run_train(*opt, *distributed, global);
            };
          }};
}

}  // namespace voxgrad::cli
