// NCCL opened at run time, as cuDNN is: libnccl.so.2 is dlopen'ed when data-parallel training
// first reduces gradients between GPUs, so no voxgrad binary needs NCCL to start. nccl.h gives
// the types and the signatures only; every call goes through the function table below.
#pragma once

#include <nccl.h>

static_assert(NCCL_MAJOR == 2, "voxgrad is written against NCCL 2's headers");

// Every NCCL function voxgrad calls, each looked up once by name.
#define VOXGRAD_NCCL_FUNCTIONS(X) \
  X(ncclGetVersion)               \
  X(ncclGetErrorString)           \
  X(ncclGetUniqueId)              \
  X(ncclCommInitRank)             \
  X(ncclCommDestroy)              \
  X(ncclCommAbort)                \
  X(ncclCommGetAsyncError)        \
  X(ncclAllReduce)

namespace voxgrad::kernels::cuda {

// One pointer per function, named as in nccl.h: nccl().ncclAllReduce(...).
struct NcclLibrary {
#define VOXGRAD_NCCL_MEMBER(name) decltype(&::name) name = nullptr;
  VOXGRAD_NCCL_FUNCTIONS(VOXGRAD_NCCL_MEMBER)
#undef VOXGRAD_NCCL_MEMBER
  int version = 0;  // as ncclGetVersion reports it: major * 10000 + minor * 100 + patch
};

// The name the loader is asked for: NCCL 2's ABI.
inline constexpr const char* kNcclSoname = "libnccl.so.2";

// libnccl.so.2, opened on the first call (thread-safe) and kept for the process. When it cannot be
// opened, lacks a function or is not NCCL 2, this and every later call throw voxgrad::InputError
// saying what is missing and what to install.
const NcclLibrary& nccl();

// What nccl() does once, for any library name. Same errors as nccl().
NcclLibrary open_nccl_library(const char* soname);

}  // namespace voxgrad::kernels::cuda
