// `voxgrad train --data DIR --out RUN`: the command line of apps/trainer (nnU-Net's recipe on a
// dataset folder, with the loss of the user's choice).
#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <vector>

#include "apps/cli.h"
#include "apps/cli_checks.h"
#include "apps/trainer.h"

namespace voxgrad::apps {

namespace {

// "--patch 32,64,64" or "--patch 48" (a cube).
CLI::Validator patch_validator() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        std::vector<std::int64_t> v;
        std::size_t start = 0;
        while (start <= text.size()) {
          const std::size_t end = std::min(text.find(',', start), text.size());
          std::int64_t x = 0;
          if (!CLI::detail::lexical_cast(text.substr(start, end - start), x) || x < 1)
            return "'" + text + "' is not D,H,W or S (positive integers)";
          v.push_back(x);
          start = end + 1;
        }
        if (v.size() != 1 && v.size() != 3) return "'" + text + "' is not D,H,W or S";
        return "";
      },
      "D,H,W|S");
}

io::Shape3 parse_patch(const std::string& text) {
  std::vector<std::int64_t> v;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t end = std::min(text.find(',', start), text.size());
    v.push_back(std::stoll(text.substr(start, end - start)));
    start = end + 1;
  }
  return v.size() == 1 ? io::Shape3{v[0], v[0], v[0]} : io::Shape3{v[0], v[1], v[2]};
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
            sub.add_option("--data", opt->data, "Dataset folder holding dataset.json (nnU-Net v2 raw or MSD layout)")
                ->type_name("DIR");
            sub.add_option("--out", opt->out, "Run folder: config.json, log.csv, metrics.json, checkpoints, curve")
                ->type_name("RUN")
                ->required();
            sub.add_option("--loss", opt->loss, "ce, wce, dice, jaccard, lovasz or dice_ce")
                ->check(CLI::IsMember({"ce", "wce", "dice", "jaccard", "lovasz", "dice_ce"}))
                ->capture_default_str();
            sub.add_option("--patch", *patch, "Patch size D,H,W or S (default: from the median case shape, <= 128)")
                ->check(patch_validator());
            sub.add_option("--batch-size", opt->batch_size, "Patches per step")->check(number_above_zero())->capture_default_str();
            sub.add_option("--epochs", opt->epochs, "Epochs")->check(number_above_zero())->capture_default_str();
            sub.add_option("--iters-per-epoch", opt->iters_per_epoch, "Steps per epoch")
                ->check(number_above_zero())
                ->capture_default_str();
            sub.add_option("--lr", *lr, "Initial learning rate, decayed by poly(0.9) per epoch (default 0.01 sgd, 3e-4 adam)")
                ->check(number_above_zero());
            sub.add_option("--optim", opt->optim, "sgd (momentum 0.99, Nesterov) or adam")
                ->check(CLI::IsMember({"sgd", "adam"}))
                ->capture_default_str();
            sub.add_option("--base", opt->base, "Features at full resolution (doubled per level, capped at 320)")
                ->check(CLI::Range(1, 320))
                ->capture_default_str();
            sub.add_option("--levels", opt->levels, "Resolution levels of the U-Net (levels - 1 downsamplings)")
                ->check(CLI::Range(1, 7))
                ->capture_default_str();
            sub.add_option("--norm", opt->norm, "Intensity normalisation: zscore (per case) or ct (dataset percentiles)")
                ->check(CLI::IsMember({"zscore", "ct"}))
                ->capture_default_str();
            sub.add_flag("--deep-supervision", opt->deep_supervision,
                         "Add the loss of every decoder level (nnU-Net's weights 1/2^i, lowest 0)");
            sub.add_option("--seed", opt->seed, "Seed of the initial weights, the validation split and the sampler")
                ->capture_default_str();
            sub.add_flag("--resume", opt->resume, "Continue RUN from checkpoint_latest.safetensors");
            return [opt, patch, lr, &sub](const GlobalOptions& global) {
              for (const char* flag : {"--data", "--loss", "--patch", "--batch-size", "--epochs", "--iters-per-epoch",
                                       "--lr", "--optim", "--base", "--levels", "--norm", "--deep-supervision",
                                       "--seed"})
                if (sub.count(flag) > 0) opt->given.insert(flag);
              if (!patch->empty()) opt->patch = parse_patch(*patch);
              if (sub.count("--lr") > 0) opt->lr = *lr;
              return run_train(*opt, global);
            };
          }};
}

}  // namespace voxgrad::apps
