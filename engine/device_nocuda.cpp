// Device discovery in a CPU-only build (VOXGRAD_CUDA=OFF): there is never a CUDA device, and asking
// for one's stream or name is a clear error rather than a crash.
#include "engine/device.h"
#include "engine/error.h"

namespace voxgrad {

bool built_with_cuda() { return false; }

int cuda_device_count() { return 0; }

std::string cuda_unavailable_reason() { return "built without CUDA"; }

std::string cuda_device_name(int index) {
  VG_FAIL("CUDA device " << index << " requested but this voxgrad was built without CUDA");
}

kernels::Stream stream_for(Device d) {
  VG_CHECK(d.is_cpu(), "device " << d.str() << " requested but this voxgrad was built without CUDA");
  return {};
}

void synchronize(Device d) {
  VG_CHECK(d.is_cpu(), "device " << d.str() << " requested but this voxgrad was built without CUDA");
}

}  // namespace voxgrad
