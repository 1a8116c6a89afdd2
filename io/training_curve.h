// The training-curve picture a run folder gets: the mean training loss and the validation Dice of
// each epoch, as a self-contained SVG (two panels sharing the epoch axis) that any browser opens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace voxgrad::io {

struct EpochPoint {
  std::int64_t epoch = 0;   // as the caller counts them (voxgrad train: from 1)
  double train_loss = 0.0;  // NaN: not plotted
  double val_dice = 0.0;    // foreground mean Dice; NaN: not plotted
};

// The SVG text: loss panel above (its own y range), Dice panel below (0..1), axes with ticks and
// labels, the title on top. An empty `points` gives a picture saying "no epochs yet".
std::string training_curve_svg(const std::vector<EpochPoint>& points, const std::string& title);

// Writes training_curve_svg atomically to `path`.
void write_training_curve_svg(const std::string& path, const std::vector<EpochPoint>& points,
                              const std::string& title);

}  // namespace voxgrad::io
