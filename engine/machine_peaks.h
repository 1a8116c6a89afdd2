// The roofline the profiler measures ops against: the most floating-point operations and memory
// bytes per second this machine delivers, measured by voxgrad itself (a register-only FMA loop per
// SIMD level, a memory copy) and cached per machine, so `--profile` can say of each op whether
// its arithmetic or its memory traffic bounds it and how close it runs to that bound.
#pragma once

#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/json.h"

namespace voxgrad {

struct SimdPeak {
  std::string level;              // "sse2", "avx2+fma", "avx512f"
  double gflops_all_threads = 0;  // float32
  double gflops_one_thread = 0;
};

struct MachinePeaks {
  std::string machine;      // the cache key: CPU model and thread count, or the GPU's name
  std::string source;       // "measured", "cache", or for a GPU "properties + copy"
  double gflops = 0;        // float32 at the best SIMD level, all threads
  double gbytes_per_s = 0;  // memory copy, bytes read plus bytes written, all threads
  std::string level;        // the SIMD level behind gflops
  std::vector<SimdPeak> levels;
  // The arithmetic intensity (FLOP per byte) above which an op is compute-bound.
  double ridge() const { return gbytes_per_s > 0 ? gflops / gbytes_per_s : 0.0; }
};

Json peaks_to_json(const MachinePeaks& p);

// Measures now (about a second on 2 cores) with the current OpenMP thread count.
MachinePeaks measure_cpu_peaks();
// This machine's cached CPU peaks for the current thread count, else measured and cached.
MachinePeaks cpu_peaks();
// A GPU's: FP32 lanes x SMs x clock x 2 from its properties, and a device-to-device copy.
// Throws without CUDA.
MachinePeaks gpu_peaks(Device d);
// The peaks of the device an op ran on (cached after the first call per device).
const MachinePeaks& peaks_for(Device d);

// Where the CPU peaks are cached: $XDG_CACHE_HOME/voxgrad/peaks.json, else
// $HOME/.cache/voxgrad/peaks.json; empty when neither variable is set (then nothing is cached).
std::string peaks_cache_path();
// Writes `p` under its machine key into the cache (atomically; other machines' entries kept).
void store_cpu_peaks(const MachinePeaks& p);

// The bound of an op that does `flops` and moves `bytes` in `seconds`: "compute" or "memory"
// from its intensity against the ridge, and its achieved rate as a fraction of that bound's peak.
struct RooflinePoint {
  double gflops_per_s = 0, gbytes_per_s = 0, intensity = 0;
  std::string bound;    // "compute", "memory", or empty when the op has no cost model
  double fraction = 0;  // of the bound's peak
};
RooflinePoint roofline_point(double flops, double bytes, double seconds, const MachinePeaks& peaks);

}  // namespace voxgrad
