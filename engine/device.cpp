// The --device choice, shared by both builds. Discovery itself (device count, streams) lives in
// device_cuda.cpp or device_nocuda.cpp; this file only turns a user's word into a Device.
#include "engine/device.h"

#include "engine/error.h"
#include "engine/log.h"

namespace voxgrad {

Device resolve_device(const std::string& choice) {
  if (choice == "cpu") return Device::cpu();
  if (choice == "cuda") {
    if (cuda_device_count() == 0)
      VG_USAGE_FAIL("--device cuda: no CUDA device is usable (" << cuda_unavailable_reason()
                                                          << "); use --device cpu or --device auto");
    return Device::cuda(0);
  }
  if (choice == "auto") {
    if (cuda_device_count() > 0) return Device::cuda(0);
    logging::notice_once("cpu-mode", "no CUDA device (" + cuda_unavailable_reason() + "), running on the CPU");
    return Device::cpu();
  }
  VG_USAGE_FAIL("--device '" << choice << "' is not a device: use cpu, cuda or auto");
}

}  // namespace voxgrad
