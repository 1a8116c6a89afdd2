// Where a tensor lives, and what this machine offers. Discovery never throws and never crashes:
// no device, no driver or a driver too old all mean CPU mode, said once on stderr.
#pragma once

#include <string>

#include "../kernels/common.h"

namespace voxgrad {

enum class DeviceType : std::uint8_t { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;

  static Device cpu() { return {DeviceType::CPU, 0}; }
  static Device cuda(int i = 0) { return {DeviceType::CUDA, i}; }
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  std::string str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
};

// True when this binary was built with CUDA support (VOXGRAD_CUDA=ON).
bool built_with_cuda();

// Number of usable CUDA devices; 0 when built without CUDA or when the driver is missing or too
// old. Initialises the CUDA runtime on first call, so commands that need no GPU never call it.
int cuda_device_count();

// Why cuda_device_count() is 0 (empty when it is not): "built without CUDA", "no CUDA driver", ...
std::string cuda_unavailable_reason();

// Name and compute capability of device `index`, e.g. "NVIDIA H100 80GB HBM3 (sm_90)".
std::string cuda_device_name(int index = 0);

// The --device choice: "cpu", "cuda" (a UsageError, exit 2, when there is none) or "auto"
// (CUDA when available, else the CPU, saying so once on stderr).
Device resolve_device(const std::string& choice);

// The stream all engine work on `d` is ordered on (null handle on the CPU).
kernels::Stream stream_for(Device d);

// Wait until all work queued on `d` has finished.
void synchronize(Device d);

}  // namespace voxgrad
