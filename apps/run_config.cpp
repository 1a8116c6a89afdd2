// config.json of a run folder: RunConfig to JSON and back, with errors that name the key.
#include "apps/run_config.h"

#include <charconv>
#include <filesystem>
#include <span>

#include "engine/error.h"
#include "io/gzip_stream.h"

namespace voxgrad::apps {

namespace {

namespace fs = std::filesystem;

Json shape_json(const io::Shape3& s) { return Json::array({s[0], s[1], s[2]}); }

const char* label_resampling_name(io::LabelResampling m) {
  return m == io::LabelResampling::Nearest ? "nearest" : "one_hot_linear";
}

// A key of `j` as T, or an Error naming the file and the key path.
template <class T>
T get(const Json& j, const char* key, const std::string& where) {
  VG_CHECK(j.is_object() && j.contains(key), where << ": missing key \"" << key << "\"");
  try {
    return j.at(key).get<T>();
  } catch (const std::exception&) {
    VG_FAIL(where << ": key \"" << key << "\" has the wrong type (" << j.at(key).type_name() << ")");
  }
}

// An object under `key` by reference (a copy through get<Json> trips GCC 12's uninitialised-use warning).
const Json& child(const Json& j, const char* key, const std::string& where) {
  VG_CHECK(j.is_object() && j.contains(key) && (j.at(key).is_object() || j.at(key).is_array()),
           where << ": missing key \"" << key << "\" (an object or array)");
  return j.at(key);
}

io::Shape3 get_shape(const Json& j, const char* key, const std::string& where) {
  const auto v = get<std::vector<std::int64_t>>(j, key, where);
  VG_CHECK(v.size() == 3, where << ": \"" << key << "\" must hold 3 numbers, not " << v.size());
  return {v[0], v[1], v[2]};
}

}  // namespace

Json run_config_to_json(const RunConfig& c) {
  Json labels = Json::object();
  for (const auto& [value, name] : c.labels) labels[std::to_string(value)] = name;
  Json ct = Json::array();
  for (const io::IntensityStats& s : c.plan.ct_stats)
    ct.push_back({{"lower", s.lower}, {"upper", s.upper}, {"mean", s.mean}, {"std", s.std}});
  const TrainingSettings& t = c.training;
  return {
      {"format", kRunConfigFormat},
      {"dataset", {{"root", c.dataset_root}, {"name", c.dataset_name}, {"channels", c.channels}, {"labels", labels}}},
      {"model",
       {{"in_channels", c.model.in_channels},
        {"classes", c.model.classes},
        {"base_features", c.model.base_features},
        {"levels", c.model.levels},
        {"feature_cap", c.model.feature_cap},
        {"norm", c.model.norm == Norm::Batch ? "batch" : "instance"},
        {"deep_supervision", c.model.deep_supervision}}},
      {"plan",
       {{"target_spacing_zyx", {c.plan.target_spacing[0], c.plan.target_spacing[1], c.plan.target_spacing[2]}},
        {"normalization", io::normalization_name(c.plan.normalization)},
        {"ct_stats", ct},
        {"classes", c.plan.classes},
        {"label_resampling", label_resampling_name(c.plan.label_resampling)}}},
      {"training",
       {{"loss", t.loss},
        {"patch", shape_json(t.patch)},
        {"batch_size", t.batch_size},
        {"epochs", t.epochs},
        {"iters_per_epoch", t.iters_per_epoch},
        {"lr", t.lr},
        {"optim", t.optim},
        {"weight_decay", t.weight_decay},
        {"grad_clip", t.grad_clip},
        {"seed", t.seed},
        {"train_cases", t.train_cases},
        {"val_cases", t.val_cases}}},
  };
}

RunConfig run_config_from_json(const Json& j, const std::string& source) {
  VG_CHECK(j.is_object(), source << ": not a JSON object");
  const auto format = get<std::string>(j, "format", source);
  VG_CHECK(format == kRunConfigFormat,
           source << ": format \"" << format << "\" is not \"" << kRunConfigFormat << "\" (a voxgrad run folder?)");
  RunConfig c;
  const Json& d = child(j, "dataset", source);
  const std::string dw = source + " dataset";
  c.dataset_root = get<std::string>(d, "root", dw);
  c.dataset_name = get<std::string>(d, "name", dw);
  c.channels = get<std::vector<std::string>>(d, "channels", dw);
  for (const auto& [value, name] : child(d, "labels", dw).items()) {
    int number = 0;
    const auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), number);
    VG_CHECK(error == std::errc() && end == value.data() + value.size() && number >= 0,
             dw << ": label key \"" << value << "\" is not a label value (0, 1, ...)");
    VG_CHECK(name.is_string(), dw << ": label " << value << " has no name");
    c.labels[number] = name.get<std::string>();
  }

  const Json& m = child(j, "model", source);
  const std::string mw = source + " model";
  c.model.in_channels = get<int>(m, "in_channels", mw);
  c.model.classes = get<int>(m, "classes", mw);
  c.model.base_features = get<int>(m, "base_features", mw);
  c.model.levels = get<int>(m, "levels", mw);
  c.model.feature_cap = get<int>(m, "feature_cap", mw);
  const auto norm = get<std::string>(m, "norm", mw);
  VG_CHECK(norm == "instance" || norm == "batch", mw << ": norm \"" << norm << "\" is not instance or batch");
  c.model.norm = norm == "batch" ? Norm::Batch : Norm::Instance;
  c.model.deep_supervision = get<bool>(m, "deep_supervision", mw);

  const Json& p = child(j, "plan", source);
  const std::string pw = source + " plan";
  const auto spacing = get<std::vector<double>>(p, "target_spacing_zyx", pw);
  VG_CHECK(spacing.size() == 3, pw << ": target_spacing_zyx must hold 3 numbers");
  c.plan.target_spacing = {spacing[0], spacing[1], spacing[2]};
  c.plan.normalization = io::parse_normalization(get<std::string>(p, "normalization", pw));
  for (const Json& s : child(p, "ct_stats", pw))
    c.plan.ct_stats.push_back({get<double>(s, "lower", pw), get<double>(s, "upper", pw), get<double>(s, "mean", pw),
                               get<double>(s, "std", pw)});
  c.plan.classes = get<int>(p, "classes", pw);
  const auto resampling = get<std::string>(p, "label_resampling", pw);
  VG_CHECK(resampling == "nearest" || resampling == "one_hot_linear",
           pw << ": label_resampling \"" << resampling << "\" is not nearest or one_hot_linear");
  c.plan.label_resampling =
      resampling == "nearest" ? io::LabelResampling::Nearest : io::LabelResampling::OneHotLinear;

  const Json& t = child(j, "training", source);
  const std::string tw = source + " training";
  TrainingSettings& s = c.training;
  s.loss = get<std::string>(t, "loss", tw);
  s.patch = get_shape(t, "patch", tw);
  s.batch_size = get<std::int64_t>(t, "batch_size", tw);
  s.epochs = get<std::int64_t>(t, "epochs", tw);
  s.iters_per_epoch = get<std::int64_t>(t, "iters_per_epoch", tw);
  s.lr = get<double>(t, "lr", tw);
  s.optim = get<std::string>(t, "optim", tw);
  s.weight_decay = get<double>(t, "weight_decay", tw);
  s.grad_clip = get<double>(t, "grad_clip", tw);
  s.seed = get<std::uint64_t>(t, "seed", tw);
  s.train_cases = get<std::vector<std::string>>(t, "train_cases", tw);
  s.val_cases = get<std::vector<std::string>>(t, "val_cases", tw);
  VG_CHECK(c.model.in_channels == static_cast<int>(c.channels.size()) && c.model.classes == c.plan.classes,
           source << ": model, dataset and plan disagree on channels or classes");
  return c;
}

std::string run_file(const std::string& run_dir, const std::string& name) { return (fs::path(run_dir) / name).string(); }

std::string run_config_path(const std::string& run_dir) { return run_file(run_dir, "config.json"); }

void write_run_config(const std::string& run_dir, const RunConfig& config) {
  const std::string text = run_config_to_json(config).dump(2) + "\n";
  io::write_file_bytes(run_config_path(run_dir), std::as_bytes(std::span(text.data(), text.size())));
}

RunConfig read_run_config(const std::string& run_dir) {
  const std::string path = run_config_path(run_dir);
  std::error_code ec;
  VG_CHECK(fs::is_directory(run_dir, ec), run_dir << ": no such run folder");
  VG_CHECK(fs::exists(path, ec), path << ": missing (is " << run_dir << " a voxgrad train --out folder?)");
  const std::string text = io::read_file_bytes(path);
  Json j;
  try {
    j = Json::parse(text);
  } catch (const Json::parse_error& e) {
    VG_FAIL(path << ": not valid JSON (" << e.what() << ")");
  }
  return run_config_from_json(j, path);
}

}  // namespace voxgrad::apps
