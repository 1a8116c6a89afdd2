// CUDA hard-metric kernels: argmax over the classes (one thread per voxel) and the per (image,
// class) overlap counts, gathered per block in shared memory and added to the totals with integer
// atomics, which makes them exact whatever the order.
#include <algorithm>

#include "kernels/cuda/check.h"
#include "kernels/cuda/launch.h"
#include "kernels/metrics.h"

namespace voxgrad::kernels::cuda {

namespace {

constexpr std::int64_t kChunk = 8192;  // voxels of one image per counting block
// Per-block histograms up to this size live in shared memory; more classes count straight into
// global memory.
constexpr std::int64_t kMaxSharedCounts = 6144;

__global__ void argmax_kernel(const float* __restrict__ logits, std::int32_t* __restrict__ prediction,
                              std::int64_t images, std::int64_t classes, std::int64_t voxels) {
  for (std::int64_t v = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < images * voxels;
       v += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t n = v / voxels, s = v - n * voxels;
    prediction[v] = argmax_position(logits + n * classes * voxels + s, classes, voxels);
  }
}

__global__ void __launch_bounds__(kBlock)
    overlap_counts_kernel(OverlapProblem pb, std::int64_t chunks, bool shared_counts,
                          unsigned long long* first_invalid) {
  extern __shared__ int block_counts[];
  const std::int64_t K = pb.classes, S = pb.voxels;
  const std::int64_t n = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  const std::int64_t begin = chunk * kChunk, end = begin + kChunk < S ? begin + kChunk : S;
  int* counts = shared_counts ? block_counts : pb.counts + n * K * kOverlapCounts;
  if (shared_counts) {
    for (std::int64_t i = threadIdx.x; i < K * kOverlapCounts; i += kBlock) block_counts[i] = 0;
    __syncthreads();
  }
  for (std::int64_t s = begin + threadIdx.x; s < end; s += kBlock) {
    const std::int32_t a = pb.prediction[n * S + s], b = pb.labels[n * S + s];
    if (pb.has_ignore_label && b == pb.ignore_label) continue;
    const bool a_ok = a >= 0 && a < K, b_ok = b >= 0 && b < K;
    if (!a_ok || !b_ok) {
      // The lowest offending voxel, which the CPU twin's front-to-back scan also reports.
      atomicMin(first_invalid, static_cast<unsigned long long>(n * S + s));
      continue;
    }
    atomicAdd(&counts[a * kOverlapCounts + kPredicted], 1);
    atomicAdd(&counts[b * kOverlapCounts + kReference], 1);
    if (a == b) atomicAdd(&counts[a * kOverlapCounts + kIntersection], 1);
  }
  if (shared_counts) {
    __syncthreads();
    for (std::int64_t i = threadIdx.x; i < K * kOverlapCounts; i += kBlock)
      if (block_counts[i] != 0) atomicAdd(&pb.counts[n * K * kOverlapCounts + i], block_counts[i]);
  }
}

}  // namespace

void argmax_classes(const float* logits, std::int32_t* prediction, std::int64_t images, std::int64_t classes,
                    std::int64_t voxels, Stream s) {
  if (images * voxels == 0 || classes == 0) return;
  argmax_kernel<<<grid_for(images * voxels), kBlock, 0, native(s)>>>(logits, prediction, images, classes, voxels);
  VG_CUDA_CHECK_LAUNCH();
}

InvalidClass overlap_counts(const OverlapProblem& pb, Scratch& scratch, Stream st) {
  cudaStream_t stream = native(st);
  const std::int64_t K = pb.classes, S = pb.voxels;
  VG_CUDA_CHECK(cudaMemsetAsync(pb.counts, 0, pb.images * K * kOverlapCounts * sizeof(std::int32_t), stream));
  constexpr unsigned long long kNoInvalid = ~0ull;
  auto* first_invalid = static_cast<unsigned long long*>(scratch.get(sizeof(unsigned long long)));
  VG_CUDA_CHECK(cudaMemsetAsync(first_invalid, 0xff, sizeof(unsigned long long), stream));  // kNoInvalid
  const std::int64_t chunks = (S + kChunk - 1) / kChunk;
  const std::int64_t blocks = pb.images * chunks;
  VG_CHECK(blocks <= 0x7fffffff, "metrics: " << blocks << " counting blocks exceed one CUDA grid");
  if (blocks > 0 && K > 0) {
    const bool shared_counts = K * kOverlapCounts <= kMaxSharedCounts;
    const std::size_t shared_bytes = shared_counts ? K * kOverlapCounts * sizeof(int) : 0;
    overlap_counts_kernel<<<static_cast<unsigned>(blocks), kBlock, shared_bytes, stream>>>(pb, chunks, shared_counts,
                                                                                           first_invalid);
    VG_CUDA_CHECK_LAUNCH();
  }
  unsigned long long voxel = kNoInvalid;
  VG_CUDA_CHECK(cudaMemcpyAsync(&voxel, first_invalid, sizeof voxel, cudaMemcpyDeviceToHost, stream));
  VG_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (voxel == kNoInvalid) return {};
  // Only on the error path: the two values at that voxel say which input held the bad one.
  std::int32_t a = 0, b = 0;
  VG_CUDA_CHECK(cudaMemcpyAsync(&a, pb.prediction + voxel, sizeof a, cudaMemcpyDeviceToHost, stream));
  VG_CUDA_CHECK(cudaMemcpyAsync(&b, pb.labels + voxel, sizeof b, cudaMemcpyDeviceToHost, stream));
  VG_CUDA_CHECK(cudaStreamSynchronize(stream));
  const bool a_ok = a >= 0 && a < K;
  InvalidClass r;
  r.found = 1;
  r.value = a_ok ? b : a;
  r.input = a_ok ? 1 : 0;
  r.voxel = static_cast<std::int64_t>(voxel);
  return r;
}

}  // namespace voxgrad::kernels::cuda
