// The build's facts, passed by CMake as definitions of this file alone.
#include "apps/pipeline/build_info.h"

namespace voxgrad::pipeline {

const char* version() { return VOXGRAD_VERSION; }

std::string build_summary() {
#if VOXGRAD_HAS_CUDA
  return std::string("CUDA ") + VOXGRAD_CUDA_VERSION + " compiled in for architectures " + VOXGRAD_ARCHITECTURES +
         "; cuDNN loaded at run time";
#else
  return "CPU only: built without CUDA";
#endif
}

}  // namespace voxgrad::pipeline
