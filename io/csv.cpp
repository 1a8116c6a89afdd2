// RFC 4180 quoting and formula neutralising for CSV cells (OWASP's "CSV injection" advice: the
// triggers are = + - @ tab CR at the start of a cell; a single quote in front makes it text).
#include "io/csv.h"

#include <cmath>
#include <cstdio>

namespace voxgrad::io {

namespace {

bool starts_a_formula(std::string_view text) {
  if (text.empty()) return false;
  switch (text.front()) {
    case '=': case '+': case '-': case '@': case '\t': case '\r': return true;
    default: return false;
  }
}

bool needs_quotes(std::string_view text) { return text.find_first_of(",\"\r\n") != std::string_view::npos; }

}  // namespace

std::string csv_text(std::string_view text) {
  const bool formula = starts_a_formula(text);
  if (!formula && !needs_quotes(text)) return std::string(text);
  std::string cell = "\"";
  if (formula) cell += '\'';
  for (const char c : text) {
    if (c == '"') cell += '"';
    cell += c;
  }
  cell += '"';
  return cell;
}

std::string csv_number(double v) {
  if (!std::isfinite(v)) return "nan";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

std::string csv_integer(std::int64_t v) { return std::to_string(v); }

std::string csv_record(const std::vector<std::string>& cells) {
  std::string line;
  for (std::size_t i = 0; i < cells.size(); ++i) {
    if (i > 0) line += ',';
    line += cells[i];
  }
  line += '\n';
  return line;
}

}  // namespace voxgrad::io
