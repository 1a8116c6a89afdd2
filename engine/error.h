// The engine's view of errors: voxgrad::Error and VG_CHECK / VG_FAIL (defined with the kernels,
// the lowest layer that throws). Device files add VG_CUDA_CHECK / VG_CUDNN_CHECK from kernels/cuda/check.h.
#pragma once

#include "../kernels/error.h"
