// The single place a voxgrad::Error is built, so every message has the same shape.
#include "kernels/error.h"

namespace voxgrad::detail {

void fail(const char* file, int line, const char* what, const std::string& detail) {
  std::string where = file;
  // Project-relative paths read better than build-machine absolute ones.
  for (const char* room : {"/engine/", "/kernels/", "/models/", "/io/", "/apps/", "/tests/"}) {
    const auto pos = where.rfind(room);
    if (pos != std::string::npos) {
      where = where.substr(pos + 1);
      break;
    }
  }
  std::string msg = detail;
  if (what != nullptr && *what != '\0') msg += msg.empty() ? std::string("check failed: ") + what
                                                            : std::string(" [") + what + "]";
  msg += " (" + where + ":" + std::to_string(line) + ")";
  throw Error(msg);
}

// The user's errors carry their message alone: the place in the source means nothing to them.
void fail_input(const char*, int, const char*, const std::string& detail) { throw InputError(detail); }
void fail_usage(const char*, int, const char*, const std::string& detail) { throw UsageError(detail); }

}  // namespace voxgrad::detail
