// 3D convolution on NCDHW tensors: forward, backward-data and backward-filter, plus the bias pair.
// A transposed convolution is the same three passes with roles exchanged (its forward is the
// backward-data of the convolution it transposes), so only the plain convolution is declared here.
#pragma once

#include <cstdint>

#include "kernels/common.h"

namespace voxgrad::kernels {

// One convolution's geometry: input x (n, c_in, in[0..2]), weight (c_out, c_in, kernel[0..2]),
// output y (n, c_out, out[0..2]). Axis order everywhere is (D, H, W).
struct Conv3dShape {
  std::int64_t n = 1, c_in = 1, c_out = 1;
  std::int64_t in[3] = {1, 1, 1};
  std::int64_t out[3] = {1, 1, 1};
  std::int64_t kernel[3] = {1, 1, 1};
  std::int64_t stride[3] = {1, 1, 1};
  std::int64_t padding[3] = {0, 0, 0};
  std::int64_t dilation[3] = {1, 1, 1};

  std::int64_t in_spatial() const { return in[0] * in[1] * in[2]; }
  std::int64_t out_spatial() const { return out[0] * out[1] * out[2]; }
  std::int64_t kernel_volume() const { return kernel[0] * kernel[1] * kernel[2]; }
};

// PyTorch's output sizes (may come out <= 0 for impossible inputs; callers check).
inline std::int64_t conv_output_size(std::int64_t in, std::int64_t k, std::int64_t s, std::int64_t p,
                                     std::int64_t d) {
  const std::int64_t span = in + 2 * p - d * (k - 1) - 1;
  return span < 0 ? 0 : span / s + 1;
}
inline std::int64_t conv_transpose_output_size(std::int64_t in, std::int64_t k, std::int64_t s, std::int64_t p,
                                               std::int64_t d, std::int64_t output_padding) {
  return (in - 1) * s - 2 * p + d * (k - 1) + output_padding + 1;
}

// Zero planes to append to a transposed convolution's input on one axis so that its input and
// output form one convolution geometry. output_padding >= stride (allowed while below the dilation)
// makes conv_output_size(conv_transpose_output_size(in, ..., op)) = in + op / s: the convolution of
// the transposed output has that many more outputs than the transposed input has. Zero planes there
// add nothing to the transposed output, and every pass needs sizes that agree (cuDNN derives one
// from the other and rejects the rest).
inline std::int64_t conv_transpose_input_padding(std::int64_t s, std::int64_t output_padding) {
  return output_padding / s;
}

// True when `out` is the convolution output size of `in` on every axis: what all three passes on
// both devices require of a geometry.
inline bool conv3d_sizes_agree(const Conv3dShape& g) {
  for (int a = 0; a < 3; ++a) {
    if (g.out[a] != conv_output_size(g.in[a], g.kernel[a], g.stride[a], g.padding[a], g.dilation[a])) return false;
  }
  return true;
}

// What the cuDNN algorithm choice may use; part of the algorithm-cache key.
struct ConvMathOptions {
  bool deterministic = false;  // only algorithms cuDNN reports as deterministic
  bool allow_tf32 = false;     // false: CUDNN_FMA_MATH, strict FP32
};

// The three passes of both devices take only geometries whose sizes agree (conv3d_sizes_agree);
// another is an internal error.
namespace cpu {
// y (n, c_out, out) = conv(x (n, c_in, in), w (c_out, c_in, kernel)); y is overwritten, no bias.
template <class T>
void conv3d_forward(const T* x, const T* w, T* y, const Conv3dShape& g, Scratch& scratch);
// dx (n, c_in, in) = the adjoint of conv3d_forward in x applied to dy (n, c_out, out); dx overwritten.
template <class T>
void conv3d_backward_data(const T* dy, const T* w, T* dx, const Conv3dShape& g, Scratch& scratch);
// dw (c_out, c_in, kernel) = the adjoint in w, summed over the batch; dw overwritten.
template <class T>
void conv3d_backward_filter(const T* x, const T* dy, T* dw, const Conv3dShape& g, Scratch& scratch);
// y (n, c, spatial) += b (c), and db (c) = sum of dy (n, c, spatial) over n and space.
template <class T>
void conv3d_bias_forward(T* y, const T* b, std::int64_t n, std::int64_t c, std::int64_t spatial);
template <class T>
void conv3d_bias_backward(const T* dy, T* db, std::int64_t n, std::int64_t c, std::int64_t spatial);

// Bytes of scratch the three passes ask for at most (bounded by tiling, independent of n).
std::int64_t conv3d_scratch_bytes(const Conv3dShape& g, std::size_t element_size);
// The GEMM micro-kernel variant in use: "avx512" (x86-64-v4), "avx2" (x86-64-v3, with FMA) or
// "baseline". Chosen on first use as the best one this CPU supports, unless the environment
// variable VOXGRAD_CPU_ISA names another supported one (read once; an unknown or unsupported name
// is reported on stderr and ignored).
const char* conv3d_simd_variant();
// Switches every later CPU convolution to the named variant, for tests and diagnosis; false (and
// no change) when the name is unknown or this CPU lacks the instructions. Not meant to race with
// running convolutions: a pass already in flight may run partly on the previous variant.
bool set_conv3d_simd_variant(const char* name);
}  // namespace cpu

namespace cuda {
// float32 through cuDNN; same contracts as the CPU twins. Workspaces come from `scratch`.
void conv3d_forward(const float* x, const float* w, float* y, const Conv3dShape& g, ConvMathOptions o,
                    Scratch& scratch, Stream s);
void conv3d_backward_data(const float* dy, const float* w, float* dx, const Conv3dShape& g, ConvMathOptions o,
                          Scratch& scratch, Stream s);
void conv3d_backward_filter(const float* x, const float* dy, float* dw, const Conv3dShape& g, ConvMathOptions o,
                            Scratch& scratch, Stream s);
void conv3d_bias_forward(float* y, const float* b, std::int64_t n, std::int64_t c, std::int64_t spatial, Stream s);
void conv3d_bias_backward(const float* dy, float* db, std::int64_t n, std::int64_t c, std::int64_t spatial,
                          Stream s);
// Number of (shape, direction, options) keys whose algorithm has been chosen so far.
std::int64_t conv3d_algorithm_cache_size();
}  // namespace cuda

}  // namespace voxgrad::kernels
