// Grid matching by trying the 48 flips and permutations of three voxel axes (the identity first),
// each judged by the affine it gives, with the same tolerance as a plain affine comparison; and the
// voxel reordering itself, one gather pass over the volume.
#include "io/grid_match.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "engine/error.h"

namespace voxgrad::io {

namespace {

constexpr const char* kAxisNames = "xyz";

// The three spatial dims (1 where the grid has fewer axes).
std::array<std::int64_t, 3> spatial_dims(const std::vector<std::int64_t>& dims) {
  std::array<std::int64_t, 3> d{1, 1, 1};
  for (std::size_t i = 0; i < 3 && i < dims.size(); ++i) d[i] = dims[i];
  return d;
}

// Dims past the third, trailing 1s dropped: (x, y, z) and (x, y, z, 1) hold the same voxels.
std::vector<std::int64_t> extra_dims(const std::vector<std::int64_t>& dims) {
  std::vector<std::int64_t> e(dims.begin() + std::min<std::size_t>(3, dims.size()), dims.end());
  while (!e.empty() && e.back() == 1) e.pop_back();
  return e;
}

std::string number_text(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", std::abs(v) < 5e-7 ? 0.0 : v);
  return buf;
}

bool agrees(double a, double b, AffineTolerance tol) { return std::abs(a - b) <= tol.atol + tol.rtol * std::abs(b); }

// Every flip and permutation of three axes, the identity first.
std::vector<AxisMap> all_axis_maps() {
  std::vector<AxisMap> maps;
  std::array<int, 3> perm{0, 1, 2};
  do {
    for (int mask = 0; mask < 8; ++mask) {
      AxisMap m;
      m.axis = perm;
      for (int k = 0; k < 3; ++k) m.flip[k] = (mask >> k) & 1;
      maps.push_back(m);
    }
  } while (std::next_permutation(perm.begin(), perm.end()));
  return maps;
}

bool dims_fit(const std::array<std::int64_t, 3>& stored, const std::array<std::int64_t, 3>& target, const AxisMap& m) {
  for (int k = 0; k < 3; ++k)
    if (stored[m.axis[k]] != target[k]) return false;
  return true;
}

// The largest entry difference beyond the tolerance over the 3x3 linear parts.
double linear_excess(const Affine& a, const Affine& b, AffineTolerance tol) {
  double worst = 0;
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c)
      if (!agrees(a[r][c], b[r][c], tol)) worst = std::max(worst, std::abs(a[r][c] - b[r][c]));
  return worst;
}

double column_norm(const Affine& a, int c) { return std::hypot(a[0][c], a[1][c], a[2][c]); }

template <class T>
void gather(const T* src, T* dst, std::int64_t outer, const std::array<std::int64_t, 3>& target_dims,
            const std::array<std::int64_t, 3>& step, std::int64_t first, std::int64_t stored_volume) {
  // first: the stored offset of target voxel (0, 0, 0); step[k]: the stored offset change per
  // target step along axis k (negative along a flipped axis).
  std::int64_t out = 0;
  for (std::int64_t o = 0; o < outer; ++o) {
    const T* block = src + o * stored_volume;
    for (std::int64_t z = 0; z < target_dims[2]; ++z)
      for (std::int64_t y = 0; y < target_dims[1]; ++y) {
        std::int64_t at = first + z * step[2] + y * step[1];
        for (std::int64_t x = 0; x < target_dims[0]; ++x, at += step[0]) dst[out++] = block[at];
      }
  }
}

}  // namespace

double affine_excess(const Affine& a, const Affine& b, AffineTolerance tol) {
  double worst = 0;
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 4; ++c)
      if (!agrees(a[r][c], b[r][c], tol)) worst = std::max(worst, std::abs(a[r][c] - b[r][c]));
  return worst;
}

bool AxisMap::identity() const {
  for (int k = 0; k < 3; ++k)
    if (axis[k] != k || flip[k]) return false;
  return true;
}

std::string AxisMap::describe() const {
  std::string s = "(";
  for (int k = 0; k < 3; ++k) {
    if (k > 0) s += ", ";
    if (flip[k]) s += '-';
    s += kAxisNames[axis[k]];
  }
  return s + ")";
}

Affine reoriented_affine(const Grid& stored, const AxisMap& map) {
  const std::array<std::int64_t, 3> d = spatial_dims(stored.dims);
  const Affine& a = stored.affine;
  Affine out = identity_affine();
  // Target voxel 0 is the stored voxel at the far end of every flipped axis.
  double corner[3] = {0, 0, 0};
  for (int k = 0; k < 3; ++k)
    if (map.flip[k]) corner[map.axis[k]] = static_cast<double>(d[map.axis[k]] - 1);
  for (int r = 0; r < 3; ++r) {
    for (int k = 0; k < 3; ++k) out[r][k] = (map.flip[k] ? -1.0 : 1.0) * a[r][map.axis[k]];
    out[r][3] = a[r][0] * corner[0] + a[r][1] * corner[1] + a[r][2] * corner[2] + a[r][3];
  }
  return out;
}

std::optional<AxisMap> match_grid(const Grid& stored, const Grid& target, AffineTolerance tol) {
  if (extra_dims(stored.dims) != extra_dims(target.dims)) return std::nullopt;
  const auto sd = spatial_dims(stored.dims), td = spatial_dims(target.dims);
  for (const AxisMap& m : all_axis_maps())
    if (dims_fit(sd, td, m) && affine_excess(reoriented_affine(stored, m), target.affine, tol) == 0) return m;
  return std::nullopt;
}

std::string grid_difference(const Grid& stored, const Grid& target, AffineTolerance tol) {
  const auto sd = spatial_dims(stored.dims), td = spatial_dims(target.dims);
  auto sorted = [](std::array<std::int64_t, 3> d) {
    std::sort(d.begin(), d.end());
    return d;
  };
  if (extra_dims(stored.dims) != extra_dims(target.dims) || sorted(sd) != sorted(td))
    return "dims " + dims_text(stored.dims) + " vs " + dims_text(target.dims);

  // Among the reorderings the dims allow: one with the same axes but another origin, else one
  // with the same spacing but other directions, else the spacing differs.
  double best_shift = std::numeric_limits<double>::infinity();
  std::array<double, 3> shift{};
  double best_direction = std::numeric_limits<double>::infinity();
  for (const AxisMap& m : all_axis_maps()) {
    if (!dims_fit(sd, td, m)) continue;
    const Affine a = reoriented_affine(stored, m);
    const double linear = linear_excess(a, target.affine, tol);
    if (linear == 0) {
      const std::array<double, 3> s{a[0][3] - target.affine[0][3], a[1][3] - target.affine[1][3],
                                    a[2][3] - target.affine[2][3]};
      const double n = std::hypot(s[0], s[1], s[2]);
      if (n < best_shift) best_shift = n, shift = s;
      continue;
    }
    bool same_spacing = true;
    for (int k = 0; k < 3; ++k)
      same_spacing = same_spacing && agrees(column_norm(a, k), column_norm(target.affine, k), tol);
    if (same_spacing) best_direction = std::min(best_direction, linear);
  }
  if (std::isfinite(best_shift))
    return "origin shifted by " + number_text(best_shift) + " mm (" + number_text(shift[0]) + ", " +
           number_text(shift[1]) + ", " + number_text(shift[2]) + ")";
  if (std::isfinite(best_direction))
    return "axis directions differ by up to " + number_text(best_direction) +
           " mm per voxel (not a flip or a permutation of axes)";
  auto spacing_text = [](const Affine& a) {
    return number_text(column_norm(a, 0)) + "x" + number_text(column_norm(a, 1)) + "x" + number_text(column_norm(a, 2));
  };
  return "spacing " + spacing_text(stored.affine) + " mm vs " + spacing_text(target.affine) + " mm";
}

Tensor reorient(const Tensor& stored, const std::vector<std::int64_t>& stored_dims, const AxisMap& map,
                const Shape& target_shape) {
  const auto sd = spatial_dims(stored_dims);
  std::array<std::int64_t, 3> td{};
  for (int k = 0; k < 3; ++k) td[k] = sd[map.axis[k]];
  const std::int64_t volume = sd[0] * sd[1] * sd[2];
  VG_CHECK(volume > 0 && stored.numel() % volume == 0, "reorient: " << stored.numel() << " voxels for dims "
                                                                      << dims_text(stored_dims));
  std::int64_t target_numel = 1;
  for (const std::int64_t n : target_shape) target_numel *= n;
  VG_CHECK(target_numel == stored.numel(), "reorient: target shape holds " << target_numel << " voxels, not "
                                                                             << stored.numel());
  const std::array<std::int64_t, 3> stride{1, sd[0], sd[0] * sd[1]};
  std::array<std::int64_t, 3> step{};
  std::int64_t first = 0;
  for (int k = 0; k < 3; ++k) {
    const std::int64_t s = stride[map.axis[k]];
    step[k] = map.flip[k] ? -s : s;
    if (map.flip[k]) first += (td[k] - 1) * s;
  }
  const Tensor src = stored.cpu();
  Tensor out = empty(target_shape, src.dtype());
  const std::int64_t outer = stored.numel() / volume;
  switch (dtype_size(src.dtype())) {
    case 1:
      gather(static_cast<const std::uint8_t*>(src.raw_data()), static_cast<std::uint8_t*>(out.raw_data()), outer, td,
             step, first, volume);
      break;
    case 4:
      gather(static_cast<const std::uint32_t*>(src.raw_data()), static_cast<std::uint32_t*>(out.raw_data()), outer,
             td, step, first, volume);
      break;
    case 8:
      gather(static_cast<const std::uint64_t*>(src.raw_data()), static_cast<std::uint64_t*>(out.raw_data()), outer,
             td, step, first, volume);
      break;
    default:
      VG_FAIL("reorient: unsupported dtype " << dtype_name(src.dtype()));
  }
  return out;
}

std::string dims_text(const std::vector<std::int64_t>& d) {
  std::string s;
  for (std::size_t i = 0; i < d.size(); ++i) {
    if (i > 0) s += 'x';
    s += std::to_string(d[i]);
  }
  return s;
}

}  // namespace voxgrad::io
