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

double ratio(double num, std::int64_t denom) { return denom == 0 ? kNaN : num / static_cast<double>(denom); }

std::size_t size_bin_of(std::int64_t voxels) {
  const auto& bins = component_size_bins();
  for (std::size_t b = 0; b + 1 < bins.size(); ++b)
    if (voxels < bins[b].max_voxels) return b;
  return bins.size() - 1;
}

// Components found and detected, per size bin, for one class over every case.
struct ComponentTally {
  std::vector<std::int64_t> found = std::vector<std::int64_t>(component_size_bins().size(), 0);
  std::vector<std::int64_t> detected = std::vector<std::int64_t>(component_size_bins().size(), 0);
};

Json component_section(const std::vector<std::int32_t>& classes, std::map<std::int32_t, ComponentTally>& tallies) {
  Json bins = Json::array();
  for (const SizeBin& b : component_size_bins())
    bins.push_back({{"bin", b.name},
                    {"min_voxels", b.min_voxels},
                    {"max_voxels", b.max_voxels < 0 ? Json(nullptr) : Json(b.max_voxels - 1)}});
  Json per_class = Json::object();
  for (std::int32_t k : classes) {
    const ComponentTally& t = tallies[k];
    std::int64_t found = 0, detected = 0;
    Json by_size = Json::array();  // in the order of size_bins
    for (std::size_t b = 0; b < t.found.size(); ++b) {
      found += t.found[b];
      detected += t.detected[b];
      by_size.push_back({{"bin", component_size_bins()[b].name},
                         {"components", t.found[b]},
                         {"detected", t.detected[b]},
                         {"recall", number_or_null(ratio(static_cast<double>(t.detected[b]), t.found[b]))}});
    }
    per_class[std::to_string(k)] = {{"components", found},
                                    {"detected", detected},
                                    {"recall", number_or_null(ratio(static_cast<double>(detected), found))},
                                    {"recall_by_size", by_size}};
  }
  return {
      {"connectivity", 26},
      {"detected_rule", "a reference component is detected when at least one of its voxels is predicted as its class"},
      {"size_bins", bins},
      {"per_class", per_class}};
}

Json reliability_of(const ClassCalibration& c) {
  Json bins = Json::array();
  for (int b = 0; b < ClassCalibration::kBins; ++b) {
    const std::int64_t n = c.voxels[b];
    bins.push_back({{"lower", static_cast<double>(b) / ClassCalibration::kBins},
                    {"upper", static_cast<double>(b + 1) / ClassCalibration::kBins},
                    {"voxels", n},
                    {"mean_probability", number_or_null(ratio(c.probability_sum[b], n))},
                    {"fraction_positive", number_or_null(ratio(static_cast<double>(c.positives[b]), n))}});
  }
  return bins;
}

}  // namespace

const std::vector<SizeBin>& component_size_bins() {
  static const std::vector<SizeBin> bins = {
      {"<100", 1, 100}, {"100-999", 100, 1000}, {"1000-9999", 1000, 10000}, {">=10000", 10000, -1}};
  return bins;
}

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
  const bool with_components = !cases.empty() && cases.front().components.has_value();
  const bool with_calibration = !cases.empty() && !cases.front().calibration.empty();
  std::map<std::int32_t, ComponentTally> tallies;
  std::map<std::int32_t, std::vector<double>> eces, hard_ratios, soft_ratios;
  std::map<std::int32_t, ClassCalibration> pooled;
  std::string components_csv =
      io::csv_record({io::csv_text("case"), io::csv_text("class"), io::csv_text("component"), io::csv_text("voxels"),
                      io::csv_text("mm3"), io::csv_text("detected"), io::csv_text("overlap_voxels"),
                      io::csv_text("first_x"), io::csv_text("first_y"), io::csv_text("first_z")});
  for (const CaseScores& cr : cases) {
    Json metrics = Json::object();
    // Components numbered per class, in the order of their first voxels; rows by class, then number.
    std::map<std::int32_t, std::pair<std::int64_t, std::int64_t>> case_components;  // class -> (found, detected)
    if (cr.components)
      for (std::int32_t k : classes)
        for (const ReferenceComponent& rc : *cr.components) {
          if (rc.value != k) continue;
          auto& [found, detected] = case_components[k];
          ++found;
          detected += rc.detected();
          ComponentTally& t = tallies[k];
          const std::size_t b = size_bin_of(rc.voxels);
          ++t.found[b];
          t.detected[b] += rc.detected();
          const auto [nz, ny, nx] = cr.shape;
          const std::int64_t in_volume = rc.first_voxel % (nz * ny * nx);
          components_csv += io::csv_record(
              {io::csv_text(cr.name), io::csv_integer(k), io::csv_integer(found), io::csv_integer(rc.voxels),
               io::csv_number(static_cast<double>(rc.voxels) * cr.voxel_mm3), io::csv_integer(rc.detected()),
               io::csv_integer(rc.overlap), io::csv_integer(in_volume % nx), io::csv_integer(in_volume / nx % ny),
               io::csv_integer(in_volume / (nx * ny))});
        }
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
      Json& entry = metrics[std::to_string(k)];
      if (with_components) {
        entry["components"] = case_components[k].first;
        entry["components_detected"] = case_components[k].second;
      }
      if (with_calibration && static_cast<std::size_t>(k) < cr.calibration.size()) {
        const ClassCalibration& cal = cr.calibration[static_cast<std::size_t>(k)];
        const double ece = cal.expected_calibration_error();
        const double hard = ratio(static_cast<double>(c.n_pred), c.n_ref);
        const double soft = ratio(cal.soft_volume, c.n_ref);
        entry["ECE"] = number_or_null(ece);
        entry["soft_volume"] = cal.soft_volume;
        entry["volume_ratio_hard"] = number_or_null(hard);
        entry["volume_ratio_soft"] = number_or_null(soft);
        if (!std::isnan(ece)) eces[k].push_back(ece);
        if (!std::isnan(hard)) hard_ratios[k].push_back(hard);
        if (!std::isnan(soft)) soft_ratios[k].push_back(soft);
        pooled[k].add(cal);
      }
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
    if (with_calibration) {
      // Means over the cases where each is defined (a ratio needs the class in the reference).
      m["ECE"] = number_or_null(mean_of(eces[k]));
      m["volume_ratio_hard"] = number_or_null(mean_of(hard_ratios[k]));
      m["volume_ratio_soft"] = number_or_null(mean_of(soft_ratios[k]));
    }
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
  if (with_components) {
    out.summary["components"] = component_section(classes, tallies);
    out.components_csv = std::move(components_csv);
  }
  if (with_calibration) {
    Json per_class = Json::object();
    for (std::int32_t k : classes)
      per_class[std::to_string(k)] = {{"ECE_pooled", number_or_null(pooled[k].expected_calibration_error())},
                                      {"reliability", reliability_of(pooled[k])}};
    out.summary["calibration"] = {
        {"bins", ClassCalibration::kBins},
        {"ECE_rule",
         "one class against the rest: voxels binned by the probability of the class in 15 equal-width bins of [0, 1]; "
         "ECE = sum over bins of (voxels in bin / voxels) * |fraction of them in the class - their mean probability|"},
        {"volume_ratio_rule",
         "predicted / reference voxels: hard from the predicted labels, soft from the sum of the probabilities"},
        {"per_class", per_class}};
  }
  out.csv = std::move(csv);
  out.classes = classes;
  out.left_out = left_out;
  return out;
}

}  // namespace voxgrad::pipeline
