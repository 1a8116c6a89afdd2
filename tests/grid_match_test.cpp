// Grid matching (io/grid_match): each of the 48 flips and permutations of axes is found from the
// affines alone and undone voxel for voxel; differences that no reordering explains are named.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "io/grid_match.h"

namespace {

namespace io = voxgrad::io;
using voxgrad::Shape;

// The target: dims 4x3x2 (all different, so each permutation has its own dims), spacing 2, 1, 3 mm,
// origin (-10, 5, 7).
io::Grid target_grid() {
  io::Grid g;
  g.dims = {4, 3, 2};
  g.affine = io::identity_affine();
  g.affine[0][0] = 2;
  g.affine[1][1] = 1;
  g.affine[2][2] = 3;
  g.affine[0][3] = -10;
  g.affine[1][3] = 5;
  g.affine[2][3] = 7;
  return g;
}

Shape shape_of(const std::vector<std::int64_t>& dims) { return Shape(dims.rbegin(), dims.rend()); }

// The target's voxels stored under `m`: its grid, and its values (value = target flat index).
struct Stored {
  io::Grid grid;
  std::vector<std::int32_t> values;
};

Stored store(const io::Grid& target, const io::AxisMap& m, std::int64_t frames = 1) {
  Stored s;
  s.grid.dims = {0, 0, 0};
  for (int k = 0; k < 3; ++k) s.grid.dims[m.axis[k]] = target.dims[k];
  if (frames > 1) s.grid.dims.push_back(frames);
  io::Affine& a = s.grid.affine;
  a = io::identity_affine();
  for (int k = 0; k < 3; ++k)
    for (int r = 0; r < 3; ++r) a[r][m.axis[k]] = (m.flip[k] ? -1.0 : 1.0) * target.affine[r][k];
  // Target voxel 0 is the stored voxel at the far end of every flipped axis.
  for (int r = 0; r < 3; ++r) {
    double t = target.affine[r][3];
    for (int k = 0; k < 3; ++k)
      if (m.flip[k]) t -= a[r][m.axis[k]] * static_cast<double>(target.dims[k] - 1);
    a[r][3] = t;
  }
  const auto& td = target.dims;
  const std::int64_t volume = td[0] * td[1] * td[2];
  s.values.resize(static_cast<std::size_t>(volume * frames));
  const std::array<std::int64_t, 3> sd{s.grid.dims[0], s.grid.dims[1], s.grid.dims[2]};
  for (std::int64_t f = 0; f < frames; ++f)
    for (std::int64_t z = 0; z < td[2]; ++z)
      for (std::int64_t y = 0; y < td[1]; ++y)
        for (std::int64_t x = 0; x < td[0]; ++x) {
          const std::array<std::int64_t, 3> r{x, y, z};
          std::array<std::int64_t, 3> q{};
          for (int k = 0; k < 3; ++k) q[m.axis[k]] = m.flip[k] ? td[k] - 1 - r[k] : r[k];
          const std::int64_t stored_at = q[0] + sd[0] * (q[1] + sd[1] * q[2]) + f * volume;
          s.values[stored_at] = static_cast<std::int32_t>(x + td[0] * (y + td[1] * z) + f * volume);
        }
  return s;
}

std::vector<io::AxisMap> every_map() {
  std::vector<io::AxisMap> maps;
  std::array<int, 3> perm{0, 1, 2};
  do
    for (int mask = 0; mask < 8; ++mask) {
      io::AxisMap m;
      m.axis = perm;
      for (int k = 0; k < 3; ++k) m.flip[k] = (mask >> k) & 1;
      maps.push_back(m);
    }
  while (std::next_permutation(perm.begin(), perm.end()));
  return maps;
}

TEST(GridMatch, EveryFlipAndPermutationIsFoundAndUndone) {
  const io::Grid target = target_grid();
  const auto maps = every_map();
  ASSERT_EQ(maps.size(), 48u);
  for (const io::AxisMap& m : maps) {
    const Stored s = store(target, m);
    const auto found = io::match_grid(s.grid, target);
    ASSERT_TRUE(found.has_value()) << m.describe();
    EXPECT_EQ(found->axis, m.axis) << m.describe();
    EXPECT_EQ(found->flip, m.flip) << m.describe();
    EXPECT_EQ(found->identity(), m.describe() == "(x, y, z)");
    EXPECT_EQ(io::affine_excess(io::reoriented_affine(s.grid, *found), target.affine), 0.0) << m.describe();
    const voxgrad::Tensor t = voxgrad::from_vector(s.values, shape_of(s.grid.dims));
    const voxgrad::Tensor back = io::reorient(t, s.grid.dims, *found, shape_of(target.dims));
    const std::vector<std::int32_t> v = back.to_vector<std::int32_t>();
    for (std::size_t i = 0; i < v.size(); ++i) ASSERT_EQ(v[i], static_cast<std::int32_t>(i)) << m.describe();
  }
}

TEST(GridMatch, FramesPastTheThirdAxisFollowTheirVoxels) {
  io::Grid target = target_grid();
  target.dims.push_back(2);
  io::AxisMap m;
  m.axis = {2, 0, 1};
  m.flip = {true, false, true};
  const Stored s = store(target_grid(), m, 2);
  const auto found = io::match_grid(s.grid, target);
  ASSERT_TRUE(found.has_value());
  const voxgrad::Tensor back = io::reorient(voxgrad::from_vector(s.values, shape_of(s.grid.dims)), s.grid.dims,
                                            *found, shape_of(target.dims));
  const std::vector<std::int32_t> v = back.to_vector<std::int32_t>();
  for (std::size_t i = 0; i < v.size(); ++i) ASSERT_EQ(v[i], static_cast<std::int32_t>(i));
}

TEST(GridMatch, WithinTheToleranceIsTheIdentity) {
  io::Grid stored = target_grid();
  stored.affine[0][3] += 5e-4;  // a float32 header round trip
  stored.affine[1][1] *= 1 + 5e-5;
  const auto found = io::match_grid(stored, target_grid());
  ASSERT_TRUE(found.has_value());
  EXPECT_TRUE(found->identity());
}

TEST(GridMatch, OtherDifferencesAreNamed) {
  const io::Grid target = target_grid();

  io::Grid shifted = target;
  shifted.affine[0][3] += 5;
  EXPECT_FALSE(io::match_grid(shifted, target).has_value());
  EXPECT_EQ(io::grid_difference(shifted, target), "origin shifted by 5 mm (5, 0, 0)");

  // A flipped x axis whose origin was not moved along: the voxels lie 6 mm (3 steps of 2 mm) away.
  io::AxisMap flip_x;
  flip_x.flip = {true, false, false};
  io::Grid flipped = store(target, flip_x).grid;
  flipped.affine[0][3] -= 6;
  EXPECT_FALSE(io::match_grid(flipped, target).has_value());
  EXPECT_EQ(io::grid_difference(flipped, target), "origin shifted by 6 mm (-6, 0, 0)");

  io::Grid spacing = target;
  spacing.affine[1][1] = 1.5;
  EXPECT_FALSE(io::match_grid(spacing, target).has_value());
  EXPECT_EQ(io::grid_difference(spacing, target), "spacing 2x1.5x3 mm vs 2x1x3 mm");

  io::Grid dims = target;
  dims.dims = {5, 3, 2};
  EXPECT_FALSE(io::match_grid(dims, target).has_value());
  EXPECT_EQ(io::grid_difference(dims, target), "dims 5x3x2 vs 4x3x2");

  io::Grid frames = target;
  frames.dims.push_back(3);
  EXPECT_FALSE(io::match_grid(frames, target).has_value());
  EXPECT_EQ(io::grid_difference(frames, target), "dims 4x3x2x3 vs 4x3x2");
}

TEST(GridMatch, DirectionsThatNoReorderingExplainsAreNamed) {
  const io::Grid target = target_grid();
  // Same column lengths as the target's, but x tilted: a rotation, not a flip or permutation.
  io::Grid tilted = target;
  tilted.affine[0][0] = 2 * 0.8;
  tilted.affine[1][0] = 2 * 0.6;
  EXPECT_FALSE(io::match_grid(tilted, target).has_value());
  const std::string d = io::grid_difference(tilted, target);
  EXPECT_EQ(d.rfind("axis directions differ", 0), 0u) << d;
}

}  // namespace
