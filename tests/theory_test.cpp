// `voxgrad theory` and the checks behind it: every statement of the paper holds with its numbers where
// the maths puts them, each check fails when fed a wrong identity or bound, and the command's JSON
// has its promised shape, is the same for a seed, and its status says whether everything held.
#include <cmath>
#include <set>
#include <string>

#include "apps/pipeline/theory_checks.h"
#include "engine/json.h"
#include "tests/test_support.h"

namespace {

using namespace voxgrad::pipeline;
using voxgrad::test::CommandResult;
using voxgrad::test::lines_of;
using voxgrad::test::run_voxgrad;

const double kGap = 3.0 - 2.0 * std::sqrt(2.0);

const TheoryCheck& find_check(const std::vector<TheoryCheck>& checks, const std::string& name) {
  for (const TheoryCheck& c : checks)
    if (c.name == name) return c;
  throw std::runtime_error("no check named " + name);
}

TEST(Theory, EveryCheckHoldsWithItsNumbersWhereTheMathsSays) {
  const std::vector<TheoryCheck> checks = run_theory_checks();
  for (const TheoryCheck& c : checks) EXPECT_TRUE(c.pass) << c.name << ": " << c.detail;
  for (const char* name :
       {"dice_jaccard_identity", "loss_ratio_bounds", "absolute_gap", "soft_identity", "soft_identity_default_eps",
        "lovasz_extension", "weighted_hamming", "weighted_hamming_ranking", "dice_jaccard_spread", "aggregation"})
    EXPECT_NO_THROW(find_check(checks, name)) << name;

  EXPECT_LE(find_check(checks, "dice_jaccard_identity").measured.max, 1e-12);
  const TheoryCheck& ratio = find_check(checks, "loss_ratio_bounds");
  ASSERT_TRUE(ratio.measured.is_range);
  EXPECT_GE(ratio.measured.min, 1.0);
  EXPECT_LE(ratio.measured.min, 1.05);  // disjoint predictions reach 1
  EXPECT_GE(ratio.measured.max, 1.9);   // one voxel off reaches nearly 2
  EXPECT_LE(ratio.measured.max, 2.0);
  EXPECT_NEAR(find_check(checks, "absolute_gap").measured.max, kGap, 1e-6);
  EXPECT_LE(find_check(checks, "absolute_gap").measured.max, kGap + 1e-15);
  EXPECT_LE(find_check(checks, "soft_identity").measured.max, 1e-12);
  // With smoothing the identity is off, by less than ε = 1e-5 but by more than rounding.
  const double eps_miss = find_check(checks, "soft_identity_default_eps").measured.max;
  EXPECT_GT(eps_miss, 1e-10);
  EXPECT_LT(eps_miss, 1e-5);
  EXPECT_LE(find_check(checks, "lovasz_extension").measured.max, 1e-12);
  EXPECT_GE(find_check(checks, "weighted_hamming").measured.max, 4096.0 / 101.0 * (1 - 1e-12));
  const TheoryCheck& ranking = find_check(checks, "weighted_hamming_ranking");
  EXPECT_EQ(ranking.measured.max, ranking.bound.value);
  EXPECT_GE(ranking.measured.max, 20.0);
  const double spread = find_check(checks, "dice_jaccard_spread").measured.max;
  EXPECT_LE(spread, 2.0);
  EXPECT_GE(spread, 1.9);  // the sample reaches both ends: disjoint and one voxel off
  // 1000- and 8-voxel objects: per image each gets the same total, in the batch 8/1000 of it.
  EXPECT_NEAR(find_check(checks, "aggregation").measured.max, 125.0, 125.0 * 1e-4);
}

TEST(Theory, ChecksFailOnAWrongIdentityOrBound) {
  const std::uint64_t seed = kDefaultTheorySeed;
  EXPECT_FALSE(check_dice_jaccard_identity(seed, [](double j) { return j; }).pass);
  EXPECT_FALSE(check_loss_ratio_bounds(seed, 1.0, 1.5).pass);
  EXPECT_FALSE(check_loss_ratio_bounds(seed, 1.1, 2.0).pass);
  EXPECT_FALSE(check_absolute_gap(0.15).pass);  // exceeded
  EXPECT_FALSE(check_absolute_gap(0.2).pass);   // never reached
  EXPECT_FALSE(check_soft_identity(seed, [](double j) { return 2 * j / (1 + j * j); }).pass);
  EXPECT_FALSE(check_soft_identity(seed, dice_of_jaccard, [](double d) { return 2 / (1 + d); }).pass);
  EXPECT_FALSE(check_lovasz_extension(seed, [](double j) { return 1 - dice_of_jaccard(j); }).pass);
  EXPECT_FALSE(check_weighted_hamming(seed, 4096.0).pass);
  EXPECT_FALSE(check_dice_jaccard_spread(seed, 1.5).pass);
  EXPECT_FALSE(check_aggregation(1e-12).pass);
  // A NaN measure fails whatever the bound.
  EXPECT_FALSE(theory_holds(TheoryMeasure::number(std::nan("")), TheoryBound::at_most(1.0)));
  EXPECT_FALSE(theory_holds(TheoryMeasure::range(1.0, std::nan("")), TheoryBound::within(0.0, 2.0)));
  EXPECT_TRUE(theory_holds(TheoryMeasure::range(1.0, 2.0), TheoryBound::within(1.0, 2.0)));

  std::vector<TheoryCheck> checks = {check_absolute_gap(kGap), check_absolute_gap(0.15)};
  const nlohmann::json j = theory_json(checks);
  EXPECT_EQ(j.at("all_pass"), false);
  EXPECT_EQ(j.at("checks").at(0).at("pass"), true);
  EXPECT_EQ(j.at("checks").at(1).at("pass"), false);
  EXPECT_NE(theory_markdown(checks).find("**no**"), std::string::npos);
}

// The last line of stdout, parsed.
nlohmann::json last_json_line(const CommandResult& r) {
  const auto lines = lines_of(r.out);
  if (lines.empty()) return nullptr;
  return nlohmann::json::parse(lines.back());
}

TEST(TheoryCli, JsonHasThePromisedShape) {
  const CommandResult r = run_voxgrad("theory --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(lines_of(r.out).size(), 1u) << r.out;
  const nlohmann::json j = last_json_line(r);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_EQ(j.size(), 2u);
  ASSERT_TRUE(j.at("all_pass").is_boolean());
  EXPECT_TRUE(j.at("all_pass").get<bool>());
  ASSERT_TRUE(j.at("checks").is_array());
  EXPECT_GE(j.at("checks").size(), 7u);
  std::set<std::string> names;
  for (const auto& c : j.at("checks")) {
    EXPECT_EQ(c.size(), 5u) << c;
    for (const char* key : {"name", "statement", "measured", "bound", "pass"}) EXPECT_TRUE(c.contains(key)) << c;
    EXPECT_TRUE(c.at("name").is_string());
    EXPECT_TRUE(c.at("statement").is_string());
    EXPECT_TRUE(c.at("pass").is_boolean()) << c;
    EXPECT_TRUE(c.at("pass").get<bool>()) << c;
    const auto& m = c.at("measured");
    if (m.is_object()) {
      EXPECT_EQ(m.size(), 2u) << c;
      EXPECT_TRUE(m.at("min").is_number() && m.at("max").is_number()) << c;
      EXPECT_LE(m.at("min").get<double>(), m.at("max").get<double>()) << c;
    } else {
      EXPECT_TRUE(m.is_number()) << c;
    }
    EXPECT_TRUE(c.at("bound").is_number() || c.at("bound").is_object()) << c;
    names.insert(c.at("name").get<std::string>());
  }
  for (const char* name : {"dice_jaccard_identity", "loss_ratio_bounds", "absolute_gap", "soft_identity",
                           "lovasz_extension", "weighted_hamming", "aggregation"})
    EXPECT_EQ(names.count(name), 1u) << name;
  EXPECT_TRUE(j.at("checks").at(1).at("measured").is_object());  // loss_ratio_bounds is about a range
}

TEST(TheoryCli, SameSeedSameJsonAnotherSeedOtherDraws) {
  const CommandResult a = run_voxgrad("theory --json --seed 7");
  const CommandResult b = run_voxgrad("theory --json --seed 7 --device cpu");
  const CommandResult c = run_voxgrad("theory --json --seed 8");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  ASSERT_EQ(b.exit_code, 0) << b.err;
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);  // the random label maps follow the seed
  EXPECT_EQ(last_json_line(c).at("all_pass"), true);
}

TEST(TheoryCli, PrintsAMarkdownTableAndExitsZero) {
  const CommandResult r = run_voxgrad("theory");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto lines = lines_of(r.out);
  ASSERT_GE(lines.size(), 9u) << r.out;
  EXPECT_EQ(lines[0].rfind("| check | statement | measured | bound | holds |", 0), 0u) << lines[0];
  EXPECT_EQ(lines[1].rfind("| --- |", 0), 0u) << lines[1];
  for (std::size_t i = 2; i < lines.size(); ++i) {
    EXPECT_EQ(lines[i].rfind("| `", 0), 0u) << lines[i];
    EXPECT_NE(lines[i].find(" | yes | "), std::string::npos) << lines[i];
  }
  EXPECT_NE(r.out.find("`absolute_gap`"), std::string::npos);
  EXPECT_EQ(r.err.find("error"), std::string::npos) << r.err;
}

TEST(TheoryCli, BadSeedIsAUsageError) {
  const CommandResult r = run_voxgrad("theory --seed -3");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find("--seed"), std::string::npos) << r.err;
}

}  // namespace
