// Option validators the subcommands share, with messages that read well after "voxgrad: error:"
// (CLI11's PositiveNumber prints the whole double range in its message).
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace voxgrad::apps {

// A number > 0 (`strictly` true) or >= 0.
inline CLI::Validator number_above_zero(bool strictly = true) {
  return CLI::Validator(
      [strictly](std::string& text) -> std::string {
        double v = 0;
        if (!CLI::detail::lexical_cast(text, v)) return "'" + text + "' is not a number";
        if (strictly ? v > 0 : v >= 0) return "";
        return std::string("must be ") + (strictly ? "positive" : "zero or more") + ", got " + text;
      },
      strictly ? "POSITIVE" : "NONNEGATIVE");
}

}  // namespace voxgrad::apps
