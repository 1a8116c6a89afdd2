// The loss options `voxgrad grad` and `voxgrad train` share, under one spelling and one help text:
// --loss-classes (grad also answers to its older --classes), --aggregate, --eps, --class-weights,
// --ce-weight, --dice-weight and --ignore-label.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace voxgrad::cli {

// What the flags hold after parsing; whether each was given is CLI::App::count's answer.
struct LossFlags {
  std::string classes, aggregate;  // empty: the loss's default
  double eps = 1e-5;
  std::string class_weights = "auto";  // "auto" or w0,w1,... (validated)
  double ce_weight = 1.0, dice_weight = 1.0;
  std::int32_t ignore_label = 0;
};

// `auto_weights` says what --class-weights auto means for the command.
void add_loss_flags(CLI::App& sub, LossFlags& flags, bool classes_alias, const std::string& auto_weights);

// --class-weights as numbers; nullopt for "auto".
std::optional<std::vector<double>> class_weights_of(const std::string& text);

}  // namespace voxgrad::cli
