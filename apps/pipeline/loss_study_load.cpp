// Reading a loss study folder: plan.json, every finished run's evaluation (summary.csv,
// summary.json, summary_components.csv), learning curve (run/log.csv) and timing (finished.json),
// and the probe's gradients. Every file the tools wrote is read by its header names, so a column
// added later does not break an older study.
#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "apps/pipeline/loss_study.h"
#include "engine/error.h"
#include "io/gzip_stream.h"
#include "io/nifti.h"

namespace voxgrad::pipeline::study {

namespace {

namespace fs = std::filesystem;

Json read_json(const std::string& path) {
  // The study's files nest fewer than ten levels; a limit keeps copying, dump() and every other
  // recursive walk of a hostile file's tree off the end of the stack.
  constexpr int kDeepest = 32;
  const auto limit_depth = [&](int depth, Json::parse_event_t event, Json&) {
    if (event == Json::parse_event_t::object_start || event == Json::parse_event_t::array_start)
      VG_INPUT_CHECK(depth < kDeepest, path << ": values nested more than " << kDeepest << " deep");
    return true;
  };
  const std::string text = io::read_file_bytes(path);
  try {
    return Json::parse(text, limit_depth);
  } catch (const Json::exception& e) {
    VG_INPUT_FAIL(path << ": not valid JSON (" << e.what() << ")");
  }
}

// A CSV table the tools wrote: a header row, then records. Quoted cells (RFC 4180) are unquoted;
// cells are kept as text.
struct Table {
  std::string path;
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;

  std::size_t column(const std::string& name) const {
    const auto it = std::find(header.begin(), header.end(), name);
    VG_INPUT_CHECK(it != header.end(), path << ": no column '" << name << "'");
    return static_cast<std::size_t>(it - header.begin());
  }
  double number(std::size_t row, std::size_t col) const {
    const std::string& cell = rows[row][col];
    if (cell == "nan" || cell.empty()) return NAN;
    std::istringstream in(cell);
    in.imbue(std::locale::classic());
    double v = 0;
    in >> v;
    VG_INPUT_CHECK(!in.fail(), path << ": row " << row + 2 << ": '" << cell << "' is not a number");
    return v;
  }
};

std::vector<std::string> split_record(const std::string& line) {
  std::vector<std::string> cells(1);
  bool quoted = false;
  for (std::size_t i = 0; i < line.size(); ++i) {
    const char ch = line[i];
    if (quoted) {
      if (ch == '"' && i + 1 < line.size() && line[i + 1] == '"')
        cells.back() += '"', ++i;
      else if (ch == '"')
        quoted = false;
      else
        cells.back() += ch;
    } else if (ch == '"') {
      quoted = true;
    } else if (ch == ',') {
      cells.emplace_back();
    } else if (ch != '\r') {
      cells.back() += ch;
    }
  }
  return cells;
}

Table read_table(const std::string& path) {
  Table t;
  t.path = path;
  std::istringstream in(io::read_file_bytes(path));
  std::string line;
  VG_INPUT_CHECK(static_cast<bool>(std::getline(in, line)), path << ": empty (a CSV with a header row expected)");
  t.header = split_record(line);
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    t.rows.push_back(split_record(line));
    VG_INPUT_CHECK(t.rows.back().size() == t.header.size(), path << ": row " << t.rows.size() + 1 << " has "
                                                                 << t.rows.back().size() << " cells, the header "
                                                                 << t.header.size());
  }
  return t;
}

std::vector<std::string> string_list(const Json& j, const std::string& key, const std::string& path) {
  VG_INPUT_CHECK(j.contains(key) && j[key].is_array(), path << ": '" << key << "' must be a list");
  std::vector<std::string> out;
  for (const Json& v : j[key]) {
    VG_INPUT_CHECK(v.is_string(), path << ": '" << key << "' must hold strings");
    out.push_back(v.get<std::string>());
  }
  return out;
}

// The per-case scores of summary.csv (case, class, dice, jaccard, ...): foreground means over the
// classes with a defined Dice (both empty gives NaN and is left out, as nnU-Net's means do).
void read_case_scores(const std::string& path, RunResult& run) {
  const Table t = read_table(path);
  const std::size_t c_case = t.column("case"), c_class = t.column("class"), c_dice = t.column("dice"),
                    c_jaccard = t.column("jaccard");
  std::map<std::string, std::map<std::int32_t, std::array<double, 2>>> per_case;
  for (std::size_t r = 0; r < t.rows.size(); ++r) {
    const auto label = static_cast<std::int32_t>(t.number(r, c_class));
    per_case[t.rows[r][c_case]][label] = {t.number(r, c_dice), t.number(r, c_jaccard)};
    if (std::find(run.classes.begin(), run.classes.end(), label) == run.classes.end()) run.classes.push_back(label);
  }
  std::sort(run.classes.begin(), run.classes.end());
  for (const auto& [name, by_class] : per_case) {
    CaseScores s;
    s.name = name;
    double dice_sum = 0, jaccard_sum = 0;
    int defined = 0;
    for (std::int32_t label : run.classes) {
      const auto it = by_class.find(label);
      const double dice = it == by_class.end() ? NAN : it->second[0];
      s.dice_per_class.push_back(dice);
      if (std::isfinite(dice)) dice_sum += dice, jaccard_sum += it->second[1], ++defined;
    }
    s.dice = defined ? dice_sum / defined : NAN;
    s.jaccard = defined ? jaccard_sum / defined : NAN;
    run.cases.push_back(std::move(s));
  }
}

void read_components(const std::string& path, RunResult& run) {
  const Table t = read_table(path);
  const std::size_t c_class = t.column("class"), c_voxels = t.column("voxels"), c_overlap = t.column("overlap_voxels");
  for (std::size_t r = 0; r < t.rows.size(); ++r)
    run.components.push_back({static_cast<std::int32_t>(t.number(r, c_class)),
                              static_cast<std::int64_t>(t.number(r, c_voxels)),
                              static_cast<std::int64_t>(t.number(r, c_overlap))});
}

void read_calibration(const std::string& path, RunResult& run) {
  const Json summary = read_json(path);
  VG_INPUT_CHECK(summary.contains("mean") && summary["mean"].is_object(), path << ": no 'mean' per class");
  for (std::int32_t label : run.classes) {
    const std::string key = std::to_string(label);
    if (!summary["mean"].contains(key)) continue;
    const Json& m = summary["mean"][key];
    auto value = [&](const char* name) {
      return m.contains(name) && m[name].is_number() ? m[name].get<double>() : static_cast<double>(NAN);
    };
    run.calibration.push_back({label, value("ECE"), value("volume_ratio_hard"), value("volume_ratio_soft")});
  }
}

void read_learning_curve(const std::string& path, RunResult& run) {
  const Table t = read_table(path);
  const std::size_t c_dice = t.column("val_dice");
  for (std::size_t r = 0; r < t.rows.size(); ++r) run.val_dice.push_back(t.number(r, c_dice));
}

RunResult read_run(const std::string& dir) {
  RunResult run;
  const Json finished = read_json(dir + "/finished.json");
  run.train_seconds = finished.value("train_seconds", 0.0);
  run.seconds = finished.value("seconds", 0.0);
  read_case_scores(dir + "/eval/summary.csv", run);
  read_calibration(dir + "/eval/summary.json", run);
  if (fs::exists(dir + "/eval/summary_components.csv")) read_components(dir + "/eval/summary_components.csv", run);
  read_learning_curve(dir + "/run/log.csv", run);
  return run;
}

// The probe of one preset: per probe arm, every case's gradient volume against the case's labels.
std::vector<ProbeResult> read_probe(const std::string& preset_dir, const std::vector<std::string>& arms) {
  std::vector<ProbeResult> out;
  for (const std::string& arm : arms) {
    const std::string dir = preset_dir + "/probe/grad/" + arm;
    if (!fs::is_directory(dir)) continue;
    std::vector<std::string> cases;
    for (const auto& entry : fs::directory_iterator(dir)) {
      const std::string name = entry.path().filename().string();
      if (name.size() > 5 && name.ends_with(".json")) cases.push_back(name.substr(0, name.size() - 5));
    }
    std::sort(cases.begin(), cases.end());
    ProbeResult probe;
    probe.arm = arm;
    double loss_sum = 0;
    for (const std::string& c : cases) {
      const Json grad_json = read_json(dir + "/" + c + ".json");
      loss_sum += grad_json.value("loss", 0.0);
      const io::Volume grad = io::read_nifti(dir + "/" + c + ".nii.gz");
      const io::Volume label = io::read_nifti(preset_dir + "/dataset/labelsTs/" + c + ".nii.gz");
      const Tensor g = grad.to_float32();
      const Tensor l = label.to_labels();
      const Shape& gs = g.shape();
      VG_INPUT_CHECK(gs.size() == 4 && l.shape().size() == 3 && gs[1] == l.shape()[0] && gs[2] == l.shape()[1] &&
                         gs[3] == l.shape()[2],
                     dir << "/" << c << ".nii.gz: a gradient (X,Y,Z,K) on its label's grid expected");
      accumulate(probe.split,
                 gradient_mass_split(g.data<float>(), gs[0], l.data<std::int32_t>(), {gs[1], gs[2], gs[3]}));
      ++probe.cases;
    }
    if (probe.cases == 0) continue;
    probe.mean_loss = loss_sum / static_cast<double>(probe.cases);
    out.push_back(std::move(probe));
  }
  return out;
}

// An entry of an earlier study.json's per_preset list holds what analyze_study writes and the
// report reads, of the right kinds: a file of another version or edited by hand is refused here,
// not met half-way through the report.
void check_preset_entry(const Json& p, const std::string& path) {
  auto has = [&](const Json& j, const char* key, Json::value_t kind) {
    return j.is_object() && j.contains(key) && j[key].type() == kind;
  };
  VG_INPUT_CHECK(has(p, "preset", Json::value_t::string), path << ": a 'per_preset' entry has no 'preset' name");
  const std::string name = p["preset"].get<std::string>();
  for (const char* key : {"arms", "pairs", "equivalence", "gradient_probe"})
    VG_INPUT_CHECK(has(p, key, Json::value_t::array), path << ": preset " << name << " has no '" << key << "' list");
  for (const Json& arm : p["arms"])
    VG_INPUT_CHECK(has(arm, "arm", Json::value_t::string) && has(arm, "group", Json::value_t::string) &&
                       has(arm, "seeds_done", Json::value_t::array),
                   path << ": preset " << name << " has an arm without 'arm', 'group' and 'seeds_done'");
  const bool verdict = has(p, "verdict", Json::value_t::object) &&
                       has(p["verdict"], "outcome", Json::value_t::string) &&
                       has(p["verdict"], "complete", Json::value_t::boolean) &&
                       has(p["verdict"], "surrogates_beat_cross_entropy", Json::value_t::boolean) &&
                       has(p["verdict"], "surrogates_equivalent", Json::value_t::boolean) &&
                       has(p["verdict"], "failures", Json::value_t::array);
  VG_INPUT_CHECK(verdict, path << ": preset " << name << " has no complete 'verdict'");
  // The rest is read where results.md is written: an entry it cannot report is refused now.
  try {
    (void)preset_results_markdown(p);
  } catch (const Json::exception& e) {
    VG_INPUT_FAIL(path << ": preset " << name << " cannot be reported (" << e.what()
                       << "); edited by hand, or written by another version of voxgrad?");
  }
}

}  // namespace

Plan read_plan(const std::string& path) {
  VG_INPUT_CHECK(fs::exists(path), path << ": missing (tools/loss-study writes it; is this a study folder?)");
  const Json j = read_json(path);
  Plan plan;
  VG_INPUT_CHECK(j.contains("tier") && j["tier"].is_string(), path << ": 'tier' must be a string");
  plan.tier = j["tier"].get<std::string>();
  plan.presets = string_list(j, "presets", path);
  VG_INPUT_CHECK(j.contains("seeds") && j["seeds"].is_array(), path << ": 'seeds' must be a list");
  for (const Json& s : j["seeds"]) {
    VG_INPUT_CHECK(s.is_number_integer(), path << ": 'seeds' must hold whole numbers");
    plan.seeds.push_back(s.get<std::int64_t>());
  }
  VG_INPUT_CHECK(j.contains("arms") && j["arms"].is_array() && !j["arms"].empty(), path << ": 'arms' must be a list");
  for (const Json& a : j["arms"]) {
    VG_INPUT_CHECK(a.is_object() && a.contains("name") && a["name"].is_string(), path << ": every arm needs a 'name'");
    plan.arms.push_back(
        {a["name"].get<std::string>(), a.value("group", std::string()), a.value("flags", std::string())});
  }
  if (j.contains("probe_arms")) plan.probe_arms = string_list(j, "probe_arms", path);
  plan.design = j.value("design", Json::object());
  return plan;
}

EarlierStudy read_earlier_study(const std::string& folder) {
  const std::string study = folder + "/study.json", per_case = folder + "/per_case.csv";
  VG_INPUT_CHECK(fs::exists(study), study << ": missing (is " << folder << " a folder `voxgrad study` wrote?)");
  VG_INPUT_CHECK(fs::exists(per_case), per_case << ": missing (is " << folder << " a folder `voxgrad study` wrote?)");
  EarlierStudy earlier{folder, read_json(study), io::read_file_bytes(per_case)};
  VG_INPUT_CHECK(
      earlier.study.is_object() && earlier.study.contains("per_preset") && earlier.study["per_preset"].is_array(),
      study << ": no 'per_preset' list (is it a study.json?)");
  for (const Json& p : earlier.study["per_preset"]) check_preset_entry(p, study);
  return earlier;
}

StudyData load_study(const std::string& work) {
  StudyData data;
  data.work = work;
  data.plan = read_plan(work + "/plan.json");
  for (const std::string& preset : data.plan.presets) {
    const std::string preset_dir = work + "/" + preset;
    for (const Arm& arm : data.plan.arms)
      for (std::int64_t seed : data.plan.seeds) {
        const std::string dir = preset_dir + "/" + arm.name + "/seed" + std::to_string(seed);
        if (fs::exists(dir + "/finished.json")) data.runs[preset][arm.name][seed] = read_run(dir);
      }
    data.probes[preset] = read_probe(preset_dir, data.plan.probe_arms);
  }
  return data;
}

}  // namespace voxgrad::pipeline::study
