// Sum over any set of axes, and its adjoint (broadcasting a reduced tensor back over those axes).
// The index arithmetic is written once (VG_HD) so both devices visit elements the same way.
#pragma once

#include <algorithm>

#include "kernels/common.h"
#include "kernels/error.h"

namespace voxgrad::kernels {

// A reduction of a contiguous tensor over the axes in `axes_mask` (bit k set: axis k reduced).
// Adjacent axes of the same kind are merged, so a per-channel sum over (N, C, D, H, W) becomes
// kept (C) with reduced blocks (N) and (D*H*W).
struct ReduceGeometry {
  int kept_ndim = 0;
  std::int64_t kept_size[kMaxDims] = {};
  std::int64_t kept_stride[kMaxDims] = {};  // input stride of each kept axis
  int red_ndim = 0;
  std::int64_t red_size[kMaxDims] = {};
  std::int64_t red_stride[kMaxDims] = {};  // input stride of each reduced axis
  std::int64_t kept_count = 1;             // output elements
  std::int64_t red_count = 1;              // input elements summed into each output element
};

inline ReduceGeometry make_reduce_geometry(const std::int64_t* shape, int ndim, unsigned axes_mask) {
  VG_CHECK(ndim >= 0 && ndim <= kMaxDims, "reduce: rank " << ndim << " is outside 0.." << kMaxDims);
  ReduceGeometry g;
  std::int64_t stride = 1;
  int last_kind = -1;  // 0 kept, 1 reduced
  // Walk from the fastest axis outwards, merging runs of the same kind.
  for (int axis = ndim - 1; axis >= 0; --axis) {
    const int kind = ((axes_mask >> axis) & 1u) ? 1 : 0;
    const std::int64_t n = shape[axis];
    if (n != 1) {
      std::int64_t* sizes = kind ? g.red_size : g.kept_size;
      std::int64_t* strides = kind ? g.red_stride : g.kept_stride;
      int& count = kind ? g.red_ndim : g.kept_ndim;
      if (kind == last_kind && count > 0) {
        sizes[count - 1] *= n;  // contiguous with the previous run of this kind
      } else {
        sizes[count] = n;
        strides[count] = stride;
        ++count;
      }
      last_kind = kind;
      (kind ? g.red_count : g.kept_count) *= n;
    }
    stride *= n;
  }
  // Stored fastest-first; reverse so index 0 is the slowest axis (row-major decomposition).
  const auto reverse = [](std::int64_t* sizes, std::int64_t* strides, int count) {
    std::reverse(sizes, sizes + count);
    std::reverse(strides, strides + count);
  };
  reverse(g.kept_size, g.kept_stride, g.kept_ndim);
  reverse(g.red_size, g.red_stride, g.red_ndim);
  return g;
}

// Input offset of the kept part of output element `out`.
VG_HD std::int64_t reduce_kept_offset(const ReduceGeometry& g, std::int64_t out) {
  std::int64_t off = 0;
  for (int k = g.kept_ndim - 1; k >= 0; --k) {
    off += (out % g.kept_size[k]) * g.kept_stride[k];
    out /= g.kept_size[k];
  }
  return off;
}

// Input offset of the `r`-th element of a reduced block.
VG_HD std::int64_t reduce_red_offset(const ReduceGeometry& g, std::int64_t r) {
  std::int64_t off = 0;
  for (int k = g.red_ndim - 1; k >= 0; --k) {
    off += (r % g.red_size[k]) * g.red_stride[k];
    r /= g.red_size[k];
  }
  return off;
}

// Output element that input element `in` contributes to.
VG_HD std::int64_t reduce_output_index(const ReduceGeometry& g, std::int64_t in) {
  std::int64_t out = 0;
  for (int k = 0; k < g.kept_ndim; ++k) out = out * g.kept_size[k] + (in / g.kept_stride[k]) % g.kept_size[k];
  return out;
}

namespace cpu {
// y (kept_count) = sum over each reduced block of x, times `scale` (1 for sum, 1/count for mean).
template <class T> void sum_axes(const T* x, T* y, const ReduceGeometry& g, T scale);
// dx (kept_count * red_count) = scale * dy broadcast back over the reduced axes.
template <class T> void expand_axes(const T* dy, T* dx, const ReduceGeometry& g, T scale);
}  // namespace cpu

namespace cuda {
// Long reductions over few outputs take scratch for their per-(output, split) partials.
void sum_axes(const float* x, float* y, const ReduceGeometry& g, float scale, Scratch& scratch, Stream s);
void expand_axes(const float* dy, float* dx, const ReduceGeometry& g, float scale, Stream s);
}  // namespace cuda

}  // namespace voxgrad::kernels
