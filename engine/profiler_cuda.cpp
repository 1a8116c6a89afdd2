// The profiler's GPU half in a CUDA build: timing events recorded on the engine stream, drawn from
// a pool so that a profiled op costs two cudaEventRecord calls, and NVTX ranges for Nsight.
#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>

#include <mutex>
#include <vector>

#include "engine/profiler_gpu.h"
#include "kernels/cuda/check.h"

namespace voxgrad::profiler::gpu {

namespace {
// Leaked on purpose, like the allocator: destroying events during exit could call into an
// already torn-down static runtime.
struct EventPool {
  std::mutex mutex;
  std::vector<cudaEvent_t> free;
};
EventPool& pool() {
  static EventPool* p = new EventPool;
  return *p;
}
}  // namespace

void range_push(const char* name) { nvtxRangePushA(name); }

void range_pop() { nvtxRangePop(); }

void* record_event(Device d) {
  cudaEvent_t e = nullptr;
  {
    EventPool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    if (!p.free.empty()) {
      e = p.free.back();
      p.free.pop_back();
    }
  }
  if (e == nullptr) VG_CUDA_CHECK(cudaEventCreate(&e));  // timing enabled: that is its purpose
  const cudaError_t err = cudaEventRecord(e, kernels::cuda::native(stream_for(d)));
  if (err != cudaSuccess) release_event(e);
  VG_CUDA_CHECK(err);
  return e;
}

bool event_done(void* event) {
  const cudaError_t err = cudaEventQuery(static_cast<cudaEvent_t>(event));
  if (err == cudaErrorNotReady) {
    (void)cudaGetLastError();  // "not yet" must not surface as the next launch check's error
    return false;
  }
  VG_CUDA_CHECK(err);
  return true;
}

double elapsed_ms(void* from, void* to) {
  float ms = 0.0f;
  VG_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(from), static_cast<cudaEvent_t>(to)));
  return ms;
}

void release_event(void* event) {
  EventPool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  p.free.push_back(static_cast<cudaEvent_t>(event));
}

}  // namespace voxgrad::profiler::gpu
