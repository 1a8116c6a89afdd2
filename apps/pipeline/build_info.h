// What this build of voxgrad is: its version and whether (and for which GPUs) CUDA is compiled in,
// for `voxgrad --version` and vg_version().
#pragma once

#include <string>

namespace voxgrad::pipeline {

const char* version();  // "MAJOR.MINOR.PATCH"
// "CUDA 13.0 compiled in for architectures 80,90; cuDNN loaded at run time" or
// "CPU only: built without CUDA".
std::string build_summary();

}  // namespace voxgrad::pipeline
