// Epoch records, the resumable progress as JSON, and the run folder's reports.
#include "apps/pipeline/run_history.h"

#include <cmath>
#include <span>
#include <sstream>
#include <stdexcept>

#include "apps/pipeline/run_config.h"
#include "engine/error.h"
#include "io/gzip_stream.h"
#include "io/training_curve.h"

namespace voxgrad::pipeline {

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();

double number_or_nan(const Json& j) { return j.is_number() ? j.get<double>() : kNaN; }

Json record_json(const EpochRecord& r) {
  Json per_class = Json::array();
  for (double d : r.val_dice_per_class) per_class.push_back(number_or_null(d));
  return {{"epoch", r.epoch},
          {"lr", r.lr},
          {"train_loss", number_or_null(r.train_loss)},
          {"val_dice", number_or_null(r.val_dice)},
          {"val_dice_per_class", per_class},
          {"seconds", r.seconds},
          {"grad_norms", r.grad_norms}};
}

EpochRecord record_from_json(const Json& j) {
  EpochRecord r;
  r.epoch = j.at("epoch").get<std::int64_t>();
  r.lr = j.at("lr").get<double>();
  r.train_loss = number_or_nan(j.at("train_loss"));
  r.val_dice = number_or_nan(j.at("val_dice"));
  for (const Json& d : j.at("val_dice_per_class")) r.val_dice_per_class.push_back(number_or_nan(d));
  r.seconds = j.at("seconds").get<double>();
  if (j.contains("grad_norms")) r.grad_norms = j.at("grad_norms").get<std::vector<double>>();
  return r;
}

void write_text(const std::string& path, const std::string& text) {
  io::write_file_bytes(path, std::as_bytes(std::span(text.data(), text.size())));
}

}  // namespace

Json number_or_null(double v) { return std::isfinite(v) ? Json(v) : Json(nullptr); }

std::string progress_to_json(const TrainingProgress& p) {
  Json history = Json::array();
  for (const EpochRecord& r : p.history) history.push_back(record_json(r));
  // nlohmann writes doubles with 17 significant digits: the running sum comes back bit for bit.
  return Json{
      {"history", history},         {"epoch_loss_sum", p.epoch_loss_sum},     {"best_dice", p.best_dice},
      {"best_epoch", p.best_epoch}, {"grad_norm_layers", p.grad_norm_layers}, {"grad_norm_sums", p.grad_norm_sums}}
      .dump();
}

TrainingProgress progress_from_json(const std::string& text, const std::string& path) {
  try {
    const Json j = Json::parse(text);
    TrainingProgress p;
    for (const Json& r : j.at("history")) p.history.push_back(record_from_json(r));
    p.epoch_loss_sum = j.at("epoch_loss_sum").get<double>();
    p.best_dice = j.at("best_dice").get<double>();
    p.best_epoch = j.at("best_epoch").get<std::int64_t>();
    if (j.contains("grad_norm_layers")) {
      p.grad_norm_layers = j.at("grad_norm_layers").get<std::vector<std::string>>();
      p.grad_norm_sums = j.at("grad_norm_sums").get<std::vector<double>>();
      if (p.grad_norm_sums.size() != p.grad_norm_layers.size())
        throw std::runtime_error("grad_norm_sums and grad_norm_layers differ in length");
    }
    return p;
  } catch (const std::exception& e) {
    VG_INPUT_FAIL(path << ": the training progress it records is unreadable (" << e.what() << ")");
  }
}

std::string csv_number(double v) {
  if (!std::isfinite(v)) return "nan";
  std::ostringstream s;
  s.precision(9);
  s << v;
  return s.str();
}

// log.csv, metrics.json and training_curve.svg from the history: rewritten whole, atomically, so
// they always agree with the checkpoint they were written beside.
void write_run_reports(const std::string& run, const TrainingProgress& p, int classes, const std::string& title) {
  std::string csv = "epoch,lr,train_loss,val_dice";
  for (int c = 1; c < classes; ++c) csv += ",val_dice_" + std::to_string(c);
  csv += ",seconds\n";
  Json epochs = Json::array();
  std::vector<io::EpochPoint> points;
  for (const EpochRecord& r : p.history) {
    // append(), not "," + string: GCC 12 warns (-Wrestrict, a false positive) on the latter.
    csv.append(std::to_string(r.epoch));
    for (double v : {r.lr, r.train_loss, r.val_dice}) csv.append(",").append(csv_number(v));
    for (int c = 1; c < classes; ++c)
      csv.append(",").append(csv_number(c < static_cast<int>(r.val_dice_per_class.size()) ? r.val_dice_per_class[c] : kNaN));
    csv.append(",").append(csv_number(r.seconds)).append("\n");
    epochs.push_back(record_json(r));
    points.push_back({r.epoch, r.train_loss, r.val_dice});
  }
  write_text(run_file(run, "log.csv"), csv);
  Json metrics = {{"epochs_done", static_cast<std::int64_t>(p.history.size())},
                  {"best_epoch", p.best_epoch > 0 ? Json(p.best_epoch) : Json(nullptr)},
                  {"best_val_dice", p.best_epoch > 0 ? number_or_null(p.best_dice) : Json(nullptr)},
                  {"last", p.history.empty() ? Json(nullptr) : record_json(p.history.back())},
                  {"epochs", epochs}};
  write_text(run_file(run, "metrics.json"), metrics.dump(2) + "\n");
  io::write_training_curve_svg(run_file(run, "training_curve.svg"), points, title);
  if (!p.grad_norm_layers.empty()) {
    std::string norms = "epoch";
    for (const std::string& layer : p.grad_norm_layers) norms.append(",").append(layer);
    norms.append("\n");
    for (const EpochRecord& r : p.history) {
      norms.append(std::to_string(r.epoch));
      for (std::size_t l = 0; l < p.grad_norm_layers.size(); ++l)
        norms.append(",").append(csv_number(l < r.grad_norms.size() ? r.grad_norms[l] : kNaN));
      norms.append("\n");
    }
    write_text(run_file(run, "grad_norms.csv"), norms);
  }
}

}  // namespace voxgrad::pipeline
