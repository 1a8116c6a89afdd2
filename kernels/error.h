// voxgrad::Error and the one check-macro generator behind VG_CHECK, VG_CUDA_CHECK and VG_CUDNN_CHECK.
// It lives with the kernels because they are the lowest layer that must throw; the engine and
// every room above re-use it through engine/error.h.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace voxgrad {

// Every failure voxgrad reports: the failing call or condition, file:line, and what went wrong.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
[[noreturn]] void fail(const char* file, int line, const char* what, const std::string& detail);
inline bool is_true(bool ok) { return ok; }
}  // namespace detail

}  // namespace voxgrad

// The generator: evaluate `expr` once, test it with `is_ok`, and on failure throw voxgrad::Error
// naming the expression, the place and `describe(status)`.
#define VG_CHECK_WITH(expr, is_ok, describe)                                      \
  do {                                                                            \
    const auto vg_status_ = (expr);                                               \
    if (!(is_ok(vg_status_))) {                                                   \
      ::voxgrad::detail::fail(__FILE__, __LINE__, #expr, describe(vg_status_));   \
    }                                                                             \
  } while (0)

// VG_CHECK(condition, message parts streamed with <<)
#define VG_CHECK(cond, ...)                                                       \
  VG_CHECK_WITH(static_cast<bool>(cond), ::voxgrad::detail::is_true,              \
                [&](bool) {                                                       \
                  std::ostringstream vg_msg_;                                     \
                  vg_msg_ << __VA_ARGS__;                                         \
                  return vg_msg_.str();                                           \
                })

// Unconditional failure with a streamed message (for switch defaults and user errors).
#define VG_FAIL(...)                                                              \
  do {                                                                            \
    std::ostringstream vg_msg_;                                                   \
    vg_msg_ << __VA_ARGS__;                                                       \
    ::voxgrad::detail::fail(__FILE__, __LINE__, "", vg_msg_.str());               \
  } while (0)
