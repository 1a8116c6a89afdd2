// config.json of a run folder: RunConfig to JSON and back, with errors that name the key.
#include "apps/pipeline/run_config.h"

#include <charconv>
#include <cmath>
#include <filesystem>
#include <limits>
#include <span>

#include "engine/checkpoint.h"
#include "engine/error.h"
#include "engine/losses.h"
#include "io/gzip_stream.h"

namespace voxgrad::pipeline {

namespace {

namespace fs = std::filesystem;

// Bounds on what config.json may say, so that no number read from it can wrap or size a huge
// allocation: label values fit the uint8 label maps predict writes.
constexpr std::int64_t kMaxLabelValue = 255;
constexpr std::int64_t kMaxChannels = 1024;
constexpr std::int64_t kMaxPatchSide = 4096;
constexpr std::int64_t kMaxCount = std::int64_t{1} << 40;
constexpr double kHuge = 1e30;

Json shape_json(const Shape3& s) { return Json::array({s[0], s[1], s[2]}); }

const char* label_resampling_name(LabelResampling m) {
  return m == LabelResampling::Nearest ? "nearest" : "one_hot_linear";
}

// A key of `j` as T, or an InputError naming the file and the key path.
template <class T>
T get(const Json& j, const char* key, const std::string& where) {
  VG_INPUT_CHECK(j.is_object() && j.contains(key), where << ": missing key \"" << key << "\"");
  try {
    return j.at(key).get<T>();
  } catch (const std::exception&) {
    VG_INPUT_FAIL(where << ": key \"" << key << "\" has the wrong type (" << j.at(key).type_name() << ")");
  }
}

// A whole number in [lo, hi]: nlohmann's get<int> would truncate 2^40 or 1.5 without a word.
std::int64_t whole_number(const Json& v, const std::string& name, std::int64_t lo, std::int64_t hi,
                          const std::string& where) {
  bool ok = false;
  std::int64_t n = 0;
  if (v.is_number_integer() && !v.is_number_unsigned()) {
    n = v.get<std::int64_t>();
    ok = true;
  } else if (v.is_number_unsigned()) {
    const auto u = v.get<std::uint64_t>();
    ok = u <= static_cast<std::uint64_t>(hi);
    n = ok ? static_cast<std::int64_t>(u) : hi;
  }
  VG_INPUT_CHECK(ok && n >= lo && n <= hi,
                 where << ": \"" << name << "\" is " << v.dump() << "; it must be a whole number from " << lo << " to "
                       << hi);
  return n;
}

std::int64_t get_int(const Json& j, const char* key, std::int64_t lo, std::int64_t hi, const std::string& where) {
  VG_INPUT_CHECK(j.is_object() && j.contains(key), where << ": missing key \"" << key << "\"");
  return whole_number(j.at(key), key, lo, hi, where);
}

// A seed: any whole number from 0 to 2^64 - 1 (nlohmann stores the large ones as unsigned).
std::uint64_t get_seed(const Json& j, const char* key, const std::string& where) {
  VG_INPUT_CHECK(j.is_object() && j.contains(key), where << ": missing key \"" << key << "\"");
  const Json& v = j.at(key);
  const bool ok = v.is_number_unsigned() || (v.is_number_integer() && v.get<std::int64_t>() >= 0);
  VG_INPUT_CHECK(ok, where << ": \"" << key << "\" is " << v.dump() << "; it must be a whole number from 0 to "
                           << std::numeric_limits<std::uint64_t>::max());
  return v.get<std::uint64_t>();
}

// A finite number in [lo, hi] (`above_lo`: strictly above lo).
double get_number(const Json& j, const char* key, double lo, double hi, bool above_lo, const std::string& where) {
  const auto v = get<double>(j, key, where);
  const bool in_range = std::isfinite(v) && (above_lo ? v > lo : v >= lo) && v <= hi;
  VG_INPUT_CHECK(in_range, where << ": \"" << key << "\" is " << v << "; it must be a finite number "
                                 << (above_lo ? "above " : "from ") << lo << (above_lo ? " and up to " : " to ") << hi);
  return v;
}

// An object under `key` by reference (a copy through get<Json> trips GCC 12's uninitialised-use warning).
const Json& child(const Json& j, const char* key, const std::string& where) {
  VG_INPUT_CHECK(j.is_object() && j.contains(key) && (j.at(key).is_object() || j.at(key).is_array()),
                 where << ": missing key \"" << key << "\" (an object or array)");
  return j.at(key);
}

pipeline::Shape3 get_shape(const Json& j, const char* key, const std::string& where) {
  const Json& v = child(j, key, where);
  VG_INPUT_CHECK(v.is_array() && v.size() == 3, where << ": \"" << key << "\" must hold 3 numbers");
  Shape3 s{};
  for (int a = 0; a < 3; ++a) s[a] = whole_number(v[a], key, 1, kMaxPatchSide, where);
  return s;
}

// What a run recorded before its loss settings were: the defaults it ran with.
LossSettings legacy_loss_settings(const std::string& loss, const std::string& where) {
  LossKind kind;
  try {
    kind = parse_loss_kind(loss);
  } catch (const Error& e) {
    VG_INPUT_FAIL(where << ": \"loss\": " << e.what());
  }
  LossSettings s;
  s.classes = class_selection_name(default_class_selection(kind));
  s.aggregate = aggregate_name(default_aggregate(kind));
  return s;
}

LossSettings loss_settings_from_json(const Json& j, const std::string& where) {
  LossSettings s;
  s.classes = get<std::string>(j, "classes", where);
  s.aggregate = get<std::string>(j, "aggregate", where);
  try {
    parse_class_selection(s.classes);
    parse_aggregate(s.aggregate);
  } catch (const Error& e) {
    VG_INPUT_FAIL(where << ": " << e.what());
  }
  s.eps = get_number(j, "eps", 0, kHuge, false, where);
  s.class_weights = get<std::vector<double>>(j, "class_weights", where);
  for (double w : s.class_weights)
    VG_INPUT_CHECK(std::isfinite(w) && w >= 0, where << ": class_weights must be finite and >= 0");
  s.class_weights_from = get<std::string>(j, "class_weights_from", where);
  s.ce_weight = get_number(j, "ce_weight", 0, kHuge, false, where);
  s.dice_weight = get_number(j, "dice_weight", 0, kHuge, false, where);
  VG_INPUT_CHECK(j.contains("ignore_label"), where << ": missing key \"ignore_label\"");
  if (!j.at("ignore_label").is_null())
    s.ignore_label = static_cast<std::int32_t>(get_int(j, "ignore_label", 0, kMaxLabelValue, where));
  return s;
}

}  // namespace

LossOptions loss_options_of(const LossSettings& s) {
  LossOptions lo;
  lo.classes = parse_class_selection(s.classes);
  lo.aggregate = parse_aggregate(s.aggregate);
  lo.eps = s.eps;
  lo.class_weights = s.class_weights;
  lo.ce_weight = s.ce_weight;
  lo.dice_weight = s.dice_weight;
  lo.ignore_label = s.ignore_label;
  return lo;
}

Json loss_settings_to_json(const LossSettings& s) {
  return {{"classes", s.classes},
          {"aggregate", s.aggregate},
          {"eps", s.eps},
          {"class_weights", s.class_weights},
          {"class_weights_from", s.class_weights_from},
          {"ce_weight", s.ce_weight},
          {"dice_weight", s.dice_weight},
          {"ignore_label", s.ignore_label ? Json(*s.ignore_label) : Json(nullptr)}};
}

Json run_config_to_json(const RunConfig& c) {
  Json labels = Json::object();
  for (const auto& [value, name] : c.labels) labels[std::to_string(value)] = name;
  Json ct = Json::array();
  for (const IntensityStats& s : c.plan.ct_stats)
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
        {"normalization", normalization_name(c.plan.normalization)},
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
        {"data_seed", t.data_seed},
        {"init_from", t.init_from.empty() ? Json(nullptr) : Json(t.init_from)},
        {"loss_options", loss_settings_to_json(t.loss_options)},
        {"log_grad_norms", t.log_grad_norms},
        {"train_cases", t.train_cases},
        {"val_cases", t.val_cases}}},
  };
}

RunConfig run_config_from_json(const Json& j, const std::string& source) {
  VG_INPUT_CHECK(j.is_object(), source << ": not a JSON object");
  const auto format = get<std::string>(j, "format", source);
  VG_INPUT_CHECK(format == kRunConfigFormat,
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
    VG_INPUT_CHECK(error == std::errc() && end == value.data() + value.size() && number >= 0 &&
                       number <= kMaxLabelValue,
                   dw << ": label key \"" << value << "\" is not a label value (0 to " << kMaxLabelValue << ")");
    VG_INPUT_CHECK(name.is_string(), dw << ": label " << value << " has no name");
    c.labels[number] = name.get<std::string>();
  }

  const Json& m = child(j, "model", source);
  const std::string mw = source + " model";
  c.model.in_channels = static_cast<int>(get_int(m, "in_channels", 1, kMaxChannels, mw));
  c.model.classes = static_cast<int>(get_int(m, "classes", 2, kMaxLabelValue + 1, mw));
  c.model.base_features = static_cast<int>(get_int(m, "base_features", 1, 320, mw));
  c.model.levels = static_cast<int>(get_int(m, "levels", 2, 7, mw));
  c.model.feature_cap = static_cast<int>(get_int(m, "feature_cap", 1, 4096, mw));
  const auto norm = get<std::string>(m, "norm", mw);
  VG_INPUT_CHECK(norm == "instance" || norm == "batch", mw << ": norm \"" << norm << "\" is not instance or batch");
  c.model.norm = norm == "batch" ? Norm::Batch : Norm::Instance;
  c.model.deep_supervision = get<bool>(m, "deep_supervision", mw);

  const Json& p = child(j, "plan", source);
  const std::string pw = source + " plan";
  const auto spacing = get<std::vector<double>>(p, "target_spacing_zyx", pw);
  VG_INPUT_CHECK(spacing.size() == 3, pw << ": target_spacing_zyx must hold 3 numbers");
  for (double mm : spacing)
    VG_INPUT_CHECK(std::isfinite(mm) && mm > 0 && mm <= 1e6,
                   pw << ": target_spacing_zyx holds " << mm << "; spacings must be finite millimetres above 0");
  c.plan.target_spacing = {spacing[0], spacing[1], spacing[2]};
  c.plan.normalization = parse_normalization(get<std::string>(p, "normalization", pw));
  for (const Json& s : child(p, "ct_stats", pw))
    c.plan.ct_stats.push_back({get_number(s, "lower", -kHuge, kHuge, false, pw),
                               get_number(s, "upper", -kHuge, kHuge, false, pw),
                               get_number(s, "mean", -kHuge, kHuge, false, pw),
                               get_number(s, "std", 0, kHuge, true, pw)});
  c.plan.classes = static_cast<int>(get_int(p, "classes", 2, kMaxLabelValue + 1, pw));
  const auto resampling = get<std::string>(p, "label_resampling", pw);
  VG_INPUT_CHECK(resampling == "nearest" || resampling == "one_hot_linear",
           pw << ": label_resampling \"" << resampling << "\" is not nearest or one_hot_linear");
  c.plan.label_resampling = resampling == "nearest" ? LabelResampling::Nearest : LabelResampling::OneHotLinear;

  const Json& t = child(j, "training", source);
  const std::string tw = source + " training";
  TrainingSettings& s = c.training;
  s.loss = get<std::string>(t, "loss", tw);
  s.patch = get_shape(t, "patch", tw);
  s.batch_size = get_int(t, "batch_size", 1, kMaxCount, tw);
  s.epochs = get_int(t, "epochs", 1, kMaxCount, tw);
  s.iters_per_epoch = get_int(t, "iters_per_epoch", 1, kMaxCount, tw);
  // Their product counts steps: it must not overflow either.
  VG_INPUT_CHECK(s.epochs <= kMaxCount / s.iters_per_epoch,
                 tw << ": epochs x iters_per_epoch is more steps than voxgrad counts");
  s.lr = get_number(t, "lr", 0, kHuge, true, tw);
  s.optim = get<std::string>(t, "optim", tw);
  s.weight_decay = get_number(t, "weight_decay", 0, kHuge, false, tw);
  s.grad_clip = get_number(t, "grad_clip", 0, kHuge, true, tw);
  s.seed = get_seed(t, "seed", tw);
  s.data_seed = t.contains("data_seed") ? get_seed(t, "data_seed", tw) : s.seed;
  s.init_from = t.contains("init_from") && !t.at("init_from").is_null() ? get<std::string>(t, "init_from", tw) : "";
  s.loss_options = t.contains("loss_options")
                       ? loss_settings_from_json(child(t, "loss_options", tw), tw + " loss_options")
                       : legacy_loss_settings(s.loss, tw);
  s.log_grad_norms = t.contains("log_grad_norms") && get<bool>(t, "log_grad_norms", tw);
  s.train_cases = get<std::vector<std::string>>(t, "train_cases", tw);
  s.val_cases = get<std::vector<std::string>>(t, "val_cases", tw);
  VG_INPUT_CHECK(c.model.in_channels == static_cast<int>(c.channels.size()) && c.model.classes == c.plan.classes,
           source << ": model, dataset and plan disagree on channels or classes");
  return c;
}

std::string run_file(const std::string& run_dir, const std::string& name) {
  return (fs::path(run_dir) / name).string();
}

std::string run_config_path(const std::string& run_dir) { return run_file(run_dir, "config.json"); }

void load_run_weights(UNet3d& network, const std::string& run_dir, const std::string& checkpoint) {
  std::error_code ec;
  if (checkpoint == "best") {
    const std::string path = run_file(run_dir, "model_best.safetensors");
    VG_INPUT_CHECK(fs::exists(path, ec), path << ": missing (the run has no validated epoch yet; try "
                                                 "--checkpoint latest)");
    load_unet3d_model(path, network);
    return;
  }
  VG_USAGE_CHECK(checkpoint == "latest", "--checkpoint '" << checkpoint << "': choose best or latest");
  const std::string path = run_file(run_dir, "checkpoint_latest.safetensors");
  VG_INPUT_CHECK(fs::exists(path, ec), path << ": missing (is " << run_dir << " a voxgrad train --out folder?)");
  load_checkpoint_weights(path, network, /*strict=*/true, unet3d_migrate_names);
}

void write_run_config(const std::string& run_dir, const RunConfig& config) {
  const std::string text = run_config_to_json(config).dump(2) + "\n";
  io::write_file_bytes(run_config_path(run_dir), std::as_bytes(std::span(text.data(), text.size())));
}

RunConfig read_run_config(const std::string& run_dir) {
  const std::string path = run_config_path(run_dir);
  std::error_code ec;
  VG_INPUT_CHECK(fs::is_directory(run_dir, ec), run_dir << ": no such run folder");
  VG_INPUT_CHECK(fs::exists(path, ec), path << ": missing (is " << run_dir << " a voxgrad train --out folder?)");
  const std::string text = io::read_file_bytes(path);
  Json j;
  try {
    j = Json::parse(text);
  } catch (const Json::exception& e) {  // parse_error, and out_of_range for numbers like 1e999
    VG_INPUT_FAIL(path << ": not valid JSON (" << e.what() << ")");
  }
  return run_config_from_json(j, path);
}

}  // namespace voxgrad::pipeline
