// The shared SVG pieces: see svg_parts.h.
#include "io/svg_parts.h"

#include <charconv>
#include <cmath>

namespace voxgrad::io::svg {

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

std::vector<double> Ticks::values() const {
  std::vector<double> v;
  const auto n = static_cast<int>(std::lround((hi - lo) / step));
  for (int i = 0; i <= n; ++i) v.push_back(lo + i * step);
  return v;
}

Ticks nice_ticks(double lo, double hi, int target, double min_step) {
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

void text(std::ostringstream& svg, double x, double y, const std::string& s, const std::string& extra) {
  svg << "  <text x=\"" << coord(x) << "\" y=\"" << coord(y) << "\"" << (extra.empty() ? "" : " ") << extra << ">" << s
      << "</text>\n";
}

void line(std::ostringstream& svg, double x1, double y1, double x2, double y2, const char* stroke, int width) {
  svg << "  <line x1=\"" << coord(x1) << "\" y1=\"" << coord(y1) << "\" x2=\"" << coord(x2) << "\" y2=\"" << coord(y2)
      << "\" stroke=\"" << stroke << "\" stroke-width=\"" << width << "\"/>\n";
}

void begin(std::ostringstream& svg, double width, double height, const std::string& title) {
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
      << "\" viewBox=\"0 0 " << width << " " << height
      << "\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\" fill=\"#333333\">\n";
  const std::string escaped_title = xml_escape(title);
  svg << "  <title>" << escaped_title << "</title>\n";
  svg << "  <rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n";
  text(svg, width / 2, 30, escaped_title, "text-anchor=\"middle\" font-size=\"18\" font-weight=\"bold\"");
}

const char* series_colour(std::size_t index) {
  // Tableau 10.
  static const char* const kPalette[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                         "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};
  return kPalette[index % 10];
}

}  // namespace voxgrad::io::svg
