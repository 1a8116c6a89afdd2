// Counting and averaging for eval. The CSV is written through io/csv so a case name is always one
// text cell, whatever characters its file name holds.
#include "apps/pipeline/eval_summary.h"

#include <cmath>
#include <limits>
#include <set>
#include <unordered_map>

#include "io/csv.h"

namespace voxgrad::pipeline {

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();

double dice_of(const Counts& c) {
  const std::int64_t denom = c.n_ref + c.n_pred;
  return denom == 0 ? kNaN : 2.0 * static_cast<double>(c.tp) / static_cast<double>(denom);
}
double jaccard_of(const Counts& c) {
  const std::int64_t uni = c.n_ref + c.n_pred - c.tp;
  return uni == 0 ? kNaN : static_cast<double>(c.tp) / static_cast<double>(uni);
}

Json number_or_null(double v) { return std::isfinite(v) ? Json(v) : Json(nullptr); }

double mean_of(const std::vector<double>& v) {
  if (v.empty()) return kNaN;
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

}  // namespace

// Labels are small non-negative numbers in practice, so those go to a flat table and the rest to a map.
std::map<std::int32_t, Counts> count_labels(const std::int32_t* ref, const std::int32_t* pred, std::int64_t n) {
  constexpr std::int32_t kFlat = 4096;
  std::vector<Counts> flat(kFlat);
  std::unordered_map<std::int32_t, Counts> other;
  auto at = [&](std::int32_t v) -> Counts& { return v >= 0 && v < kFlat ? flat[v] : other[v]; };
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int32_t r = ref[i], p = pred[i];
    at(r).n_ref += 1;
    Counts& cp = at(p);
    cp.n_pred += 1;
    cp.tp += r == p;
  }
  std::map<std::int32_t, Counts> out(other.begin(), other.end());
  for (std::int32_t v = 0; v < kFlat; ++v)
    if (flat[v].n_ref > 0 || flat[v].n_pred > 0) out[v] = flat[v];
  return out;
}

EvalSummary summarize(const std::vector<CaseScores>& cases, const std::vector<int>& labels) {
  EvalSummary out;
  // Classes: as asked, else every positive value some reference holds.
  std::set<std::int32_t> class_set(labels.begin(), labels.end());
  if (labels.empty())
    for (const CaseScores& cr : cases)
      for (const auto& [v, c] : cr.counts)
        if (v > 0 && c.n_ref > 0) class_set.insert(v);
  const std::vector<std::int32_t> classes(class_set.begin(), class_set.end());

  Json per_case = Json::array();
  std::string csv = io::csv_record({io::csv_text("case"), io::csv_text("class"), io::csv_text("dice"),
                                    io::csv_text("jaccard"), io::csv_text("tp"), io::csv_text("fp"),
                                    io::csv_text("fn")});
  std::map<std::int32_t, std::vector<double>> dices, jaccards;
  std::map<std::int32_t, std::map<std::string, double>> count_sums;
  std::map<std::int32_t, std::int64_t> class_left_out;
  std::int64_t left_out = 0;
  for (const CaseScores& cr : cases) {
    Json metrics = Json::object();
    for (std::int32_t k : classes) {
      const auto it = cr.counts.find(k);
      const Counts c = it == cr.counts.end() ? Counts{} : it->second;
      const std::int64_t fp = c.n_pred - c.tp, fn = c.n_ref - c.tp;
      const std::int64_t tn = cr.voxels - c.tp - fp - fn;
      const double d = dice_of(c), j = jaccard_of(c);
      // IoU is nnU-Net's name; Jaccard the paper's. Both carry the same number.
      metrics[std::to_string(k)] = {{"Dice", number_or_null(d)}, {"IoU", number_or_null(j)},
                                    {"Jaccard", number_or_null(j)}, {"TP", c.tp},
                                    {"FP", fp}, {"FN", fn}, {"TN", tn}, {"n_ref", c.n_ref}, {"n_pred", c.n_pred}};
      csv += io::csv_record({io::csv_text(cr.name), io::csv_integer(k), io::csv_number(d), io::csv_number(j),
                             io::csv_integer(c.tp), io::csv_integer(fp), io::csv_integer(fn)});
      if (std::isnan(d)) {
        ++class_left_out[k];
        if (k > 0) ++left_out;
      } else {
        dices[k].push_back(d);
        jaccards[k].push_back(j);
      }
      auto& sums = count_sums[k];
      sums["TP"] += static_cast<double>(c.tp);
      sums["FP"] += static_cast<double>(fp);
      sums["FN"] += static_cast<double>(fn);
      sums["TN"] += static_cast<double>(tn);
      sums["n_ref"] += static_cast<double>(c.n_ref);
      sums["n_pred"] += static_cast<double>(c.n_pred);
    }
    per_case.push_back({{"reference_file", cr.ref_path}, {"prediction_file", cr.pred_path}, {"metrics", metrics}});
  }

  Json mean = Json::object();
  std::vector<double> fg_dice, fg_jaccard;
  for (std::int32_t k : classes) {
    const double d = mean_of(dices[k]), j = mean_of(jaccards[k]);
    Json m = {{"Dice", number_or_null(d)}, {"IoU", number_or_null(j)}, {"Jaccard", number_or_null(j)},
              {"cases_left_out", class_left_out[k]}};
    // Counts are averaged over every case, as nnU-Net does (a count is defined even where Dice is not).
    for (const auto& [name, sum] : count_sums[k]) m[name] = sum / static_cast<double>(cases.size());
    mean[std::to_string(k)] = m;
    if (k > 0 && !std::isnan(d)) {
      fg_dice.push_back(d);
      fg_jaccard.push_back(j);
    }
  }
  const double fg_d = mean_of(fg_dice), fg_j = mean_of(fg_jaccard);
  out.foreground_mean = {{"Dice", number_or_null(fg_d)}, {"IoU", number_or_null(fg_j)},
                         {"Jaccard", number_or_null(fg_j)}};

  std::int64_t foreground_classes = 0;
  for (std::int32_t k : classes) foreground_classes += k > 0;
  out.summary = {{"metric_per_case", per_case},
                 {"mean", mean},
                 {"foreground_mean", out.foreground_mean},
                 {"classes", classes},
                 {"cases", cases.size()},
                 // (case, foreground class) pairs where the class is absent from both volumes:
                 // NaN (null) and left out of every mean, nnU-Net's convention.
                 {"left_out", left_out},
                 {"left_out_of", static_cast<std::int64_t>(cases.size()) * foreground_classes}};
  out.csv = std::move(csv);
  out.classes = classes;
  out.left_out = left_out;
  return out;
}

}  // namespace voxgrad::pipeline
