// The one JSON module: nlohmann-json (header-only). Results on stdout go through write_json_line,
// which writes NaN and Inf as null (nlohmann's own behaviour, kept explicit here).
#pragma once

#include <ostream>

namespace voxgrad::detail {
[[noreturn]] void json_assertion_failed(const char* condition);
}

// nlohmann-json checks a key read through a const operator[] only with assert(): with NDEBUG a
// missing key is undefined behaviour. Here it throws Json::out_of_range, so a JSON file without a
// field its reader expects is an error, never a crash. Every file includes nlohmann-json through
// this header, so that every translation unit sees the same definition.
#define JSON_ASSERT(condition) \
  ((condition) ? static_cast<void>(0) : ::voxgrad::detail::json_assertion_failed(#condition))
#include <nlohmann/json.hpp>

namespace voxgrad {

using Json = nlohmann::json;

// One compact JSON document and a newline, flushed (stdout results are read by scripts).
void write_json_line(std::ostream& out, const Json& value);

}  // namespace voxgrad
