// `voxgrad bench loss` at a tiny size: every loss gets a timing line, the sort yardstick says n/a
// without a GPU, the PyTorch reference line says whether it ran (and why not), and bad options exit 2.
#include <set>
#include <sstream>
#include <string>

#include "engine/json.h"
#include "tests/test_support.h"

namespace {

using nlohmann::json;
using voxgrad::test::run_voxgrad;

TEST(BenchLoss, EveryLossHasATimingLine) {
  const auto r = run_voxgrad("bench loss --size 6 --reps 2 --warmup 0 --json --device cpu");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::set<std::string> cases;
  std::istringstream in(r.out);
  for (std::string line; std::getline(in, line);) {
    const json j = json::parse(line);
    const std::string name = j.at("case");
    cases.insert(name);
    if (j.contains("forward_backward") && j.at("forward_backward").is_object() && name.rfind("torch", 0) != 0) {
      EXPECT_GT(j["forward_backward"]["median_ms"].get<double>(), 0.0) << name;
      EXPECT_LE(j["forward_backward"]["min_ms"].get<double>(), j["forward_backward"]["max_ms"].get<double>());
    }
    if (name == "cub_radix_sort_pairs") {
      EXPECT_TRUE(j["sort"].is_null());  // no GPU on the CPU path
      EXPECT_EQ(j["pairs"], 2 * 4 * 6 * 6 * 6);
    }
    if (name == "torch_lovasz_softmax_reference") {
      ASSERT_TRUE(j.contains("available"));
      if (!j["available"].get<bool>()) {
        EXPECT_FALSE(j.value("reason", std::string()).empty());
      }
    }
  }
  for (const char* c : {"ce", "wce", "dice", "jaccard", "lovasz", "lovasz_hinge", "dice_ce", "cub_radix_sort_pairs",
                        "torch_lovasz_softmax_reference"})
    EXPECT_EQ(cases.count(c), 1u) << c;
}

TEST(BenchLoss, BadOptionsAreUsageErrors) {
  EXPECT_EQ(run_voxgrad("bench loss --losses nope --device cpu").exit_code, 2);
  EXPECT_EQ(run_voxgrad("bench loss --size 0 --device cpu").exit_code, 2);
  EXPECT_EQ(run_voxgrad("bench loss --shape 1,1,1,1,1 --device cpu").exit_code, 2);
}

}  // namespace
