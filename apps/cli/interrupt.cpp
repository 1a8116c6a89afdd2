// The async-signal-safe half is one atomic store; everything else happens in the polling loop.
#include "apps/cli/interrupt.h"

#include <atomic>
#include <csignal>

namespace voxgrad::cli {

namespace {

std::atomic<int> g_signal{0};
static_assert(std::atomic<int>::is_always_lock_free, "the signal handler needs a lock-free flag");

struct sigaction g_old_int, g_old_term, g_old_hup;

extern "C" void on_signal(int sig) { g_signal.store(sig, std::memory_order_relaxed); }

}  // namespace

InterruptGuard::InterruptGuard() {
  g_signal.store(0);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND;  // a second Ctrl-C gets the default action: the user insists
  sigaction(SIGINT, &sa, &g_old_int);
  sigaction(SIGTERM, &sa, &g_old_term);
  sigaction(SIGHUP, &sa, &g_old_hup);  // a dropped ssh session: save and stop, as for SIGTERM
}

InterruptGuard::~InterruptGuard() {
  sigaction(SIGINT, &g_old_int, nullptr);
  sigaction(SIGTERM, &g_old_term, nullptr);
  sigaction(SIGHUP, &g_old_hup, nullptr);
}

bool InterruptGuard::requested() { return g_signal.load(std::memory_order_relaxed) != 0; }
int InterruptGuard::signal_number() { return g_signal.load(std::memory_order_relaxed); }

}  // namespace voxgrad::cli
