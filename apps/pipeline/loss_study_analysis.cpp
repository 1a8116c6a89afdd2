// The loss study's statistics: study.json from the finished runs (see loss_study.h). Per preset a
// case's score in an arm is its foreground mean Dice (or Jaccard) averaged over the seeds the
// comparison uses; every comparison is paired by case. A pair of arms uses the seeds both have
// finished, so a study that is still being built up compares what it can.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "apps/pipeline/loss_study.h"
#include "apps/pipeline/study_statistics.h"
#include "engine/error.h"

namespace voxgrad::pipeline::study {

namespace {

Json number(double v) { return std::isfinite(v) ? Json(v) : Json(nullptr); }

// The size bins of the object-size plot and table: edges in voxels.
const std::vector<std::int64_t> kSizeEdges = {1, 100, 200, 500, 1000, 2000, 5000, 10000};

std::string size_bin_name(std::size_t i) {
  // Appended piece by piece: GCC 12 warns falsely (-Wrestrict) on a short literal + std::string.
  std::string name = i + 1 == kSizeEdges.size() ? std::string(">=") : std::string();
  name += std::to_string(kSizeEdges[i]);
  if (i + 1 < kSizeEdges.size()) name.append("-").append(std::to_string(kSizeEdges[i + 1] - 1));
  return name;
}

std::size_t size_bin(std::int64_t voxels) {
  std::size_t bin = 0;
  while (bin + 1 < kSizeEdges.size() && voxels >= kSizeEdges[bin + 1]) ++bin;
  return bin;
}

enum class Metric { kDice, kJaccard };
const char* metric_name(Metric m) { return m == Metric::kDice ? "dice" : "jaccard"; }
double score_of(const CaseScores& c, Metric m) { return m == Metric::kDice ? c.dice : c.jaccard; }

using SeedRuns = std::map<std::int64_t, RunResult>;

// Per case, the score of each of `seeds` (rows: seeds, columns: cases).
std::vector<std::vector<double>> scores_by_seed(const SeedRuns& runs, const std::vector<std::int64_t>& seeds,
                                                Metric m) {
  std::vector<std::vector<double>> out;
  for (std::int64_t seed : seeds) {
    std::vector<double> row;
    for (const CaseScores& c : runs.at(seed).cases) row.push_back(score_of(c, m));
    out.push_back(std::move(row));
  }
  return out;
}

std::vector<double> seed_means(const std::vector<std::vector<double>>& by_seed) {
  std::vector<double> out(by_seed.front().size(), 0.0);
  for (const auto& row : by_seed)
    for (std::size_t c = 0; c < row.size(); ++c) out[c] += row[c] / static_cast<double>(by_seed.size());
  return out;
}

std::vector<std::int64_t> seeds_of(const SeedRuns& runs) {
  std::vector<std::int64_t> out;
  for (const auto& [seed, run] : runs) out.push_back(seed);
  return out;
}

std::vector<std::int64_t> common_seeds(const SeedRuns& a, const SeedRuns& b) {
  std::vector<std::int64_t> out;
  for (const auto& [seed, run] : a)
    if (b.count(seed)) out.push_back(seed);
  return out;
}

// Every run of a preset must score the same test cases and classes, in the same order, and give
// every case a score.
void check_same_cases(const std::map<std::string, SeedRuns>& arms, const std::string& preset) {
  const RunResult* first = nullptr;
  for (const auto& [arm, runs] : arms)
    for (const auto& [seed, run] : runs) {
      if (!first) first = &run;
      bool same = run.cases.size() == first->cases.size();
      for (std::size_t c = 0; same && c < first->cases.size(); ++c) same = run.cases[c].name == first->cases[c].name;
      VG_INPUT_CHECK(
          same, preset << "/" << arm << "/seed" << seed << ": scored other test cases than the preset's other runs");
      VG_INPUT_CHECK(run.classes == first->classes,
                     preset << "/" << arm << "/seed" << seed << ": scored other classes than the preset's other runs");
      for (const CaseScores& c : run.cases)
        VG_INPUT_CHECK(std::isfinite(c.dice) && std::isfinite(c.jaccard),
                       preset << "/" << arm << "/seed" << seed << ": case " << c.name << " has no foreground score");
    }
}

Json arm_summary(const Arm& arm, const SeedRuns& runs) {
  Json j;
  j["arm"] = arm.name;
  j["group"] = arm.group;
  j["flags"] = arm.flags;
  j["seeds_done"] = seeds_of(runs);
  if (runs.empty()) return j;
  const std::vector<std::int64_t> seeds = seeds_of(runs);
  for (Metric m : {Metric::kDice, Metric::kJaccard}) {
    const std::vector<double> per_case = seed_means(scores_by_seed(runs, seeds, m));
    j[std::string("mean_") + metric_name(m)] = stats::mean(per_case);
    j[std::string("sd_") + metric_name(m) + "_over_cases"] =
        per_case.size() > 1 ? number(stats::sample_sd(per_case)) : Json(nullptr);
    // The spread the seeds give: each seed's mean over cases.
    std::vector<double> per_seed;
    for (const auto& row : scores_by_seed(runs, seeds, m)) per_seed.push_back(stats::mean(row));
    j[std::string("seed_means_") + metric_name(m)] = per_seed;
  }
  // Per class: Dice, calibration and volume ratios, means over seeds (each already a mean over cases).
  const RunResult& first = runs.begin()->second;
  Json per_class = Json::object();
  for (std::size_t k = 0; k < first.classes.size(); ++k) {
    const std::int32_t label = first.classes[k];
    // Dice over the cases where it is defined (a class absent from both a case's reference and its
    // prediction has none, as in nnU-Net's means); calibration from the runs whose evaluation has it.
    double dice = 0, ece = 0, hard = 0, soft = 0;
    int dice_runs = 0, calibrated_runs = 0;
    for (const auto& [seed, run] : runs) {
      double sum = 0;
      int defined = 0;
      for (const CaseScores& c : run.cases)
        if (std::isfinite(c.dice_per_class[k])) sum += c.dice_per_class[k], ++defined;
      if (defined > 0) dice += sum / defined, ++dice_runs;
      for (const ClassCalibration& cal : run.calibration)
        if (cal.label == label) {
          ece += cal.ece;
          hard += cal.volume_ratio_hard;
          soft += cal.volume_ratio_soft;
          ++calibrated_runs;
        }
    }
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const double calibrated = calibrated_runs > 0 ? calibrated_runs : nan;
    per_class[std::to_string(label)] = {{"dice", number(dice_runs > 0 ? dice / dice_runs : nan)},
                                        {"ece", number(ece / calibrated)},
                                        {"volume_ratio_hard", number(hard / calibrated)},
                                        {"volume_ratio_soft", number(soft / calibrated)}};
  }
  j["per_class"] = per_class;
  // Objects found, by size, pooled over seeds.
  std::vector<std::int64_t> count(kSizeEdges.size(), 0), detected(kSizeEdges.size(), 0);
  std::vector<double> found_fraction(kSizeEdges.size(), 0.0);
  for (const auto& [seed, run] : runs)
    for (const ComponentRecord& c : run.components) {
      const std::size_t b = size_bin(c.voxels);
      ++count[b];
      detected[b] += c.overlap > 0 ? 1 : 0;
      found_fraction[b] += static_cast<double>(c.overlap) / static_cast<double>(c.voxels);
    }
  Json by_size = Json::array();
  for (std::size_t b = 0; b < kSizeEdges.size(); ++b) {
    if (count[b] == 0) continue;
    const auto n = static_cast<double>(count[b]);
    by_size.push_back({{"bin", size_bin_name(b)},
                       {"min_voxels", kSizeEdges[b]},
                       {"objects", count[b]},
                       {"recall", detected[b] / n},
                       {"mean_found_fraction", found_fraction[b] / n}});
  }
  j["objects_by_size"] = by_size;
  // Learning curve: validation Dice per epoch, mean and range over seeds.
  std::size_t epochs = std::numeric_limits<std::size_t>::max();
  for (const auto& [seed, run] : runs) epochs = std::min(epochs, run.val_dice.size());
  Json curve = {{"mean", Json::array()}, {"min", Json::array()}, {"max", Json::array()}};
  for (std::size_t e = 0; e < epochs; ++e) {
    double sum = 0, lo = INFINITY, hi = -INFINITY;
    for (const auto& [seed, run] : runs) {
      sum += run.val_dice[e];
      lo = std::min(lo, run.val_dice[e]);
      hi = std::max(hi, run.val_dice[e]);
    }
    curve["mean"].push_back(number(sum / static_cast<double>(runs.size())));
    curve["min"].push_back(number(lo));
    curve["max"].push_back(number(hi));
  }
  j["val_dice_by_epoch"] = curve;
  double seconds = 0;
  for (const auto& [seed, run] : runs) seconds += run.train_seconds;
  j["mean_train_seconds"] = seconds / static_cast<double>(runs.size());
  return j;
}

// One pair's paired comparison on one metric: a - b per case.
Json compare_pair(const SeedRuns& a, const SeedRuns& b, Metric m) {
  const std::vector<std::int64_t> seeds = common_seeds(a, b);
  const auto by_seed_a = scores_by_seed(a, seeds, m);
  const auto by_seed_b = scores_by_seed(b, seeds, m);
  std::vector<std::vector<double>> diff_by_seed(seeds.size());
  for (std::size_t s = 0; s < seeds.size(); ++s)
    for (std::size_t c = 0; c < by_seed_a[s].size(); ++c) diff_by_seed[s].push_back(by_seed_a[s][c] - by_seed_b[s][c]);
  const std::vector<double> diff = seed_means(diff_by_seed);
  const stats::WilcoxonResult w = stats::wilcoxon_signed_rank(diff);
  stats::BootstrapOptions boot;
  boot.resamples = kBootstrapResamples;
  boot.seed = kBootstrapSeed;
  const stats::Interval over_cases = stats::bootstrap_mean_interval(diff, boot);
  const stats::Interval over_seeds_cases = stats::bootstrap_mean_interval_two_level(diff_by_seed, boot);
  return {{"seeds", seeds},
          {"cases", diff.size()},
          {"mean_difference", stats::mean(diff)},
          {"cases_a_better", std::count_if(diff.begin(), diff.end(), [](double d) { return d > 0; })},
          {"cases_b_better", std::count_if(diff.begin(), diff.end(), [](double d) { return d < 0; })},
          {"wilcoxon", {{"w_plus", w.w_plus}, {"w_minus", w.w_minus}, {"n", w.n}, {"p", w.p_value}}},
          {"bootstrap_ci_cases", {over_cases.low, over_cases.high}},
          {"bootstrap_ci_seeds_cases", {over_seeds_cases.low, over_seeds_cases.high}}};
}

Json tost_pair(const SeedRuns& a, const SeedRuns& b) {
  const std::vector<std::int64_t> seeds = common_seeds(a, b);
  const std::vector<double> da = seed_means(scores_by_seed(a, seeds, Metric::kDice));
  const std::vector<double> db = seed_means(scores_by_seed(b, seeds, Metric::kDice));
  std::vector<double> diff;
  for (std::size_t c = 0; c < da.size(); ++c) diff.push_back(da[c] - db[c]);
  const stats::TostResult t = stats::tost_paired(diff, kEquivalenceMargin);
  return {{"mean_difference", t.mean_difference},
          {"p_lower", t.p_lower},
          {"p_upper", t.p_upper},
          {"p", t.p_value},
          {"equivalent", t.p_value < kAlpha}};
}

// The entry of a list of pairs ("a", "b") for (a, b) in either order, and whether it was stored
// as (b, a).
const Json* find_pair(const Json& pairs, const std::string& a, const std::string& b, bool& flipped) {
  for (const Json& p : pairs) {
    if (p["a"] == a && p["b"] == b) {
      flipped = false;
      return &p;
    }
    if (p["a"] == b && p["b"] == a) {
      flipped = true;
      return &p;
    }
  }
  return nullptr;
}

// The acceptance rule on one preset (README, "The loss study"): every surrogate beats cross-entropy
// and the best weighted cross-entropy with a Holm-corrected p < 0.05 on Dice and on Jaccard, and
// every pair of surrogates is equivalent within the margin (TOST p < 0.05).
Json verdict(const Plan& plan, const std::map<std::string, SeedRuns>& arms, const Json& preset) {
  Json v;
  bool complete = true;
  for (const Arm& arm : plan.arms) complete = complete && arms.at(arm.name).size() == plan.seeds.size();
  std::vector<std::string> surrogates, references;
  if (arms.count("ce")) references.push_back("ce");
  // The best weighted cross-entropy is the one with the highest mean test Dice: chosen on the test
  // cases, which can only favour the weighting, so it is the hardest reference for the surrogates.
  std::string best_wce;
  double best = -INFINITY;
  for (const Json& a : preset["arms"]) {
    if (a["group"] == "surrogate") surrogates.push_back(a["arm"].get<std::string>());
    if (a["group"] == "weighted-cross-entropy" && a.contains("mean_dice") && a["mean_dice"].get<double>() > best) {
      best = a["mean_dice"].get<double>();
      best_wce = a["arm"].get<std::string>();
    }
  }
  if (!best_wce.empty()) references.push_back(best_wce);
  v["complete"] = complete;
  v["best_weighted_cross_entropy"] = best_wce.empty() ? Json(nullptr) : Json(best_wce);
  bool beats = !surrogates.empty() && !references.empty();
  Json failures = Json::array();
  for (const std::string& s : surrogates)
    for (const std::string& r : references)
      for (const char* metric : {"dice", "jaccard"}) {
        bool flipped = false;
        const Json* pair = find_pair(preset["pairs"], s, r, flipped);
        bool ok = false;
        if (pair) {
          const Json& t = (*pair)[metric];
          const double d = t["mean_difference"].get<double>() * (flipped ? -1 : 1);
          ok = d > 0 && t["p_holm"].get<double>() < kAlpha;
        }
        if (!ok)
          failures.push_back(s + " does not beat " + r + (pair ? " on the " : " (no seed in common) on the ") +
                             (metric == std::string("dice") ? "Dice" : "Jaccard") + " metric");
        beats = beats && ok;
      }
  // Every pair of surrogates must have been tested and found equivalent: an untested pair is not
  // evidence of equivalence.
  bool equivalent = true;
  for (std::size_t i = 0; i < surrogates.size(); ++i)
    for (std::size_t k = i + 1; k < surrogates.size(); ++k) {
      bool flipped = false;  // TOST is symmetric: the order does not matter
      const Json* test = find_pair(preset["equivalence"], surrogates[i], surrogates[k], flipped);
      if (test == nullptr)
        failures.push_back(surrogates[i] + " and " + surrogates[k] +
                           " are not tested for equivalence (no seed in common)");
      else if (!(*test)["equivalent"].get<bool>())
        failures.push_back(surrogates[i] + " and " + surrogates[k] + " are not shown equivalent");
      equivalent = equivalent && test != nullptr && (*test)["equivalent"].get<bool>();
    }
  v["surrogates_beat_cross_entropy"] = beats;
  v["surrogates_equivalent"] = equivalent;
  v["confirmed"] = complete && beats && equivalent;
  v["outcome"] = !complete ? "incomplete" : (beats && equivalent) ? "confirmed" : "not confirmed";
  v["failures"] = failures;
  return v;
}

Json analyze_preset(const StudyData& data, const std::string& preset) {
  const Plan& plan = data.plan;
  std::map<std::string, SeedRuns> arms;
  for (const Arm& arm : plan.arms) {
    arms[arm.name];
    const auto p = data.runs.find(preset);
    if (p == data.runs.end()) continue;
    const auto a = p->second.find(arm.name);
    if (a != p->second.end()) arms[arm.name] = a->second;
  }
  check_same_cases(arms, preset);

  Json j;
  j["preset"] = preset;
  j["arms"] = Json::array();
  for (const Arm& arm : plan.arms) j["arms"].push_back(arm_summary(arm, arms[arm.name]));

  // Every pair of arms with a seed in common, each metric with Holm's correction over the pairs.
  j["pairs"] = Json::array();
  for (std::size_t i = 0; i < plan.arms.size(); ++i)
    for (std::size_t k = i + 1; k < plan.arms.size(); ++k) {
      const SeedRuns& a = arms[plan.arms[i].name];
      const SeedRuns& b = arms[plan.arms[k].name];
      if (common_seeds(a, b).empty()) continue;
      j["pairs"].push_back({{"a", plan.arms[i].name},
                            {"b", plan.arms[k].name},
                            {"dice", compare_pair(a, b, Metric::kDice)},
                            {"jaccard", compare_pair(a, b, Metric::kJaccard)}});
    }
  for (const char* metric : {"dice", "jaccard"}) {
    std::vector<double> p;
    for (const Json& pair : j["pairs"]) p.push_back(pair[metric]["wilcoxon"]["p"].get<double>());
    const std::vector<double> adjusted = stats::holm_adjust(p);
    for (std::size_t i = 0; i < adjusted.size(); ++i) j["pairs"][i][metric]["p_holm"] = adjusted[i];
  }

  // Equivalence between the surrogates (TOST on Dice).
  j["equivalence"] = Json::array();
  for (std::size_t i = 0; i < plan.arms.size(); ++i)
    for (std::size_t k = i + 1; k < plan.arms.size(); ++k) {
      if (plan.arms[i].group != "surrogate" || plan.arms[k].group != "surrogate") continue;
      const SeedRuns& a = arms[plan.arms[i].name];
      const SeedRuns& b = arms[plan.arms[k].name];
      if (common_seeds(a, b).empty()) continue;
      Json t = tost_pair(a, b);
      t["a"] = plan.arms[i].name;
      t["b"] = plan.arms[k].name;
      t["margin"] = kEquivalenceMargin;
      j["equivalence"].push_back(t);
    }

  // Do Dice and Jaccard rank the arms alike?
  std::vector<std::vector<double>> dice_scores, jaccard_scores;
  std::vector<std::string> ranked_arms;
  for (const Arm& arm : plan.arms) {
    const SeedRuns& runs = arms[arm.name];
    if (runs.empty()) continue;
    ranked_arms.push_back(arm.name);
    dice_scores.push_back(seed_means(scores_by_seed(runs, seeds_of(runs), Metric::kDice)));
    jaccard_scores.push_back(seed_means(scores_by_seed(runs, seeds_of(runs), Metric::kJaccard)));
  }
  if (ranked_arms.size() >= 2) {
    const stats::ArmRanking by_dice = stats::rank_arms_by_mean(dice_scores);
    const stats::ArmRanking by_jaccard = stats::rank_arms_by_mean(jaccard_scores);
    Json order_dice = Json::array(), order_jaccard = Json::array();
    for (std::int64_t a : by_dice.order) order_dice.push_back(ranked_arms[static_cast<std::size_t>(a)]);
    for (std::int64_t a : by_jaccard.order) order_jaccard.push_back(ranked_arms[static_cast<std::size_t>(a)]);
    j["ranking"] = {{"by_dice", order_dice},
                    {"by_jaccard", order_jaccard},
                    {"kendall_tau_b", number(stats::ranking_agreement(by_dice, by_jaccard))}};
  }

  // Where each loss pushes on the probe network.
  Json probe = Json::array();
  const auto probes = data.probes.find(preset);
  if (probes != data.probes.end())
    for (const ProbeResult& p : probes->second) {
      Json mass = Json::object(), voxels = Json::object();
      const double total_mass = p.split.total_mass();
      const auto total_voxels = static_cast<double>(p.split.total_voxels());
      for (int r = 0; r < kGradientRegions; ++r) {
        mass[gradient_region_name(r)] = number(p.split.mass[r] / total_mass);
        voxels[gradient_region_name(r)] = static_cast<double>(p.split.voxels[r]) / total_voxels;
      }
      probe.push_back({{"arm", p.arm},
                       {"cases", p.cases},
                       {"mean_loss", p.mean_loss},
                       {"gradient_mass_fraction", mass},
                       {"voxel_fraction", voxels}});
    }
  j["gradient_probe"] = probe;
  j["verdict"] = verdict(plan, arms, j);
  return j;
}

// The runs a preset's analysis rests on.
std::int64_t runs_done(const Json& preset) {
  std::int64_t done = 0;
  for (const Json& arm : preset["arms"]) done += static_cast<std::int64_t>(arm["seeds_done"].size());
  return done;
}

// The earlier study's analysis of `preset`, when `data` has no finished run of it and the earlier
// study has; null otherwise.
Json carried_preset(const StudyData& data, const Json& header, const EarlierStudy& earlier, const std::string& preset) {
  const auto here = data.runs.find(preset);
  if (here != data.runs.end() && !here->second.empty()) return nullptr;
  const std::string path = earlier.folder + "/study.json";
  for (const char* key : {"tier", "seeds", "arms", "design"})
    VG_INPUT_CHECK(earlier.study.contains(key) && earlier.study[key] == header[key],
                   path << ": its " << key << " differ from " << data.work
                        << "/plan.json's, so its presets cannot stand in for this study's");
  for (const Json& p : earlier.study["per_preset"])
    if (p.value("preset", std::string()) == preset && runs_done(p) > 0) {
      Json carried = p;
      // Carried on from a study that carried it: the origin stays named.
      if (!carried.contains("carried_from")) carried["carried_from"] = path;
      return carried;
    }
  return nullptr;
}

}  // namespace

Json analyze_study(const StudyData& data, const EarlierStudy* earlier) {
  const Plan& plan = data.plan;
  Json j;
  j["tier"] = plan.tier;
  j["presets"] = plan.presets;
  j["seeds"] = plan.seeds;
  Json arms = Json::array();
  for (const Arm& a : plan.arms) arms.push_back({{"name", a.name}, {"group", a.group}, {"flags", a.flags}});
  j["arms"] = arms;
  j["design"] = plan.design;
  j["tests"] = {{"paired", "wilcoxon_signed_rank_exact"},
                {"multiple_comparisons", "holm"},
                {"intervals", "bootstrap"},
                {"equivalence", "tost"},
                {"ranking_agreement", "kendall_tau_b"}};
  j["settings"] = {{"alpha", kAlpha},
                   {"equivalence_margin_dice", kEquivalenceMargin},
                   {"bootstrap_resamples", kBootstrapResamples},
                   {"bootstrap_seed", kBootstrapSeed},
                   {"confidence", 0.95},
                   {"score", "per test case, the mean over foreground classes, averaged over the seeds compared"}};
  j["acceptance_rule"] =
      "confirmed on a preset when every surrogate (group 'surrogate') beats cross-entropy and the best weighted "
      "cross-entropy (the weighted arm with the highest mean test Dice) with a Holm-corrected exact Wilcoxon p < 0.05 "
      "on both Dice and Jaccard, and every pair of "
      "surrogates is equivalent within +-0.01 Dice (TOST p < 0.05); confirmed overall when confirmed on every preset "
      "of the tier";
  j["per_preset"] = Json::array();
  bool all_complete = true;
  std::int64_t done = 0;
  for (const std::string& preset : plan.presets) {
    Json p = earlier ? carried_preset(data, j, *earlier, preset) : Json(nullptr);
    if (p.is_null()) p = analyze_preset(data, preset);
    done += runs_done(p);
    all_complete = all_complete && p["verdict"]["complete"].get<bool>();
    j["per_preset"].push_back(std::move(p));
  }
  j["runs"] = {{"planned", plan.presets.size() * plan.arms.size() * plan.seeds.size()}, {"done", done}};
  // A finished preset that is not confirmed decides the overall outcome before the others finish.
  bool any_refuted = false;
  for (const Json& p : j["per_preset"]) any_refuted = any_refuted || p["verdict"]["outcome"] == "not confirmed";
  j["outcome"] = any_refuted ? "not confirmed" : !all_complete ? "incomplete" : "confirmed";
  return j;
}

}  // namespace voxgrad::pipeline::study
