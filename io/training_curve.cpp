// The training-curve SVG: plain string building (no drawing library), two panels over a shared
// epoch axis, ticks at 1-2-5 steps, a gap in a line wherever a value is NaN, and an atomic write so
// a browser reloading the file mid-run never sees half a picture.
#include "io/training_curve.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <sstream>

#include "io/gzip_stream.h"
#include "io/svg_parts.h"

namespace voxgrad::io {

namespace {

// Canvas and panel geometry in SVG user units.
constexpr double kWidth = 800, kHeight = 520;
constexpr double kLeft = 78, kRight = 776;  // both panels' plot area, x
constexpr double kLossTop = 64, kLossBottom = 264;
constexpr double kDiceTop = 292, kDiceBottom = 462;
constexpr const char* kLossColour = "#1f77b4";
constexpr const char* kDiceColour = "#e6550d";

using svg::coord;
using svg::fixed;
using svg::line;
using svg::nice_ticks;
using svg::Scale;
using svg::text;
using svg::Ticks;
using svg::xml_escape;

struct Series {
  const char* name;
  const char* colour;
  double EpochPoint::*value;
};

// Frame, horizontal grid with value labels, vertical grid at the epoch ticks (labelled below the
// panel when `epoch_labels`), and the rotated axis title on the left.
void panel(std::ostringstream& svg, double top, double bottom, const Ticks& y_ticks, const Scale& y,
           const Ticks& x_ticks, const Scale& x, const std::string& y_title, bool epoch_labels) {
  auto frame = [&](const char* paint) {
    svg << "  <rect x=\"" << coord(kLeft) << "\" y=\"" << coord(top) << "\" width=\"" << coord(kRight - kLeft)
        << "\" height=\"" << coord(bottom - top) << "\" " << paint << "/>\n";
  };
  frame("fill=\"#fafafa\"");
  for (double v : y_ticks.values()) {
    const double py = y(v);
    line(svg, kLeft, py, kRight, py, "#e3e3e3");
    text(svg, kLeft - 8, py, fixed(v, y_ticks.decimals), "dy=\"0.35em\" text-anchor=\"end\"");
  }
  for (double v : x_ticks.values()) {
    const double px = x(v);
    line(svg, px, top, px, bottom, "#e3e3e3");
    if (epoch_labels) text(svg, px, bottom + 18, fixed(v, x_ticks.decimals), "text-anchor=\"middle\"");
  }
  frame("fill=\"none\" stroke=\"#999999\"");  // over the grid lines that end on it
  const double mid = (top + bottom) / 2;
  text(svg, 24, mid, xml_escape(y_title),
       "text-anchor=\"middle\" transform=\"rotate(-90 24 " + coord(mid) + ")\" font-size=\"14\"");
}

// One polyline per run of consecutive plottable points (NaN and infinities break the line), and a
// circle with a hover label on every plottable point.
void plot(std::ostringstream& svg, const std::vector<EpochPoint>& points, const Series& s, const Scale& x,
          const Scale& y, int decimals) {
  const double radius = points.size() > 100 ? 1.8 : 3.0;
  svg << "  <g class=\"series\" data-name=\"" << s.name << "\">\n";
  std::string run;
  auto flush = [&] {
    if (!run.empty())
      svg << "    <polyline fill=\"none\" stroke=\"" << s.colour
          << "\" stroke-width=\"2\" stroke-linejoin=\"round\" stroke-linecap=\"round\" points=\"" << run << "\"/>\n";
    run.clear();
  };
  for (const EpochPoint& p : points) {
    const double v = p.*s.value;
    if (!std::isfinite(v)) {
      flush();
      continue;
    }
    if (!run.empty()) run += ' ';
    run += coord(x(static_cast<double>(p.epoch))) + "," + coord(y(v));
  }
  flush();
  for (const EpochPoint& p : points) {
    const double v = p.*s.value;
    if (!std::isfinite(v)) continue;
    svg << "    <circle cx=\"" << coord(x(static_cast<double>(p.epoch))) << "\" cy=\"" << coord(y(v)) << "\" r=\""
        << fixed(radius, 1) << "\" fill=\"" << s.colour << "\"><title>epoch " << p.epoch << ": " << s.name << " "
        << fixed(v, decimals) << "</title></circle>\n";
  }
  svg << "  </g>\n";
}

}  // namespace

std::string training_curve_svg(const std::vector<EpochPoint>& points, const std::string& title) {
  std::ostringstream svg;
  svg::begin(svg, kWidth, kHeight, title);
  if (points.empty()) {
    text(svg, kWidth / 2, kHeight / 2, "no epochs yet", "text-anchor=\"middle\" font-size=\"16\" fill=\"#888888\"");
    svg << "</svg>\n";
    return svg.str();
  }

  // Drawn in epoch order, whatever order the caller collected them in.
  std::vector<EpochPoint> sorted = points;
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const EpochPoint& a, const EpochPoint& b) { return a.epoch < b.epoch; });

  const auto first_epoch = static_cast<double>(sorted.front().epoch);
  const double last_epoch = std::max(static_cast<double>(sorted.back().epoch), first_epoch + 1);
  const Ticks x_ticks = nice_ticks(first_epoch, last_epoch, 10, 1.0);  // whole epochs only
  const Scale x{x_ticks.lo, x_ticks.hi, kLeft, kRight};

  double loss_lo = INFINITY, loss_hi = -INFINITY;
  for (const EpochPoint& p : sorted)
    if (std::isfinite(p.train_loss))
      loss_lo = std::min(loss_lo, p.train_loss), loss_hi = std::max(loss_hi, p.train_loss);
  if (!std::isfinite(loss_lo)) loss_lo = 0, loss_hi = 1;
  const Ticks loss_ticks = nice_ticks(loss_lo, loss_hi, 5);
  const Scale loss_y{loss_ticks.lo, loss_ticks.hi, kLossBottom, kLossTop};
  Ticks dice_ticks;  // fixed 0 .. 1 in steps of 0.2
  const Scale dice_y{0.0, 1.0, kDiceBottom, kDiceTop};

  panel(svg, kLossTop, kLossBottom, loss_ticks, loss_y, x_ticks, x, "train loss", false);
  panel(svg, kDiceTop, kDiceBottom, dice_ticks, dice_y, x_ticks, x, "val Dice", true);
  text(svg, (kLeft + kRight) / 2, kHeight - 12, "epoch", "text-anchor=\"middle\" font-size=\"14\"");

  const Series loss{"train loss", kLossColour, &EpochPoint::train_loss};
  const Series dice{"val Dice", kDiceColour, &EpochPoint::val_dice};
  plot(svg, sorted, loss, x, loss_y, std::max(4, loss_ticks.decimals + 2));
  plot(svg, sorted, dice, x, dice_y, 4);

  // Legend on the right above the loss panel; the best Dice so far on the left.
  double legend_x = kRight - 190;
  for (const Series* s : {&loss, &dice}) {
    line(svg, legend_x, 48, legend_x + 24, 48, s->colour, 2);
    svg << "  <circle cx=\"" << coord(legend_x + 12) << "\" cy=\"48.0\" r=\"3.0\" fill=\"" << s->colour << "\"/>\n";
    text(svg, legend_x + 30, 48, s->name, "dy=\"0.35em\"");
    legend_x += 100;
  }
  const EpochPoint* best = nullptr;
  for (const EpochPoint& p : sorted)
    if (std::isfinite(p.val_dice) && (!best || p.val_dice > best->val_dice)) best = &p;
  if (best)
    text(svg, kLeft, 48, "best val Dice " + fixed(best->val_dice, 4) + " at epoch " + std::to_string(best->epoch),
         "dy=\"0.35em\"");
  svg << "</svg>\n";
  return svg.str();
}

void write_training_curve_svg(const std::string& path, const std::vector<EpochPoint>& points,
                              const std::string& title) {
  const std::string svg = training_curve_svg(points, title);
  write_file_bytes(path, std::as_bytes(std::span<const char>(svg.data(), svg.size())));
}

}  // namespace voxgrad::io
