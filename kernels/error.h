// voxgrad::Error and the one check-macro generator behind VG_CHECK, VG_CUDA_CHECK and VG_CUDNN_CHECK.
// It lives with the kernels because they are the lowest layer that must throw; the engine and
// every room above re-use it through engine/error.h.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace voxgrad {

// Every failure voxgrad reports. An internal invariant's message names the failing call or
// condition and file:line; the two subclasses below carry only plain words.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Something wrong with what the user gave or with their environment: a file's content or type, a
// dataset, a run folder, a full disk. The message names the file, case or flag and the reason, and
// never source text. The command line exits 1.
class InputError : public Error {
 public:
  using Error::Error;
};

// Something wrong with the command line itself: a flag, a flag's value, or a flag that names an
// unusable place. The command line exits 2.
class UsageError : public InputError {
 public:
  using InputError::InputError;
};

namespace detail {
// The three ways a check fails; every check macro ends in one of them.
[[noreturn]] void fail(const char* file, int line, const char* what, const std::string& detail);
[[noreturn]] void fail_input(const char* file, int line, const char* what, const std::string& detail);
[[noreturn]] void fail_usage(const char* file, int line, const char* what, const std::string& detail);
inline bool is_true(bool ok) { return ok; }
}  // namespace detail

}  // namespace voxgrad

// The generator: evaluate `expr` once, test it with `is_ok`, and on failure stream the message
// parts (which may use the status as `vg_status_`) and call `raise` (detail::fail, fail_input or
// fail_usage) with the expression's text `what` and the place. No lambda: clang cannot capture
// structured bindings, and checks inside `for (auto& [k, v] : ...)` must still compile there.
#define VG_CHECK_RAISE(expr, what, is_ok, raise, ...)                             \
  do {                                                                            \
    const auto vg_status_ = (expr);                                               \
    if (!(is_ok(vg_status_))) {                                                   \
      std::ostringstream vg_msg_;                                                 \
      vg_msg_ << __VA_ARGS__;                                                     \
      raise(__FILE__, __LINE__, what, vg_msg_.str());                             \
    }                                                                             \
  } while (0)

// Internal invariants and library calls: voxgrad::Error with the expression and file:line.
#define VG_CHECK_WITH(expr, is_ok, describe) \
  VG_CHECK_RAISE(expr, #expr, is_ok, ::voxgrad::detail::fail, describe(vg_status_))

// A condition with a streamed message; `what` is the condition's text.
#define VG_CHECK_STREAMED(cond, what, raise, ...) \
  VG_CHECK_RAISE(static_cast<bool>(cond), what, ::voxgrad::detail::is_true, raise, __VA_ARGS__)

// VG_CHECK(condition, message parts streamed with <<): an internal invariant.
#define VG_CHECK(cond, ...) VG_CHECK_STREAMED(cond, #cond, ::voxgrad::detail::fail, __VA_ARGS__)

// VG_INPUT_CHECK(condition, message): the user's file, data or environment is at fault
// (voxgrad::InputError, exit 1). The message must name the thing and the reason.
#define VG_INPUT_CHECK(cond, ...) VG_CHECK_STREAMED(cond, #cond, ::voxgrad::detail::fail_input, __VA_ARGS__)

// VG_USAGE_CHECK(condition, message): the command line is at fault (voxgrad::UsageError, exit 2).
#define VG_USAGE_CHECK(cond, ...) VG_CHECK_STREAMED(cond, #cond, ::voxgrad::detail::fail_usage, __VA_ARGS__)

// Unconditional failures with a streamed message: VG_FAIL for internal ones (switch defaults),
// VG_INPUT_FAIL and VG_USAGE_FAIL for the user's.
// (No condition to test, so the compiler sees the [[noreturn]] call directly.)
#define VG_FAIL_RAISE(raise, ...)                                                 \
  do {                                                                            \
    std::ostringstream vg_msg_;                                                   \
    vg_msg_ << __VA_ARGS__;                                                       \
    raise(__FILE__, __LINE__, "", vg_msg_.str());                                 \
  } while (0)
#define VG_FAIL(...) VG_FAIL_RAISE(::voxgrad::detail::fail, __VA_ARGS__)
#define VG_INPUT_FAIL(...) VG_FAIL_RAISE(::voxgrad::detail::fail_input, __VA_ARGS__)
#define VG_USAGE_FAIL(...) VG_FAIL_RAISE(::voxgrad::detail::fail_usage, __VA_ARGS__)
