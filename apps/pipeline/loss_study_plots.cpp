// The loss study's SVG plots, per preset: the paired per-case Dice differences of every arm against
// cross-entropy (dots, mean, 95% bootstrap interval), validation Dice per epoch with a band over
// the seeds, and the fraction of each reference object found against its size.
#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "apps/pipeline/loss_study.h"
#include "engine/files.h"
#include "io/svg_parts.h"

namespace voxgrad::pipeline::study {

namespace {

namespace svg = io::svg;
using svg::coord;

constexpr double kWidth = 820, kHeight = 500;
constexpr double kLeft = 80, kRight = 640, kTop = 60, kBottom = 420;  // plot area; legend right of it

// Frame, horizontal grid with labels, the y title, and the x labels at the given positions.
void frame(std::ostringstream& out, const svg::Ticks& y_ticks, const svg::Scale& y, const std::string& y_title,
           const std::vector<std::pair<double, std::string>>& x_labels, const std::string& x_title) {
  out << "  <rect x=\"" << coord(kLeft) << "\" y=\"" << coord(kTop) << "\" width=\"" << coord(kRight - kLeft)
      << "\" height=\"" << coord(kBottom - kTop) << "\" fill=\"#fafafa\" stroke=\"#999999\"/>\n";
  for (double v : y_ticks.values()) {
    svg::line(out, kLeft, y(v), kRight, y(v), "#e3e3e3");
    svg::text(out, kLeft - 8, y(v), svg::fixed(v, y_ticks.decimals), "dy=\"0.35em\" text-anchor=\"end\"");
  }
  for (const auto& [x, label] : x_labels)
    svg::text(out, x, kBottom + 18, svg::xml_escape(label), "text-anchor=\"middle\"");
  const double mid = (kTop + kBottom) / 2;
  svg::text(out, 24, mid, svg::xml_escape(y_title),
            "text-anchor=\"middle\" transform=\"rotate(-90 24 " + coord(mid) + ")\" font-size=\"14\"");
  svg::text(out, (kLeft + kRight) / 2, kHeight - 24, svg::xml_escape(x_title),
            "text-anchor=\"middle\" font-size=\"14\"");
}

void legend(std::ostringstream& out, const std::vector<std::string>& names) {
  for (std::size_t i = 0; i < names.size(); ++i) {
    const double y = kTop + 10 + 20 * static_cast<double>(i);
    svg::line(out, kRight + 20, y, kRight + 44, y, svg::series_colour(i), 3);
    svg::text(out, kRight + 52, y, svg::xml_escape(names[i]), "dy=\"0.35em\"");
  }
}

std::string polyline(const std::vector<std::pair<double, double>>& points, const char* colour, double width) {
  std::string pts;
  for (const auto& [x, y] : points) {
    if (!pts.empty()) pts += ' ';
    pts.append(coord(x)).append(",").append(coord(y));
  }
  return "  <polyline fill=\"none\" stroke=\"" + std::string(colour) + "\" stroke-width=\"" + svg::fixed(width, 1) +
         "\" points=\"" + pts + "\"/>\n";
}

// Per case, arm minus cross-entropy, averaged over the seeds both have.
std::vector<double> differences_to(const std::map<std::int64_t, RunResult>& arm,
                                   const std::map<std::int64_t, RunResult>& reference) {
  std::vector<double> diff;
  std::int64_t seeds = 0;
  for (const auto& [seed, run] : arm) {
    const auto ref = reference.find(seed);
    if (ref == reference.end()) continue;
    diff.resize(run.cases.size(), 0.0);
    for (std::size_t c = 0; c < run.cases.size(); ++c) diff[c] += run.cases[c].dice - ref->second.cases[c].dice;
    ++seeds;
  }
  for (double& d : diff) d /= static_cast<double>(seeds);
  return diff;
}

std::string paired_differences(const StudyData& data, const Json& preset) {
  const std::string name = preset["preset"].get<std::string>();
  std::ostringstream out;
  svg::begin(out, kWidth, kHeight, name + ": per-case Dice difference against cross-entropy");
  const auto& runs = data.runs.at(name);
  const auto ce = runs.find("ce");
  std::vector<std::string> arms;
  std::vector<std::vector<double>> diffs;
  if (ce != runs.end())
    for (const Arm& arm : data.plan.arms) {
      const auto a = runs.find(arm.name);
      if (arm.name == "ce" || a == runs.end()) continue;
      std::vector<double> d = differences_to(a->second, ce->second);
      if (d.empty()) continue;
      arms.push_back(arm.name);
      diffs.push_back(std::move(d));
    }
  double lo = 0, hi = 0;
  for (const auto& d : diffs)
    for (double v : d) lo = std::min(lo, v), hi = std::max(hi, v);
  const svg::Ticks y_ticks = svg::nice_ticks(lo, hi, 6);
  const svg::Scale y{y_ticks.lo, y_ticks.hi, kBottom, kTop};
  const double slot = (kRight - kLeft) / static_cast<double>(std::max<std::size_t>(arms.size(), 1));
  std::vector<std::pair<double, std::string>> labels;
  for (std::size_t i = 0; i < arms.size(); ++i)
    labels.emplace_back(kLeft + slot * (static_cast<double>(i) + 0.5), arms[i]);
  frame(out, y_ticks, y, "Dice(arm) − Dice(ce), per test case", labels, "arm (dots: test cases, averaged over seeds)");
  svg::line(out, kLeft, y(0), kRight, y(0), "#555555", 1);
  for (std::size_t i = 0; i < arms.size(); ++i) {
    const double centre = labels[i].first;
    const char* colour = svg::series_colour(i + 1);
    for (std::size_t c = 0; c < diffs[i].size(); ++c) {
      // A fixed spread across the slot so that equal values stay visible.
      const double jitter = (static_cast<double>((c * 7) % 11) / 10.0 - 0.5) * slot * 0.4;
      out << "  <circle cx=\"" << coord(centre + jitter) << "\" cy=\"" << coord(y(diffs[i][c]))
          << "\" r=\"3.0\" fill=\"" << colour << "\" fill-opacity=\"0.6\"/>\n";
    }
    for (const Json& p : preset["pairs"]) {
      const bool forward = p["a"] == arms[i] && p["b"] == "ce";
      const bool backward = p["a"] == "ce" && p["b"] == arms[i];
      if (!forward && !backward) continue;
      const double sign = forward ? 1 : -1;
      const Json& d = p["dice"];
      const double mean = sign * d["mean_difference"].get<double>();
      const double ci0 = sign * d["bootstrap_ci_cases"][0].get<double>();
      const double ci1 = sign * d["bootstrap_ci_cases"][1].get<double>();
      svg::line(out, centre + slot * 0.3, y(ci0), centre + slot * 0.3, y(ci1), "#222222", 2);
      svg::line(out, centre + slot * 0.24, y(mean), centre + slot * 0.36, y(mean), "#222222", 3);
      svg::text(out, centre, kTop + 14, std::string("p Holm ").append(svg::fixed(d["p_holm"].get<double>(), 3)),
                "text-anchor=\"middle\" font-size=\"11\"");
    }
  }
  out << "</svg>\n";
  return out.str();
}

std::string learning_curves(const Json& preset) {
  const std::string name = preset["preset"].get<std::string>();
  std::ostringstream out;
  svg::begin(out, kWidth, kHeight, name + ": validation Dice per epoch (line: mean, band: range over seeds)");
  std::size_t epochs = 1;
  for (const Json& a : preset["arms"])
    if (a.contains("val_dice_by_epoch")) epochs = std::max(epochs, a["val_dice_by_epoch"]["mean"].size());
  const svg::Ticks x_ticks = svg::nice_ticks(1, static_cast<double>(std::max<std::size_t>(epochs, 2)), 8, 1.0);
  const svg::Scale x{x_ticks.lo, x_ticks.hi, kLeft, kRight};
  const svg::Ticks y_ticks;  // 0 .. 1 in steps of 0.2
  const svg::Scale y{0.0, 1.0, kBottom, kTop};
  std::vector<std::pair<double, std::string>> labels;
  for (double v : x_ticks.values()) labels.emplace_back(x(v), svg::fixed(v, 0));
  frame(out, y_ticks, y, "validation foreground Dice", labels, "epoch");
  std::vector<std::string> names;
  for (const Json& a : preset["arms"]) {
    const std::size_t i = names.size();
    names.push_back(a["arm"].get<std::string>());
    if (!a.contains("val_dice_by_epoch")) continue;
    const Json& curve = a["val_dice_by_epoch"];
    std::vector<std::pair<double, double>> mean, band_low, band_high;
    for (std::size_t e = 0; e < curve["mean"].size(); ++e) {
      if (!curve["mean"][e].is_number()) continue;
      const double px = x(static_cast<double>(e + 1));
      mean.emplace_back(px, y(curve["mean"][e].get<double>()));
      band_low.emplace_back(px, y(curve["min"][e].get<double>()));
      band_high.emplace_back(px, y(curve["max"][e].get<double>()));
    }
    std::string pts;
    for (const auto& [px, py] : band_high) pts += coord(px) + "," + coord(py) + " ";
    for (auto it = band_low.rbegin(); it != band_low.rend(); ++it)
      pts += coord(it->first) + "," + coord(it->second) + " ";
    out << "  <polygon fill=\"" << svg::series_colour(i) << "\" fill-opacity=\"0.18\" stroke=\"none\" points=\"" << pts
        << "\"/>\n";
    out << polyline(mean, svg::series_colour(i), 2);
  }
  legend(out, names);
  out << "</svg>\n";
  return out.str();
}

std::string objects_by_size(const Json& preset) {
  const std::string name = preset["preset"].get<std::string>();
  std::ostringstream out;
  svg::begin(out, kWidth, kHeight, name + ": fraction of each reference object found, by its size");
  std::vector<std::string> bins;
  for (const Json& a : preset["arms"])
    if (a.contains("objects_by_size"))
      for (const Json& b : a["objects_by_size"])
        if (std::find(bins.begin(), bins.end(), b["bin"].get<std::string>()) == bins.end())
          bins.push_back(b["bin"].get<std::string>());
  const double slot = (kRight - kLeft) / static_cast<double>(std::max<std::size_t>(bins.size(), 1));
  std::vector<std::pair<double, std::string>> labels;
  for (std::size_t i = 0; i < bins.size(); ++i)
    labels.emplace_back(kLeft + slot * (static_cast<double>(i) + 0.5), bins[i]);
  const svg::Ticks y_ticks;
  const svg::Scale y{0.0, 1.0, kBottom, kTop};
  frame(out, y_ticks, y, "mean fraction of the object's voxels found", labels,
        "object size (voxels; reference components, 26-connected, pooled over seeds and classes)");
  std::vector<std::string> names;
  for (const Json& a : preset["arms"]) {
    const std::size_t i = names.size();
    names.push_back(a["arm"].get<std::string>());
    if (!a.contains("objects_by_size")) continue;
    std::vector<std::pair<double, double>> points;
    for (const Json& b : a["objects_by_size"]) {
      const auto at = std::find(bins.begin(), bins.end(), b["bin"].get<std::string>()) - bins.begin();
      points.emplace_back(labels[static_cast<std::size_t>(at)].first, y(b["mean_found_fraction"].get<double>()));
    }
    out << polyline(points, svg::series_colour(i), 2);
    for (const auto& [px, py] : points)
      out << "  <circle cx=\"" << coord(px) << "\" cy=\"" << coord(py) << "\" r=\"3.5\" fill=\""
          << svg::series_colour(i) << "\"/>\n";
  }
  legend(out, names);
  out << "</svg>\n";
  return out.str();
}

void write(const std::string& path, const std::string& text) { files::write_file_atomically(path, text); }

}  // namespace

std::array<std::string, 3> study_plot_names(const std::string& preset) {
  return {preset + "_paired_differences.svg", preset + "_learning_curves.svg", preset + "_objects_by_size.svg"};
}

std::vector<std::string> write_study_plots(const StudyData& data, const Json& analysis, const std::string& dir) {
  std::vector<std::string> written;
  for (const Json& preset : analysis["per_preset"]) {
    const std::string name = preset["preset"].get<std::string>();
    if (!data.runs.count(name)) continue;
    const std::array<std::string, 3> names = study_plot_names(name);
    const std::array<std::string, 3> svgs = {paired_differences(data, preset), learning_curves(preset),
                                             objects_by_size(preset)};
    for (std::size_t i = 0; i < names.size(); ++i) {
      write(dir + "/" + names[i], svgs[i]);
      written.push_back(dir + "/" + names[i]);
    }
  }
  return written;
}

}  // namespace voxgrad::pipeline::study
