// tools/real-data at a small scale: ITK's example T1 and its k-means segmentation become a two-case
// dataset (tools/itk_t1_dataset.py), one epoch of training on the first half, prediction and
// scoring of the second; the script's one stdout line and the dataset it made are checked.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "engine/json.h"
#include "io/dataset.h"
#include "io/nifti.h"
#include "tests/test_support.h"

namespace {

namespace fs = std::filesystem;
using voxgrad::test::read_file;
using voxgrad::test::voxgrad_binary;
namespace io = voxgrad::io;

const std::string kItkData = "/usr/share/doc/insighttoolkit5-examples/examples/Data/";

TEST(RealData, ItkT1TrainsPredictsAndScoresAtSmallScale) {
  if (!fs::exists(kItkData + "KmeansTest_T1UCharRaw.nii.gz") || !fs::exists("/usr/bin/python3"))
    GTEST_SKIP() << "needs Debian's insighttoolkit5-examples and python3 (tools/deps --test-data installs them)";
  const std::string dir = voxgrad::test::temp_dir("real-data");
  const std::string work = dir + "/work";
  const std::string cmd =
      "VOXGRAD_BINARY='" + voxgrad_binary() + "' '" + voxgrad::test::source_path("tools/real-data") + "' --work " +
      work + " --epochs 1 --iters-per-epoch 2 --patch 16,32,32 --device cpu >" + dir + "/out 2>" + dir + "/err";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << read_file(dir + "/err");

  const std::string out = read_file(dir + "/out");
  const std::regex line(R"(real-data: foreground mean Dice (\d\.\d{3}|n/a) on case t1_001 \(6 classes\) in \d+ s\n)");
  EXPECT_TRUE(std::regex_match(out, line)) << out;

  // The dataset: one training and one test case, each half of the 128 x 128 x 62 volume along z,
  // the test half's origin moved by 31 slices of 3 mm, labels 0..6 with 0 the largest.
  const io::Dataset ds = io::read_dataset(work + "/dataset");
  ASSERT_EQ(ds.training.size(), 1u);
  EXPECT_EQ(ds.training[0].id, "t1_000");
  EXPECT_EQ(ds.num_classes(), 7);
  const io::Volume whole = io::read_nifti(kItkData + "KmeansTest_T1UCharRaw.nii.gz");
  const io::Volume train = io::read_nifti(work + "/dataset/imagesTr/t1_000_0000.nii.gz");
  const io::Volume test = io::read_nifti(work + "/dataset/imagesTs/t1_001_0000.nii.gz");
  EXPECT_EQ(train.dims(), (std::vector<std::int64_t>{128, 128, 31}));
  EXPECT_EQ(test.dims(), (std::vector<std::int64_t>{128, 128, 31}));
  EXPECT_EQ(train.affine, whole.affine);
  for (int r = 0; r < 3; ++r) EXPECT_NEAR(test.affine[r][3], whole.affine[r][3] + 31 * whole.affine[r][2], 1e-4) << r;
  // The voxels of the test half are the original's upper slices.
  const std::vector<float> a = whole.to_float32().to_vector<float>();
  const std::vector<float> b = test.to_float32().to_vector<float>();
  const std::size_t slice = 128 * 128;
  ASSERT_EQ(b.size(), 31 * slice);
  EXPECT_TRUE(std::equal(b.begin(), b.end(), a.begin() + 31 * slice));

  const io::Volume label = io::read_nifti(work + "/dataset/labelsTr/t1_000.nii.gz");
  std::vector<std::int64_t> counts(7, 0);
  for (std::int32_t v : label.to_labels().to_vector<std::int32_t>()) ++counts.at(v);
  for (int k = 1; k < 7; ++k) EXPECT_GT(counts[0], counts[k]) << k;

  // The prediction is on the test case's grid and was scored.
  const io::Volume pred = io::read_nifti(work + "/pred/t1_001.nii.gz");
  EXPECT_EQ(pred.dims(), test.dims());
  EXPECT_EQ(pred.affine, test.affine);
  const nlohmann::json summary = nlohmann::json::parse(read_file(work + "/summary.json"));
  EXPECT_TRUE(summary.contains("foreground_mean"));
}

}  // namespace
