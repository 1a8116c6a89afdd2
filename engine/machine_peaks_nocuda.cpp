// The GPU peaks in a CPU-only build: there is no GPU to ask.
#include "engine/error.h"
#include "engine/machine_peaks.h"

namespace voxgrad {

MachinePeaks gpu_peaks(Device d) {
  VG_FAIL("peaks of " << d.str() << " requested but this voxgrad was built without CUDA");
}

}  // namespace voxgrad
