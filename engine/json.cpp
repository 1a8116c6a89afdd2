// write_json_line: how every command puts a JSON result on stdout.
// nlohmann writes non-finite numbers as null; invalid UTF-8 in strings (odd file names) is replaced
// rather than thrown, so reporting a result never fails.
#include "engine/json.h"

namespace voxgrad {

void write_json_line(std::ostream& out, const Json& value) {
  out << value.dump(-1, ' ', false, Json::error_handler_t::replace) << '\n' << std::flush;
}

}  // namespace voxgrad
