// `voxgrad bench peak`: the float32 FMA throughput per SIMD level (all threads and one), the
// memory copy bandwidth and the ridge between them on the CPU, or a GPU's from its properties and
// a copy; the CPU's are written to the cache `--profile` reads (engine/machine_peaks.h).
#include "apps/bench/bench_peak.h"

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>

#include "apps/cli/cli_checks.h"
#include "engine/device.h"
#include "engine/json.h"
#include "engine/log.h"
#include "engine/machine_peaks.h"

namespace voxgrad::bench {

using namespace cli;  // the command line's option checks and exit statuses

namespace {

struct PeakBenchOptions {
  bool json = false;
};

int run_bench_peak(const PeakBenchOptions& opt, const GlobalOptions& global) {
  const Device dev = resolve_device(global.device);
  MachinePeaks peaks;
  std::string cache;
  if (dev.is_cpu()) {
    logging::info("measuring the CPU's peaks (about a second per SIMD level)");
    peaks = measure_cpu_peaks();
    store_cpu_peaks(peaks);
    cache = peaks_cache_path();
  } else {
    peaks = gpu_peaks(dev);
  }
  if (opt.json) {
    Json line = peaks_to_json(peaks);
    line["device"] = dev.str();
    line["cache"] = cache.empty() ? Json(nullptr) : Json(cache);
    write_json_line(std::cout, line);
    return kExitOk;
  }
  std::printf("bench peak on %s: %s\n", dev.str().c_str(), peaks.machine.c_str());
  std::printf("%-12s %18s %18s\n", "level", "GFLOP/s (all)", "GFLOP/s (1 thread)");
  for (const SimdPeak& l : peaks.levels)
    std::printf("%-12s %18.1f %18.1f\n", l.level.c_str(), l.gflops_all_threads, l.gflops_one_thread);
  std::printf("memory copy  %.1f GB/s (bytes read plus written)\n", peaks.gbytes_per_s);
  std::printf("ridge        %.2f FLOP/B: ops below it are memory-bound, above it compute-bound\n", peaks.ridge());
  if (!cache.empty()) std::printf("cached in    %s (read by --profile)\n", cache.c_str());
  return kExitOk;
}

}  // namespace

NestedCommand add_bench_peak(CLI::App& bench) {
  auto opt = std::make_shared<PeakBenchOptions>();
  CLI::App* sub = bench.add_subcommand(
      "peak",
      "Measure the machine's roofline: float32 FMA GFLOP/s per SIMD level and memory copy GB/s (cached for --profile)");
  sub->add_flag("--json", opt->json, "One JSON object on stdout");
  return {sub, [opt](const GlobalOptions& global) { return run_bench_peak(*opt, global); }};
}

}  // namespace voxgrad::bench
