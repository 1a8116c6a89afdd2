// Opens libcudnn.so.9 with dlopen and fills the function table once; see cudnn_library.h. Nothing
// here runs until a convolution reaches a CUDA device, so CPU runs never look for cuDNN.
#include "kernels/cuda/cudnn_library.h"

#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <link.h>

#include <exception>
#include <string>

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

std::string last_dl_error() {
  const char* text = dlerror();
  return text != nullptr ? text : "no reason given";
}

// Where the loader found the library, for messages about the wrong library being found first.
std::string loaded_path(void* handle, const char* soname) {
  link_map* map = nullptr;
  if (dlinfo(handle, RTLD_DI_LINKMAP, &map) == 0 && map != nullptr && map->l_name != nullptr && *map->l_name != '\0')
    return map->l_name;
  return soname;
}

// cuDNN 9 reports major * 10000 + minor * 100 + patch, cuDNN 8 and older major * 1000 + ...
std::string version_text(std::size_t v) {
  const bool wide = v >= 10000;
  const std::size_t major = wide ? v / 10000 : v / 1000;
  const std::size_t minor = wide ? v / 100 % 100 : v / 100 % 10;
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(v % 100);
}

// Closes a library that turned out unusable, so a failed attempt leaves nothing mapped.
struct CloseUnlessKept {
  void* handle;
  bool keep = false;
  ~CloseUnlessKept() {
    if (!keep) dlclose(handle);
  }
};

}  // namespace

CudnnLibrary open_cudnn_library(const char* soname) {
  dlerror();
  void* handle = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    std::string reason = last_dl_error();
    // glibc's text usually starts with the name already; say it once either way.
    if (reason.rfind(soname, 0) != 0) reason = std::string(soname) + ": " + reason;
    VG_INPUT_FAIL("cuDNN 9 was not found (" << reason << "): " << install_hint());
  }
  CloseUnlessKept guard{handle};
  const std::string path = loaded_path(handle, soname);
  CudnnLibrary library;
  // dlsym returns a data pointer; POSIX guarantees it converts to the function's pointer type.
#define VOXGRAD_CUDNN_LOOKUP(name)                                                                                 \
  if (void* symbol = dlsym(handle, #name); symbol != nullptr) {                                                    \
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
  guard.keep = true;
  return library;
}

const CudnnLibrary& cudnn() {
  // A function-local static: loaded once even when several threads convolve at once. A failure is
  // kept too, so every later convolution reports the same reason instead of retrying the loader.
  struct Loaded {
    CudnnLibrary library;
    std::exception_ptr error;
  };
  static const Loaded loaded = [] {
    Loaded l;
    try {
      l.library = open_cudnn_library(kCudnnSoname);
    } catch (const InputError&) {
      l.error = std::current_exception();
    }
    return l;
  }();
  if (loaded.error) std::rethrow_exception(loaded.error);
  return loaded.library;
}

}  // namespace voxgrad::kernels::cuda
