// A library opened at run time with dlopen, as cuDNN and NCCL are: no voxgrad binary lists them
// as dependencies, so a binary starts (and runs on the CPU) where they are not installed.
#pragma once

#include <exception>
#include <string>

#include "kernels/error.h"

namespace voxgrad::kernels::cuda {

class SharedLibrary {
 public:
  // dlopen(RTLD_NOW | RTLD_LOCAL). When it fails, throws InputError
  // "<what> was not found (<soname>: <the loader's reason>): <hint>".
  SharedLibrary(const char* soname, const std::string& what, const std::string& hint);
  ~SharedLibrary();  // closes the library unless keep() was called
  SharedLibrary(const SharedLibrary&) = delete;
  SharedLibrary& operator=(const SharedLibrary&) = delete;

  // The symbol's address, or null when the library has none by that name.
  void* symbol(const char* name) const;
  // Where the loader found it, for messages about the wrong library being found first.
  const std::string& path() const { return path_; }
  // The library proved usable: it stays open for the process.
  void keep() { keep_ = true; }

 private:
  void* handle_ = nullptr;
  std::string path_;
  bool keep_ = false;
};

// A library table loaded by `open` on the first call (thread-safe) and kept for the process. A
// failure (an InputError) is kept too, so every later call reports the same reason instead of
// retrying the loader.
template <class Library>
const Library& load_once(Library (*open)()) {
  struct Loaded {
    Library library;
    std::exception_ptr error;
  };
  static const Loaded loaded = [open] {
    Loaded l;
    try {
      l.library = open();
    } catch (const InputError&) {
      l.error = std::current_exception();
    }
    return l;
  }();
  if (loaded.error) std::rethrow_exception(loaded.error);
  return loaded.library;
}

}  // namespace voxgrad::kernels::cuda
