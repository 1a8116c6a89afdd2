// The profiler's GPU half in a CPU-only build: no NVTX, and a CUDA scope is an error (no tensor can
// live on a CUDA device here, so reaching it means a Device::cuda() slipped through).
#include "engine/error.h"
#include "engine/profiler_gpu.h"

namespace voxgrad::profiler::gpu {

void range_push(const char*) {}

void range_pop() {}

void* record_event(Device d) { VG_FAIL("profiling an op on " << d.str() << ": voxgrad was built without CUDA"); }

bool event_done(void*) { return true; }

double elapsed_ms(void*, void*) { return 0.0; }

void release_event(void*) {}

}  // namespace voxgrad::profiler::gpu
