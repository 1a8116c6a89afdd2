// Running the PyTorch reference scripts under tools/ that the benchmarks time beside voxgrad: finding
// the script, quoting its arguments, and reading the one JSON line it prints last.
#pragma once

#include <string>

#include "engine/json.h"

namespace voxgrad::bench {

// `override_path` when given, else tools/<name> beside the build folder or under the working
// directory; empty when none exists.
std::string find_tools_script(const std::string& override_path, const std::string& name);

// `s` as one single-quoted shell word.
std::string shell_quote(const std::string& s);

// Runs `python script args` (args already quoted) and parses its last output line as a JSON
// object: that object, or {"available": false, "reason": ...} when the script cannot start,
// fails, or prints no object (earlier lines, such as Python warnings, are ignored).
Json run_python_json(const std::string& python, const std::string& script, const std::string& args);

// The same for any shell command line (`what` names it in the reason).
Json run_command_json(const std::string& command, const std::string& what);

}  // namespace voxgrad::bench
