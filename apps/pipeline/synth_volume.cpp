// The synthetic case generator: randomly rotated, gently wobbling ellipsoids painted class by class
// onto background only (so no class erases another), then class means times a smooth bias field plus
// Gaussian noise. A private splitmix64 stream with Box-Muller keeps the bytes the same on every
// platform (std::normal_distribution's algorithm is left to the library).
#include "apps/pipeline/synth_volume.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "engine/error.h"

namespace voxgrad::pipeline {

namespace {

std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}
  double uniform(double lo = 0.0, double hi = 1.0) {
    return lo + (hi - lo) * static_cast<double>(splitmix64(state_) >> 11) * 0x1.0p-53;
  }
  double normal() {
    // Box-Muller, one value per call: simpler than caching the pair and the cost is irrelevant here.
    const double u1 = 1.0 - uniform();  // (0, 1], so log() is finite
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  }

 private:
  std::uint64_t state_;
};

using Vec3 = std::array<double, 3>;

// An ellipsoid in voxel coordinates (x, y, z) whose surface wobbles by a few low-frequency sines,
// so shapes are smooth but not all perfect ellipsoids.
struct Blob {
  Vec3 centre{};
  std::array<Vec3, 3> axes{};  // orthonormal rows: the ellipsoid's principal directions
  Vec3 radii{};
  std::array<Vec3, 2> wave{};
  std::array<double, 2> phase{};
  double wobble = 0.0;  // relative radius change, at most this much either way

  // Inside the blob grown by `margin` voxels along every radius.
  bool contains(double x, double y, double z, double margin) const {
    const Vec3 d{x - centre[0], y - centre[1], z - centre[2]};
    Vec3 u{};
    for (int a = 0; a < 3; ++a)
      u[a] = (axes[a][0] * d[0] + axes[a][1] * d[1] + axes[a][2] * d[2]) / (radii[a] + margin);
    const double r = std::sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2]);
    double w = 0.0;
    for (int k = 0; k < 2; ++k) w += std::sin(wave[k][0] * u[0] + wave[k][1] * u[1] + wave[k][2] * u[2] + phase[k]);
    return r < 1.0 + wobble * 0.5 * w;
  }
  double extent(double margin) const {
    return (std::max({radii[0], radii[1], radii[2]}) + margin) * (1.0 + wobble) + 1.0;
  }
};

// A uniformly random rotation from a normalised Gaussian quaternion.
std::array<Vec3, 3> random_rotation(Rng& rng) {
  double q[4];
  double n = 0.0;
  do {
    n = 0.0;
    for (double& v : q) {
      v = rng.normal();
      n += v * v;
    }
  } while (n < 1e-12);
  n = std::sqrt(n);
  const double w = q[0] / n, x = q[1] / n, y = q[2] / n, z = q[3] / n;
  return {{{1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)},
           {2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)},
           {2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)}}};
}

Blob random_blob(Rng& rng, int size, double r_lo, double r_hi, double centre_lo, double centre_hi) {
  Blob b;
  for (double& c : b.centre) c = rng.uniform(centre_lo, centre_hi) * (size - 1);
  b.axes = random_rotation(rng);
  for (double& r : b.radii) r = rng.uniform(r_lo, r_hi);
  for (Vec3& k : b.wave)
    for (double& v : k) v = rng.uniform(-3.0, 3.0);
  for (double& p : b.phase) p = rng.uniform(0.0, 2.0 * std::numbers::pi);
  b.wobble = 0.12;
  return b;
}

struct Box {
  int lo[3], hi[3];  // inclusive-exclusive, x y z
};
Box bounding_box(const Blob& b, double margin, int size) {
  Box box{};
  const double e = b.extent(margin);
  for (int a = 0; a < 3; ++a) {
    box.lo[a] = std::clamp(static_cast<int>(std::floor(b.centre[a] - e)), 0, size);
    box.hi[a] = std::clamp(static_cast<int>(std::ceil(b.centre[a] + e)) + 1, 0, size);
  }
  return box;
}

// How many voxels the blob paints (inside it and background now) and how many foreground voxels
// lie inside it grown by `margin`.
struct Fit {
  std::int64_t paints = 0;
  std::int64_t overlap = 0;
};
Fit fit(const Blob& b, double margin, const std::vector<std::uint8_t>& label, int size) {
  Fit f;
  const Box box = bounding_box(b, margin, size);
  const std::int64_t S = size;
  for (int z = box.lo[2]; z < box.hi[2]; ++z)
    for (int y = box.lo[1]; y < box.hi[1]; ++y)
      for (int x = box.lo[0]; x < box.hi[0]; ++x) {
        const std::uint8_t l = label[(z * S + y) * S + x];
        if (l != 0 && b.contains(x, y, z, margin)) ++f.overlap;
        if (l == 0 && b.contains(x, y, z, 0.0)) ++f.paints;
      }
  return f;
}

std::int64_t paint(const Blob& b, std::uint8_t value, std::vector<std::uint8_t>& label, int size) {
  std::int64_t n = 0;
  const Box box = bounding_box(b, 0.0, size);
  const std::int64_t S = size;
  for (int z = box.lo[2]; z < box.hi[2]; ++z)
    for (int y = box.lo[1]; y < box.hi[1]; ++y)
      for (int x = box.lo[0]; x < box.hi[0]; ++x) {
        std::uint8_t& l = label[(z * S + y) * S + x];
        if (l == 0 && b.contains(x, y, z, 0.0)) {
          l = value;
          ++n;
        }
      }
  return n;
}

struct BlobKind {
  double r_lo, r_hi;    // radii in voxels
  double margin;        // halo that must stay (nearly) free of other foreground
  double max_overlap;   // accepted share of the halo's voxels already foreground
  double centre_lo, centre_hi;  // centre range as a fraction of the volume
};

// Tries a few candidates and paints the first that fits, else the one that overlapped least:
// placement never fails outright, it only gets more crowded.
std::int64_t place(Rng& rng, const BlobKind& kind, std::uint8_t value, std::vector<std::uint8_t>& label, int size) {
  constexpr int kTries = 40;
  Blob best;
  double best_share = 2.0;
  for (int t = 0; t < kTries; ++t) {
    const Blob b = random_blob(rng, size, kind.r_lo, kind.r_hi, kind.centre_lo, kind.centre_hi);
    const Fit f = fit(b, kind.margin, label, size);
    if (f.paints == 0) continue;
    const double share = static_cast<double>(f.overlap) / static_cast<double>(f.paints + f.overlap);
    if (share < best_share) {
      best = b;
      best_share = share;
    }
    if (share <= kind.max_overlap) break;
  }
  return best_share <= 1.0 ? paint(best, value, label, size) : 0;
}

}  // namespace

const char* synth_preset_name(SynthPreset p) {
  return p == SynthPreset::Demo ? "demo" : "small-structures";
}

std::uint64_t synth_case_seed(std::uint64_t seed, int split, int index) {
  std::uint64_t s = seed;
  std::uint64_t h = splitmix64(s);
  h ^= static_cast<std::uint64_t>(split) * 0xD1B54A32D192ED03ull + static_cast<std::uint64_t>(index);
  return splitmix64(h);
}

SynthCase synth_case(const SynthSpec& spec, std::uint64_t seed) {
  const int S = spec.size;
  const int K = spec.classes;
  VG_CHECK(S >= 16, "synth: size must be at least 16, got " << S);
  VG_CHECK(K >= 2 && K <= 255, "synth: classes must be 2..255, got " << K);
  Rng rng(seed);
  const std::int64_t n = static_cast<std::int64_t>(S) * S * S;
  SynthCase out;
  out.label.assign(static_cast<std::size_t>(n), 0);

  // Large blobs: radii 15-22 % of the side (about 1.5k-5k voxels each at S = 48), shrunk with more
  // than two foreground classes so the foreground keeps roughly the same share of the volume.
  const double crowd = std::min(1.0, std::cbrt(2.0 / (K - 1)));
  const BlobKind large{0.15 * S * crowd, 0.22 * S * crowd, 0.0, 0.2, 0.25, 0.75};
  // Small blobs: 3.5-5 voxels radii (about 180-520 voxels), 2 voxels clear of any other structure
  // so each stays its own connected component.
  const BlobKind small{3.5, 5.0, 2.0, 0.0, 0.1, 0.9};
  for (int c = 1; c < K; ++c) {
    const int count = rng.uniform() < 0.5 ? 1 : 2;
    for (int i = 0; i < count; ++i) place(rng, large, static_cast<std::uint8_t>(c), out.label, S);
  }
  if (spec.preset == SynthPreset::SmallStructures)
    for (int c = 1; c < K; ++c)
      for (int i = 0; i < 2; ++i) place(rng, small, static_cast<std::uint8_t>(c), out.label, S);

  std::vector<std::int64_t> counts(static_cast<std::size_t>(K), 0);
  for (std::uint8_t l : out.label) ++counts[l];
  for (int c = 1; c < K; ++c)
    VG_CHECK(counts[c] > 0, "synth: no room for class " << c << " of " << K - 1 << " in a " << S
                                                        << "^3 volume; use a larger --size or fewer --classes");

  // Class means 0.5 apart against noise of 0.25 and a bias of roughly +-25 %: single voxels are
  // ambiguous, so a network has to use shape and context, as on real scans.
  std::vector<double> mean(static_cast<std::size_t>(K));
  for (int c = 0; c < K; ++c) mean[c] = 1.0 + 0.5 * c + 0.05 * rng.normal();
  const double noise = 0.25;
  // Bias: exp of a random polynomial of degree 2 in coordinates scaled to [-1, 1].
  double lin[3], quad[6];
  for (double& v : lin) v = 0.15 * rng.normal();
  for (double& v : quad) v = 0.06 * rng.normal();

  out.image.resize(static_cast<std::size_t>(n));
  const double half = 0.5 * (S - 1);
  std::int64_t i = 0;
  for (int z = 0; z < S; ++z)
    for (int y = 0; y < S; ++y)
      for (int x = 0; x < S; ++x, ++i) {
        const double u[3] = {(x - half) / half, (y - half) / half, (z - half) / half};
        const double p = lin[0] * u[0] + lin[1] * u[1] + lin[2] * u[2] + quad[0] * u[0] * u[0] +
                         quad[1] * u[1] * u[1] + quad[2] * u[2] * u[2] + quad[3] * u[0] * u[1] +
                         quad[4] * u[0] * u[2] + quad[5] * u[1] * u[2];
        out.image[i] = static_cast<float>(mean[out.label[i]] * std::exp(p) + noise * rng.normal());
      }
  return out;
}

}  // namespace voxgrad::pipeline
