// CPU twins of sum_axes and expand_axes over the ReduceGeometry index arithmetic in kernels/reduce.h.
// Sums accumulate in double and in an order fixed by the geometry alone, so a result never depends
// on the thread count.
#include "kernels/reduce.h"

#include <algorithm>
#include <vector>

namespace voxgrad::kernels::cpu {

namespace {

constexpr std::int64_t kParallelMin = 1 << 15;
// With at least this many outputs, one thread per output keeps every core busy; with fewer, each
// output's reduced block is split into fixed chunks summed in parallel.
constexpr std::int64_t kManyOutputs = 64;
constexpr std::int64_t kChunk = 1 << 16;

// Sum of reduced elements [begin, end) of the block starting at input offset `kept_off`. The
// innermost reduced run is walked directly; only its start goes through reduce_red_offset.
template <class T>
double sum_range(const T* x, const ReduceGeometry& g, std::int64_t kept_off, std::int64_t begin, std::int64_t end) {
  const std::int64_t run = g.red_ndim > 0 ? g.red_size[g.red_ndim - 1] : 1;
  const std::int64_t run_stride = g.red_ndim > 0 ? g.red_stride[g.red_ndim - 1] : 1;
  double acc = 0.0;
  std::int64_t r = begin;
  while (r < end) {
    const std::int64_t in_run = r % run;
    const std::int64_t stop = std::min(end, r - in_run + run);
    const T* p = x + kept_off + reduce_red_offset(g, r);
    const std::int64_t len = stop - r;
    if (run_stride == 1) {
      // Four independent sums hide the add latency; their order is still fixed by the geometry.
      double lane[4] = {0.0, 0.0, 0.0, 0.0};
      std::int64_t j = 0;
      for (; j + 4 <= len; j += 4)
        for (int l = 0; l < 4; ++l) lane[l] += static_cast<double>(p[j + l]);
      for (; j < len; ++j) lane[0] += static_cast<double>(p[j]);
      acc += (lane[0] + lane[1]) + (lane[2] + lane[3]);
    } else {
      for (std::int64_t j = 0; j < len; ++j) acc += static_cast<double>(p[j * run_stride]);
    }
    r = stop;
  }
  return acc;
}

}  // namespace

template <class T>
void sum_axes(const T* x, T* y, const ReduceGeometry& g, T scale) {
  const std::int64_t outputs = g.kept_count, block = g.red_count;
  if (outputs == 0) return;
  if (outputs >= kManyOutputs || block <= kChunk) {
#pragma omp parallel for schedule(static) if (outputs * block > kParallelMin && outputs > 1)
    for (std::int64_t o = 0; o < outputs; ++o) {
      const double s = sum_range(x, g, reduce_kept_offset(g, o), 0, block);
      y[o] = static_cast<T>(s * static_cast<double>(scale));
    }
    return;
  }
  // Few outputs, long blocks (a full sum, a per-channel sum): every (output, chunk) pair is summed
  // in one parallel region, then each output combines its chunks in chunk order.
  const std::int64_t chunks = (block + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<std::size_t>(outputs * chunks));  // (outputs, chunks)
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < outputs * chunks; ++t) {
    const std::int64_t o = t / chunks, c = t % chunks;
    partial[static_cast<std::size_t>(t)] =
        sum_range(x, g, reduce_kept_offset(g, o), c * kChunk, std::min(block, (c + 1) * kChunk));
  }
  for (std::int64_t o = 0; o < outputs; ++o) {
    double s = 0.0;
    for (std::int64_t c = 0; c < chunks; ++c) s += partial[static_cast<std::size_t>(o * chunks + c)];
    y[o] = static_cast<T>(s * static_cast<double>(scale));
  }
}

template <class T>
void expand_axes(const T* dy, T* dx, const ReduceGeometry& g, T scale) {
  const std::int64_t n = g.kept_count * g.red_count;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (std::int64_t i = 0; i < n; ++i) dx[i] = scale * dy[reduce_output_index(g, i)];
}

template void sum_axes<float>(const float*, float*, const ReduceGeometry&, float);
template void sum_axes<double>(const double*, double*, const ReduceGeometry&, double);
template void expand_axes<float>(const float*, float*, const ReduceGeometry&, float);
template void expand_axes<double>(const double*, double*, const ReduceGeometry&, double);

}  // namespace voxgrad::kernels::cpu
