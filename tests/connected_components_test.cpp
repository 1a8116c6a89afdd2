// Component labelling on hand-made volumes (voxels touching by a face, an edge or only a corner under
// 6-, 18- and 26-connectivity; arms that meet late in the raster scan; values that touch but differ)
// and on random volumes against a flood fill, plus what a prediction makes of each component; and
// the calibration bins of eval --probabilities on hand-computed values.
#include "apps/pipeline/connected_components.h"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "apps/pipeline/eval_calibration.h"

namespace {

using voxgrad::pipeline::calibrate;
using voxgrad::pipeline::ClassCalibration;
using voxgrad::pipeline::Connectivity;
using voxgrad::pipeline::label_components;
using voxgrad::pipeline::reference_components;

using Shape3 = std::array<std::int64_t, 3>;  // (Z, Y, X)

std::int64_t at(const Shape3& s, std::int64_t z, std::int64_t y, std::int64_t x) { return (z * s[1] + y) * s[2] + x; }

// Two voxels of value 1 in a 3x3x3 volume, at (0, 0, 0) and (z, y, x).
std::vector<std::int32_t> pair_at(std::int64_t z, std::int64_t y, std::int64_t x) {
  const Shape3 s{3, 3, 3};
  std::vector<std::int32_t> v(27, 0);
  v[at(s, 0, 0, 0)] = 1;
  v[at(s, z, y, x)] = 1;
  return v;
}

std::int32_t count(const std::vector<std::int32_t>& v, Connectivity c) {
  return label_components(v.data(), {3, 3, 3}, c).count();
}

TEST(ConnectedComponents, VoxelsTouchingOnlyAtACornerJoinUnder26Only) {
  const std::vector<std::int32_t> corner = pair_at(1, 1, 1);
  EXPECT_EQ(count(corner, Connectivity::kFacesEdgesCorners), 1);
  EXPECT_EQ(count(corner, Connectivity::kFacesEdges), 2);
  EXPECT_EQ(count(corner, Connectivity::kFaces), 2);
}

TEST(ConnectedComponents, VoxelsTouchingAtAnEdgeJoinUnder18And26) {
  for (const auto& [z, y, x] : std::vector<Shape3>{{0, 1, 1}, {1, 0, 1}, {1, 1, 0}}) {
    const std::vector<std::int32_t> edge = pair_at(z, y, x);
    EXPECT_EQ(count(edge, Connectivity::kFacesEdgesCorners), 1) << z << y << x;
    EXPECT_EQ(count(edge, Connectivity::kFacesEdges), 1) << z << y << x;
    EXPECT_EQ(count(edge, Connectivity::kFaces), 2) << z << y << x;
  }
}

TEST(ConnectedComponents, VoxelsSharingAFaceJoinUnderEveryConnectivity) {
  for (const auto& [z, y, x] : std::vector<Shape3>{{0, 0, 1}, {0, 1, 0}, {1, 0, 0}})
    for (Connectivity c : {Connectivity::kFaces, Connectivity::kFacesEdges, Connectivity::kFacesEdgesCorners})
      EXPECT_EQ(count(pair_at(z, y, x), c), 1) << z << y << x;
}

TEST(ConnectedComponents, VoxelsTwoApartNeverJoin) {
  EXPECT_EQ(count(pair_at(2, 2, 2), Connectivity::kFacesEdgesCorners), 2);
  EXPECT_EQ(count(pair_at(0, 0, 2), Connectivity::kFacesEdgesCorners), 2);
}

TEST(ConnectedComponents, TouchingVoxelsOfOtherValuesStayApart) {
  const Shape3 s{1, 1, 4};
  const std::vector<std::int32_t> v{1, 2, 2, 1};
  const auto labels = label_components(v.data(), s, Connectivity::kFacesEdgesCorners);
  ASSERT_EQ(labels.count(), 3);
  EXPECT_EQ(labels.id, (std::vector<std::int32_t>{1, 2, 2, 3}));
  EXPECT_EQ(labels.value, (std::vector<std::int32_t>{1, 2, 1}));
}

TEST(ConnectedComponents, ArmsThatMeetLateAreOneComponentNumberedByTheirFirstVoxel) {
  // One slice, x across: a lone voxel, then two arms that start apart and meet in the last row
  // only, so the first pass gives them two ids and must merge them.
  //   0 0 0 0 0 2
  //   1 0 0 1 0 0
  //   1 0 0 1 0 0
  //   1 1 1 1 0 0
  const Shape3 s{1, 4, 6};
  const std::vector<std::int32_t> v{0, 0, 0, 0, 0, 2,  //
                                    1, 0, 0, 1, 0, 0,  //
                                    1, 0, 0, 1, 0, 0,  //
                                    1, 1, 1, 1, 0, 0};
  for (Connectivity c : {Connectivity::kFaces, Connectivity::kFacesEdgesCorners}) {
    const auto labels = label_components(v.data(), s, c);
    ASSERT_EQ(labels.count(), 2);
    EXPECT_EQ(labels.value, (std::vector<std::int32_t>{2, 1}));
    for (std::size_t i = 0; i < v.size(); ++i) EXPECT_EQ(labels.id[i], v[i] == 0 ? 0 : v[i] == 2 ? 1 : 2) << i;
  }
}

TEST(ConnectedComponents, ZeroAndNegativeLabelsAreBackground) {
  const std::vector<std::int32_t> v{0, -1, 3, -1, 0};
  const auto labels = label_components(v.data(), {1, 1, 5}, Connectivity::kFacesEdgesCorners);
  EXPECT_EQ(labels.count(), 1);
  EXPECT_EQ(labels.id, (std::vector<std::int32_t>{0, 0, 1, 0, 0}));
}

// The ids a flood fill from each unlabelled voxel in raster order gives: the order label_components
// promises, found the slow and obvious way.
std::vector<std::int32_t> flood_fill_ids(const std::vector<std::int32_t>& v, const Shape3& s, int connectivity) {
  const int max_nonzero = connectivity == 6 ? 1 : connectivity == 18 ? 2 : 3;
  std::vector<std::int32_t> id(v.size(), 0);
  std::int32_t next = 0;
  std::vector<std::int64_t> stack;
  for (std::int64_t start = 0; start < static_cast<std::int64_t>(v.size()); ++start) {
    if (v[start] <= 0 || id[start] != 0) continue;
    id[start] = ++next;
    stack.assign(1, start);
    while (!stack.empty()) {
      const std::int64_t i = stack.back();
      stack.pop_back();
      const std::int64_t z = i / (s[1] * s[2]), y = i / s[2] % s[1], x = i % s[2];
      for (int dz = -1; dz <= 1; ++dz)
        for (int dy = -1; dy <= 1; ++dy)
          for (int dx = -1; dx <= 1; ++dx) {
            const int nonzero = (dz != 0) + (dy != 0) + (dx != 0);
            if (nonzero == 0 || nonzero > max_nonzero) continue;
            const std::int64_t zz = z + dz, yy = y + dy, xx = x + dx;
            if (zz < 0 || zz >= s[0] || yy < 0 || yy >= s[1] || xx < 0 || xx >= s[2]) continue;
            const std::int64_t j = at(s, zz, yy, xx);
            if (v[j] != v[i] || id[j] != 0) continue;
            id[j] = next;
            stack.push_back(j);
          }
    }
  }
  return id;
}

TEST(ConnectedComponents, RandomVolumesMatchAFloodFill) {
  std::mt19937 rng(7);
  const Shape3 s{7, 9, 11};
  for (int trial = 0; trial < 20; ++trial) {
    // Sparse to dense, one or two values: every kind of touching turns up.
    const double fill = 0.1 + 0.04 * trial;
    std::bernoulli_distribution on(fill);
    std::uniform_int_distribution<int> value(1, trial % 2 == 0 ? 1 : 2);
    std::vector<std::int32_t> v(static_cast<std::size_t>(s[0] * s[1] * s[2]));
    for (std::int32_t& x : v) x = on(rng) ? value(rng) : 0;
    for (const auto& [c, n] : std::vector<std::pair<Connectivity, int>>{
             {Connectivity::kFaces, 6}, {Connectivity::kFacesEdges, 18}, {Connectivity::kFacesEdgesCorners, 26}}) {
      const auto labels = label_components(v.data(), s, c);
      const std::vector<std::int32_t> expected = flood_fill_ids(v, s, n);
      ASSERT_EQ(labels.id, expected) << "trial " << trial << ", connectivity " << n;
      for (std::size_t i = 0; i < v.size(); ++i)
        if (labels.id[i] > 0) {
          ASSERT_EQ(labels.value[labels.id[i] - 1], v[i]) << i;
        }
    }
  }
}

TEST(ConnectedComponents, ReferenceComponentsCountTheirVoxelsAndTheOverlap) {
  // x across, one row: class 1 twice, class 2 once; the prediction finds one voxel of the first
  // class-1 component, calls the second class 2, and gets the class-2 component whole.
  const std::vector<std::int32_t> ref{1, 1, 1, 0, 2, 2, 0, 1, 1};
  const std::vector<std::int32_t> pred{0, 1, 0, 0, 2, 2, 1, 2, 2};
  const auto comps = reference_components(ref.data(), pred.data(), {1, 1, 9}, Connectivity::kFacesEdgesCorners);
  ASSERT_EQ(comps.size(), 3u);
  EXPECT_EQ(comps[0].value, 1);
  EXPECT_EQ(comps[0].voxels, 3);
  EXPECT_EQ(comps[0].overlap, 1);
  EXPECT_TRUE(comps[0].detected());  // one voxel is enough
  EXPECT_EQ(comps[0].first_voxel, 0);
  EXPECT_EQ(comps[1].value, 2);
  EXPECT_EQ(comps[1].voxels, 2);
  EXPECT_EQ(comps[1].overlap, 2);
  EXPECT_EQ(comps[1].first_voxel, 4);
  EXPECT_EQ(comps[2].value, 1);
  EXPECT_EQ(comps[2].voxels, 2);
  EXPECT_EQ(comps[2].overlap, 0);  // predicted, but as another class: missed
  EXPECT_FALSE(comps[2].detected());
  EXPECT_EQ(comps[2].first_voxel, 7);
}

TEST(ConnectedComponents, StackedVolumesAreLabelledApart) {
  // Two (1, 1, 2) volumes one after the other: the voxel at the end of the first and the one at the
  // start of the second are neighbours in memory, never in space.
  const std::vector<std::int32_t> ref{0, 1, 1, 0};
  const std::vector<std::int32_t> pred{0, 0, 1, 0};
  const auto comps =
      reference_components(ref.data(), pred.data(), {1, 1, 2}, Connectivity::kFacesEdgesCorners, /*volumes=*/2);
  ASSERT_EQ(comps.size(), 2u);
  EXPECT_EQ(comps[0].first_voxel, 1);
  EXPECT_FALSE(comps[0].detected());
  EXPECT_EQ(comps[1].first_voxel, 2);
  EXPECT_TRUE(comps[1].detected());
}

// ---- calibration ---------------------------------------------------------------------------------

TEST(EvalCalibration, EceAndSoftVolumeMatchHandComputedValues) {
  // Two classes, four voxels; the reference says 1, 1, 0, 0.
  // Class 1's probabilities 0.9, 0.5, 0.5, 0.0: bins 13 {0.9: positive}, 7 {0.5: positive, 0.5: not},
  // 0 {0.0: not}. ECE = (|1 - 0.9| + |1 - 1.0| + |0 - 0|) / 4 = 0.025; soft volume 1.9.
  const std::vector<std::int32_t> ref{1, 1, 0, 0};
  const std::vector<float> p{0.1f, 0.5f, 0.5f, 1.0f,   // class 0
                             0.9f, 0.5f, 0.5f, 0.0f};  // class 1
  std::int64_t clamped = -1;
  const auto cal = calibrate(p.data(), ref.data(), 4, 2, &clamped);
  ASSERT_EQ(cal.size(), 2u);
  EXPECT_EQ(clamped, 0);
  const ClassCalibration& c1 = cal[1];
  EXPECT_EQ(c1.voxels[13], 1);
  EXPECT_EQ(c1.voxels[7], 2);
  EXPECT_EQ(c1.voxels[0], 1);
  EXPECT_EQ(c1.positives[7], 1);
  EXPECT_NEAR(c1.expected_calibration_error(), 0.1f / 4, 1e-7);
  EXPECT_NEAR(c1.soft_volume, 1.9, 1e-6);
  // Class 0: 0.1 (not), 0.5 + 0.5 (one of two), 1.0 in the last bin (positive).
  // ECE = (|0 - 0.1| + |1 - 1| + |1 - 1|) / 4.
  const ClassCalibration& c0 = cal[0];
  EXPECT_EQ(c0.voxels[ClassCalibration::kBins - 1], 1);  // 1.0 belongs to the last bin
  EXPECT_NEAR(c0.expected_calibration_error(), 0.1f / 4, 1e-7);
  EXPECT_NEAR(c0.soft_volume, 2.1, 1e-6);
}

TEST(EvalCalibration, PerfectlyConfidentAndRightIsZero) {
  const std::vector<std::int32_t> ref{0, 1, 1, 2};
  std::vector<float> p(12, 0.0f);
  for (int i = 0; i < 4; ++i) p[ref[i] * 4 + i] = 1.0f;
  for (const ClassCalibration& c : calibrate(p.data(), ref.data(), 4, 3)) {
    EXPECT_EQ(c.expected_calibration_error(), 0.0);
    EXPECT_EQ(c.total_voxels(), 4);
  }
}

TEST(EvalCalibration, ValuesOutsideTheUnitIntervalCountAsTheNearestEnd) {
  const std::vector<std::int32_t> ref{1, 0};
  const std::vector<float> p{-0.25f, 1.5f, 1.25f, -0.5f};
  std::int64_t clamped = 0;
  const auto cal = calibrate(p.data(), ref.data(), 2, 2, &clamped);
  EXPECT_EQ(clamped, 4);
  EXPECT_EQ(cal[1].voxels[ClassCalibration::kBins - 1], 1);
  EXPECT_EQ(cal[1].voxels[0], 1);
  EXPECT_EQ(cal[1].soft_volume, 1.0);
  EXPECT_EQ(cal[1].expected_calibration_error(), 0.0);
}

TEST(EvalCalibration, PoolingAddsBins) {
  ClassCalibration a, b;
  a.voxels[3] = 2;
  a.positives[3] = 1;
  a.probability_sum[3] = 0.5;
  a.soft_volume = 0.5;
  b.voxels[3] = 2;
  b.probability_sum[3] = 0.5;
  b.soft_volume = 0.5;
  a.add(b);
  EXPECT_EQ(a.total_voxels(), 4);
  EXPECT_EQ(a.soft_volume, 1.0);
  EXPECT_NEAR(a.expected_calibration_error(), 0.0, 1e-15);  // |1 - 1.0| / 4
  EXPECT_TRUE(std::isnan(ClassCalibration{}.expected_calibration_error()));
}

}  // namespace
