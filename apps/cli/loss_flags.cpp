// The shared loss flags: one definition, so grad's and train's spellings and help never drift.
#include "apps/cli/loss_flags.h"

#include <cmath>

#include "apps/cli/cli_checks.h"

namespace voxgrad::cli {

namespace {

// "auto", or comma-separated finite numbers >= 0; the numbers, or the reason they are not.
std::string parse_weights(const std::string& text, std::vector<double>& weights) {
  weights.clear();
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = text.find(',', start);
    const std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    double w = 0;
    if (std::string err = detail::parse_finite(item, w); !err.empty()) return err;
    if (w < 0) return "weights must be zero or more, got " + item;
    weights.push_back(w);
    if (comma == std::string::npos) return "";
    start = comma + 1;
  }
}

CLI::Validator class_weights_validator() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        if (text == "auto") return "";
        std::vector<double> weights;
        const std::string err = parse_weights(text, weights);
        return err.empty() ? "" : "'" + text + "' is not auto or w0,w1,...: " + err;
      },
      "auto|w0,w1,...");
}

}  // namespace

void add_loss_flags(CLI::App& sub, LossFlags& f, bool classes_alias, const std::string& auto_weights) {
  sub.add_option(classes_alias ? "--loss-classes,--classes" : "--loss-classes", f.classes,
                 "Classes a region loss averages: all, fg (all but 0), present (default: fg for dice, jaccard, "
                 "dice_ce; present for lovasz)")
      ->check(one_of({"all", "fg", "present"}));
  sub.add_option("--aggregate", f.aggregate,
                 "One set per image or one over the batch (default: per-image for dice, jaccard, dice_ce, "
                 "lovasz_hinge; batch for lovasz)")
      ->check(one_of({"per-image", "batch"}));
  sub.add_option("--eps", f.eps, "Dice and Jaccard smoothing")->check(number_above_zero(false))->capture_default_str();
  sub.add_option("--class-weights", f.class_weights,
                 "wce: one weight per class, w0,w1,..., or auto (" + auto_weights + ")")
      ->check(class_weights_validator())
      ->capture_default_str();
  sub.add_option("--ce-weight", f.ce_weight, "dice_ce: weight of the cross-entropy part")
      ->check(number_above_zero(false))
      ->capture_default_str();
  sub.add_option("--dice-weight", f.dice_weight, "dice_ce: weight of the Dice part")
      ->check(number_above_zero(false))
      ->capture_default_str();
  sub.add_option("--ignore-label", f.ignore_label, "Voxels with this label take no part");
}

std::optional<std::vector<double>> class_weights_of(const std::string& text) {
  if (text == "auto") return std::nullopt;
  std::vector<double> weights;
  parse_weights(text, weights);  // validated when parsed
  return weights;
}

}  // namespace voxgrad::cli
