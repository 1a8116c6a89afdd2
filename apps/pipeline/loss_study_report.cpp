// The loss study's tables: per_case.csv (one row per preset, arm, seed and test case) and
// results.md (study.json for people: the verdict first, then the tables it rests on).
#include <cmath>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "apps/pipeline/loss_study.h"
#include "engine/error.h"
#include "io/csv.h"
#include "io/svg_parts.h"

namespace voxgrad::pipeline::study {

namespace {

using io::svg::fixed;

std::string num(const Json& v, int decimals) {
  if (!v.is_number()) return "–";
  return fixed(v.get<double>(), decimals);
}

// p-values: three decimals, or "<0.001".
std::string p_text(const Json& v) {
  if (!v.is_number()) return "–";
  const double p = v.get<double>();
  return p < 0.001 ? "<0.001" : fixed(p, 3);
}

std::string interval(const Json& v) {
  // Appended piece by piece: GCC 12 warns falsely (-Wrestrict) on a short literal + std::string.
  std::string out(1, '[');
  out.append(num(v.at(0), 3)).append(", ").append(num(v.at(1), 3)).append("]");
  return out;
}

void arms_table(std::ostringstream& md, const Json& preset) {
  md << "| arm | group | seeds | Dice | Jaccard | Dice per seed | pred/ref volume per class | ECE per class | train s "
        "|\n";
  md << "|---|---|---|---|---|---|---|---|---|\n";
  for (const Json& a : preset["arms"]) {
    md << "| " << a["arm"].get<std::string>() << " | " << a["group"].get<std::string>() << " | "
       << a["seeds_done"].size() << " | ";
    if (!a.contains("mean_dice")) {
      md << "– | – | – | – | – | – |\n";
      continue;
    }
    md << num(a["mean_dice"], 3) << " | " << num(a["mean_jaccard"], 3) << " | ";
    std::string per_seed, volume, ece;
    for (const Json& v : a["seed_means_dice"]) per_seed += (per_seed.empty() ? "" : ", ") + num(v, 3);
    for (const auto& [label, c] : a["per_class"].items()) {
      volume += (volume.empty() ? "" : ", ") + num(c["volume_ratio_hard"], 2);
      ece += (ece.empty() ? "" : ", ") + num(c["ece"], 3);
    }
    md << per_seed << " | " << volume << " | " << ece << " | " << num(a["mean_train_seconds"], 0) << " |\n";
  }
}

void pairs_table(std::ostringstream& md, const Json& preset) {
  md << "| a | b | Dice a−b | 95% CI (cases) | 95% CI (seeds, cases) | p | p Holm | Jaccard a−b | p Holm | cases a>b "
        "|\n";
  md << "|---|---|---|---|---|---|---|---|---|---|\n";
  for (const Json& p : preset["pairs"]) {
    const Json& d = p["dice"];
    const Json& j = p["jaccard"];
    md << "| " << p["a"].get<std::string>() << " | " << p["b"].get<std::string>() << " | "
       << num(d["mean_difference"], 3) << " | " << interval(d["bootstrap_ci_cases"]) << " | "
       << interval(d["bootstrap_ci_seeds_cases"]) << " | " << p_text(d["wilcoxon"]["p"]) << " | " << p_text(d["p_holm"])
       << " | " << num(j["mean_difference"], 3) << " | " << p_text(j["p_holm"]) << " | "
       << d["cases_a_better"].get<std::int64_t>() << "/" << d["cases"].get<std::int64_t>() << " |\n";
  }
}

void equivalence_table(std::ostringstream& md, const Json& preset) {
  if (preset["equivalence"].empty()) return;
  md << "\nEquivalence of the surrogates (two one-sided tests, margin ±" << fixed(kEquivalenceMargin, 2)
     << " Dice):\n\n| a | b | Dice a−b | p (TOST) | equivalent |\n|---|---|---|---|---|\n";
  for (const Json& t : preset["equivalence"])
    md << "| " << t["a"].get<std::string>() << " | " << t["b"].get<std::string>() << " | "
       << num(t["mean_difference"], 4) << " | " << p_text(t["p"]) << " | "
       << (t["equivalent"].get<bool>() ? "yes" : "no") << " |\n";
}

void objects_table(std::ostringstream& md, const Json& preset) {
  md << "\nReference objects found (at least one voxel given its class), pooled over seeds and classes, and the "
        "mean fraction of each object's voxels found:\n\n| arm | size (voxels) | objects | recall | found fraction "
        "|\n|---|---|---|---|---|\n";
  for (const Json& a : preset["arms"])
    if (a.contains("objects_by_size"))
      for (const Json& b : a["objects_by_size"])
        md << "| " << a["arm"].get<std::string>() << " | " << b["bin"].get<std::string>() << " | "
           << b["objects"].get<std::int64_t>() << " | " << num(b["recall"], 3) << " | "
           << num(b["mean_found_fraction"], 3) << " |\n";
}

void probe_table(std::ostringstream& md, const Json& preset) {
  if (preset["gradient_probe"].empty()) return;
  md << "\nWhere each loss's gradient goes on the probe network (cross-entropy seed 0, half-trained): the share of "
        "the summed |∂loss/∂logits|, and in the last row the share of the voxels:\n\n"
        "| loss | small structures | large structures | boundaries | background | mean loss "
        "|\n|---|---|---|---|---|---|\n";
  auto row = [&](const std::string& name, const Json& shares, const std::string& loss) {
    md << "| " << name;
    for (int r = 0; r < kGradientRegions; ++r) md << " | " << num(shares[gradient_region_name(r)], 3);
    md << " | " << loss << " |\n";
  };
  for (const Json& p : preset["gradient_probe"])
    row(p["arm"].get<std::string>(), p["gradient_mass_fraction"], num(p["mean_loss"], 4));
  row("(voxels)", preset["gradient_probe"].at(0)["voxel_fraction"], "");
}

}  // namespace

std::string per_case_csv(const StudyData& data, const Json& analysis, const EarlierStudy* earlier) {
  std::set<std::string> carried;
  if (analysis.is_object() && analysis.contains("per_preset"))
    for (const Json& p : analysis["per_preset"])
      if (p.contains("carried_from")) carried.insert(p["preset"].get<std::string>());
  std::string out = io::csv_record({"preset", "arm", "seed", "case", "dice", "jaccard"});
  for (const std::string& preset : data.plan.presets) {
    if (carried.count(preset)) {
      VG_CHECK(earlier != nullptr, "a carried preset needs the earlier study it came from");
      // The earlier rows of this preset as they were written (a preset's name needs no quoting).
      std::istringstream rows(earlier->per_case_csv);
      std::string row;
      while (std::getline(rows, row))
        if (row.starts_with(preset + ",")) out += row + "\n";
      continue;
    }
    const auto p = data.runs.find(preset);
    if (p == data.runs.end()) continue;
    for (const Arm& arm : data.plan.arms) {
      const auto a = p->second.find(arm.name);
      if (a == p->second.end()) continue;
      for (const auto& [seed, run] : a->second)
        for (const CaseScores& c : run.cases)
          out += io::csv_record({io::csv_text(preset), io::csv_text(arm.name), io::csv_integer(seed),
                                 io::csv_text(c.name), io::csv_number(c.dice), io::csv_number(c.jaccard)});
    }
  }
  return out;
}

std::string preset_results_markdown(const Json& preset) {
  std::ostringstream md;
  const Json& v = preset["verdict"];
  md << "\n## " << preset["preset"].get<std::string>() << "\n\n";
  bool has_runs = false;
  for (const Json& a : preset["arms"]) has_runs = has_runs || !a["seeds_done"].empty();
  if (!has_runs) {
    md << "No finished runs yet.\n";
    return md.str();
  }
  if (preset.contains("carried_from"))
    md << "From `" << preset["carried_from"].get<std::string>()
       << "`: this preset's runs were made in another work folder and analysed there by the same rule.\n\n";
  md << "Verdict: **" << v["outcome"].get<std::string>() << "** (surrogates beat cross-entropy and the best weighted "
     << "cross-entropy: " << (v["surrogates_beat_cross_entropy"].get<bool>() ? "yes" : "no")
     << "; surrogates equivalent: " << (v["surrogates_equivalent"].get<bool>() ? "yes" : "no") << ")";
  if (!v["best_weighted_cross_entropy"].is_null())
    md << "; best weighted cross-entropy: " << v["best_weighted_cross_entropy"].get<std::string>();
  md << ".\n";
  if (!v["failures"].empty()) {
    md << "\nWhat the rule did not find:\n\n";
    for (const Json& f : v["failures"]) md << "- " << f.get<std::string>() << "\n";
  }
  md << "\n";
  arms_table(md, preset);
  md << "\nPaired comparisons (a − b per case):\n\n";
  pairs_table(md, preset);
  equivalence_table(md, preset);
  if (preset.contains("ranking")) {
    md << "\nRanking by Dice:";
    for (const Json& a : preset["ranking"]["by_dice"]) md << " " << a.get<std::string>();
    md << "; by Jaccard:";
    for (const Json& a : preset["ranking"]["by_jaccard"]) md << " " << a.get<std::string>();
    md << "; Kendall's τ-b between them " << num(preset["ranking"]["kendall_tau_b"], 3) << ".\n";
  }
  objects_table(md, preset);
  probe_table(md, preset);
  md << "\nPlots:";
  const char* separator = " ";
  for (const std::string& plot : study_plot_names(preset["preset"].get<std::string>())) {
    md << separator << "`plots/" << plot << "`";
    separator = ", ";
  }
  md << ".\n";
  return md.str();
}

std::string results_markdown(const Json& analysis) {
  std::ostringstream md;
  md << "# Loss study: " << analysis["tier"].get<std::string>() << " tier\n\n";
  md << "**Outcome: " << analysis["outcome"].get<std::string>()
     << ".** Rule: " << analysis["acceptance_rule"].get<std::string>() << ".\n\n";
  md << "Runs done: " << analysis["runs"]["done"] << " of " << analysis["runs"]["planned"] << ". Seeds:";
  for (const Json& s : analysis["seeds"]) md << " " << s;
  md << ". Design: " << analysis["design"].dump() << ".\n\n";
  md << "Each test case's score is its mean over the foreground classes, averaged over the seeds compared; pairs are "
        "compared case by case (exact two-sided Wilcoxon signed-rank, Holm's correction over all pairs per metric, "
        "95% percentile bootstrap of the mean difference with "
     << analysis["settings"]["bootstrap_resamples"] << " resamples, over cases and over seeds then cases).\n"
     << "The Wilcoxon tests treat the test cases as the sample and the seeds' mean as each case's score, so they "
        "speak of these seeds; how much another seed would change a difference shows in the interval over seeds then "
        "cases.\n";
  for (const Json& preset : analysis["per_preset"]) md << preset_results_markdown(preset);
  return md.str();
}

}  // namespace voxgrad::pipeline::study
