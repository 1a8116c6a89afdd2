// The shares of `predict --num-parts N --part-id K`: disjoint, together every case once, balanced
// by size to within the largest case, the same on every call, and N = 1 is everything.
#include "apps/pipeline/case_parts.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>

namespace voxgrad::pipeline {
namespace {

TEST(CaseParts, DisjointCompleteAndBalanced) {
  std::mt19937 rng(4);
  for (int trial = 0; trial < 50; ++trial) {
    const std::size_t n = rng() % 40;
    std::vector<std::int64_t> sizes(n);
    for (auto& s : sizes) s = static_cast<std::int64_t>(rng() % 1000);
    const int parts = 1 + static_cast<int>(rng() % 6);
    std::set<std::size_t> seen;
    std::int64_t lightest = -1, heaviest = -1, largest = 0;
    for (auto s : sizes) largest = std::max(largest, s);
    for (int k = 0; k < parts; ++k) {
      const std::vector<std::size_t> mine = cases_of_part(sizes, parts, k);
      EXPECT_TRUE(std::is_sorted(mine.begin(), mine.end()));
      EXPECT_EQ(mine, cases_of_part(sizes, parts, k));  // deterministic
      std::int64_t load = 0;
      for (std::size_t i : mine) {
        EXPECT_TRUE(seen.insert(i).second) << "case " << i << " in two parts";
        load += sizes[i];
      }
      lightest = lightest < 0 ? load : std::min(lightest, load);
      heaviest = std::max(heaviest, load);
    }
    EXPECT_EQ(seen.size(), n);
    EXPECT_LE(heaviest - lightest, largest) << parts << " parts of " << n << " cases";
  }
}

TEST(CaseParts, OnePartIsEverythingAndEqualSizesDealInTurn) {
  EXPECT_EQ(cases_of_part({5, 1, 3}, 1, 0), (std::vector<std::size_t>{0, 1, 2}));
  // Equal sizes: the earlier case first, each to the lowest part with the least so far.
  EXPECT_EQ(cases_of_part({1, 1, 1, 1, 1}, 2, 0), (std::vector<std::size_t>{0, 2, 4}));
  EXPECT_EQ(cases_of_part({1, 1, 1, 1, 1}, 2, 1), (std::vector<std::size_t>{1, 3}));
  // One large case balances two small ones.
  EXPECT_EQ(cases_of_part({2, 2, 4}, 2, 0), (std::vector<std::size_t>{2}));
  EXPECT_EQ(cases_of_part({2, 2, 4}, 2, 1), (std::vector<std::size_t>{0, 1}));
  EXPECT_TRUE(cases_of_part({}, 3, 2).empty());
}

}  // namespace
}  // namespace voxgrad::pipeline
