// Option validators the subcommands share, with messages that read well after "voxgrad: error:
// --flag:". Every number must be finite (CLI11's own Range lets NaN through and "inf" parses as a
// double), whole numbers must be written as such, and nothing wraps around.
#pragma once

#include <CLI/CLI.hpp>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace voxgrad::cli {

namespace detail {

inline std::string number_text(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// The text as a finite double, or an error message.
inline std::string parse_finite(const std::string& text, double& v) {
  if (!CLI::detail::lexical_cast(text, v)) return "'" + text + "' is not a number";
  if (!std::isfinite(v)) return "must be a finite number, got " + text;
  return "";
}

}  // namespace detail

// A finite number > 0 (`strictly` true) or >= 0.
inline CLI::Validator number_above_zero(bool strictly = true) {
  return CLI::Validator(
      [strictly](std::string& text) -> std::string {
        double v = 0;
        if (std::string err = detail::parse_finite(text, v); !err.empty()) return err;
        if (strictly ? v > 0 : v >= 0) return "";
        return std::string("must be ") + (strictly ? "positive" : "zero or more") + ", got " + text;
      },
      strictly ? "POSITIVE" : "NONNEGATIVE");
}

// A finite number in [lo, hi].
inline CLI::Validator number_in_range(double lo, double hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) -> std::string {
        double v = 0;
        if (std::string err = detail::parse_finite(text, v); !err.empty()) return err;
        if (v >= lo && v <= hi) return "";
        return "must be from " + detail::number_text(lo) + " to " + detail::number_text(hi) + ", got " + text;
      },
      "NUMBER");
}

// A whole number in [lo, hi], written as one (no sign on 0.., no fraction, no exponent): seeds and
// counts that must not wrap around to 18446744073709551615.
inline CLI::Validator whole_number(std::uint64_t lo, std::uint64_t hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) -> std::string {
        std::uint64_t v = 0;
        const char* end = text.data() + text.size();
        const auto [next, error] = std::from_chars(text.data(), end, v);
        const std::string range = "a whole number from " + std::to_string(lo) + " to " + std::to_string(hi);
        if (error == std::errc::result_out_of_range) return "must be " + range + ", got " + text;
        if (error != std::errc() || next != end) return "must be " + range + ", got '" + text + "'";
        if (v < lo || v > hi) return "must be " + range + ", got " + text;
        return "";
      },
      "INT");
}

// One of `choices`, spelled exactly.
inline CLI::Validator one_of(std::vector<std::string> choices) {
  std::string list;
  for (const std::string& c : choices) list += (list.empty() ? "" : ", ") + c;
  return CLI::Validator(
      [choices, list](std::string& text) -> std::string {
        for (const std::string& c : choices)
          if (text == c) return "";
        return "'" + text + "' is not one of " + list;
      },
      "CHOICE");
}

// "--patch 32,64,64" or "--patch 48" (a cube): the sizes, or nothing when the text is not that.
inline std::optional<std::array<std::int64_t, 3>> parse_patch(const std::string& text) {
  std::vector<std::int64_t> v;
  const char* p = text.data();
  const char* end = text.data() + text.size();
  while (true) {
    std::int64_t x = 0;
    const auto [next, error] = std::from_chars(p, end, x);
    if (error != std::errc() || x < 1 || x > 4096) return std::nullopt;
    v.push_back(x);
    if (next == end) break;
    if (*next != ',') return std::nullopt;
    p = next + 1;
  }
  if (v.size() == 1) return std::array<std::int64_t, 3>{v[0], v[0], v[0]};
  if (v.size() == 3) return std::array<std::int64_t, 3>{v[0], v[1], v[2]};
  return std::nullopt;
}

inline CLI::Validator patch_validator() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        return parse_patch(text) ? "" : "'" + text + "' is not D,H,W or S (whole numbers from 1 to 4096)";
      },
      "D,H,W|S");
}

}  // namespace voxgrad::cli
