// Private to the profiler: the device half of timing (pooled CUDA timing events, NVTX ranges),
// implemented by profiler_cuda.cpp, or by profiler_nocuda.cpp where there is no CUDA.
#pragma once

#include "engine/device.h"

namespace voxgrad::profiler::gpu {

// An NVTX range around an op for Nsight Systems; no-ops without CUDA.
void range_push(const char* name);
void range_pop();

// A timing event from the pool, recorded on stream_for(d) now.
void* record_event(Device d);
// True once the stream has passed the event (never blocks).
bool event_done(void* event);
// Milliseconds from `from` to `to`; both must be done.
double elapsed_ms(void* from, void* to);
// Back to the pool.
void release_event(void* event);

}  // namespace voxgrad::profiler::gpu
