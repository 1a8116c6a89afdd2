// Ctrl-C, SIGTERM and SIGHUP (a dropped ssh session) as a request, not a kill: while an
// InterruptGuard lives, the first of them only sets a flag that long-running loops poll between
// steps (so they can save and exit cleanly); the handler then resets itself, so a second signal
// terminates the process as usual.
#pragma once

namespace voxgrad::cli {

class InterruptGuard {
 public:
  InterruptGuard();   // installs the handlers and clears the flag
  ~InterruptGuard();  // restores the previous handlers
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;

  static bool requested();
  static int signal_number();  // the signal that set the flag, 0 when none
};

}  // namespace voxgrad::cli
