// The CPU half of the machine's peaks: FMA loops compiled once per SIMD level and run on every
// OpenMP thread, a memory copy over buffers far larger than the caches, and the JSON cache.
#include "engine/machine_peaks.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>

#include "engine/error.h"
#include "engine/files.h"

namespace voxgrad {

namespace {

constexpr int kAccumulators = 12;  // independent chains: enough to cover FMA latency on two ports

// acc = acc * a + b on kAccumulators vectors of `lanes` floats, `iters` times: two FLOPs per lane
// per step, no memory traffic. Returns a sum of the accumulators so nothing is optimised away.
#define VG_FMA_LOOP(name, target, lanes)                                                   \
  target float name(std::int64_t iters) {                                                  \
    typedef float V __attribute__((vector_size((lanes)*4)));                               \
    V acc[kAccumulators];                                                                  \
    for (int k = 0; k < kAccumulators; ++k) acc[k] = V{} + 0.001f * static_cast<float>(k); \
    const V a = V{} + 0.999999f, b = V{} + 1e-7f;                                          \
    for (std::int64_t i = 0; i < iters; ++i)                                               \
      for (int k = 0; k < kAccumulators; ++k) acc[k] = acc[k] * a + b;                     \
    float total = 0;                                                                       \
    for (int k = 0; k < kAccumulators; ++k)                                                \
      for (int l = 0; l < (lanes); ++l) total += acc[k][l];                                \
    return total;                                                                          \
  }

VG_FMA_LOOP(fma_loop_sse2, , 4)
#if defined(__x86_64__)
VG_FMA_LOOP(fma_loop_avx2, __attribute__((target("avx2,fma"))), 8)
VG_FMA_LOOP(fma_loop_avx512, __attribute__((target("avx512f"))), 16)
#endif

struct Level {
  const char* name;
  int lanes;
  float (*loop)(std::int64_t);
  bool (*available)();
};

std::vector<Level> levels() {
  std::vector<Level> out = {{"sse2", 4, fma_loop_sse2, [] { return true; }}};
#if defined(__x86_64__)
  out.push_back(
      {"avx2+fma", 8, fma_loop_avx2, [] { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }});
  out.push_back({"avx512f", 16, fma_loop_avx512, [] { return __builtin_cpu_supports("avx512f") != 0; }});
#endif
  return out;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Best of three runs of the loop on `threads` threads, in GFLOP/s.
double fma_gflops(const Level& level, int threads) {
  constexpr std::int64_t kIters = std::int64_t{1} << 22;
  double best = 0;
  volatile float sink = 0;
  for (int run = 0; run < 3; ++run) {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
    {
      const float r = level.loop(kIters);
      if (r == 12345.0f) sink = r;  // never true; keeps the result live
    }
    const double flops = 2.0 * level.lanes * kAccumulators * static_cast<double>(kIters) * threads;
    best = std::max(best, flops / seconds_since(t0) / 1e9);
  }
  (void)sink;
  return best;
}

// Best of three copies of 128 MiB by all threads, each its own contiguous part, in GB/s counting
// the bytes read and the bytes written.
double copy_gbytes_per_s(int threads) {
  constexpr std::size_t kBytes = std::size_t{128} << 20;
  const std::unique_ptr<char[]> from(new char[kBytes]), to(new char[kBytes]);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(kBytes); i += 4096) {  // first touch, by the threads that copy
    from[i] = static_cast<char>(i);
    to[i] = 0;
  }
  double best = 0;
  for (int run = 0; run < 4; ++run) {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
    {
      const std::size_t t = static_cast<std::size_t>(omp_get_thread_num()),
                        n = static_cast<std::size_t>(omp_get_num_threads());
      const std::size_t first = kBytes * t / n, last = kBytes * (t + 1) / n;
      std::memcpy(to.get() + first, from.get() + first, last - first);
    }
    const double s = seconds_since(t0);
    if (run > 0) best = std::max(best, 2.0 * static_cast<double>(kBytes) / s / 1e9);
  }
  return best;
}

std::string cpu_model() {
  std::ifstream info("/proc/cpuinfo");
  std::string line;
  while (std::getline(info, line)) {
    if (line.rfind("model name", 0) == 0) {
      const std::size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  }
  return "unknown CPU";
}

std::string machine_key(int threads) { return cpu_model() + ", " + std::to_string(threads) + " threads"; }

MachinePeaks peaks_from_json(const Json& j) {
  MachinePeaks p;
  p.machine = j.value("machine", std::string());
  p.gflops = j.value("gflops", 0.0);
  p.gbytes_per_s = j.value("gbytes_per_s", 0.0);
  p.level = j.value("level", std::string());
  if (j.contains("levels") && j["levels"].is_array())
    for (const Json& l : j["levels"])
      p.levels.push_back(
          {l.value("level", std::string()), l.value("gflops_all_threads", 0.0), l.value("gflops_one_thread", 0.0)});
  return p;
}

Json read_cache(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Json::object();
  std::stringstream text;
  text << in.rdbuf();
  try {
    Json j = Json::parse(text.str());
    if (j.is_object() && j.contains("machines") && j["machines"].is_object()) return j;
  } catch (const std::exception&) {
  }
  return Json::object();  // unreadable: measured again and rewritten
}

}  // namespace

Json peaks_to_json(const MachinePeaks& p) {
  Json levels = Json::array();
  for (const SimdPeak& l : p.levels)
    levels.push_back(
        {{"level", l.level}, {"gflops_all_threads", l.gflops_all_threads}, {"gflops_one_thread", l.gflops_one_thread}});
  return {{"machine", p.machine}, {"source", p.source},
          {"gflops", p.gflops},   {"gbytes_per_s", p.gbytes_per_s},
          {"level", p.level},     {"ridge_flop_per_byte", p.ridge()},
          {"levels", levels}};
}

MachinePeaks measure_cpu_peaks() {
  const int threads = omp_get_max_threads();
  MachinePeaks p;
  p.machine = machine_key(threads);
  p.source = "measured";
  for (const Level& level : levels()) {
    if (!level.available()) continue;
    SimdPeak s{level.name, fma_gflops(level, threads), threads > 1 ? fma_gflops(level, 1) : 0.0};
    if (threads == 1) s.gflops_one_thread = s.gflops_all_threads;
    if (s.gflops_all_threads > p.gflops) {
      p.gflops = s.gflops_all_threads;
      p.level = s.level;
    }
    p.levels.push_back(s);
  }
  p.gbytes_per_s = copy_gbytes_per_s(threads);
  return p;
}

std::string peaks_cache_path() {
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0')
    return (std::filesystem::path(xdg) / "voxgrad" / "peaks.json").string();
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0')
    return (std::filesystem::path(home) / ".cache" / "voxgrad" / "peaks.json").string();
  return "";
}

void store_cpu_peaks(const MachinePeaks& p) {
  const std::string path = peaks_cache_path();
  if (path.empty()) return;
  Json cache = read_cache(path);
  if (!cache.contains("machines")) cache["machines"] = Json::object();
  Json entry = peaks_to_json(p);
  entry.erase("source");
  cache["machines"][p.machine] = entry;
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  try {
    files::write_file_atomically(path, cache.dump(2) + "\n");
  } catch (const std::exception&) {
    // A cache that cannot be written costs a measurement next time, nothing more.
  }
}

MachinePeaks cpu_peaks() {
  const std::string key = machine_key(omp_get_max_threads()), path = peaks_cache_path();
  if (!path.empty()) {
    const Json cache = read_cache(path);
    if (cache.contains("machines") && cache["machines"].contains(key)) {
      MachinePeaks p = peaks_from_json(cache["machines"][key]);
      p.source = "cache " + path;
      if (p.gflops > 0 && p.gbytes_per_s > 0) return p;
    }
  }
  MachinePeaks p = measure_cpu_peaks();
  store_cpu_peaks(p);
  return p;
}

const MachinePeaks& peaks_for(Device d) {
  static std::mutex mutex;
  static std::vector<std::pair<Device, MachinePeaks>> known;
  std::lock_guard<std::mutex> lock(mutex);
  for (const auto& [device, peaks] : known)
    if (device == d) return peaks;
  known.emplace_back(d, d.is_cpu() ? cpu_peaks() : gpu_peaks(d));
  return known.back().second;
}

RooflinePoint roofline_point(double flops, double bytes, double seconds, const MachinePeaks& peaks) {
  RooflinePoint r;
  if (seconds <= 0 || (flops <= 0 && bytes <= 0)) return r;
  r.gflops_per_s = flops / seconds / 1e9;
  r.gbytes_per_s = bytes / seconds / 1e9;
  r.intensity = bytes > 0 ? flops / bytes : 0.0;
  if (peaks.gflops <= 0 || peaks.gbytes_per_s <= 0) return r;
  const bool compute = bytes <= 0 || r.intensity >= peaks.ridge();
  r.bound = compute ? "compute" : "memory";
  r.fraction = compute ? r.gflops_per_s / peaks.gflops : r.gbytes_per_s / peaks.gbytes_per_s;
  return r;
}

}  // namespace voxgrad
