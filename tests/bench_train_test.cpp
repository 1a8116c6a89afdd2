// `voxgrad bench train` at a tiny size: one JSON object with exactly the issue's keys and a
// positive parameter count, and a bad flag is a usage error (exit 2).
#include <nlohmann/json.hpp>
#include <set>
#include <string>

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
                                         "peak_bytes"}));
  EXPECT_EQ(j["device"], "cpu");
  EXPECT_GT(j["params"].get<long long>(), 0);
  EXPECT_GT(j["step_median_s"].get<double>(), 0.0);
  EXPECT_GT(j["peak_bytes"].get<long long>(), 0);
}

TEST(BenchTrain, BadFlagIsAUsageError) {
  EXPECT_EQ(run_voxgrad("bench train --no-such-flag --device cpu").exit_code, 2);
  // The U-Net (nnU-Net's PlainConvUNet) downsamples at least once.
  const auto one_level = run_voxgrad("bench train --patch 16 --base 4 --levels 1 --steps 1 --warmup 0 --device cpu");
  EXPECT_EQ(one_level.exit_code, 2) << one_level.err;
  EXPECT_NE(one_level.err.find("--levels"), std::string::npos) << one_level.err;
}

}  // namespace
