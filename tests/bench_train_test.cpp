// `voxgrad bench train` at a tiny size: one JSON object with exactly the issue's keys and a
// positive parameter count, D,H,W patches, and a bad flag is a usage error (exit 2).
#include <set>
#include <string>

#include "engine/json.h"
#include "tests/test_support.h"

namespace {

using nlohmann::json;
using voxgrad::test::run_voxgrad;

TEST(BenchTrain, JsonHasTheIssueKeys) {
  const auto r = run_voxgrad("bench train --patch 16 --base 4 --levels 2 --steps 1 --warmup 0 --json --device cpu");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(r.out);  // throws unless stdout is one JSON value
  ASSERT_TRUE(j.is_object()) << r.out;
  std::set<std::string> keys;
  for (const auto& [k, v] : j.items()) keys.insert(k);
  EXPECT_EQ(keys, (std::set<std::string>{"device", "params", "step_median_s", "step_min_s", "voxels_per_s",
                                         "peak_bytes", "peak_rss_bytes"}));
  EXPECT_EQ(j["device"], "cpu");
  EXPECT_GT(j["params"].get<long long>(), 0);
  EXPECT_GT(j["step_median_s"].get<double>(), 0.0);
  EXPECT_GT(j["peak_bytes"].get<long long>(), 0);
  // The whole process's high-water mark holds at least the allocator's.
  EXPECT_GE(j["peak_rss_bytes"].get<long long>(), j["peak_bytes"].get<long long>());
}

// D,H,W patches: the voxel rate counts D*H*W voxels per image.
TEST(BenchTrain, PatchTakesThreeSides) {
  const auto cube = run_voxgrad("bench train --patch 16 --base 4 --levels 2 --steps 1 --warmup 0 --json --device cpu");
  const auto box =
      run_voxgrad("bench train --patch 8,16,32 --base 4 --levels 2 --steps 1 --warmup 0 --json --device cpu");
  ASSERT_EQ(box.exit_code, 0) << box.err;
  ASSERT_EQ(cube.exit_code, 0) << cube.err;
  const json b = json::parse(box.out), c = json::parse(cube.out);
  EXPECT_NEAR(b["voxels_per_s"].get<double>() * b["step_median_s"].get<double>(), 2.0 * 8 * 16 * 32, 1e-6);
  EXPECT_NEAR(c["voxels_per_s"].get<double>() * c["step_median_s"].get<double>(), 2.0 * 16 * 16 * 16, 1e-6);
  const auto odd = run_voxgrad("bench train --patch 16,32,30 --base 4 --levels 3 --steps 1 --warmup 0 --device cpu");
  EXPECT_EQ(odd.exit_code, 2) << odd.err;
  EXPECT_NE(odd.err.find("30 is not divisible by 4"), std::string::npos) << odd.err;
  EXPECT_EQ(run_voxgrad("bench train --patch 16,32 --device cpu").exit_code, 2);
}

// nnU-Net's anisotropic first downsampling (1, 2, 2): the depth axis is halved once fewer, so a
// depth only divisible by 2 trains at 3 levels, which strides of 2 everywhere refuse.
TEST(BenchTrain, FirstStrideShapesTheDivisibility) {
  const auto aniso = run_voxgrad(
      "bench train --patch 6,16,16 --first-stride 1,2,2 --base 4 --levels 3 --steps 1 --warmup 0 --json --device cpu");
  ASSERT_EQ(aniso.exit_code, 0) << aniso.err;
  EXPECT_NEAR(
      json::parse(aniso.out)["voxels_per_s"].get<double>() * json::parse(aniso.out)["step_median_s"].get<double>(),
      2.0 * 6 * 16 * 16, 1e-6);
  const auto iso = run_voxgrad("bench train --patch 6,16,16 --base 4 --levels 3 --steps 1 --warmup 0 --device cpu");
  EXPECT_EQ(iso.exit_code, 2) << iso.err;
  EXPECT_NE(iso.err.find("6 is not divisible by 4"), std::string::npos) << iso.err;
  const auto bad = run_voxgrad("bench train --first-stride 3,2,2 --device cpu");
  EXPECT_EQ(bad.exit_code, 2) << bad.err;
  EXPECT_NE(bad.err.find("each stride must be 1 or 2"), std::string::npos) << bad.err;
}

TEST(BenchTrain, BadFlagIsAUsageError) {
  EXPECT_EQ(run_voxgrad("bench train --no-such-flag --device cpu").exit_code, 2);
  // The U-Net (nnU-Net's PlainConvUNet) downsamples at least once.
  const auto one_level = run_voxgrad("bench train --patch 16 --base 4 --levels 1 --steps 1 --warmup 0 --device cpu");
  EXPECT_EQ(one_level.exit_code, 2) << one_level.err;
  EXPECT_NE(one_level.err.find("--levels"), std::string::npos) << one_level.err;
}

}  // namespace
