// See shared_library.h.
#include "kernels/cuda/shared_library.h"

#include <dlfcn.h>
#include <link.h>

#include "kernels/error.h"

namespace voxgrad::kernels::cuda {

SharedLibrary::SharedLibrary(const char* soname, const std::string& what, const std::string& hint) {
  dlerror();
  handle_ = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
  if (handle_ == nullptr) {
    const char* text = dlerror();
    std::string reason = text != nullptr ? text : "no reason given";
    // glibc's text usually starts with the name already; say it once either way.
    if (reason.rfind(soname, 0) != 0) reason = std::string(soname) + ": " + reason;
    VG_INPUT_FAIL(what << " was not found (" << reason << "): " << hint);
  }
  link_map* map = nullptr;
  const bool named =
      dlinfo(handle_, RTLD_DI_LINKMAP, &map) == 0 && map != nullptr && map->l_name != nullptr && *map->l_name != '\0';
  path_ = named ? map->l_name : soname;
}

SharedLibrary::~SharedLibrary() {
  if (!keep_) dlclose(handle_);
}

void* SharedLibrary::symbol(const char* name) const { return dlsym(handle_, name); }

}  // namespace voxgrad::kernels::cuda
