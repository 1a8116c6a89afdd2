// The training-curve SVG: plain string building (no drawing library), two panels over a shared
// epoch axis, ticks at 1-2-5 steps, a gap in a line wherever a value is NaN, and an atomic write so
// a browser reloading the file mid-run never sees half a picture.
#include "io/training_curve.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <span>
#include <sstream>

#include "io/gzip_stream.h"

namespace voxgrad::io {

namespace {

// Canvas and panel geometry in SVG user units.
constexpr double kWidth = 800, kHeight = 520;
constexpr double kLeft = 78, kRight = 776;  // both panels' plot area, x
constexpr double kLossTop = 64, kLossBottom = 264;
constexpr double kDiceTop = 292, kDiceBottom = 462;
constexpr const char* kLossColour = "#1f77b4";
constexpr const char* kDiceColour = "#e6550d";

// Locale-independent fixed-point text: SVG wants '.' whatever the process's locale says.
std::string fixed(double v, int decimals) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::fixed, decimals);
  std::string s(buf, r.ptr);
  if (s.find_first_not_of("-0.") == std::string::npos && s.front() == '-') s.erase(0, 1);  // no "-0.0"
  return s;
}

std::string coord(double v) { return fixed(v, 1); }

std::string xml_escape(const std::string& text) {
  std::string out;
  for (char ch : text) {
    switch (ch) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        // XML 1.0 forbids most control characters even as references.
        out += (static_cast<unsigned char>(ch) < 0x20) ? ' ' : ch;
    }
  }
  return out;
}

// Axis ticks at a 1, 2 or 5 times a power of ten step, the range widened to whole steps.
struct Ticks {
  double lo = 0, hi = 1, step = 0.2;
  int decimals = 1;  // enough to tell neighbouring ticks apart, no more
  std::vector<double> values() const {
    std::vector<double> v;
    const auto n = static_cast<int>(std::lround((hi - lo) / step));
    for (int i = 0; i <= n; ++i) v.push_back(lo + i * step);
    return v;
  }
};

Ticks nice_ticks(double lo, double hi, int target, double min_step = 0.0) {
  if (!(hi > lo)) {
    const double pad = lo != 0.0 ? std::fabs(lo) * 0.1 : 0.5;
    lo -= pad;
    hi += pad;
  }
  const double raw = (hi - lo) / target;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double r = raw / magnitude;
  const double unit = r < 1.5 ? 1.0 : r < 3.0 ? 2.0 : r < 7.0 ? 5.0 : 10.0;
  Ticks t;
  t.step = std::max(unit * magnitude, min_step);
  // Widen to whole steps, with slack for values a rounding error past a tick.
  t.lo = std::floor(lo / t.step + 1e-9) * t.step;
  t.hi = std::ceil(hi / t.step - 1e-9) * t.step;
  if (!(t.hi > t.lo)) t.hi = t.lo + t.step;
  t.decimals = std::max(0, static_cast<int>(-std::floor(std::log10(t.step) + 1e-9)));
  return t;
}

// Maps a data value range onto a pixel range (y grows downwards, so panels pass bottom, top).
struct Scale {
  double d0, d1, p0, p1;
  double operator()(double v) const { return p0 + (v - d0) / (d1 - d0) * (p1 - p0); }
};

struct Series {
  const char* name;
  const char* colour;
  double EpochPoint::*value;
};

void text(std::ostringstream& svg, double x, double y, const std::string& s, const std::string& extra = "") {
  svg << "  <text x=\"" << coord(x) << "\" y=\"" << coord(y) << "\"" << (extra.empty() ? "" : " ") << extra << ">" << s
      << "</text>\n";
}

void line(std::ostringstream& svg, double x1, double y1, double x2, double y2, const char* stroke, int width = 1) {
  svg << "  <line x1=\"" << coord(x1) << "\" y1=\"" << coord(y1) << "\" x2=\"" << coord(x2) << "\" y2=\"" << coord(y2)
      << "\" stroke=\"" << stroke << "\" stroke-width=\"" << width << "\"/>\n";
}

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
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kWidth << "\" height=\"" << kHeight
      << "\" viewBox=\"0 0 " << kWidth << " " << kHeight
      << "\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\" fill=\"#333333\">\n";
  const std::string escaped_title = xml_escape(title);
  svg << "  <title>" << escaped_title << "</title>\n";
  svg << "  <rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n";
  text(svg, kWidth / 2, 30, escaped_title, "text-anchor=\"middle\" font-size=\"18\" font-weight=\"bold\"");
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
