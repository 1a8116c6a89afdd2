// Opens libnccl.so.2 with dlopen and fills the function table once; see nccl_library.h. Nothing here
// runs until data-parallel training reduces on a GPU.
#include "kernels/cuda/nccl_library.h"

#include <cuda_runtime_api.h>

#include <string>

#include "kernels/cuda/shared_library.h"
#include "kernels/error.h"

namespace voxgrad::kernels::cuda {

namespace {

// The end of every message: what to install, matching the CUDA this binary was built with.
std::string install_hint() {
  const std::string cuda = std::to_string(CUDART_VERSION / 1000);
  return "install NCCL 2 for CUDA " + cuda + " (Debian/Ubuntu: the libnccl2 package, or pip's nvidia-nccl-cu" + cuda +
         ") or put its folder on LD_LIBRARY_PATH; one GPU trains without --distributed";
}

}  // namespace

NcclLibrary open_nccl_library(const char* soname) {
  // Closed again unless it proves usable, so a failed attempt leaves nothing mapped.
  SharedLibrary opened(soname, "NCCL 2", install_hint());
  NcclLibrary library;
  // dlsym returns a data pointer; POSIX guarantees it converts to the function's pointer type.
#define VOXGRAD_NCCL_LOOKUP(name)                                                                                \
  if (void* symbol = opened.symbol(#name); symbol != nullptr) {                                                  \
    library.name = reinterpret_cast<decltype(library.name)>(symbol);                                             \
  } else {                                                                                                       \
    VG_INPUT_FAIL("the NCCL library " << opened.path()                                                           \
                                      << " has no " #name ", so it is not a usable NCCL 2: " << install_hint()); \
  }
  VOXGRAD_NCCL_FUNCTIONS(VOXGRAD_NCCL_LOOKUP)
#undef VOXGRAD_NCCL_LOOKUP
  // NCCL 2.9 and later report major * 10000 + minor * 100 + patch, earlier ones major * 1000 + ...
  VG_INPUT_CHECK(library.ncclGetVersion(&library.version) == ncclSuccess,
                 "the NCCL library " << opened.path() << " does not report its version: " << install_hint());
  const int major = library.version >= 10000 ? library.version / 10000 : library.version / 1000;
  VG_INPUT_CHECK(major == NCCL_MAJOR, "the NCCL library " << opened.path() << " is version " << library.version
                                                          << ", voxgrad needs NCCL " << NCCL_MAJOR << ": "
                                                          << install_hint());
  opened.keep();
  return library;
}

const NcclLibrary& nccl() {
  return load_once<NcclLibrary>([] { return open_nccl_library(kNcclSoname); });
}

}  // namespace voxgrad::kernels::cuda
