// `voxgrad bench predict` at a tiny size: one JSON object with its keys, the window count of
// nnU-Net's window starts, D,H,W volumes, and bad flags as usage errors (exit 2).
#include <set>
#include <string>

#include "engine/json.h"
#include "tests/test_support.h"

namespace {

using nlohmann::json;
using voxgrad::test::run_voxgrad;

TEST(BenchPredict, JsonHasItsKeysAndTheWindows) {
  // 24 voxels in windows of 16 overlapping by half: starts 0 and 8 on each axis, 8 windows.
  const auto r =
      run_voxgrad("bench predict --size 24 --patch 16 --base 4 --levels 2 --reps 1 --warmup 0 --json --device cpu");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(r.out);  // throws unless stdout is one JSON value
  ASSERT_TRUE(j.is_object()) << r.out;
  std::set<std::string> keys;
  for (const auto& [k, v] : j.items()) keys.insert(k);
  EXPECT_EQ(keys, (std::set<std::string>{"device", "params", "windows", "predict_median_s", "predict_min_s",
                                         "voxels_per_s", "peak_bytes", "peak_rss_bytes"}));
  EXPECT_EQ(j["windows"].get<long long>(), 8);
  EXPECT_GT(j["params"].get<long long>(), 0);
  EXPECT_NEAR(j["voxels_per_s"].get<double>() * j["predict_median_s"].get<double>(), 24.0 * 24 * 24, 1e-6);
  EXPECT_GE(j["peak_rss_bytes"].get<long long>(), j["peak_bytes"].get<long long>());
}

// A D,H,W volume, smaller than the window on one axis (padded to it: one window there).
TEST(BenchPredict, VolumeTakesThreeSides) {
  const auto r = run_voxgrad(
      "bench predict --size 8,16,40 --patch 16 --base 4 --levels 2 --reps 1 --warmup 0 --json --device cpu");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["windows"].get<long long>(), 1 * 1 * 4);  // 40: starts 0, 8, 16, 24
  EXPECT_NEAR(j["voxels_per_s"].get<double>() * j["predict_median_s"].get<double>(), 8.0 * 16 * 40, 1e-6);
}

TEST(BenchPredict, BadFlagsAreUsageErrors) {
  EXPECT_EQ(run_voxgrad("bench predict --no-such-flag --device cpu").exit_code, 2);
  const auto odd = run_voxgrad("bench predict --size 32 --patch 16,16,30 --levels 3 --device cpu");
  EXPECT_EQ(odd.exit_code, 2) << odd.err;
  EXPECT_NE(odd.err.find("30 is not divisible by 4"), std::string::npos) << odd.err;
  EXPECT_EQ(run_voxgrad("bench predict --overlap 1 --device cpu").exit_code, 2);
  EXPECT_EQ(run_voxgrad("bench predict --size 0 --device cpu").exit_code, 2);
}

}  // namespace
