// CUDA segmentation losses: a softmax kernel per voxel, per (set, class) sums in double as block
// partials reduced in a fixed order (deterministic run to run), the Lovász gradient from lovasz.cu,
// the shared finalize in one thread, and the per-voxel backward of kernels/losses.h.
#include <algorithm>

#include "kernels/cuda/check.h"
#include "kernels/cuda/launch.h"
#include "kernels/losses.h"

namespace voxgrad::kernels::cuda {

namespace {

constexpr int kWarps = kBlock / 32;
// Elements of one (image, class) row that one block sums into one partial.
constexpr std::int64_t kChunk = 4096;

// Sums each of F per-thread values over the block, in a fixed shuffle-tree order; thread 0 ends
// with the totals.
template <int F>
__device__ void block_sum(ClassStatSum (&acc)[F]) {
  __shared__ ClassStatSum warp_sums[F][kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int f = 0; f < F; ++f) {
    for (int d = 16; d > 0; d >>= 1) acc[f] += __shfl_down_sync(0xffffffffu, acc[f], d);
    if (lane == 0) warp_sums[f][warp] = acc[f];
  }
  __syncthreads();
  if (warp == 0) {
    for (int f = 0; f < F; ++f) {
      ClassStatSum v = lane < kWarps ? warp_sums[f][lane] : ClassStatSum(0);
      for (int d = kWarps / 2; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
      acc[f] = v;
    }
  }
}

// Rows are (image, class) pairs of length S, cut into chunks of kChunk. A partial's slot groups
// the partials of one (set, class) together: per image, the chunks of one row; over the batch,
// the chunks of every image's row of that class.
struct RowLayout {
  std::int64_t images, classes, voxels, chunks;
  bool batch;
  __device__ std::int64_t slot(std::int64_t n, std::int64_t c, std::int64_t chunk) const {
    return batch ? (c * images + n) * chunks + chunk : (n * classes + c) * chunks + chunk;
  }
  std::int64_t per_group() const { return (batch ? images : 1) * chunks; }
};

// The class-stats kernel keeps the lowest voxel index (n * S + s) holding a label outside [0, K)
// with atomicMin, so the error names the voxel the CPU twin's front-to-back check names whichever
// block finds one first; this value means none.
constexpr unsigned long long kNoInvalidLabel = ~0ull;

__global__ void softmax_nll_kernel(LossConfig cfg, const float* __restrict__ logits,
                                   const std::int32_t* __restrict__ labels, float* __restrict__ probs,
                                   float* __restrict__ nll) {
  const std::int64_t K = cfg.classes, S = cfg.voxels, count = cfg.images * S;
  for (std::int64_t v = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < count;
       v += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t n = v / S, s = v - n * S;
    const std::int64_t base = n * K * S + s;
    const std::int32_t y = labels[v];
    nll[v] = softmax_nll_position(logits + base, probs + base, K, S, loss_label_ignored(cfg, y) ? -1 : y);
  }
}

// One block per (row, chunk): the chunk's sums of every ClassStat. The class-0 rows also check the
// labels, so each voxel is checked once.
__global__ void __launch_bounds__(kBlock)
    class_stats_kernel(LossConfig cfg, RowLayout rows, const float* __restrict__ probs,
                       const std::int32_t* __restrict__ labels, const float* __restrict__ nll,
                       ClassStatSum* __restrict__ partials, unsigned long long* first_invalid) {
  const std::int64_t K = cfg.classes, S = cfg.voxels;
  const std::int64_t row = blockIdx.x / rows.chunks, chunk = blockIdx.x % rows.chunks;
  const std::int64_t n = row / K, c = row % K;
  const std::int64_t begin = chunk * kChunk, end = begin + kChunk < S ? begin + kChunk : S;
  const std::int32_t target = cfg.kind == LossKind::LovaszHinge ? 1 : static_cast<std::int32_t>(c);
  ClassStatSum acc[kClassStats] = {};
  for (std::int64_t s = begin + threadIdx.x; s < end; s += kBlock) {
    const std::int32_t y = labels[n * S + s];
    if (c == 0 && !loss_label_valid(cfg, y)) atomicMin(first_invalid, static_cast<unsigned long long>(n * S + s));
    if (loss_label_ignored(cfg, y)) continue;
    const float p = probs != nullptr ? probs[row * S + s] : 0.0f;
    accumulate_class_stats(p, y == target, nll[n * S + s], acc);
  }
  block_sum(acc);
  if (threadIdx.x == 0)
    for (int f = 0; f < kClassStats; ++f) partials[rows.slot(n, c, chunk) * kClassStats + f] = acc[f];
}

// One block per (row, chunk): Σ weighted error * lovasz_grad.
__global__ void __launch_bounds__(kBlock)
    lovasz_sums_kernel(LossConfig cfg, RowLayout rows, const float* __restrict__ x,
                       const std::int32_t* __restrict__ labels, const float* __restrict__ grad,
                       ClassStatSum* __restrict__ partials) {
  const std::int64_t K = cfg.classes, S = cfg.voxels;
  const std::int64_t row = blockIdx.x / rows.chunks, chunk = blockIdx.x % rows.chunks;
  const std::int64_t n = row / K, c = row % K;
  const std::int64_t begin = chunk * kChunk, end = begin + kChunk < S ? begin + kChunk : S;
  const bool hinge = cfg.kind == LossKind::LovaszHinge;
  ClassStatSum acc[1] = {0.0};
  for (std::int64_t s = begin + threadIdx.x; s < end; s += kBlock) {
    const std::int32_t y = labels[n * S + s];
    if (loss_label_ignored(cfg, y)) continue;
    const float e = lovasz_error(hinge, x[row * S + s], y == (hinge ? 1 : static_cast<std::int32_t>(c)));
    acc[0] += static_cast<ClassStatSum>(lovasz_weighted_error(hinge, e)) * static_cast<ClassStatSum>(grad[row * S + s]);
  }
  block_sum(acc);
  if (threadIdx.x == 0) partials[rows.slot(n, c, chunk)] = acc[0];
}

// One block per (set, class) group: its partials summed in a fixed order into out (groups, F),
// rounded to float only there, as the CPU twin rounds its double sums.
template <int F>
__global__ void __launch_bounds__(kBlock)
    sum_partials_kernel(const ClassStatSum* __restrict__ partials, std::int64_t per_group, float* __restrict__ out) {
  const std::int64_t group = blockIdx.x;
  ClassStatSum acc[F] = {};
  for (std::int64_t m = threadIdx.x; m < per_group; m += kBlock)
    for (int f = 0; f < F; ++f) acc[f] += partials[(group * per_group + m) * F + f];
  block_sum(acc);
  if (threadIdx.x == 0)
    for (int f = 0; f < F; ++f) out[group * F + f] = static_cast<float>(acc[f]);
}

__global__ void finalize_kernel(LossConfig cfg, const float* stats, const float* lovasz_sums,
                                const float* class_weights, LossForwardArgs<float> args) {
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    loss_finalize(cfg, stats, lovasz_sums, class_weights, args.loss, args.region_terms, args.ce_terms, args.parts,
                  args.coefs);
  }
}

__global__ void loss_backward_kernel(LossConfig cfg, LossBackwardArgs<float> args) {
  const std::int64_t K = cfg.classes, S = cfg.voxels, count = cfg.images * S;
  const float dy = *args.grad_output;
  for (std::int64_t v = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < count;
       v += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t n = v / S, s = v - n * S;
    const std::int64_t base = n * K * S + s;
    const std::int64_t set = cfg.aggregate == Aggregate::Batch ? 0 : n;
    loss_voxel_backward(cfg, set, args.labels[v], args.saved + base,
                        args.lovasz_grad != nullptr ? args.lovasz_grad + base : nullptr, args.coefs, dy,
                        args.grad_logits + base, S);
  }
}

}  // namespace

void loss_forward(const LossConfig& cfg, const LossForwardArgs<float>& a, Scratch& scratch, Stream st) {
  const std::int64_t N = cfg.images, K = cfg.classes, S = cfg.voxels, sets = loss_sets(cfg);
  cudaStream_t stream = native(st);
  VG_CHECK(N > 0 && K > 0 && S > 0, "loss: empty logits (N=" << N << ", K=" << K << ", S=" << S << ")");
  const RowLayout rows{N, K, S, (S + kChunk - 1) / kChunk, cfg.aggregate == Aggregate::Batch};
  const std::int64_t row_blocks = N * K * rows.chunks;
  VG_CHECK(row_blocks <= 0x7fffffff, "loss: " << row_blocks << " reduction blocks exceed one CUDA grid");

  auto* first_invalid = static_cast<unsigned long long*>(scratch.get(sizeof(unsigned long long)));
  VG_CUDA_CHECK(cudaMemsetAsync(first_invalid, 0xff, sizeof(unsigned long long), stream));  // kNoInvalidLabel
  auto* nll = static_cast<float*>(scratch.get(N * S * sizeof(float)));  // (N, S)
  const bool softmax = loss_uses_softmax(cfg.kind);
  if (softmax) {
    softmax_nll_kernel<<<grid_for(N * S), kBlock, 0, stream>>>(cfg, a.logits, a.labels, a.probs, nll);
    VG_CUDA_CHECK_LAUNCH();
  } else {
    VG_CUDA_CHECK(cudaMemsetAsync(nll, 0, N * S * sizeof(float), stream));
  }

  auto* partials = static_cast<ClassStatSum*>(scratch.get(row_blocks * kClassStats * sizeof(ClassStatSum)));
  auto* stats = static_cast<float*>(scratch.get(sets * K * kClassStats * sizeof(float)));  // (sets, K, kClassStats)
  class_stats_kernel<<<static_cast<unsigned>(row_blocks), kBlock, 0, stream>>>(cfg, rows, softmax ? a.probs : nullptr,
                                                                               a.labels, nll, partials, first_invalid);
  VG_CUDA_CHECK_LAUNCH();
  sum_partials_kernel<kClassStats>
      <<<static_cast<unsigned>(sets * K), kBlock, 0, stream>>>(partials, rows.per_group(), stats);
  VG_CUDA_CHECK_LAUNCH();

  float* sums = nullptr;  // (sets, K)
  if (loss_uses_lovasz(cfg.kind)) {
    const LovaszProblem<float> pb = lovasz_problem(cfg, softmax ? a.probs : a.logits, a.labels, a.lovasz_grad);
    lovasz_gradient(pb, cfg.lovasz_sort, scratch, st);
    auto* lovasz_partials = static_cast<ClassStatSum*>(scratch.get(row_blocks * sizeof(ClassStatSum)));
    sums = static_cast<float*>(scratch.get(sets * K * sizeof(float)));
    lovasz_sums_kernel<<<static_cast<unsigned>(row_blocks), kBlock, 0, stream>>>(cfg, rows, pb.x, a.labels,
                                                                                 a.lovasz_grad, lovasz_partials);
    VG_CUDA_CHECK_LAUNCH();
    sum_partials_kernel<1>
        <<<static_cast<unsigned>(sets * K), kBlock, 0, stream>>>(lovasz_partials, rows.per_group(), sums);
    VG_CUDA_CHECK_LAUNCH();
  }

  finalize_kernel<<<1, 1, 0, stream>>>(cfg, stats, sums, a.class_weights, a);
  VG_CUDA_CHECK_LAUNCH();

  unsigned long long voxel = kNoInvalidLabel;
  VG_CUDA_CHECK(cudaMemcpyAsync(&voxel, first_invalid, sizeof voxel, cudaMemcpyDeviceToHost, stream));
  VG_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (voxel != kNoInvalidLabel) {
    // Only the error path reads the label back, from the voxel the kernel named.
    std::int32_t label = 0;
    VG_CUDA_CHECK(cudaMemcpyAsync(&label, a.labels + voxel, sizeof label, cudaMemcpyDeviceToHost, stream));
    VG_CUDA_CHECK(cudaStreamSynchronize(stream));
    fail_invalid_label(cfg, label, static_cast<std::int64_t>(voxel));
  }
}

void loss_backward(const LossConfig& cfg, const LossBackwardArgs<float>& a, Stream st) {
  const std::int64_t count = cfg.images * cfg.voxels;
  if (count == 0 || cfg.classes == 0) return;
  loss_backward_kernel<<<grid_for(count), kBlock, 0, native(st)>>>(cfg, a);
  VG_CUDA_CHECK_LAUNCH();
}

}  // namespace voxgrad::kernels::cuda
