// Opens libcudnn.so.9 with dlopen and fills the function table once; see cudnn_library.h. Nothing
// here runs until a convolution reaches a CUDA device, so CPU runs never look for cuDNN.
#include "kernels/cuda/cudnn_library.h"

#include <cuda_runtime_api.h>

#include <string>

#include "kernels/cuda/shared_library.h"
#include "kernels/error.h"

namespace voxgrad::kernels::cuda {

namespace {

constexpr int kCudaMajor = CUDART_VERSION / 1000;

// The end of every message: what to install, matching the CUDA this binary was built with.
std::string install_hint() {
  const std::string cuda = std::to_string(kCudaMajor);
  std::string hint = "install cuDNN 9 for CUDA " + cuda;
  hint.append(" (Debian/Ubuntu: the cudnn9-cuda-" + cuda + " package, or pip's nvidia-cudnn-cu" + cuda + ")");
  hint.append(" or put its folder on LD_LIBRARY_PATH; `--device cpu` runs without it");
  return hint;
}

// cuDNN 9 reports major * 10000 + minor * 100 + patch, cuDNN 8 and older major * 1000 + ...
std::string version_text(std::size_t v) {
  const bool wide = v >= 10000;
  const std::size_t major = wide ? v / 10000 : v / 1000;
  const std::size_t minor = wide ? v / 100 % 100 : v / 100 % 10;
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(v % 100);
}

}  // namespace

CudnnLibrary open_cudnn_library(const char* soname) {
  // Closed again unless it proves usable, so a failed attempt leaves nothing mapped.
  SharedLibrary opened(soname, "cuDNN 9", install_hint());
  const std::string& path = opened.path();
  CudnnLibrary library;
  // dlsym returns a data pointer; POSIX guarantees it converts to the function's pointer type.
#define VOXGRAD_CUDNN_LOOKUP(name)                                                                                 \
  if (void* symbol = opened.symbol(#name); symbol != nullptr) {                                                    \
    library.name = reinterpret_cast<decltype(library.name)>(symbol);                                               \
  } else {                                                                                                         \
    VG_INPUT_FAIL("the cuDNN library " << path                                                                     \
                                       << " has no " #name ", so it is not a usable cuDNN 9: " << install_hint()); \
  }
  VOXGRAD_CUDNN_FUNCTIONS(VOXGRAD_CUDNN_LOOKUP)
#undef VOXGRAD_CUDNN_LOOKUP
  const std::size_t version = library.cudnnGetVersion();
  if (version / 10000 != CUDNN_MAJOR) {
    VG_INPUT_FAIL("the cuDNN library " << path << " is version " << version_text(version) << ", voxgrad needs cuDNN "
                                       << CUDNN_MAJOR << ": " << install_hint());
  }
  opened.keep();
  return library;
}

const CudnnLibrary& cudnn() {
  return load_once<CudnnLibrary>([] { return open_cudnn_library(kCudnnSoname); });
}

}  // namespace voxgrad::kernels::cuda
