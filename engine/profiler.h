// The profiler seam: every op runs inside a ProfileScope. Off (the default) a scope costs one
// relaxed atomic load. On, it times the op (steady clock on the CPU, CUDA events on the GPU, plus
// an NVTX range for Nsight) and the profiler prints a per-op table or writes a Chrome trace.
#pragma once

#include <atomic>
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "device.h"

namespace voxgrad {

namespace profiler {

// Turns timing on for a fresh session (earlier records are forgotten). `trace_path` non-empty: a
// Chrome trace JSON (opens in Perfetto) is written there by finish(); its folder must exist.
void enable(const std::string& trace_path = "");
bool enabled();
// Marks the calling thread as a communication thread: its scopes go on the trace's own
// "communication" track, where their overlap with the compute track shows.
void set_communication_thread();
// Waits for the devices, prints the per-op table (calls, total ms, mean ms, share) to `table`
// when non-null, writes the trace if one was asked for, and turns timing off.
void finish(std::ostream* table);
// Forgets everything recorded so far (tests).
void reset();

struct OpStats {
  std::string name;
  std::string device;  // "cpu" or "cuda"
  // The GPU of the row's first call: its peaks are the roofline's (a data-parallel rank drives one
  // GPU, which need not be GPU 0).
  int device_index = 0;
  std::int64_t calls = 0;
  double total_ms = 0;
  // Summed over the calls that carried a cost model; costed_ms is their time.
  double flops = 0, bytes = 0, costed_ms = 0;
};
// Per (op, device) totals so far, largest total first. Waits for the devices.
std::vector<OpStats> summary();

extern std::atomic<bool> g_enabled;

}  // namespace profiler

// What an op costs by a model of its arithmetic and its compulsory memory traffic, counted from its
// shapes in the op's own code: floating-point operations (a fused multiply-add is two) and bytes
// read plus written once each. The profiler sets them against the machine's peaks (roofline).
struct OpCost {
  double flops = 0;
  double bytes = 0;
};

// The cost of a pass over memory: `tensors` arrays of `elements` elements (`element_bytes` each)
// read or written once, `flops_each` operations per element.
inline OpCost elementwise_cost(std::int64_t elements, double flops_each, int tensors, double element_bytes) {
  const double n = static_cast<double>(elements);
  return {n * flops_each, n * tensors * element_bytes};
}

class ProfileScope {
 public:
  ProfileScope(const char* name, Device d) {
    if (profiler::g_enabled.load(std::memory_order_relaxed)) begin(name, d);
  }
  ~ProfileScope() {
    if (active_) end();
  }
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;
  // Whether this scope is timing (profiling was on when it began).
  bool active() const { return active_; }
  void set_cost(const OpCost& cost) { cost_ = cost; }

 private:
  void begin(const char* name, Device d);
  void end();
  bool active_ = false;
  const char* name_ = nullptr;
  Device device_;
  std::int64_t cpu_start_ns_ = 0;
  void* gpu_start_ = nullptr;  // a pooled cudaEvent_t
  OpCost cost_;
};

}  // namespace voxgrad

#define VG_PROFILE_CAT2(a, b) a##b
#define VG_PROFILE_CAT(a, b) VG_PROFILE_CAT2(a, b)
// Times the rest of the enclosing block as op `name` on device `device`.
#define VG_PROFILE(name, device) ::voxgrad::ProfileScope VG_PROFILE_CAT(vg_profile_scope_, __LINE__)(name, device)
// The same, with the op's cost model: the OpCost expression after the device is evaluated only
// while profiling.
#define VG_PROFILE_COST(name, device, ...)                                           \
  ::voxgrad::ProfileScope VG_PROFILE_CAT(vg_profile_scope_, __LINE__)(name, device); \
  if (VG_PROFILE_CAT(vg_profile_scope_, __LINE__).active())                          \
  VG_PROFILE_CAT(vg_profile_scope_, __LINE__).set_cost(__VA_ARGS__)
