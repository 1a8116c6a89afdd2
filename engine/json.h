// The one JSON module: nlohmann-json (header-only). Results on stdout go through write_json_line,
// which writes NaN and Inf as null (nlohmann's own behaviour, kept explicit here).
#pragma once

#include <nlohmann/json.hpp>
#include <ostream>

namespace voxgrad {

using Json = nlohmann::json;

// One compact JSON document and a newline, flushed (stdout results are read by scripts).
void write_json_line(std::ostream& out, const Json& value);

}  // namespace voxgrad
