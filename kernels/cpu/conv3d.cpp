// CPU twins of the 3D convolution: vol2col over bounded tiles of output positions times a packed,
// register- and cache-blocked GEMM whose SIMD variant is chosen at run time; each OpenMP thread owns
// whole tiles (no barriers inside a pass), and every sum runs in a fixed order, so results are
// deterministic.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "kernels/conv3d.h"
#include "kernels/error.h"

namespace voxgrad::kernels::cpu {

namespace {

// Register blocking of the GEMM micro-kernel: kMR rows of A (broadcast) times one 64-byte vector
// of B columns (16 floats, 8 doubles): 6 accumulators, one zmm each on AVX-512, two ymm on AVX2.
constexpr int kMR = 6;
template <class T>
constexpr std::int64_t kNR = 64 / static_cast<std::int64_t>(sizeof(T));

// Cache blocking of the GEMM: kKc rows of the sum at a time keep one B panel's slice (kKc x 64
// bytes: 16 KiB) in L1 while kMc rows of A (a slice of at most kMc x kKc elements) stay in L2.
constexpr std::int64_t kKc = 256;
constexpr std::int64_t kMc = 20 * kMR;
// Rows of K the backward-filter pass turns into vol2col panels at a time (a multiple of every kNR).
constexpr std::int64_t kFilterRows = 256;
constexpr std::int64_t kFilterTilePositions = 384;
constexpr std::int64_t kForwardTiles = 8;

// Each thread's vol2col tile is sized to stay in its core's L2, whatever the volume.
constexpr std::int64_t kTileBytes = std::int64_t{1} << 20;
// Backward-filter partial sums (one per job group) may take this much; fewer groups beyond it.
constexpr std::int64_t kPartialBytes = std::int64_t{64} << 20;
constexpr std::int64_t kMaxGroups = 32;
constexpr std::int64_t kMaxTilePositions = 16384;

// Below this many multiply-adds a pass runs on one thread: the per-tile barriers would cost more
// than they save (gradient checks run thousands of tiny convolutions).
constexpr std::int64_t kParallelMinMacs = std::int64_t{1} << 18;

std::int64_t macs(const Conv3dShape& g) { return g.n * g.c_out * g.out_spatial() * g.c_in * g.kernel_volume(); }

std::int64_t round_up(std::int64_t v, std::int64_t m) { return (v + m - 1) / m * m; }

// A row stride for `positions` columns (a multiple of kNR) that is an odd number of 64-byte panels:
// rows a power of two apart would share a few cache sets and evict one another.
std::int64_t odd_panel_stride(std::int64_t positions, std::int64_t nr) {
  return positions / nr % 2 == 1 ? positions : positions + nr;
}

// The loops below would accept sizes that disagree, but cuDNN would not: refusing them here keeps
// every geometry the CPU suite passes one the CUDA path can run.
void check_sizes_agree(const Conv3dShape& g, const char* pass) {
  VG_CHECK(conv3d_sizes_agree(g), "conv3d " << pass << ": output (" << g.out[0] << ", " << g.out[1] << ", " << g.out[2]
                                            << ") is not the convolution of input (" << g.in[0] << ", " << g.in[1]
                                            << ", " << g.in[2] << ")");
}

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }
// Floor division for a possibly negative numerator (b > 0).
std::int64_t floor_div(std::int64_t a, std::int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// ---- the GEMM micro-kernel -------------------------------------------------------------------

// A row of kNR lanes is held as 64 / Bytes vectors of Bytes bytes each: one register of the ISA the
// variant is compiled for (64 for AVX-512, 32 for AVX2, 16 for SSE2). A wider type than the ISA's
// registers would make the compiler keep every accumulator on the stack. Each lane sums in the
// same order whatever the split, so the variants differ only where one fuses multiply-adds.
// Spelled out per type and width: GCC ignores vector_size on a type that depends on a template
// parameter.
template <class T, int Bytes>
struct Vec;
template <>
struct Vec<float, 16> {
  using type = float __attribute__((vector_size(16)));
  using unaligned = float __attribute__((vector_size(16), aligned(sizeof(float)), may_alias));
};
template <>
struct Vec<float, 32> {
  using type = float __attribute__((vector_size(32)));
  using unaligned = float __attribute__((vector_size(32), aligned(sizeof(float)), may_alias));
};
template <>
struct Vec<float, 64> {
  using type = float __attribute__((vector_size(64)));
  using unaligned = float __attribute__((vector_size(64), aligned(sizeof(float)), may_alias));
};
template <>
struct Vec<double, 16> {
  using type = double __attribute__((vector_size(16)));
  using unaligned = double __attribute__((vector_size(16), aligned(sizeof(double)), may_alias));
};
template <>
struct Vec<double, 32> {
  using type = double __attribute__((vector_size(32)));
  using unaligned = double __attribute__((vector_size(32), aligned(sizeof(double)), may_alias));
};
template <>
struct Vec<double, 64> {
  using type = double __attribute__((vector_size(64)));
  using unaligned = double __attribute__((vector_size(64), aligned(sizeof(double)), may_alias));
};

// C[0..mr)[0..nr) (=|+=) sum_r ap[r][i] * b[r*ldb + j]: ap is one packed A panel (R, kMR), b one
// panel of B whose rows hold kNR readable values (columns past nr are computed and dropped).
// Memory is read and written only through the unaligned vector type: the accumulators' address is
// never taken, so they live in registers for the whole loop.
template <class T, int Bytes>
[[gnu::always_inline]] inline void micro_tile_body(std::int64_t R, const T* ap, const T* b, std::int64_t ldb, T* c,
                                                   std::int64_t ldc, int mr, int nr, bool accumulate) {
  using V = typename Vec<T, Bytes>::type;
  using U = typename Vec<T, Bytes>::unaligned;
  static_assert(sizeof(V) == Bytes && sizeof(U) == Bytes, "V must be one vector of Bytes bytes");
  constexpr int NR = static_cast<int>(kNR<T>);
  constexpr int W = Bytes / static_cast<int>(sizeof(T));  // lanes per vector
  constexpr int P = NR / W;                               // vectors per row
  static_assert(P * W == NR, "a row must split into whole vectors");
  V acc[kMR][P];
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i)
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) acc[i][p] = V{};
  for (std::int64_t r = 0; r < R; ++r) {
    V bv[P];
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) bv[p] = *reinterpret_cast<const U*>(b + r * ldb + p * W);
    const T* a = ap + r * kMR;
#pragma GCC unroll 6
    for (int i = 0; i < kMR; ++i)
#pragma GCC unroll 4
      for (int p = 0; p < P; ++p) acc[i][p] += a[i] * bv[p];
  }
  if (mr == kMR && nr == NR) {
#pragma GCC unroll 6
    for (int i = 0; i < kMR; ++i)
#pragma GCC unroll 4
      for (int p = 0; p < P; ++p) {
        U* dst = reinterpret_cast<U*>(c + i * ldc + p * W);
        *dst = accumulate ? V(*dst) + acc[i][p] : acc[i][p];
      }
    return;
  }
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i) {
    if (i >= mr) break;
    T lanes[NR];
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) *reinterpret_cast<U*>(lanes + p * W) = acc[i][p];
    for (int j = 0; j < nr; ++j) c[i * ldc + j] = accumulate ? c[i * ldc + j] + lanes[j] : lanes[j];
  }
}

// ---- ISA variants ------------------------------------------------------------------------------
// The micro-kernel is compiled three times (x86-64-v4: AVX-512, x86-64-v3: AVX2+FMA, baseline
// SSE2) so the default build runs on any x86-64 and uses what it finds. The choice is an explicit
// pointer rather than a loader ifunc so that tests can run every variant against the baseline and
// a user can rule one out when diagnosing: VOXGRAD_CPU_ISA=avx512|avx2|baseline is read once, at
// the first selection; set_conv3d_simd_variant() switches later.
template <class T>
using MicroTileFn = void (*)(std::int64_t, const T*, const T*, std::int64_t, T*, std::int64_t, int, int, bool);

#define VG_CONV_MICRO_TILE(name, attr, T, Bytes)                                                            \
  attr void name(std::int64_t R, const T* ap, const T* b, std::int64_t ldb, T* c, std::int64_t ldc, int mr, \
                 int nr, bool accumulate) {                                                                 \
    micro_tile_body<T, Bytes>(R, ap, b, ldb, c, ldc, mr, nr, accumulate);                                   \
  }
VG_CONV_MICRO_TILE(micro_tile_baseline, , float, 16)
VG_CONV_MICRO_TILE(micro_tile_baseline, , double, 16)
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VG_CONV_X86_VARIANTS 1
VG_CONV_MICRO_TILE(micro_tile_avx2, __attribute__((target("arch=x86-64-v3"))), float, 32)
VG_CONV_MICRO_TILE(micro_tile_avx2, __attribute__((target("arch=x86-64-v3"))), double, 32)
VG_CONV_MICRO_TILE(micro_tile_avx512, __attribute__((target("arch=x86-64-v4"))), float, 64)
VG_CONV_MICRO_TILE(micro_tile_avx512, __attribute__((target("arch=x86-64-v4"))), double, 64)
#endif
#undef VG_CONV_MICRO_TILE

struct SimdVariant {
  const char* name;
  const char* cpu_level;  // what __builtin_cpu_supports must report; nullptr: always available
  MicroTileFn<float> f32;
  MicroTileFn<double> f64;
};

// Best first: the automatic choice is the first one the CPU supports.
constexpr SimdVariant kVariants[] = {
#ifdef VG_CONV_X86_VARIANTS
    {"avx512", "x86-64-v4", micro_tile_avx512, micro_tile_avx512},
    {"avx2", "x86-64-v3", micro_tile_avx2, micro_tile_avx2},
#endif
    {"baseline", nullptr, micro_tile_baseline, micro_tile_baseline},
};

bool cpu_supports(const SimdVariant& v) {
  if (v.cpu_level == nullptr) return true;
#ifdef VG_CONV_X86_VARIANTS
  __builtin_cpu_init();
  // __builtin_cpu_supports wants a string literal, hence the spelled-out levels.
  if (std::strcmp(v.cpu_level, "x86-64-v4") == 0) return __builtin_cpu_supports("x86-64-v4");
  if (std::strcmp(v.cpu_level, "x86-64-v3") == 0) return __builtin_cpu_supports("x86-64-v3");
#endif
  return false;
}

const SimdVariant* find_variant(const char* name) {
  for (const SimdVariant& v : kVariants)
    if (name != nullptr && std::strcmp(v.name, name) == 0) return &v;
  return nullptr;
}

const SimdVariant* best_variant() {
  for (const SimdVariant& v : kVariants)
    if (cpu_supports(v)) return &v;
  return &kVariants[std::size(kVariants) - 1];
}

// The environment's request if this CPU can honour it; otherwise say why on stderr (once, here)
// and take the best variant, since a kernel deep inside a training step has no one to throw to.
const SimdVariant* initial_variant() {
  const char* want = std::getenv("VOXGRAD_CPU_ISA");
  if (want == nullptr || *want == '\0') return best_variant();
  const SimdVariant* v = find_variant(want);
  if (v != nullptr && cpu_supports(*v)) return v;
  const SimdVariant* best = best_variant();
  std::fprintf(stderr, "voxgrad: VOXGRAD_CPU_ISA=%s %s; using %s (choices: avx512, avx2, baseline)\n", want,
               v == nullptr ? "is not a known variant" : "is not supported by this CPU", best->name);
  return best;
}

std::atomic<const SimdVariant*> g_variant{nullptr};

const SimdVariant& active_variant() {
  const SimdVariant* v = g_variant.load(std::memory_order_acquire);
  if (v != nullptr) return *v;
  static const SimdVariant* const initial = initial_variant();
  const SimdVariant* expected = nullptr;
  // A concurrent set_conv3d_simd_variant() wins over the automatic choice.
  g_variant.compare_exchange_strong(expected, initial, std::memory_order_acq_rel);
  return *g_variant.load(std::memory_order_acquire);
}

template <class T>
MicroTileFn<T> micro_tile_fn() {
  if constexpr (std::is_same_v<T, float>)
    return active_variant().f32;
  else
    return active_variant().f64;
}

// C (M, N; row stride ldc) (=|+=) A (M, R) * B (R, N). A is packed as (ceil(M/kMR), R, kMR) with
// zero rows past M; B is split into panels of kNR columns, panel q starting at b + q*b_panel_stride,
// rows ldb apart. One thread.
template <class T>
struct Gemm {
  std::int64_t M, N, R;
  const T* ap;
  const T* b;
  std::int64_t b_panel_stride, ldb;
  T* c;
  std::int64_t ldc;
  bool accumulate;
};

// The rows [r0, r0 + rc) of the sum (rc <= kKc), with B's rows r0.. at b_rows in panel 0 (panels
// g.b_panel_stride apart, rows g.ldb apart): blocks of kMc rows of A stay in L2 while every panel of
// B passes them, and each panel's rc rows stay in L1 while that block's micro-tiles read them.
template <class T>
void gemm_rows(const Gemm<T>& g, std::int64_t r0, std::int64_t rc, const T* b_rows, bool accumulate) {
  const MicroTileFn<T> micro_tile = micro_tile_fn<T>();
  const std::int64_t m_blocks = ceil_div(g.M, kMR), n_panels = ceil_div(g.N, kNR<T>);
  for (std::int64_t mb0 = 0; mb0 < m_blocks; mb0 += kMc / kMR) {
    const std::int64_t mb1 = std::min(m_blocks, mb0 + kMc / kMR);
    for (std::int64_t nb = 0; nb < n_panels; ++nb) {
      const int nr = static_cast<int>(std::min<std::int64_t>(kNR<T>, g.N - nb * kNR<T>));
      for (std::int64_t mb = mb0; mb < mb1; ++mb) {
        const int mr = static_cast<int>(std::min<std::int64_t>(kMR, g.M - mb * kMR));
        micro_tile(rc, g.ap + (mb * g.R + r0) * kMR, b_rows + nb * g.b_panel_stride, g.ldb,
                   g.c + mb * kMR * g.ldc + nb * kNR<T>, g.ldc, mr, nr, accumulate);
      }
    }
  }
}

// The whole sum, kKc rows of R at a time: every element of C sums its blocks in the same order
// whatever the tile, thread or SIMD variant.
template <class T>
void gemm(const Gemm<T>& g) {
  for (std::int64_t r0 = 0; r0 < g.R; r0 += kKc)
    gemm_rows(g, r0, std::min(kKc, g.R - r0), g.b + r0 * g.ldb, g.accumulate || r0 > 0);
}

// Block mb of ap (ceil(M/kMR), R, kMR) from A with element (m, r) at a[m*rs + r*cs].
template <class T>
void pack_a_block(const T* a, std::int64_t rs, std::int64_t cs, std::int64_t M, std::int64_t R, T* ap,
                  std::int64_t mb) {
  T* dst = ap + mb * R * kMR;
  for (std::int64_t r = 0; r < R; ++r)
    for (int i = 0; i < kMR; ++i) {
      const std::int64_t m = mb * kMR + i;
      dst[r * kMR + i] = m < M ? a[m * rs + r * cs] : T(0);
    }
}

// All of ap, on the calling thread.
template <class T>
void pack_a(const T* a, std::int64_t rs, std::int64_t cs, std::int64_t M, std::int64_t R, T* ap) {
  for (std::int64_t mb = 0; mb < ceil_div(M, kMR); ++mb) pack_a_block(a, rs, cs, M, R, ap, mb);
}

// ---- tiles of output positions ---------------------------------------------------------------

// A run of consecutive output positions sharing (od, oh): ow in [ow0, ow1), at column p of its tile.
struct Segment {
  std::int64_t od, oh, ow0, ow1, p;
};

// Output positions cut into chunks (runs of whole output depth slices, or everything), and each
// chunk into tiles of at most `positions`; a tile never crosses a chunk.
struct Tile {
  std::int64_t p0, np;                  // positions [p0, p0 + np)
  std::int64_t seg_begin, seg_end;      // its segments
};
struct Tiling {
  std::int64_t positions = 0;           // per tile at most, a multiple of kNR
  std::vector<Tile> tiles;
  std::vector<std::int64_t> chunk_first;  // (chunks + 1): chunk c holds tiles [chunk_first[c], chunk_first[c+1])
  std::vector<Segment> segments;
  std::int64_t chunks() const { return static_cast<std::int64_t>(chunk_first.size()) - 1; }
};

std::int64_t tile_positions(const Conv3dShape& g, std::int64_t rows, std::int64_t element_size, std::int64_t nr) {
  std::int64_t p = kTileBytes / std::max<std::int64_t>(1, rows * element_size);
  p = std::clamp<std::int64_t>(p, 4 * nr, kMaxTilePositions) / nr * nr;
  return std::min(p, round_up(g.out_spatial(), nr));
}

Tiling make_tiling(const Conv3dShape& g, std::int64_t positions, std::int64_t depth_slices_per_chunk) {
  Tiling t;
  const std::int64_t S = g.out_spatial(), plane = g.out[1] * g.out[2], chunk = depth_slices_per_chunk * plane;
  t.positions = positions;
  for (std::int64_t c0 = 0; c0 < S; c0 += chunk) {
    t.chunk_first.push_back(static_cast<std::int64_t>(t.tiles.size()));
    const std::int64_t c1 = std::min(S, c0 + chunk);
    for (std::int64_t p0 = c0; p0 < c1; p0 += positions) {
      const std::int64_t p1 = std::min(c1, p0 + positions);
      Tile tile{p0, p1 - p0, static_cast<std::int64_t>(t.segments.size()), 0};
      for (std::int64_t pos = p0; pos < p1;) {
        const std::int64_t od = pos / plane, oh = (pos - od * plane) / g.out[2], ow = pos - od * plane - oh * g.out[2];
        const std::int64_t run = std::min(g.out[2] - ow, p1 - pos);
        t.segments.push_back({od, oh, ow, ow + run, pos - p0});
        pos += run;
      }
      tile.seg_end = static_cast<std::int64_t>(t.segments.size());
      t.tiles.push_back(tile);
    }
  }
  t.chunk_first.push_back(static_cast<std::int64_t>(t.tiles.size()));
  return t;
}

// ---- vol2col and col2vol for one kernel offset ------------------------------------------------

// Where column p of one vol2col row lands: base + p * step (1 in a plain (K, P) row, which the GEMM
// reads as panels of kNR columns P apart; kNR in the transposed panels of the backward-filter pass).
struct StridedIndex {
  std::int64_t base, step;
  std::int64_t operator()(std::int64_t p) const { return base + p * step; }
};

// The output columns [lo, hi) whose input column iw = ow*s - p + kw*d lies inside [0, W), for one
// kernel column kw (the same for every segment, so computed once per vol2col row).
struct ValidRange {
  std::int64_t lo, hi;
};
ValidRange valid_ow(const Conv3dShape& g, std::int64_t kw) {
  const std::int64_t off = g.padding[2] - kw * g.dilation[2];
  const std::int64_t lo = off <= 0 ? 0 : ceil_div(off, g.stride[2]);
  const std::int64_t hi = floor_div(g.in[2] - 1 + off, g.stride[2]) + 1;
  return {lo, std::max(lo, hi)};
}
// Clipped to one segment [ow0, ow1).
ValidRange clip(ValidRange v, const Segment& s) {
  const std::int64_t lo = std::clamp(v.lo, s.ow0, s.ow1);
  return {lo, std::clamp(v.hi, lo, s.ow1)};
}

// One row (channel c, offset kd, kh, kw) of the vol2col matrix for one tile; xc is channel c (in).
template <class T, class Index>
void vol2col_row(const T* xc, const Conv3dShape& g, const Segment* seg, std::int64_t nseg, std::int64_t kd,
                 std::int64_t kh, std::int64_t kw, T* col, Index at) {
  const std::int64_t sw = g.stride[2], shift = kw * g.dilation[2] - g.padding[2];
  const ValidRange valid = valid_ow(g, kw);
  for (std::int64_t k = 0; k < nseg; ++k) {
    const Segment& s = seg[k];
    const std::int64_t id = s.od * g.stride[0] - g.padding[0] + kd * g.dilation[0];
    const std::int64_t ih = s.oh * g.stride[1] - g.padding[1] + kh * g.dilation[1];
    const std::int64_t p_of_ow0 = s.p - s.ow0;
    if (id < 0 || id >= g.in[0] || ih < 0 || ih >= g.in[1]) {
      for (std::int64_t ow = s.ow0; ow < s.ow1; ++ow) col[at(p_of_ow0 + ow)] = T(0);
      continue;
    }
    const T* src = xc + (id * g.in[1] + ih) * g.in[2];
    const ValidRange v = clip(valid, s);
    for (std::int64_t ow = s.ow0; ow < v.lo; ++ow) col[at(p_of_ow0 + ow)] = T(0);
    for (std::int64_t ow = v.lo; ow < v.hi; ++ow) col[at(p_of_ow0 + ow)] = src[ow * sw + shift];
    for (std::int64_t ow = v.hi; ow < s.ow1; ++ow) col[at(p_of_ow0 + ow)] = T(0);
  }
}

// The adjoint of vol2col_row for a plain row: scatter-add the row back into channel dxc (in).
template <class T>
void col2vol_row(T* dxc, const Conv3dShape& g, const Segment* seg, std::int64_t nseg, std::int64_t kd,
                 std::int64_t kh, std::int64_t kw, const T* row) {
  const std::int64_t sw = g.stride[2], shift = kw * g.dilation[2] - g.padding[2];
  const ValidRange valid = valid_ow(g, kw);
  for (std::int64_t k = 0; k < nseg; ++k) {
    const Segment& s = seg[k];
    const std::int64_t id = s.od * g.stride[0] - g.padding[0] + kd * g.dilation[0];
    const std::int64_t ih = s.oh * g.stride[1] - g.padding[1] + kh * g.dilation[1];
    if (id < 0 || id >= g.in[0] || ih < 0 || ih >= g.in[1]) continue;
    T* dst = dxc + (id * g.in[1] + ih) * g.in[2];
    const T* r = row + s.p - s.ow0;
    const ValidRange v = clip(valid, s);
    for (std::int64_t ow = v.lo; ow < v.hi; ++ow) dst[ow * sw + shift] += r[ow];
  }
}

// Offsets (kd, kh, kw) of vol2col row `row` within a channel.
struct Offset {
  std::int64_t kd, kh, kw;
};
Offset offset_of(std::int64_t row, const Conv3dShape& g) {
  const std::int64_t kw = row % g.kernel[2], kh = (row / g.kernel[2]) % g.kernel[1];
  return {row / (g.kernel[1] * g.kernel[2]), kh, kw};
}

template <class T>
T* scratch_array(Scratch& scratch, std::int64_t count) {
  return static_cast<T*>(scratch.get(static_cast<std::size_t>(std::max<std::int64_t>(count, 1)) * sizeof(T)));
}

// ---- the three passes ------------------------------------------------------------------------

// Positions per tile of the forward pass: at most an eighth of the volume (down to four panels),
// so that the deep levels, whose whole volume would fit one tile, still give every thread work.
std::int64_t forward_tile_positions(const Conv3dShape& g, std::int64_t rows, std::int64_t element_size) {
  const std::int64_t nr = 64 / element_size;
  const std::int64_t eighth = std::max(4 * nr, round_up(ceil_div(g.out_spatial(), kForwardTiles), nr));
  return std::min(tile_positions(g, rows, element_size, nr), eighth);
}

// Positions per tile of the backward-filter pass: vol2col writes each row's positions one 64-byte
// panel row apart, and 16 rows fill the same lines, so a row's lines must stay in L1 between them.
std::int64_t filter_tile_positions(const Conv3dShape& g, std::int64_t element_size) {
  const std::int64_t nr = 64 / element_size;
  const std::int64_t rows = std::min(round_up(g.c_in * g.kernel_volume(), nr), kFilterRows) + round_up(g.c_out, kMR);
  return std::min(tile_positions(g, rows, element_size, nr), std::max(kFilterTilePositions, 4 * nr));
}

// Job groups of the backward-filter pass: each sums its jobs into its own dW partial, and the
// partials are added in group order, so the result does not depend on the number of threads.
std::int64_t filter_groups(const Conv3dShape& g, std::int64_t element_size, std::int64_t jobs) {
  const std::int64_t per_partial = std::max<std::int64_t>(1, g.c_out * g.c_in * g.kernel_volume() * element_size);
  return std::max<std::int64_t>(1, std::min({kMaxGroups, kPartialBytes / per_partial, jobs}));
}

// Output depth slices per chunk of the backward-data pass, chosen so that chunks two apart never
// reach the same input depth: the even chunks, then the odd ones, scatter into dx without races.
std::int64_t data_chunk_slices(const Conv3dShape& g) {
  const std::int64_t reach = (g.kernel[0] - 1) * g.dilation[0] - g.stride[0];
  return reach < 0 ? 1 : reach / g.stride[0] + 1;
}

}  // namespace

// y (c_out, tile) = W (c_out, K) * col (K, tile), K = c_in * kernel volume; threads take whole
// (batch, tile) jobs. vol2col makes kKc rows of col at a time (plain rows: runs of contiguous
// copies) and the GEMM consumes them while they are still in cache. The rows' stride is an odd
// number of panels, and when K spans several blocks the partial sums go to a per-thread buffer
// with such rows first: y's rows are a whole volume apart, and power-of-two strides would put
// every row of a tile in one cache set.
template <class T>
void conv3d_forward(const T* x, const T* w, T* y, const Conv3dShape& g, Scratch& scratch) {
  check_sizes_agree(g, "forward");
  const std::int64_t kvol = g.kernel_volume(), K = g.c_in * kvol, S = g.out_spatial(), Sin = g.in_spatial();
  const std::int64_t Kc = std::min(K, kKc);
  const Tiling t = make_tiling(g, forward_tile_positions(g, Kc + g.c_out, sizeof(T)), g.out[0]);
  const std::int64_t tiles = static_cast<std::int64_t>(t.tiles.size()), ld = odd_panel_stride(t.positions, kNR<T>);
  const bool direct = K <= kKc;  // one block: the GEMM writes y itself
  const int threads = omp_get_max_threads();
  // Too few tiles for the threads (the deepest levels): jobs also split y's rows into blocks of kMc.
  // Neither the tiles nor the split change any sum, only which outputs are computed together.
  const std::int64_t part_rows = g.n * tiles >= 2 * threads ? g.c_out : kMc, parts = ceil_div(g.c_out, part_rows);
  T* wp = scratch_array<T>(scratch, round_up(g.c_out, kMR) * K);  // packed W (c_out / MR, K, MR)
  T* cols = scratch_array<T>(scratch, threads * Kc * ld);         // per thread: (Kc, P), rows ld apart
  T* sums = direct ? nullptr : scratch_array<T>(scratch, threads * g.c_out * ld);
  std::fill(cols, cols + threads * Kc * ld, T(0));
#pragma omp parallel num_threads(threads) if (macs(g) > kParallelMinMacs)
  {
    T* col = cols + omp_get_thread_num() * Kc * ld;
    T* sum = direct ? nullptr : sums + omp_get_thread_num() * g.c_out * ld;
    // On the deep levels packing W takes as long as the convolution: shared like the rest.
#pragma omp for schedule(static)
    for (std::int64_t mb = 0; mb < ceil_div(g.c_out, kMR); ++mb)
      pack_a_block(w, K, std::int64_t{1}, g.c_out, K, wp, mb);
#pragma omp for schedule(dynamic)
    for (std::int64_t job = 0; job < g.n * tiles * parts; ++job) {
      const std::int64_t n = job / (tiles * parts), ti = job / parts % tiles, m0 = job % parts * part_rows;
      const std::int64_t rows = std::min(part_rows, g.c_out - m0);
      const Tile& tile = t.tiles[ti];
      const Segment* seg = t.segments.data() + tile.seg_begin;
      T* y_tile = y + (n * g.c_out + m0) * S + tile.p0;
      T* sum_rows = direct ? nullptr : sum + m0 * ld;
      const Gemm<T> gm{rows, tile.np, K, wp + m0 * K, col, kNR<T>, ld, direct ? y_tile : sum_rows, direct ? S : ld,
                       false};
      for (std::int64_t k0 = 0; k0 < K; k0 += kKc) {
        const std::int64_t rc = std::min(kKc, K - k0);
        for (std::int64_t row = k0; row < k0 + rc; ++row) {
          const std::int64_t c = row / kvol;
          const Offset o = offset_of(row - c * kvol, g);
          vol2col_row(x + (n * g.c_in + c) * Sin, g, seg, tile.seg_end - tile.seg_begin, o.kd, o.kh, o.kw, col,
                      StridedIndex{(row - k0) * ld, 1});
        }
        gemm_rows(gm, k0, rc, col, k0 > 0);
      }
      if (!direct)
        for (std::int64_t c = 0; c < rows; ++c)
          std::copy(sum_rows + c * ld, sum_rows + c * ld + tile.np, y_tile + c * S);
    }
  }
}

// col (K, tile) = W^T (K, c_out) * dy (c_out, tile), then col2vol adds each row back into dx.
// Jobs are (batch, chunk of output depth slices); even chunks first, then odd ones (see
// data_chunk_slices), each chunk's tiles in order, so every dx element sums in a fixed order.
template <class T>
void conv3d_backward_data(const T* dy, const T* w, T* dx, const Conv3dShape& g, Scratch& scratch) {
  check_sizes_agree(g, "backward_data");
  const std::int64_t kvol = g.kernel_volume(), K = g.c_in * kvol, S = g.out_spatial(), Sin = g.in_spatial();
  const Tiling t = make_tiling(g, tile_positions(g, K + g.c_out, sizeof(T), kNR<T>), data_chunk_slices(g));
  const std::int64_t P = t.positions, chunks = t.chunks();
  const int threads = omp_get_max_threads();
  T* wtp = scratch_array<T>(scratch, round_up(K, kMR) * g.c_out);  // packed W^T (K / MR, c_out, MR)
  T* cols = scratch_array<T>(scratch, threads * K * P);            // per thread: (K, P), rows P apart
  T* dyps = scratch_array<T>(scratch, threads * g.c_out * P);      // per thread: panels (P / NR, c_out, NR)
  std::fill(dyps, dyps + threads * g.c_out * P, T(0));
  pack_a(w, std::int64_t{1}, K, K, g.c_out, wtp);
#pragma omp parallel num_threads(threads) if (macs(g) > kParallelMinMacs)
  {
    T* col = cols + omp_get_thread_num() * K * P;
    T* dyp = dyps + omp_get_thread_num() * g.c_out * P;
#pragma omp for schedule(static)
    for (std::int64_t i = 0; i < g.n * g.c_in; ++i) std::fill(dx + i * Sin, dx + (i + 1) * Sin, T(0));
    for (std::int64_t parity = 0; parity < 2; ++parity) {
      const std::int64_t per_n = (chunks - parity + 1) / 2;  // chunks parity, parity + 2, ...
#pragma omp for schedule(dynamic)
      for (std::int64_t job = 0; job < g.n * per_n; ++job) {
        const std::int64_t n = job / per_n, chunk = parity + 2 * (job - n * per_n);
        for (std::int64_t ti = t.chunk_first[chunk]; ti < t.chunk_first[chunk + 1]; ++ti) {
          const Tile& tile = t.tiles[ti];
          const Segment* seg = t.segments.data() + tile.seg_begin;
          const std::int64_t nseg = tile.seg_end - tile.seg_begin;
          for (std::int64_t c = 0; c < g.c_out; ++c) {
            const T* src = dy + (n * g.c_out + c) * S + tile.p0;
            for (std::int64_t p = 0; p < tile.np; ++p)
              dyp[(p / kNR<T>)*g.c_out * kNR<T> + c * kNR<T> + p % kNR<T>] = src[p];
          }
          gemm(Gemm<T>{K, tile.np, g.c_out, wtp, dyp, g.c_out * kNR<T>, kNR<T>, col, P, false});
          for (std::int64_t c = 0; c < g.c_in; ++c) {
            T* dxc = dx + (n * g.c_in + c) * Sin;
            for (std::int64_t k = 0; k < kvol; ++k) {
              const Offset o = offset_of(k, g);
              col2vol_row(dxc, g, seg, nseg, o.kd, o.kh, o.kw, col + (c * kvol + k) * P);
            }
          }
        }
      }
    }
  }
}

// dW (c_out, K) += dy (c_out, tile) * col^T (tile, K) over all (batch, tile) jobs, summed per job
// group (filter_groups) and then across groups in order. vol2col makes kFilterRows rows of K at a
// time, as panels (rows / NR, P, NR) the GEMM reads contiguously while they are still in cache; the
// dW columns of those rows (c_out x kFilterRows) stay in L2 while the tile's positions are summed
// into them kKc at a time, so large tiles cost no extra passes over the whole of dW.
template <class T>
void conv3d_backward_filter(const T* x, const T* dy, T* dw, const Conv3dShape& g, Scratch& scratch) {
  check_sizes_agree(g, "backward_filter");
  const std::int64_t kvol = g.kernel_volume(), K = g.c_in * kvol, S = g.out_spatial(), Sin = g.in_spatial();
  const std::int64_t Kg = std::min(round_up(K, kNR<T>), kFilterRows), CK = g.c_out * K, Mp = round_up(g.c_out, kMR);
  const Tiling t = make_tiling(g, filter_tile_positions(g, sizeof(T)), g.out[0]);
  const std::int64_t P = t.positions, tiles = static_cast<std::int64_t>(t.tiles.size()), jobs = g.n * tiles;
  const std::int64_t groups = filter_groups(g, sizeof(T), jobs);
  const int threads = omp_get_max_threads();
  // Panels one row longer than P: P * 64 bytes apart, every panel's row r would share one cache set.
  const std::int64_t panel = (P + 1) * kNR<T>;
  T* colts = scratch_array<T>(scratch, threads * Kg / kNR<T> * panel);  // per thread: panels (Kg / NR, P + 1, NR)
  T* dyps = scratch_array<T>(scratch, threads * Mp * P);                // per thread: packed dy (c_out / MR, P, MR)
  T* partials = scratch_array<T>(scratch, (groups - 1) * CK);           // groups 1.. (group 0 sums into dw)
  std::fill(colts, colts + threads * Kg / kNR<T> * panel, T(0));
#pragma omp parallel num_threads(threads) if (macs(g) > kParallelMinMacs)
  {
    T* colt = colts + omp_get_thread_num() * Kg / kNR<T> * panel;
    T* dyp = dyps + omp_get_thread_num() * Mp * P;
#pragma omp for schedule(dynamic)
    for (std::int64_t group = 0; group < groups; ++group) {
      T* acc = group == 0 ? dw : partials + (group - 1) * CK;
      std::fill(acc, acc + CK, T(0));
      for (std::int64_t job = group * jobs / groups; job < (group + 1) * jobs / groups; ++job) {
        const std::int64_t n = job / tiles;
        const Tile& tile = t.tiles[job - n * tiles];
        const Segment* seg = t.segments.data() + tile.seg_begin;
        pack_a(dy + n * g.c_out * S + tile.p0, S, std::int64_t{1}, g.c_out, tile.np, dyp);
        for (std::int64_t k0 = 0; k0 < K; k0 += Kg) {
          const std::int64_t rows = std::min(Kg, K - k0);
          for (std::int64_t row = k0; row < k0 + rows; ++row) {
            const std::int64_t c = row / kvol, r = row - k0;
            const Offset o = offset_of(row - c * kvol, g);
            vol2col_row(x + (n * g.c_in + c) * Sin, g, seg, tile.seg_end - tile.seg_begin, o.kd, o.kh, o.kw, colt,
                        StridedIndex{r / kNR<T> * panel + r % kNR<T>, kNR<T>});
          }
          const Gemm<T> gm{g.c_out, rows, tile.np, dyp, colt, panel, kNR<T>, acc + k0, K, true};
          gemm(gm);
        }
      }
    }
#pragma omp for schedule(static)
    for (std::int64_t i = 0; i < CK; ++i)
      for (std::int64_t group = 1; group < groups; ++group) dw[i] += partials[(group - 1) * CK + i];
  }
}

template <class T>
void conv3d_bias_forward(T* y, const T* b, std::int64_t n, std::int64_t c, std::int64_t spatial) {
#pragma omp parallel for schedule(static) if (n * c * spatial > (1 << 16))
  for (std::int64_t i = 0; i < n * c; ++i) {
    const T v = b[i % c];
    T* row = y + i * spatial;
    for (std::int64_t s = 0; s < spatial; ++s) row[s] += v;
  }
}

// Summed in double and in a fixed order: deterministic, and accurate over millions of voxels.
template <class T>
void conv3d_bias_backward(const T* dy, T* db, std::int64_t n, std::int64_t c, std::int64_t spatial) {
#pragma omp parallel for schedule(static) if (n * c * spatial > (1 << 16))
  for (std::int64_t ch = 0; ch < c; ++ch) {
    double total = 0;
    for (std::int64_t b = 0; b < n; ++b) {
      const T* row = dy + (b * c + ch) * spatial;
      for (std::int64_t s = 0; s < spatial; ++s) total += row[s];
    }
    db[ch] = static_cast<T>(total);
  }
}

std::int64_t conv3d_scratch_bytes(const Conv3dShape& g, std::size_t element_size) {
  const auto es = static_cast<std::int64_t>(element_size);
  const std::int64_t nr = 64 / es, K = g.c_in * g.kernel_volume(), Mp = round_up(g.c_out, kMR);
  const std::int64_t Kg = std::min(round_up(K, nr), kFilterRows);
  const std::int64_t threads = omp_get_max_threads();
  const std::int64_t Kc = std::min(K, kKc), pf = forward_tile_positions(g, Kc + g.c_out, es),
                     pd = tile_positions(g, K + g.c_out, es, nr), pw = filter_tile_positions(g, es);
  const std::int64_t jobs = g.n * ceil_div(g.out_spatial(), pw) + g.n * g.out[0];  // an upper bound
  const std::int64_t ldf = odd_panel_stride(pf, nr);
  const std::int64_t fwd = Mp * K + threads * (Kc * ldf + (K > kKc ? g.c_out * ldf : 0));
  const std::int64_t data = round_up(K, kMR) * g.c_out + threads * (K + g.c_out) * pd;
  const std::int64_t filter =
      threads * (Kg / nr * (pw + 1) * nr + Mp * pw) + (filter_groups(g, es, jobs) - 1) * g.c_out * K;
  return std::max({fwd, data, filter}) * es;
}

const char* conv3d_simd_variant() { return active_variant().name; }

bool set_conv3d_simd_variant(const char* name) {
  const SimdVariant* v = find_variant(name);
  if (v == nullptr || !cpu_supports(*v)) return false;
  g_variant.store(v, std::memory_order_release);
  return true;
}

#define VG_CONV_INSTANTIATE(T)                                                                            \
  template void conv3d_forward<T>(const T*, const T*, T*, const Conv3dShape&, Scratch&);                  \
  template void conv3d_backward_data<T>(const T*, const T*, T*, const Conv3dShape&, Scratch&);            \
  template void conv3d_backward_filter<T>(const T*, const T*, T*, const Conv3dShape&, Scratch&);          \
  template void conv3d_bias_forward<T>(T*, const T*, std::int64_t, std::int64_t, std::int64_t);           \
  template void conv3d_bias_backward<T>(const T*, T*, std::int64_t, std::int64_t, std::int64_t);
VG_CONV_INSTANTIATE(float)
VG_CONV_INSTANTIATE(double)
#undef VG_CONV_INSTANTIATE

}  // namespace voxgrad::kernels::cpu
