// The profiler: ProfileScope records (op, device, start, duration) while timing is on; summary()
// folds them per op, finish() prints the table and writes a Chrome trace. GPU ops are timed with
// CUDA events (profiler_cuda.cpp) resolved lazily, so profiling never synchronises inside an op.
#include "engine/profiler.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <map>
#include <mutex>
#include <unordered_set>
#include <utility>

#include "engine/error.h"
#include "engine/files.h"
#include "engine/json.h"
#include "engine/machine_peaks.h"
#include "engine/profiler_gpu.h"

namespace voxgrad {

namespace profiler {

std::atomic<bool> g_enabled{false};

namespace {

using Clock = std::chrono::steady_clock;

// Past this many unresolved GPU records, ending a scope resolves those already done, so a long
// profiled run holds a bounded number of events rather than two per op ever run.
constexpr std::size_t kResolveBacklog = 1024;

struct Record {
  const char* name;  // interned: stable for the process
  Device device;
  double start_us = 0;  // on the session's time axis: microseconds since enable()
  double dur_us = 0;
  void* gpu_start = nullptr;  // set while a GPU record waits for its events
  void* gpu_end = nullptr;
  OpCost cost{};  // zero: the op has no cost model
  bool communication = false;  // recorded on a thread that set_communication_thread() marked
  bool resolved() const { return gpu_end == nullptr; }
};

// GPU timestamps are measured from an event recorded on the device's stream at a known CPU time,
// which puts GPU ops on the CPU's time axis (up to the queueing delay of that first event).
struct GpuBase {
  int index;
  void* event;
  double at_us;
};

thread_local bool t_communication_thread = false;

struct State {
  std::mutex mutex;
  std::unordered_set<std::string> names;  // never shrinks: live scopes point into it
  std::vector<Record> records;
  std::deque<std::size_t> unresolved;  // indices into records, in recording order
  std::vector<GpuBase> bases;
  Clock::time_point origin = Clock::now();
  std::string trace_path;
};

// Leaked on purpose: a scope may end during static destruction, and the pooled events it holds
// must not be released into a destroyed pool.
State& state() {
  static State* s = new State;
  return *s;
}

double us_since(const State& s, Clock::time_point t) {
  return std::chrono::duration<double, std::micro>(t - s.origin).count();
}

const GpuBase* find_base(const State& s, int index) {
  for (const GpuBase& b : s.bases)
    if (b.index == index) return &b;
  return nullptr;
}

void release(Record& r) {
  if (r.gpu_start) gpu::release_event(r.gpu_start);
  if (r.gpu_end) gpu::release_event(r.gpu_end);
  r.gpu_start = r.gpu_end = nullptr;
}

// Both events are done: convert them to the session's time axis and give them back to the pool.
void resolve(State& s, Record& r) {
  const double dur_ms = gpu::elapsed_ms(r.gpu_start, r.gpu_end);
  if (const GpuBase* base = find_base(s, r.device.index)) {
    r.start_us = base->at_us + gpu::elapsed_ms(base->event, r.gpu_start) * 1000.0;
  }
  r.dur_us = dur_ms * 1000.0;
  release(r);
}

// Resolves the oldest GPU records whose events are done, stopping at the first that is not
// (a stream completes in order, so later ones are most likely not done either).
void resolve_done(State& s) {
  while (!s.unresolved.empty()) {
    Record& r = s.records[s.unresolved.front()];
    if (!gpu::event_done(r.gpu_end)) return;
    resolve(s, r);
    s.unresolved.pop_front();
  }
}

// Forgets the session: records, pending events and time bases. Caller holds the lock.
void clear(State& s) {
  for (std::size_t i : s.unresolved) release(s.records[i]);
  for (const GpuBase& b : s.bases) gpu::release_event(b.event);
  s.records.clear();
  s.unresolved.clear();
  s.bases.clear();
  s.origin = Clock::now();
}

const char* intern(State& s, const char* name) { return s.names.emplace(name).first->c_str(); }

std::string device_kind(Device d) { return d.is_cpu() ? "cpu" : "cuda"; }

// Resolved records after waiting for every device that still has GPU work being timed.
std::vector<Record> settled_records() {
  State& s = state();
  std::vector<Device> devices;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    for (std::size_t i : s.unresolved) {
      const Device d = s.records[i].device;
      if (std::find(devices.begin(), devices.end(), d) == devices.end()) devices.push_back(d);
    }
  }
  // Outside the lock: other threads' scopes may end while we wait.
  for (const Device& d : devices) synchronize(d);
  std::lock_guard<std::mutex> lock(s.mutex);
  resolve_done(s);
  std::vector<Record> out;
  out.reserve(s.records.size());
  // Records a concurrent thread queued after the synchronize stay unresolved and are left out.
  for (const Record& r : s.records)
    if (r.resolved()) out.push_back(r);
  return out;
}

// The device an OpStats row's ops ran on (its first, for "cuda": rows are per device kind).
Device device_of(const OpStats& r) { return r.device == "cpu" ? Device::cpu() : Device::cuda(r.device_index); }

// The device's peaks, or null when they cannot be had (a GPU without memory left for the copy
// test): the table then leaves the bound out rather than failing at exit.
// A device whose peaks failed once is not asked again (a trace has an event per op).
const MachinePeaks* peaks_or_null(Device d) {
  static std::mutex mutex;
  static std::vector<Device> failed;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (std::find(failed.begin(), failed.end(), d) != failed.end()) return nullptr;
  }
  try {
    return &peaks_for(d);
  } catch (const std::exception&) {
    std::lock_guard<std::mutex> lock(mutex);
    failed.push_back(d);
    return nullptr;
  }
}

RooflinePoint roofline_of(const OpStats& r) {
  const MachinePeaks* peaks = peaks_or_null(device_of(r));
  return roofline_point(r.flops, r.bytes, r.costed_ms / 1000.0, peaks != nullptr ? *peaks : MachinePeaks{});
}

// The peaks each device kind in the table is measured against, one line each.
void print_peaks(std::ostream& out, const std::vector<OpStats>& rows) {
  std::vector<std::string> said;
  for (const OpStats& r : rows) {
    if (r.costed_ms <= 0 || std::find(said.begin(), said.end(), r.device) != said.end()) continue;
    said.push_back(r.device);
    const MachinePeaks* peaks = peaks_or_null(device_of(r));
    if (peaks == nullptr) {
      out << "roofline " << r.device << ": the peaks could not be measured (voxgrad bench peak says why)\n";
      continue;
    }
    const MachinePeaks& p = *peaks;
    out << "roofline " << r.device << ": " << std::fixed << std::setprecision(1) << p.gflops << " GFLOP/s (" << p.level
        << "), " << p.gbytes_per_s << " GB/s, ridge " << std::setprecision(2) << p.ridge() << " FLOP/B; " << p.machine
        << " (" << p.source << "; voxgrad bench peak measures again)\n";
  }
}

void print_table(std::ostream& out, const std::vector<OpStats>& rows) {
  bool roofline = false;
  for (const OpStats& r : rows) roofline = roofline || r.costed_ms > 0;
  double total_ms = 0;
  std::int64_t total_calls = 0;
  std::size_t name_width = 5;  // "total"
  for (const OpStats& r : rows) {
    total_ms += r.total_ms;
    total_calls += r.calls;
    name_width = std::max(name_width, r.name.size());
  }
  const int w = static_cast<int>(name_width);
  const auto flags = out.flags();
  const auto precision = out.precision();
  out << std::left << std::setw(w) << "op"
      << "  " << std::setw(6) << "device" << std::right << std::setw(10) << "calls" << std::setw(13) << "total ms"
      << std::setw(11) << "mean ms" << std::setw(9) << "share %";
  if (roofline)
    out << std::setw(10) << "GFLOP/s" << std::setw(9) << "GB/s" << std::setw(9) << "FLOP/B"
        << "  " << std::left << std::setw(8) << "bound" << std::right << std::setw(8) << "% peak";
  out << "\n";
  const std::size_t width = name_width + 51 + (roofline ? 46 : 0);
  out << std::string(width, '-') << "\n";
  out << std::fixed;
  for (const OpStats& r : rows) {
    const double mean = r.calls > 0 ? r.total_ms / static_cast<double>(r.calls) : 0.0;
    const double share = total_ms > 0 ? 100.0 * r.total_ms / total_ms : 0.0;
    out << std::left << std::setw(w) << r.name << "  " << std::setw(6) << r.device << std::right << std::setw(10)
        << r.calls << std::setprecision(3) << std::setw(13) << r.total_ms << std::setw(11) << mean
        << std::setprecision(1) << std::setw(9) << share;
    if (roofline) {
      const RooflinePoint p = roofline_of(r);
      if (p.gflops_per_s > 0 || p.gbytes_per_s > 0) {
        out << std::setprecision(1) << std::setw(10) << p.gflops_per_s << std::setw(9) << p.gbytes_per_s
            << std::setprecision(2) << std::setw(9) << p.intensity << "  " << std::left << std::setw(8) << p.bound
            << std::right << std::setprecision(1) << std::setw(8) << 100.0 * p.fraction;
      } else {
        out << std::setw(10) << "-" << std::setw(9) << "-" << std::setw(9) << "-"
            << "  " << std::left << std::setw(8) << "-" << std::right << std::setw(8) << "-";
      }
    }
    out << "\n";
  }
  out << std::string(width, '-') << "\n";
  out << std::left << std::setw(w) << "total"
      << "  " << std::setw(6) << "" << std::right << std::setw(10) << total_calls << std::setprecision(3)
      << std::setw(13) << total_ms << std::setw(11) << "" << std::setprecision(1) << std::setw(9)
      << (rows.empty() ? 0.0 : 100.0) << "\n";
  if (roofline) print_peaks(out, rows);
  out.flags(flags);
  out.precision(precision);
}

// Chrome trace event format: one complete ("X") event per op, CPU ops on thread 0, GPU ops on
// thread 1 and the collectives of data-parallel training on thread 2, plus the thread names
// Perfetto shows. Written beside the target and renamed, so
// a crash mid-write never leaves a truncated trace under the real name.
void write_trace(const std::string& path, const std::vector<Record>& records) {
  Json events = Json::array();
  auto name_thread = [&](int tid, const char* name) {
    events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", 1}, {"tid", tid}, {"args", {{"name", name}}}});
  };
  name_thread(0, "cpu");
  name_thread(1, "cuda stream");
  name_thread(2, "communication");
  for (const Record& r : records) {
    Json event = {{"name", r.name},
                  {"ph", "X"},
                  {"ts", r.start_us},
                  {"dur", r.dur_us},
                  {"pid", 1},
                  {"tid", r.communication ? 2 : r.device.is_cpu() ? 0 : 1},
                  {"cat", device_kind(r.device)}};
    if (r.cost.flops > 0 || r.cost.bytes > 0) {
      // The table's roofline numbers for this one call, as arguments Perfetto shows on the slice.
      const MachinePeaks* peaks = peaks_or_null(r.device);
      const RooflinePoint p =
          roofline_point(r.cost.flops, r.cost.bytes, r.dur_us / 1e6, peaks != nullptr ? *peaks : MachinePeaks{});
      event["args"] = {{"flops", r.cost.flops},          {"bytes", r.cost.bytes},
                       {"gflops_per_s", p.gflops_per_s}, {"gbytes_per_s", p.gbytes_per_s},
                       {"flop_per_byte", p.intensity},   {"bound", p.bound},  // empty: too short to time
                       {"fraction_of_peak", p.fraction}};
    }
    events.push_back(std::move(event));
  }
  const Json trace = {{"traceEvents", std::move(events)}, {"displayTimeUnit", "ms"}};
  files::write_file_atomically(path, trace.dump() + "\n");
}

}  // namespace

void enable(const std::string& trace_path) {
  if (!trace_path.empty()) {
    // Found out now, not after a long run: the trace's folder must exist.
    const std::filesystem::path parent = std::filesystem::path(trace_path).parent_path();
    VG_USAGE_CHECK(parent.empty() || std::filesystem::is_directory(parent),
                   "--trace " << trace_path << ": the folder " << parent.string() << " does not exist");
  }
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  clear(s);
  s.trace_path = trace_path;
  g_enabled.store(true, std::memory_order_relaxed);
}

bool enabled() { return g_enabled.load(std::memory_order_relaxed); }

void set_communication_thread() { t_communication_thread = true; }

void reset() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  clear(s);
}

std::vector<OpStats> summary() {
  const std::vector<Record> records = settled_records();
  std::map<std::pair<std::string, std::string>, OpStats> by_op;
  for (const Record& r : records) {
    const std::string kind = device_kind(r.device);
    OpStats& o = by_op[{r.name, kind}];
    if (o.calls == 0) o.device_index = r.device.index;
    o.name = r.name;
    o.device = kind;
    ++o.calls;
    o.total_ms += r.dur_us / 1000.0;
    if (r.cost.flops > 0 || r.cost.bytes > 0) {
      o.flops += r.cost.flops;
      o.bytes += r.cost.bytes;
      o.costed_ms += r.dur_us / 1000.0;
    }
  }
  std::vector<OpStats> rows;
  rows.reserve(by_op.size());
  for (auto& [key, o] : by_op) rows.push_back(std::move(o));
  // Ties by name, so the table is the same from run to run.
  std::stable_sort(rows.begin(), rows.end(),
                   [](const OpStats& a, const OpStats& b) { return a.total_ms > b.total_ms; });
  return rows;
}

void finish(std::ostream* table) {
  if (table != nullptr) print_table(*table, summary());
  std::string path;
  {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    path = s.trace_path;
    s.trace_path.clear();  // written once per session
  }
  // Off before the trace is written, so a failed write still leaves the profiler in one state.
  g_enabled.store(false, std::memory_order_relaxed);
  if (!path.empty()) write_trace(path, settled_records());
}

}  // namespace profiler

void ProfileScope::begin(const char* name, Device d) {
  profiler::State& s = profiler::state();
  {
    // Interned so that a name built on the fly ("conv3d_backward") outlives the scope's records.
    std::lock_guard<std::mutex> lock(s.mutex);
    name_ = profiler::intern(s, name);
    if (d.is_cuda() && profiler::find_base(s, d.index) == nullptr) {
      void* event = profiler::gpu::record_event(d);
      s.bases.push_back({d.index, event, profiler::us_since(s, profiler::Clock::now())});
    }
  }
  device_ = d;
  if (d.is_cuda()) gpu_start_ = profiler::gpu::record_event(d);
  profiler::gpu::range_push(name_);
  active_ = true;
  // Last, so the bookkeeping above is not billed to the op.
  cpu_start_ns_ =
      std::chrono::duration_cast<std::chrono::nanoseconds>(profiler::Clock::now().time_since_epoch()).count();
}

// Runs in a destructor: a failure to record drops this one record rather than escaping.
void ProfileScope::end() {
  const auto now = profiler::Clock::now();
  active_ = false;
  profiler::gpu::range_pop();
  profiler::Record r{name_, device_};
  r.cost = cost_;
  r.communication = profiler::t_communication_thread;
  r.gpu_start = gpu_start_;
  gpu_start_ = nullptr;
  profiler::State& s = profiler::state();
  bool stored = false;  // once stored, the record's events belong to the session
  try {
    if (device_.is_cuda()) r.gpu_end = profiler::gpu::record_event(device_);
    std::lock_guard<std::mutex> lock(s.mutex);
    if (!profiler::g_enabled.load(std::memory_order_relaxed)) {
      profiler::release(r);  // finished while this scope ran
      return;
    }
    const profiler::Clock::time_point start{std::chrono::nanoseconds(cpu_start_ns_)};
    r.start_us = profiler::us_since(s, start);
    r.dur_us = std::chrono::duration<double, std::micro>(now - start).count();
    s.records.push_back(r);
    stored = true;
    if (r.gpu_end != nullptr) s.unresolved.push_back(s.records.size() - 1);
    if (s.unresolved.size() > profiler::kResolveBacklog) profiler::resolve_done(s);
  } catch (const std::exception&) {
    if (!stored) profiler::release(r);
  }
}

}  // namespace voxgrad
