// nnU-Net's image readers as voxgrad reproduces them: NibabelIOWithReorient's closest-RAS
// reorientation (the arrays, orientations and spacings below are what nibabel 5.0's io_orientation
// and as_reoriented give for a 2 x 3 x 4 volume holding 0..23), its inverse, and SimpleITKIO's
// order and 2-D slice spacing.
#include "apps/pipeline/nnunet_image_io.h"

#include <gtest/gtest.h>

#include "engine/ops.h"
#include "engine/tensor.h"
#include "tests/test_support.h"

namespace {

using namespace voxgrad;
using namespace voxgrad::pipeline::nnunet;

// A (Z, Y, X) = (4, 3, 2) volume whose voxel (x, y, z) holds x * 12 + y * 4 + z (nibabel's
// np.arange(24).reshape(2, 3, 4) as (x, y, z)), spacing from the affine's column norms.
io::Volume volume(const io::Affine& affine) {
  Tensor data = empty({4, 3, 2});
  float* d = data.data<float>();
  for (int z = 0; z < 4; ++z)
    for (int y = 0; y < 3; ++y)
      for (int x = 0; x < 2; ++x) d[(z * 3 + y) * 2 + x] = static_cast<float>(x * 12 + y * 4 + z);
  return io::make_volume(data, affine);
}

std::vector<int> values_of(const Tensor& t) {
  std::vector<int> out;
  for (std::int64_t i = 0; i < t.numel(); ++i) out.push_back(static_cast<int>(t.data<float>()[i]));
  return out;
}

struct Expected {
  const char* name;
  io::Affine affine;
  std::array<int, 3> world_axis, direction;
  std::array<double, 3> spacing_zyx;
  std::vector<std::int64_t> shape_zyx;
  std::vector<int> data;
};

const std::vector<Expected>& cases() {
  static const std::vector<Expected> all = {
      {"LAS",
       {{{-2, 0, 0, 0}, {0, 1.5, 0, 0}, {0, 0, 3, 0}, {0, 0, 0, 1}}},
       {0, 1, 2},
       {-1, 1, 1},
       {3.0, 1.5, 2.0},
       {4, 3, 2},
       {12, 0, 16, 4, 20, 8, 13, 1, 17, 5, 21, 9, 14, 2, 18, 6, 22, 10, 15, 3, 19, 7, 23, 11}},
      {"permuted",
       {{{0, 0, 3, 10}, {-1.5, 0, 0, 20}, {0, 2, 0, 30}, {0, 0, 0, 1}}},
       {1, 2, 0},
       {-1, 1, 1},
       {2.0, 1.5, 3.0},
       {3, 2, 4},
       {12, 13, 14, 15, 0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23, 8, 9, 10, 11}},
      {"oblique",
       {{{1.9, 0.3, 0.1, 0}, {-0.35, -1.45, 0.05, 0}, {0.02, 0.2, -2.95, 0}, {0, 0, 0, 1}}},
       {0, 1, 2},
       {1, -1, -1},
       {2.952118, 1.494155, 1.932071},
       {4, 3, 2},
       {11, 23, 7, 19, 3, 15, 10, 22, 6, 18, 2, 14, 9, 21, 5, 17, 1, 13, 8, 20, 4, 16, 0, 12}},
  };
  return all;
}

TEST(NnunetImageIo, ReorientationIsNibabels) {
  for (const Expected& e : cases()) {
    const AxisOrientation o = closest_canonical_orientation(e.affine);
    EXPECT_EQ(o.world_axis, e.world_axis) << e.name;
    EXPECT_EQ(o.direction, e.direction) << e.name;
    const ReaderCase c = read_case({volume(e.affine)}, {e.name}, "NibabelIOWithReorient");
    EXPECT_EQ(c.data.shape(), (Shape{1, e.shape_zyx[0], e.shape_zyx[1], e.shape_zyx[2]})) << e.name;
    EXPECT_EQ(values_of(c.data), e.data) << e.name;
    for (int a = 0; a < 3; ++a) EXPECT_NEAR(c.spacing[a], e.spacing_zyx[a], 1e-6) << e.name << " axis " << a;
    // And back: the results land on the file's own grid.
    EXPECT_EQ(values_of(to_stored_grid(c.data, c)), values_of(reshape(volume(e.affine).data, {1, 4, 3, 2}))) << e.name;
  }
}

TEST(NnunetImageIo, OtherReadersKeepTheStoredGrid) {
  const Expected& permuted = cases()[1];
  for (const char* reader : {"SimpleITKIO", "NibabelIO"}) {
    const ReaderCase c = read_case({volume(permuted.affine)}, {"v"}, reader);
    EXPECT_TRUE(c.orientation.is_identity()) << reader;
    EXPECT_EQ(c.data.shape(), (Shape{1, 4, 3, 2})) << reader;
    EXPECT_EQ(values_of(to_stored_grid(c.data, c)), values_of(reshape(volume(permuted.affine).data, {1, 4, 3, 2})));
    // pixdim reversed: (z, y, x) = (3, 2, 1.5) from the column norms make_volume derives.
    EXPECT_NEAR(c.spacing[0], 3.0, 1e-12) << reader;
    EXPECT_NEAR(c.spacing[1], 2.0, 1e-12) << reader;
    EXPECT_NEAR(c.spacing[2], 1.5, 1e-12) << reader;
  }
}

TEST(NnunetImageIo, TwoDimensionalImagesGetSimpleItksSliceSpacing) {
  Tensor data = empty({3, 2});
  for (int i = 0; i < 6; ++i) data.data<float>()[i] = static_cast<float>(i);
  io::Volume v = io::make_volume(data);
  v.spacing = {0.7, 0.9};
  const ReaderCase c = read_case({v}, {"slice"}, "SimpleITKIO");
  EXPECT_EQ(c.data.shape(), (Shape{1, 1, 3, 2}));
  EXPECT_NEAR(c.spacing[0], 999 * 0.9, 1e-9);  // 999 times the largest pixel spacing
  EXPECT_NEAR(c.spacing[1], 0.9, 1e-12);
  EXPECT_NEAR(c.spacing[2], 0.7, 1e-12);
  EXPECT_NE(test::error_of([&] { read_case({v}, {"slice.nii"}, "NibabelIO"); }).find("3-D images only"),
            std::string::npos);
}

TEST(NnunetImageIo, ChannelsMustShareTheirGrid) {
  const io::Volume a = volume(cases()[0].affine);
  io::Volume b = volume(cases()[0].affine);
  b.spacing[0] = 5;
  EXPECT_NE(test::error_of([&] {
              read_case({a, b}, {"a.nii", "b.nii"}, "SimpleITKIO");
            }).find("b.nii"),
            std::string::npos);
}

}  // namespace
