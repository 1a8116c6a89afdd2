// CSV cells written as RFC 4180 defines them and safe to open in a spreadsheet: text holding a
// comma, a quote, CR or LF is quoted with its quotes doubled, and text a spreadsheet would run as a
// formula is made inert. Numbers the program formats itself stay bare, so they stay numbers.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace voxgrad::io {

// A text cell (a case name, a header). Text that begins with '=', '+', '-', '@', a tab or a CR
// (what spreadsheets take for the start of a formula) gets a leading single quote inside a quoted
// field, so `=cmd` is shown as the text =cmd and never evaluated.
std::string csv_text(std::string_view text);

// A number cell: the shortest text that reads back as the same double ("%.17g"), "nan" for a
// value that is not finite. Never quoted: -0.5 is a number, not a formula.
std::string csv_number(double v);
std::string csv_integer(std::int64_t v);

// One record: the encoded cells joined by commas, ended by "\n".
std::string csv_record(const std::vector<std::string>& cells);

}  // namespace voxgrad::io
