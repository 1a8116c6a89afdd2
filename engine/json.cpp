// write_json_line: how every command puts a JSON result on stdout; and what a missing key read
// through a const operator[] throws (engine/json.h).
// nlohmann writes non-finite numbers as null; invalid UTF-8 in strings (odd file names) is replaced
// rather than thrown, so reporting a result never fails.
#include "engine/json.h"

#include <string>

namespace voxgrad {

namespace detail {
// Nearly always a key missing from an object read through a const operator[]; nlohmann-json's other
// assertions guard its own invariants.
void json_assertion_failed(const char* condition) {
  throw Json::out_of_range::create(403, std::string("key not found (") + condition + " does not hold)", nullptr);
}
}  // namespace detail

void write_json_line(std::ostream& out, const Json& value) {
  out << value.dump(-1, ' ', false, Json::error_handler_t::replace) << '\n' << std::flush;
}

}  // namespace voxgrad
