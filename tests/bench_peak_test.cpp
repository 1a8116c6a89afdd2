// `voxgrad bench peak`: one JSON object with the machine's peaks, every SIMD level it measured,
// and the cache it wrote for --profile.
#include <filesystem>
#include <string>

#include "engine/json.h"
#include "tests/test_support.h"

namespace {

using nlohmann::json;
using voxgrad::test::run_voxgrad;

TEST(BenchPeak, JsonHasThePeaksAndTheCache) {
  const std::string cache = voxgrad::test::temp_dir("bench-peak");
  const auto r = run_voxgrad("bench peak --json --device cpu", "XDG_CACHE_HOME='" + cache + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(r.out);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_EQ(j["device"], "cpu");
  EXPECT_GT(j["gflops"].get<double>(), 0.0);
  EXPECT_GT(j["gbytes_per_s"].get<double>(), 0.0);
  EXPECT_NEAR(j["ridge_flop_per_byte"].get<double>(), j["gflops"].get<double>() / j["gbytes_per_s"].get<double>(),
              1e-9);
  ASSERT_TRUE(j["levels"].is_array());
  ASSERT_FALSE(j["levels"].empty());
  EXPECT_EQ(j["levels"][0]["level"], "sse2");
  double best = 0;
  for (const json& l : j["levels"]) best = std::max(best, l["gflops_all_threads"].get<double>());
  EXPECT_DOUBLE_EQ(best, j["gflops"].get<double>());
  EXPECT_EQ(j["cache"], cache + "/voxgrad/peaks.json");
  EXPECT_TRUE(std::filesystem::exists(cache + "/voxgrad/peaks.json"));
  EXPECT_EQ(run_voxgrad("bench peak --no-such-flag").exit_code, 2);
}

}  // namespace
