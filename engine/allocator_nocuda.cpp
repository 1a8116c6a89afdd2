// The CUDA allocator in a CPU-only build (VOXGRAD_CUDA=OFF): asking for it is a clear error, so a
// stray Device::cuda() tensor fails with a message instead of a link error or a crash.
#include "engine/allocator.h"
#include "engine/error.h"

namespace voxgrad {

CachingAllocator& cuda_allocator() { VG_FAIL("CUDA memory was requested but voxgrad was built without CUDA"); }

}  // namespace voxgrad
