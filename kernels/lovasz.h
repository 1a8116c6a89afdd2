// The Lovász extension of the Jaccard loss (Berman, Rannen Triki, Blaschko, CVPR 2018): per
// (set, class) segment, errors sorted in decreasing order by a stable sort and the Lovász gradient
// of the sorted ground truth, scattered back to each element's place. CPU: a parallel radix sort
// over the CUDA path's keys (float), std::stable_sort (double); CUDA: CUB.
#pragma once

#include <cstring>

#include "common.h"

namespace voxgrad::kernels {

// How the CUDA path sorts all segments at once. Both are stable, so ties keep voxel order on
// either path, as on the CPU.
//   CompositeKeys: one cub::DeviceRadixSort over 64-bit keys (segment << 32 | descending error
//     bits). Every SM works on every pass whatever the segment sizes; the default because the
//     losses' segments are few and huge ((sets * K) of D*H*W voxels).
//   SegmentedSort: cub::DeviceSegmentedSort over 32-bit error keys, which gives each large
//     segment to one thread block; kept for the benchmark to compare.
enum class LovaszSort : std::uint8_t { CompositeKeys, SegmentedSort };

// Bits of a float as an unsigned integer ordered like the floats themselves (negative values
// flipped whole, positive ones with the sign bit set), complemented so that ascending integer
// order is descending error order.
VG_HD std::uint32_t descending_error_key(float error) {
  std::uint32_t bits;
#if defined(__CUDA_ARCH__)
  bits = __float_as_uint(error);
#else
  std::memcpy(&bits, &error, sizeof bits);
#endif
  const std::uint32_t ordered = (bits & 0x80000000u) != 0u ? ~bits : (bits | 0x80000000u);
  return ~ordered;
}

// Ignored voxels sort after every real error of their segment (no float maps to this key: it
// would be a NaN with every bit set), so the valid elements take positions 1..V.
constexpr std::uint32_t kIgnoredErrorKey = 0xffffffffu;

// The error of one element: |g - p| for Lovász-softmax (x = p), or the hinge's 1 - z (2g - 1)
// (x = the logit z).
template <class T>
VG_HD T lovasz_error(bool hinge, T x, bool g) {
  if (hinge) return T(1) - x * (g ? T(1) : T(-1));
  return g ? T(1) - x : x;
}

// What multiplies the Lovász gradient in the loss: the error itself, or relu of it for the hinge.
template <class T>
VG_HD T lovasz_weighted_error(bool hinge, T error) {
  return hinge && !(error > T(0)) ? T(0) : error;
}

// grad_k = J_k - J_{k-1} for the k-th (1-based) element of a segment sorted by decreasing error,
// with G = Σ g, I_k = G - cumsum(g)_k, U_k = G + cumsum(1 - g)_k, J_k = 1 - I_k / U_k, J_0 = 0.
// Taken in closed form from the integers: where g_k = 1, I drops by one and U stays, so
// grad_k = 1 / U_k; where g_k = 0, U grows by one, so grad_k = I_k / (U_k (U_k - 1)). This keeps
// full precision on huge segments, where the difference of two float J values near 1 would not.
// With G = 0 every J_k is 1: grad_1 = 1, the rest 0.
template <class T>
VG_HD T lovasz_grad(bool g, std::int64_t k, std::int64_t cum_g, std::int64_t G) {
  if (G == 0) return k == 1 ? T(1) : T(0);
  const std::int64_t I = G - cum_g, U = G + (k - cum_g);
  if (g) return T(1) / static_cast<T>(U);
  return static_cast<T>(I) / (static_cast<T>(U) * static_cast<T>(U - 1));
}

// One Lovász problem over (N, K, S) elements. A segment is a (set, class) pair: per image, the S
// voxels of image n in class c; over the batch, the N*S voxels of class c, in (n, s) order.
template <class T>
struct LovaszProblem {
  const T* x = nullptr;                  // (N, K, S) probabilities, or logits (hinge, K = 1)
  const std::int32_t* labels = nullptr;  // (N, S), already checked
  T* grad = nullptr;                     // (N, K, S) out: lovasz_grad at each element's sorted place; 0 if ignored
  std::int64_t images = 0, classes = 0, voxels = 0;
  bool per_image = true;
  bool hinge = false;
  bool has_ignore_label = false;
  std::int32_t ignore_label = 0;
};

namespace cpu {
// float problems sort (error key, voxel) pairs with the stable radix sort, segment by segment on
// all threads (or many small segments at once); double ones, and float segments of 2^31 voxels or
// more, take lovasz_gradient_by_comparison.
template <class T>
void lovasz_gradient(const LovaszProblem<T>& problem);
// std::stable_sort of each segment's elements with a comparison of their errors (float: through
// descending_error_key). The same order as the radix sort, which the tests hold it to.
template <class T>
void lovasz_gradient_by_comparison(const LovaszProblem<T>& problem);
}  // namespace cpu

namespace cuda {
// Temp storage and the key/value buffers come from `scratch`; nothing waits for the stream.
void lovasz_gradient(const LovaszProblem<float>& problem, LovaszSort sort, Scratch& scratch, Stream s);

// The benchmark's yardstick: one cub::DeviceRadixSort::SortPairs of `count` (uint32 key, uint32
// value) pairs over all 32 key bits, from keys_in/values_in (left untouched, so every repetition
// sorts the same data) into buffers from `scratch`. Queued on `s`; returns without waiting.
void lovasz_sort_benchmark(const std::uint32_t* keys_in, const std::uint32_t* values_in, std::int64_t count,
                           Scratch& scratch, Stream s);
}  // namespace cuda

}  // namespace voxgrad::kernels
