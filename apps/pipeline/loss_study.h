// The loss study's results and their analysis (`voxgrad study`, fed by tools/loss-study). A study
// folder holds plan.json (tier, presets, seeds, arms, design) and one folder per (preset, arm,
// seed) with the train run, its evaluation and finished.json once done; the probe folder of each
// preset holds every loss's gradient on one half-trained network. load_study reads what is done;
// analyze_study applies the project's statistics (study_statistics.h) and returns study.json.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "apps/pipeline/gradient_mass.h"
#include "engine/json.h"

namespace voxgrad::pipeline::study {

struct Arm {
  std::string name;   // "dice", "wce_10", "ce_lovasz", ...
  std::string group;  // cross-entropy, weighted-cross-entropy, surrogate, fine-tuned-surrogate
  std::string flags;  // the loss flags train was given
};

struct Plan {
  std::string tier;
  std::vector<std::string> presets;
  std::vector<std::int64_t> seeds;
  std::vector<Arm> arms;
  std::vector<std::string> probe_arms;
  Json design;  // as the script wrote it
};

// One test case's scores: foreground means (over the classes the evaluation scored) and per class.
struct CaseScores {
  std::string name;
  double dice = 0, jaccard = 0;
  std::vector<double> dice_per_class;  // in Plan order of classes (eval's "classes")
};

// One reference component: its class, its size and how many of its voxels were found.
struct ComponentRecord {
  std::int32_t label = 0;
  std::int64_t voxels = 0, overlap = 0;
};

// Per foreground class, the means over the test cases eval reports.
struct ClassCalibration {
  std::int32_t label = 0;
  double ece = 0, volume_ratio_hard = 0, volume_ratio_soft = 0;
};

// One finished (preset, arm, seed).
struct RunResult {
  std::vector<std::int32_t> classes;  // the foreground classes scored
  std::vector<CaseScores> cases;      // sorted by name
  std::vector<double> val_dice;       // per epoch, from the run's log.csv
  std::vector<ComponentRecord> components;
  std::vector<ClassCalibration> calibration;
  double train_seconds = 0, seconds = 0;
};

// One probe arm: its gradient mass split summed over the probe cases, and its mean loss.
struct ProbeResult {
  std::string arm;
  GradientMassSplit split;
  std::int64_t cases = 0;
  double mean_loss = 0;
};

struct StudyData {
  std::string work;
  Plan plan;
  // runs[preset][arm][seed], only finished runs.
  std::map<std::string, std::map<std::string, std::map<std::int64_t, RunResult>>> runs;
  std::map<std::string, std::vector<ProbeResult>> probes;  // per preset, in probe-arm order
};

// Reads WORK/plan.json; an InputError names the file and what is wrong.
Plan read_plan(const std::string& path);

// Everything finished under `work`. Runs without finished.json are not read; a finished run whose
// files are unreadable is an InputError naming the file.
StudyData load_study(const std::string& work);

// What an earlier `voxgrad study` wrote (its folder's study.json and per_case.csv). A study whose
// presets were run on different machines, not all of whose work folders survive, takes from it
// the presets that have no finished run in this one (analyze_study); both must have one plan.
struct EarlierStudy {
  std::string folder;
  Json study;
  std::string per_case_csv;  // as written, header first
};

// FOLDER/study.json and FOLDER/per_case.csv; an InputError names a missing or unreadable file.
EarlierStudy read_earlier_study(const std::string& folder);

// The margin of the equivalence test between surrogates, in Dice.
constexpr double kEquivalenceMargin = 0.01;
// The significance level of the acceptance rule (after Holm's correction).
constexpr double kAlpha = 0.05;
// Bootstrap resamples and their seed (fixed: the same study gives the same intervals).
constexpr std::int64_t kBootstrapResamples = 10000;
constexpr std::uint64_t kBootstrapSeed = 20190101;

// study.json: the plan, how many runs are done, and per preset the arms' means, every pair's tests
// (per metric: exact Wilcoxon with Holm's correction, the paired mean difference with bootstrap
// intervals over cases and over seeds and cases), TOST between surrogates, Kendall's tau between
// the Dice and Jaccard rankings, calibration, recall by object size, the gradient mass split,
// and the acceptance rule's verdict. With `earlier`, a preset without a finished run in `data` is
// the earlier study's analysis of it, marked "carried_from", when the earlier study had runs of it;
// an earlier study with another tier, seeds, arms or design is an InputError.
Json analyze_study(const StudyData& data, const EarlierStudy* earlier = nullptr);

// One row per (preset, arm, seed, case): the scores the analysis averages; a preset that
// `analysis` carried from `earlier` has the earlier study's rows.
std::string per_case_csv(const StudyData& data, const Json& analysis = Json(), const EarlierStudy* earlier = nullptr);

// results.md: the verdict and the tables of study.json, for people.
std::string results_markdown(const Json& analysis);
// One preset's section of results.md (a study.json "per_preset" entry); a field missing or of
// another kind is a Json::exception.
std::string preset_results_markdown(const Json& preset);

// The file names of a preset's plots, in the order write_study_plots writes them: paired per-case
// differences against cross-entropy, learning curves with seed bands, and the found fraction of
// reference objects against their size.
std::array<std::string, 3> study_plot_names(const std::string& preset);

// The SVG plots (study_plot_names) of every preset with runs in `data`, in `dir`. Returns the
// files written.
std::vector<std::string> write_study_plots(const StudyData& data, const Json& analysis, const std::string& dir);

}  // namespace voxgrad::pipeline::study
