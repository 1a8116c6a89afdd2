// The loss study's analysis on a study folder written here: the statistics it reports must be the
// project's statistics applied to the seed-averaged per-case scores, the acceptance rule must say
// "confirmed" only when its parts hold, unfinished runs are left out, and the gradient mass split
// puts each voxel in the region its reference gives it.
#include "apps/pipeline/loss_study.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "apps/pipeline/gradient_mass.h"
#include "apps/pipeline/study_statistics.h"
#include "engine/error.h"
#include "tests/test_support.h"

namespace {

namespace study = voxgrad::pipeline::study;
namespace stats = voxgrad::pipeline::stats;
namespace fs = std::filesystem;
using voxgrad::Json;

constexpr int kCases = 12;

void write_text(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path) << text;
}

// A finished run whose case c scores dice(c) on both classes (Jaccard from the identity).
void write_run(const std::string& dir, double (*dice)(int, std::int64_t), std::int64_t seed) {
  std::string csv = "case,class,dice,jaccard,tp,fp,fn\n";
  for (int c = 0; c < kCases; ++c)
    for (int k = 1; k <= 2; ++k) {
      const double d = dice(c, seed);
      csv += "case_" + std::to_string(100 + c) + "," + std::to_string(k) + "," + std::to_string(d) + "," +
             std::to_string(d / (2 - d)) + ",1,1,1\n";
    }
  write_text(dir + "/eval/summary.csv", csv);
  write_text(dir + "/eval/summary.json",
             R"({"mean":{"1":{"ECE":0.1,"volume_ratio_hard":1.5,"volume_ratio_soft":1.4},"2":{"ECE":0.2,)"
             R"("volume_ratio_hard":1.0,"volume_ratio_soft":0.9}}})");
  write_text(
      dir + "/eval/summary_components.csv",
      "case,class,component,voxels,mm3,detected,overlap_voxels\ncase_100,1,1,150,1,1,75\ncase_100,2,1,3000,1,1,3000\n");
  write_text(dir + "/run/log.csv", "epoch,lr,train_loss,val_dice,seconds\n1,0.01,0.9,0.5,1\n2,0.005,0.5,0.7,1\n");
  write_text(dir + "/finished.json", R"({"train_seconds":10,"seconds":12})");
}

double ce_dice(int c, std::int64_t seed) { return 0.6 + 0.01 * c + 0.001 * static_cast<double>(seed); }
double dice_dice(int c, std::int64_t seed) { return ce_dice(c, seed) + 0.1 + 0.002 * ((c * 5) % 3); }
double lovasz_dice(int c, std::int64_t seed) { return dice_dice(c, seed) + 0.001 * ((c % 2) ? 1 : -1); }
double worse_dice(int c, std::int64_t seed) { return ce_dice(c, seed) - 0.05 - 0.002 * (c % 3); }

std::string make_study(const std::string& tag) {
  const std::string work = voxgrad::test::temp_dir(tag);
  write_text(work + "/plan.json",
             R"({"tier":"quick","presets":["p"],"seeds":[0,1],"arms":[{"name":"ce","group":"cross-entropy"},)"
             R"({"name":"dice","group":"surrogate"},{"name":"lovasz","group":"surrogate"}],"design":{}})");
  for (std::int64_t seed : {0, 1}) {
    write_run(work + "/p/ce/seed" + std::to_string(seed), ce_dice, seed);
    write_run(work + "/p/dice/seed" + std::to_string(seed), dice_dice, seed);
    write_run(work + "/p/lovasz/seed" + std::to_string(seed), lovasz_dice, seed);
  }
  return work;
}

const Json& pair_of(const Json& preset, const std::string& a, const std::string& b) {
  for (const Json& p : preset["pairs"])
    if (p["a"] == a && p["b"] == b) return p;
  ADD_FAILURE() << "no pair " << a << ", " << b;
  return preset["pairs"][0];
}

TEST(LossStudy, PairsAreTheProjectsTestsOnSeedAveragedCases) {
  const study::StudyData data = study::load_study(make_study("loss_study_pairs"));
  const Json analysis = study::analyze_study(data);
  ASSERT_EQ(analysis["runs"]["done"], 6);
  const Json& preset = analysis["per_preset"][0];
  std::vector<double> diff;
  for (int c = 0; c < kCases; ++c)
    diff.push_back((dice_dice(c, 0) + dice_dice(c, 1) - ce_dice(c, 0) - ce_dice(c, 1)) / 2);
  const Json& pair = pair_of(preset, "ce", "dice");
  std::vector<double> negated;
  for (double d : diff) negated.push_back(-d);
  EXPECT_NEAR(pair["dice"]["mean_difference"].get<double>(), stats::mean(negated), 1e-5);
  EXPECT_NEAR(pair["dice"]["wilcoxon"]["p"].get<double>(), stats::wilcoxon_signed_rank(negated).p_value, 1e-12);
  // Holm over the three pairs: the smallest p is tripled at least.
  EXPECT_GE(pair["dice"]["p_holm"].get<double>(), pair["dice"]["wilcoxon"]["p"].get<double>());
  EXPECT_EQ(pair["dice"]["cases_b_better"], kCases);
  EXPECT_EQ(preset["ranking"]["by_dice"][2], "ce");
}

TEST(LossStudy, ConfirmedOnlyWhenSurrogatesWinAndAreEquivalent) {
  const Json analysis = study::analyze_study(study::load_study(make_study("loss_study_confirmed")));
  const Json& verdict = analysis["per_preset"][0]["verdict"];
  EXPECT_TRUE(verdict["surrogates_beat_cross_entropy"].get<bool>());
  EXPECT_TRUE(verdict["surrogates_equivalent"].get<bool>()) << analysis["per_preset"][0]["equivalence"].dump();
  EXPECT_EQ(analysis["outcome"], "confirmed");

  // A surrogate no better than cross-entropy breaks the rule, and so does one significantly worse.
  for (auto* lovasz : {ce_dice, worse_dice}) {
    const std::string work = make_study("loss_study_not_confirmed");
    for (std::int64_t seed : {0, 1}) write_run(work + "/p/lovasz/seed" + std::to_string(seed), lovasz, seed);
    const Json worse = study::analyze_study(study::load_study(work));
    EXPECT_FALSE(worse["per_preset"][0]["verdict"]["surrogates_beat_cross_entropy"].get<bool>());
    EXPECT_EQ(worse["outcome"], "not confirmed");
  }
}

TEST(LossStudy, UnfinishedRunsAreLeftOutAndTheStudyIsIncomplete) {
  const std::string work = make_study("loss_study_incomplete");
  fs::remove(work + "/p/dice/seed1/finished.json");
  const Json analysis = study::analyze_study(study::load_study(work));
  EXPECT_EQ(analysis["runs"]["done"], 5);
  EXPECT_EQ(analysis["outcome"], "incomplete");
  EXPECT_EQ(pair_of(analysis["per_preset"][0], "ce", "dice")["dice"]["seeds"], Json::array({0}));
  EXPECT_FALSE(study::results_markdown(analysis).empty());
}

// results.md points at the plots: every file write_study_plots writes is named there.
TEST(LossStudy, TheReportNamesThePlotsWritten) {
  const std::string work = make_study("loss_study_plot_names");
  const study::StudyData data = study::load_study(work);
  const Json analysis = study::analyze_study(data);
  const std::string dir = work + "/plots";
  fs::create_directories(dir);
  const std::vector<std::string> written = study::write_study_plots(data, analysis, dir);
  ASSERT_EQ(written.size(), 3u);
  const std::string md = study::results_markdown(analysis);
  for (const std::string& file : written) {
    EXPECT_TRUE(fs::exists(file)) << file;
    const std::string name = fs::path(file).filename().string();
    EXPECT_NE(md.find("`plots/" + name + "`"), std::string::npos) << name;
  }
}

// Weighted cross-entropy arms: one below plain cross-entropy, one above it (below the surrogates).
double wce_low_dice(int c, std::int64_t seed) { return ce_dice(c, seed) - 0.03 - 0.001 * (c % 4); }
double wce_high_dice(int c, std::int64_t seed) { return ce_dice(c, seed) + 0.05 + 0.001 * (c % 5); }
// A surrogate between them: better than cross-entropy, worse than the better weighting.
double between_dice(int c, std::int64_t seed) { return ce_dice(c, seed) + 0.02 + 0.001 * (c % 3); }

void add_weighted_arms(const std::string& work, const std::string& presets) {
  write_text(work + "/plan.json", R"({"tier":"full","presets":)" + presets +
                                      R"(,"seeds":[0,1],"arms":[{"name":"ce","group":"cross-entropy"},)"
                                      R"({"name":"dice","group":"surrogate"},{"name":"lovasz","group":"surrogate"},)"
                                      R"({"name":"wce_3","group":"weighted-cross-entropy"},)"
                                      R"({"name":"wce_30","group":"weighted-cross-entropy"}],"design":{}})");
  for (std::int64_t seed : {0, 1}) {
    write_run(work + "/p/wce_3/seed" + std::to_string(seed), wce_high_dice, seed);
    write_run(work + "/p/wce_30/seed" + std::to_string(seed), wce_low_dice, seed);
  }
}

TEST(LossStudy, SurrogatesMustBeatTheBestWeightingToo) {
  const std::string work = make_study("loss_study_weighted");
  add_weighted_arms(work, R"(["p"])");
  const Json verdict = study::analyze_study(study::load_study(work))["per_preset"][0]["verdict"];
  EXPECT_EQ(verdict["best_weighted_cross_entropy"], "wce_3");
  EXPECT_EQ(verdict["outcome"], "confirmed") << verdict.dump();

  // Lovasz beats plain cross-entropy but not the better weighting: the rule names the pair.
  for (std::int64_t seed : {0, 1}) write_run(work + "/p/lovasz/seed" + std::to_string(seed), between_dice, seed);
  const Json refuted = study::analyze_study(study::load_study(work))["per_preset"][0]["verdict"];
  EXPECT_EQ(refuted["outcome"], "not confirmed");
  EXPECT_NE(refuted["failures"].dump().find("lovasz does not beat wce_3 on the Dice metric"), std::string::npos)
      << refuted["failures"].dump();
  EXPECT_EQ(refuted["failures"].dump().find("does not beat ce"), std::string::npos) << refuted["failures"].dump();
}

TEST(LossStudy, APresetWithoutRunsProvesNothing) {
  const std::string work = make_study("loss_study_empty_preset");
  add_weighted_arms(work, R"(["p","q"])");
  const Json analysis = study::analyze_study(study::load_study(work));
  const Json& empty = analysis["per_preset"][1];
  ASSERT_EQ(empty["preset"], "q");
  EXPECT_EQ(empty["verdict"]["outcome"], "incomplete");
  // No pair was tested: equivalence is not shown, and the report says there is nothing yet.
  EXPECT_FALSE(empty["verdict"]["surrogates_equivalent"].get<bool>());
  EXPECT_FALSE(empty["verdict"]["surrogates_beat_cross_entropy"].get<bool>());
  EXPECT_EQ(analysis["outcome"], "incomplete");
  const std::string md = study::results_markdown(analysis);
  EXPECT_NE(md.find("## q\n\nNo finished runs yet."), std::string::npos) << md;

  // A finished preset that fails the rule decides the outcome while the other is still empty.
  for (std::int64_t seed : {0, 1}) write_run(work + "/p/lovasz/seed" + std::to_string(seed), ce_dice, seed);
  EXPECT_EQ(study::analyze_study(study::load_study(work))["outcome"], "not confirmed");
}

// What `voxgrad study` writes of an analysis: study.json and per_case.csv in `dir`.
void write_outputs(const std::string& dir, const study::StudyData& data, const Json& analysis,
                   const study::EarlierStudy* earlier = nullptr) {
  write_text(dir + "/study.json", analysis.dump(2));
  write_text(dir + "/per_case.csv", study::per_case_csv(data, analysis, earlier));
}

TEST(LossStudy, AnEarlierStudyStandsInForAPresetWithoutRunsHere) {
  // The earlier folder ran preset p; this one runs q (the same runs) and has lost p's.
  const std::string before = make_study("loss_study_earlier");
  add_weighted_arms(before, R"(["p","q"])");
  const study::StudyData before_data = study::load_study(before);
  const Json before_analysis = study::analyze_study(before_data);
  write_outputs(before + "/out", before_data, before_analysis);
  const std::string now = voxgrad::test::temp_dir("loss_study_later");
  fs::copy(before + "/plan.json", now + "/plan.json");
  fs::copy(before + "/p", now + "/q", fs::copy_options::recursive);
  const study::StudyData data = study::load_study(now);
  EXPECT_EQ(study::analyze_study(data)["outcome"], "incomplete");

  const study::EarlierStudy earlier = study::read_earlier_study(before + "/out");
  const Json analysis = study::analyze_study(data, &earlier);
  const Json& p = analysis["per_preset"][0];
  EXPECT_EQ(p["carried_from"], before + "/out/study.json");
  Json p_without_mark = p;
  p_without_mark.erase("carried_from");
  EXPECT_EQ(p_without_mark, before_analysis["per_preset"][0]);
  EXPECT_FALSE(analysis["per_preset"][1].contains("carried_from"));
  // Carried again from a study that carried it: the origin stays named.
  write_outputs(now + "/out", data, analysis, &earlier);
  const study::EarlierStudy again = study::read_earlier_study(now + "/out");
  const Json twice = study::analyze_study(data, &again);
  EXPECT_EQ(twice["per_preset"][0]["carried_from"], before + "/out/study.json");
  EXPECT_FALSE(twice["per_preset"][1].contains("carried_from"));
  EXPECT_EQ(analysis["runs"]["done"], 20);
  EXPECT_EQ(analysis["outcome"], "confirmed") << analysis["per_preset"][1]["verdict"].dump();
  EXPECT_NE(study::results_markdown(analysis).find("## p\n\nFrom `" + before + "/out/study.json`"), std::string::npos);

  // per_case.csv: p's rows as the earlier study wrote them, then q's from the runs here.
  const std::string csv = study::per_case_csv(data, analysis, &earlier);
  const std::string before_csv = study::per_case_csv(before_data, before_analysis);
  const std::string header = "preset,arm,seed,case,dice,jaccard\n";
  ASSERT_TRUE(before_csv.starts_with(header));
  std::string q_rows = before_csv.substr(header.size());
  for (std::size_t at = 0; (at = q_rows.find("p,", at)) != std::string::npos; at = q_rows.find('\n', at) + 1)
    q_rows.replace(at, 1, "q");
  EXPECT_EQ(csv, before_csv + q_rows);

  // A preset with runs here is analysed here, whatever the earlier study says of it.
  const Json own = study::analyze_study(before_data, &earlier);
  EXPECT_FALSE(own["per_preset"][0].contains("carried_from"));
  EXPECT_EQ(own["runs"]["done"], 10);
}

TEST(LossStudy, AnEarlierStudyOfAnotherPlanIsRefused) {
  const std::string before = make_study("loss_study_earlier_other");
  const study::StudyData before_data = study::load_study(before);
  write_outputs(before + "/out", before_data, study::analyze_study(before_data));
  const std::string now = voxgrad::test::temp_dir("loss_study_later_other");
  write_text(now + "/plan.json",
             R"({"tier":"quick","presets":["p"],"seeds":[0,1,2],"arms":[{"name":"ce","group":"cross-entropy"},)"
             R"({"name":"dice","group":"surrogate"},{"name":"lovasz","group":"surrogate"}],"design":{}})");
  const study::EarlierStudy earlier = study::read_earlier_study(before + "/out");
  try {
    study::analyze_study(study::load_study(now), &earlier);
    FAIL() << "a study of seeds 0-1 stood in for one of seeds 0-2";
  } catch (const voxgrad::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("its seeds differ from"), std::string::npos) << e.what();
  }
  EXPECT_THROW(study::read_earlier_study(now), voxgrad::InputError);  // no study.json there

  // A study.json of another shape is refused as it is read, naming what is missing.
  Json edited = earlier.study;
  edited["per_preset"][0].erase("verdict");
  write_text(before + "/out/study.json", edited.dump());
  try {
    study::read_earlier_study(before + "/out");
    FAIL() << "a preset without a verdict was read";
  } catch (const voxgrad::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("preset p has no complete 'verdict'"), std::string::npos) << e.what();
  }

  // Deeper down, whatever results.md reads: a missing field, a field of another kind, an interval
  // of one number. Each is refused as the file is read, naming the file and the preset.
  const std::vector<std::function<void(Json&)>> edits = {
      [](Json& p) { p["pairs"][0]["dice"].erase("p_holm"); },
      [](Json& p) { p["pairs"][0]["dice"]["bootstrap_ci_cases"] = Json::array({0.1}); },
      [](Json& p) { p["arms"][0]["per_class"] = 3; },
      [](Json& p) { p["verdict"]["failures"] = Json::array({7}); },
      [](Json& p) { p["gradient_probe"] = Json::array({Json::object()}); },
  };
  for (std::size_t i = 0; i < edits.size(); ++i) {
    Json deeper = earlier.study;
    edits[i](deeper["per_preset"][0]);
    write_text(before + "/out/study.json", deeper.dump());
    try {
      study::read_earlier_study(before + "/out");
      ADD_FAILURE() << "edit " << i << " was read";
    } catch (const voxgrad::InputError& e) {
      EXPECT_NE(std::string(e.what()).find(before + "/out/study.json: preset p cannot be reported"), std::string::npos)
          << "edit " << i << ": " << e.what();
    }
  }
}

// `voxgrad study --earlier`: the carried preset's plots come along, the others are drawn here.
TEST(LossStudy, TheStudyCommandBringsTheEarlierPlots) {
  const std::string before = make_study("loss_study_cli_earlier");
  add_weighted_arms(before, R"(["p","q"])");
  const std::string now = voxgrad::test::temp_dir("loss_study_cli_later");
  fs::copy(before + "/plan.json", now + "/plan.json");
  fs::copy(before + "/p", now + "/q", fs::copy_options::recursive);
  const std::string bin = voxgrad::test::voxgrad_binary();
  ASSERT_EQ(std::system((bin + " study --work " + before + " >/dev/null 2>&1").c_str()), 0);
  const std::string out = now + "/out";
  ASSERT_EQ(std::system((bin + " study --work " + now + " --earlier " + before + " --out " + out + " >" + now +
                         "/line 2>" + now + "/err")
                            .c_str()),
            0)
      << voxgrad::test::read_file(now + "/err");
  const Json line = Json::parse(voxgrad::test::read_file(now + "/line"));
  EXPECT_EQ(line["runs"]["done"], 20);
  EXPECT_EQ(line["outcome"], "confirmed");
  for (const char* kind : {"_paired_differences.svg", "_learning_curves.svg", "_objects_by_size.svg"}) {
    EXPECT_EQ(voxgrad::test::read_file(out + "/plots/p" + kind), voxgrad::test::read_file(before + "/plots/p" + kind));
    EXPECT_TRUE(fs::exists(out + "/plots/q" + kind)) << kind;
  }
  EXPECT_EQ(line["plots"].size(), 6u);

  // Writing into the earlier folder itself: its carried preset stays as it was.
  const std::string before_p = study::read_earlier_study(before).study["per_preset"][0].dump();
  ASSERT_EQ(
      std::system((bin + " study --work " + now + " --earlier " + before + " >/dev/null 2>&1 --out " + before).c_str()),
      0);
  Json carried = study::read_earlier_study(before).study["per_preset"][0];
  carried.erase("carried_from");
  EXPECT_EQ(carried.dump(), before_p);

  const int status =
      std::system((bin + " study --work " + now + " --earlier " + now + "/nowhere 2>" + now + "/err").c_str());
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_NE(voxgrad::test::read_file(now + "/err").find("nowhere/study.json: missing"), std::string::npos)
      << voxgrad::test::read_file(now + "/err");
}

TEST(LossStudy, ACaseWithoutAScoreIsRefusedInAnyRun) {
  // The first run read is checked like the others.
  double (*unscored)(int, std::int64_t) = [](int c, std::int64_t seed) { return c == 3 ? NAN : ce_dice(c, seed); };
  const std::string work = make_study("loss_study_unscored");
  write_run(work + "/p/ce/seed0", unscored, 0);
  const std::string error = voxgrad::test::error_of([&] { study::analyze_study(study::load_study(work)); });
  EXPECT_NE(error.find("p/ce/seed0: case case_103 has no foreground score"), std::string::npos) << error;
}

TEST(LossStudy, GradientMassSplitFollowsTheReference) {
  // 1 x 4 x 8: a 2-voxel object (small) at x = 1..2 of row y = 1, background elsewhere.
  const std::array<std::int64_t, 3> shape = {1, 4, 8};
  std::vector<std::int32_t> labels(32, 0);
  labels[8 + 1] = labels[8 + 2] = 1;
  std::vector<float> grad(64, 0.0f);
  grad[31] = 2.0f;          // channel 0, far corner: background
  grad[32 + 8 + 1] = -1.f;  // channel 1 on the object, which is all boundary
  const voxgrad::pipeline::GradientMassSplit s =
      voxgrad::pipeline::gradient_mass_split(grad.data(), 2, labels.data(), shape);
  EXPECT_DOUBLE_EQ(s.mass[static_cast<int>(voxgrad::pipeline::GradientRegion::kBackground)], 2.0);
  EXPECT_DOUBLE_EQ(s.mass[static_cast<int>(voxgrad::pipeline::GradientRegion::kBoundaries)], 1.0);
  EXPECT_EQ(s.total_voxels(), 32);
  // The object's two voxels and their six background face neighbours are boundary voxels.
  EXPECT_EQ(s.voxels[static_cast<int>(voxgrad::pipeline::GradientRegion::kBoundaries)], 8);

  // A 3 x 3 x 3 cube has one inner voxel; under 1000 voxels it is a small structure, under 27 a large one.
  const std::array<std::int64_t, 3> cube = {5, 5, 5};
  std::vector<std::int32_t> block(125, 0);
  for (int z = 1; z < 4; ++z)
    for (int y = 1; y < 4; ++y)
      for (int x = 1; x < 4; ++x) block[(z * 5 + y) * 5 + x] = 2;
  EXPECT_EQ(voxgrad::pipeline::count_regions(block.data(), cube, 1000, nullptr)[0], 1);
  EXPECT_EQ(voxgrad::pipeline::count_regions(block.data(), cube, 27, nullptr)[1], 1);
}

}  // namespace
