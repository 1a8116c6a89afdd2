// The pieces every SVG picture voxgrad writes is built from (plain string building, no drawing
// library): locale-independent numbers, escaped text, axis ticks at 1-2-5 steps, a linear scale,
// and text and line elements. training_curve.svg and the loss study's plots share them.
#pragma once

#include <sstream>
#include <string>
#include <vector>

namespace voxgrad::io::svg {

// Fixed-point text with '.' whatever the process's locale says, and never "-0.0".
std::string fixed(double v, int decimals);
// A coordinate: one decimal.
std::string coord(double v);
// Text safe inside an XML element or attribute (control characters become spaces).
std::string xml_escape(const std::string& text);

// Axis ticks at 1, 2 or 5 times a power of ten, the range widened to whole steps.
struct Ticks {
  double lo = 0, hi = 1, step = 0.2;
  int decimals = 1;  // enough to tell neighbouring ticks apart, no more
  std::vector<double> values() const;
};
// About `target` ticks over [lo, hi] with a step of at least `min_step`.
Ticks nice_ticks(double lo, double hi, int target, double min_step = 0.0);

// Maps a data range onto a pixel range (y grows downwards, so vertical scales pass bottom, top).
struct Scale {
  double d0, d1, p0, p1;
  double operator()(double v) const { return p0 + (v - d0) / (d1 - d0) * (p1 - p0); }
};

// <text> at (x, y) holding already-escaped `s`, with extra attributes.
void text(std::ostringstream& svg, double x, double y, const std::string& s, const std::string& extra = "");
void line(std::ostringstream& svg, double x1, double y1, double x2, double y2, const char* stroke, int width = 1);

// The opening <svg> element with the house font, a <title>, a white background and the centred title.
void begin(std::ostringstream& svg, double width, double height, const std::string& title);

// A colour per series index, from a palette a colour-blind reader can tell apart (repeats after 10).
const char* series_colour(std::size_t index);

}  // namespace voxgrad::io::svg
