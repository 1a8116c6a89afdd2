// A GPU's peaks: float32 FMA throughput from its properties (FP32 lanes per SM for its compute
// capability x SMs x clock x 2), and memory bandwidth from a timed device-to-device copy of
// 256 MiB (bytes read plus bytes written), best of three.
#include <cuda_runtime.h>

#include <algorithm>

#include "engine/device.h"
#include "engine/error.h"
#include "engine/machine_peaks.h"
#include "kernels/cuda/check.h"

namespace voxgrad {

namespace {

// FP32 lanes per SM (the CUDA programming guide's arithmetic throughput table).
int fp32_lanes_per_sm(int major, int minor) {
  if (major == 8 && minor == 0) return 64;  // A100
  if (major >= 7 && major < 8) return 64;   // Volta, Turing
  if (major == 6 && minor == 0) return 64;
  return 128;  // sm_61, sm_86, sm_89, sm_90, sm_100 and later
}

int attribute(cudaDeviceAttr what, int device) {
  int value = 0;
  VG_CUDA_CHECK(cudaDeviceGetAttribute(&value, what, device));
  return value;
}

}  // namespace

MachinePeaks gpu_peaks(Device d) {
  VG_CHECK(d.is_cuda(), "gpu_peaks: " << d.str() << " is not a GPU");
  int previous = 0;
  VG_CUDA_CHECK(cudaGetDevice(&previous));
  VG_CUDA_CHECK(cudaSetDevice(d.index));
  const int sms = attribute(cudaDevAttrMultiProcessorCount, d.index);
  const int clock_khz = attribute(cudaDevAttrClockRate, d.index);
  const int major = attribute(cudaDevAttrComputeCapabilityMajor, d.index);
  const int minor = attribute(cudaDevAttrComputeCapabilityMinor, d.index);
  MachinePeaks p;
  p.machine = cuda_device_name(d.index);
  p.source = "properties + copy";
  p.level = "fp32 fma";
  p.gflops = 2.0 * fp32_lanes_per_sm(major, minor) * sms * (clock_khz * 1e3) / 1e9;
  p.levels.push_back({p.level, p.gflops, 0.0});

  constexpr std::size_t kBytes = std::size_t{256} << 20;
  void* from = nullptr;
  void* to = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  VG_CUDA_CHECK(cudaMalloc(&from, kBytes));  // once per device and process, never in an op
  VG_CUDA_CHECK(cudaMalloc(&to, kBytes));
  VG_CUDA_CHECK(cudaEventCreate(&start));
  VG_CUDA_CHECK(cudaEventCreate(&stop));
  VG_CUDA_CHECK(cudaMemset(from, 1, kBytes));
  double best = 0;
  for (int run = 0; run < 4; ++run) {
    VG_CUDA_CHECK(cudaEventRecord(start));
    VG_CUDA_CHECK(cudaMemcpyAsync(to, from, kBytes, cudaMemcpyDeviceToDevice));
    VG_CUDA_CHECK(cudaEventRecord(stop));
    VG_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    VG_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (run > 0 && ms > 0) best = std::max(best, 2.0 * static_cast<double>(kBytes) / (ms / 1e3) / 1e9);
  }
  VG_CUDA_CHECK(cudaEventDestroy(start));
  VG_CUDA_CHECK(cudaEventDestroy(stop));
  VG_CUDA_CHECK(cudaFree(from));
  VG_CUDA_CHECK(cudaFree(to));
  p.gbytes_per_s = best;
  VG_CUDA_CHECK(cudaSetDevice(previous));
  return p;
}

}  // namespace voxgrad
