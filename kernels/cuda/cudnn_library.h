// cuDNN opened at run time: libcudnn.so.9 is dlopen'ed by the first convolution on a CUDA device, so
// the binary starts (and runs on the CPU) where cuDNN is not installed. cudnn.h gives the types and
// the signatures only; every call goes through the function table below.
#pragma once

#include <cudnn.h>

static_assert(CUDNN_MAJOR == 9, "voxgrad is written against cuDNN 9's headers");

// Every cuDNN function voxgrad calls, each looked up once by name.
#define VOXGRAD_CUDNN_FUNCTIONS(X)                  \
  X(cudnnGetVersion)                                \
  X(cudnnGetErrorString)                            \
  X(cudnnCreate)                                    \
  X(cudnnSetStream)                                 \
  X(cudnnCreateTensorDescriptor)                    \
  X(cudnnDestroyTensorDescriptor)                   \
  X(cudnnSetTensorNdDescriptor)                     \
  X(cudnnCreateFilterDescriptor)                    \
  X(cudnnDestroyFilterDescriptor)                   \
  X(cudnnSetFilterNdDescriptor)                     \
  X(cudnnCreateConvolutionDescriptor)               \
  X(cudnnDestroyConvolutionDescriptor)              \
  X(cudnnSetConvolutionNdDescriptor)                \
  X(cudnnSetConvolutionMathType)                    \
  X(cudnnGetConvolutionForwardWorkspaceSize)        \
  X(cudnnFindConvolutionForwardAlgorithmEx)         \
  X(cudnnConvolutionForward)                        \
  X(cudnnGetConvolutionBackwardDataWorkspaceSize)   \
  X(cudnnFindConvolutionBackwardDataAlgorithmEx)    \
  X(cudnnConvolutionBackwardData)                   \
  X(cudnnGetConvolutionBackwardFilterWorkspaceSize) \
  X(cudnnFindConvolutionBackwardFilterAlgorithmEx)  \
  X(cudnnConvolutionBackwardFilter)                 \
  X(cudnnAddTensor)                                 \
  X(cudnnConvolutionBackwardBias)

namespace voxgrad::kernels::cuda {

// One pointer per function, named as in cudnn.h: cudnn().cudnnCreate(&handle).
struct CudnnLibrary {
#define VOXGRAD_CUDNN_MEMBER(name) decltype(&::name) name = nullptr;
  VOXGRAD_CUDNN_FUNCTIONS(VOXGRAD_CUDNN_MEMBER)
#undef VOXGRAD_CUDNN_MEMBER
};

// The name the loader is asked for: cuDNN 9's ABI.
inline constexpr const char* kCudnnSoname = "libcudnn.so.9";

// libcudnn.so.9, opened on the first call (thread-safe) and kept for the process. When it cannot be
// opened, lacks a function or is not cuDNN 9, this and every later call throw voxgrad::InputError
// saying what is missing and what to install.
const CudnnLibrary& cudnn();

// What cudnn() does once, for any library name: dlopen(RTLD_NOW | RTLD_LOCAL), look up the table,
// check cudnnGetVersion()'s major. The library stays open on success. Same errors as cudnn().
CudnnLibrary open_cudnn_library(const char* soname);

}  // namespace voxgrad::kernels::cuda
