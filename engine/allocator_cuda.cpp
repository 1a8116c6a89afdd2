// The CUDA backend of the caching allocator (cudaMalloc/cudaFree, events for cross-stream reuse)
// and the process-wide CUDA allocator. The only place in the engine that calls cudaMalloc.
#include <cuda_runtime.h>

#include <mutex>
#include <vector>

#include "engine/allocator.h"
#include "engine/error.h"
#include "kernels/cuda/check.h"

namespace voxgrad {

namespace {

class CudaBackend final : public AllocatorBackend {
 public:
  void* raw_allocate(std::size_t bytes) override {
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, bytes);
    if (err == cudaErrorMemoryAllocation) {
      // Not sticky, but it stays as the "last error": clear it so the next launch check does
      // not report it as its own failure. The caching allocator retries or reports it.
      (void)cudaGetLastError();
      return nullptr;
    }
    VG_CUDA_CHECK(err);
    return p;
  }

  void raw_free(void* p) override { VG_CUDA_CHECK(cudaFree(p)); }

  // Events come from a pool: cross-stream frees happen every step in some models, and creating
  // an event per free would be a driver call per tensor.
  void* record_event(kernels::Stream stream) override {
    cudaEvent_t e = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!pool_.empty()) {
        e = pool_.back();
        pool_.pop_back();
      }
    }
    if (e == nullptr) VG_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    const cudaError_t err = cudaEventRecord(e, kernels::cuda::native(stream));
    if (err != cudaSuccess) destroy_event(e);
    VG_CUDA_CHECK(err);
    return e;
  }

  bool event_done(void* event) override {
    const cudaError_t err = cudaEventQuery(static_cast<cudaEvent_t>(event));
    if (err == cudaErrorNotReady) {
      (void)cudaGetLastError();  // "not yet" is an answer, not an error for the next check to find
      return false;
    }
    VG_CUDA_CHECK(err);
    return true;
  }

  void destroy_event(void* event) override {
    std::lock_guard<std::mutex> lock(mutex_);
    pool_.push_back(static_cast<cudaEvent_t>(event));
  }

 private:
  std::mutex mutex_;
  std::vector<cudaEvent_t> pool_;
};

}  // namespace

// Deliberately leaked (new, never deleted): the static CUDA runtime tears itself down at exit in
// an order we do not control, so a destructor calling cudaFree/cudaEventDestroy could run against
// an unloaded runtime (cudaErrorCudartUnloading) and throw during exit. The driver reclaims all of
// the process's device memory when it ends anyway.
// cudaMalloc serves the current device: one allocator suffices because resolve_device() only ever
// picks cuda:0; free lists are per stream, and streams are per device, so blocks never cross devices.
CachingAllocator& cuda_allocator() {
  // A throwing initialiser leaves the static uninitialised, so every call reports the reason.
  static CachingAllocator* instance = [] {
    VG_CHECK(cuda_device_count() > 0,
             "CUDA memory was requested but no CUDA device is usable (" << cuda_unavailable_reason() << ")");
    return new CachingAllocator(std::make_unique<CudaBackend>());
  }();
  return *instance;
}

}  // namespace voxgrad
