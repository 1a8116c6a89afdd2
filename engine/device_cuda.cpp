// Device discovery and the engine's streams in a CUDA build. A machine without a usable GPU is
// normal: every failure of the first CUDA call becomes "0 devices" plus a reason, never an exception.
#include <cuda_runtime.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "engine/device.h"
#include "engine/error.h"
#include "kernels/cuda/check.h"

namespace voxgrad {

namespace {

struct Discovery {
  int count = 0;
  std::string reason;
};

// The first runtime call decides everything: the static runtime loads libcuda.so here, so a
// missing or old driver shows up as this call's error code.
Discovery discover() {
  Discovery d;
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  // A failed discovery must not leak into the next VG_CUDA_CHECK_LAUNCH as a "launch error".
  (void)cudaGetLastError();
  const std::string code = std::string(": ") + cudaGetErrorName(err);
  switch (err) {
    case cudaSuccess:
      d.count = n;
      if (n == 0) d.reason = "no CUDA device";
      return d;
    case cudaErrorNoDevice:
      d.reason = "no CUDA device" + code;
      return d;
    case cudaErrorInsufficientDriver: {
      // The runtime reports a missing driver and an old one with the same code; the driver's own
      // version (0 when libcuda.so could not be loaded) tells them apart.
      int driver = 0;
      if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;
      (void)cudaGetLastError();
      if (driver == 0) {
        d.reason = "no CUDA driver" + code;
      } else {
        d.reason = "the CUDA driver is too old for this build (CUDA " + std::to_string(CUDART_VERSION / 1000) +
                   ", driver supports " + std::to_string(driver / 1000) + "." + std::to_string(driver % 1000 / 10) +
                   ")" + code;
      }
      return d;
    }
    case cudaErrorStubLibrary:
      d.reason = "no CUDA driver (only the stub libcuda.so was found)" + code;
      return d;
    case cudaErrorSystemDriverMismatch:
    case cudaErrorCompatNotSupportedOnDevice:
      d.reason = "the CUDA driver does not match the kernel module" + code;
      return d;
    default:
      d.reason = std::string("CUDA could not be initialised (") + cudaGetErrorString(err) + ")" + code;
      return d;
  }
}

const Discovery& discovery() {
  static std::once_flag once;
  static Discovery d;
  std::call_once(once, [] { d = discover(); });
  return d;
}

// One non-blocking stream per device, created on first use and kept for the process. Never
// destroyed: at exit the static runtime may already be torn down, and the driver reclaims them.
// Non-blocking so the legacy default stream (used by libraries we do not control) never
// serialises against engine work.
struct Streams {
  std::unique_ptr<std::atomic<cudaStream_t>[]> handles;
  std::mutex create;
};

Streams& streams() {
  static Streams* s = [] {
    auto* made = new Streams;
    const int n = discovery().count;
    made->handles = std::make_unique<std::atomic<cudaStream_t>[]>(static_cast<std::size_t>(n > 0 ? n : 1));
    for (int i = 0; i < (n > 0 ? n : 1); ++i) made->handles[i].store(nullptr, std::memory_order_relaxed);
    return made;
  }();
  return *s;
}

void check_index(int index) {
  const int n = cuda_device_count();
  VG_CHECK(n > 0, "CUDA device " << index << " requested but no CUDA device is usable (" << cuda_unavailable_reason()
                                 << ")");
  VG_CHECK(index >= 0 && index < n, "CUDA device " << index << " does not exist (this machine has " << n << ")");
}

// Restores the caller's current device when creating a stream on another one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int index) {
    VG_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != index) VG_CUDA_CHECK(cudaSetDevice(index));
  }
  ~DeviceGuard() { (void)cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace

bool built_with_cuda() { return true; }

int cuda_device_count() { return discovery().count; }

std::string cuda_unavailable_reason() { return discovery().reason; }

std::string cuda_device_name(int index) {
  check_index(index);
  cudaDeviceProp prop{};
  VG_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ")";
}

kernels::Stream stream_for(Device d) {
  if (d.is_cpu()) return {};
  check_index(d.index);
  Streams& s = streams();
  // Every op asks for its stream, so the common case is one acquire load and no lock.
  cudaStream_t h = s.handles[d.index].load(std::memory_order_acquire);
  if (h == nullptr) {
    std::lock_guard<std::mutex> lock(s.create);
    h = s.handles[d.index].load(std::memory_order_relaxed);
    if (h == nullptr) {
      DeviceGuard guard(d.index);
      VG_CUDA_CHECK(cudaStreamCreateWithFlags(&h, cudaStreamNonBlocking));
      s.handles[d.index].store(h, std::memory_order_release);
    }
  }
  return {h};
}

void synchronize(Device d) {
  if (d.is_cpu()) return;
  VG_CUDA_CHECK(cudaStreamSynchronize(kernels::cuda::native(stream_for(d))));
}

}  // namespace voxgrad
