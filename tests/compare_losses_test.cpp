// tools/compare-losses at a small scale: one short run per loss on the small-structures dataset,
// the Markdown table on stdout and compare.json agreeing with each run's summary.json.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/json.h"
#include "tests/test_support.h"

namespace {

namespace fs = std::filesystem;
using voxgrad::test::read_file;
using voxgrad::test::voxgrad_binary;

std::string script(const std::string& args, const std::string& dir) {
  return "VOXGRAD_BINARY='" + voxgrad_binary() + "' '" + voxgrad::test::source_path("tools/compare-losses") + "' " +
         args + " >" + dir + "/out 2>" + dir + "/err";
}

TEST(CompareLosses, OneShortRunPerLossGivesTheTable) {
  if (!fs::exists("/usr/bin/python3")) GTEST_SKIP() << "needs python3 (tools/deps --test-data installs it)";
  const std::string dir = voxgrad::test::temp_dir("compare-losses");
  const std::string work = dir + "/work";
  ASSERT_EQ(std::system(script("--work " + work + " --epochs 1 --iters-per-epoch 1 --cases 3 --test-cases 1 "
                               "--losses ce,dice,lovasz --device cpu",
                               dir)
                            .c_str()),
            0)
      << read_file(dir + "/err");
  std::istringstream out(read_file(dir + "/out"));
  std::vector<std::string> lines;
  for (std::string line; std::getline(out, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 5u) << read_file(dir + "/out");
  EXPECT_EQ(lines[0].rfind("| loss | Dice | Jaccard | Dice 1 | Dice 2 |", 0), 0u) << lines[0];
  EXPECT_EQ(lines[2].rfind("| ce | ", 0), 0u);
  EXPECT_EQ(lines[3].rfind("| dice | ", 0), 0u);
  EXPECT_EQ(lines[4].rfind("| lovasz | ", 0), 0u);

  const nlohmann::json rows = nlohmann::json::parse(read_file(work + "/compare.json"));
  ASSERT_EQ(rows.size(), 3u);
  for (const nlohmann::json& row : rows) {
    const std::string loss = row.at("loss");
    const nlohmann::json summary = nlohmann::json::parse(read_file(work + "/" + loss + "/summary.json"));
    EXPECT_EQ(row.at("dice"), summary.at("foreground_mean").at("Dice")) << loss;
    // Each run trained with its own loss, everything else equal.
    const nlohmann::json config = nlohmann::json::parse(read_file(work + "/" + loss + "/run/config.json"));
    EXPECT_EQ(config.at("training").at("loss"), loss);
    EXPECT_EQ(config.at("training").at("seed"), 0);
  }
}

TEST(CompareLosses, RefusesAnUnknownLoss) {
  const std::string dir = voxgrad::test::temp_dir("compare-losses-bad");
  const int status = std::system(script("--losses ce,focal", dir).c_str());
  EXPECT_EQ(WEXITSTATUS(status), 2);
  EXPECT_NE(read_file(dir + "/err").find("unknown loss 'focal'"), std::string::npos) << read_file(dir + "/err");
}

}  // namespace
