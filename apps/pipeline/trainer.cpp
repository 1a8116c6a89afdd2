// The training loop (voxgrad::Trainer). Resuming is exact because
// everything a step depends on is either in checkpoint_latest (weights, optimizer state, the epoch
// history and the running loss sum) or a pure function of (seed, step) (the batches).
#include "apps/pipeline/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "apps/pipeline/network_gradient.h"
#include "apps/pipeline/output_folder.h"
#include "apps/pipeline/patch_sampler.h"
#include "apps/pipeline/run_config.h"
#include "apps/pipeline/run_history.h"
#include "apps/pipeline/sliding_window.h"
#include "apps/pipeline/train_data.h"
#include "engine/autograd.h"
#include "engine/checkpoint.h"
#include "engine/communicator.h"
#include "engine/crc32.h"
#include "engine/device.h"
#include "engine/error.h"
#include "engine/files.h"
#include "engine/gradient_reducer.h"
#include "engine/json.h"
#include "engine/log.h"
#include "engine/losses.h"
#include "engine/metrics.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "models/unet3d.h"

namespace voxgrad {

namespace {

using namespace pipeline;
namespace fs = std::filesystem;

const double kNaN = std::numeric_limits<double>::quiet_NaN();

// (N, D, H, W) int32 labels to each deep-supervision output's grid, by nearest neighbour (nnU-Net
// downsamples segmentations with order 0).
Tensor labels_at(const Tensor& labels, const Shape& logits_shape, int classes) {
  const Shape3 out{logits_shape[2], logits_shape[3], logits_shape[4]};
  if (labels.size(1) == out[0] && labels.size(2) == out[1] && labels.size(3) == out[2]) return labels;
  const std::int64_t n = labels.size(0);
  Tensor result = empty({n, out[0], out[1], out[2]}, DType::Int32);
  const std::int64_t per = out[0] * out[1] * out[2];
  for (std::int64_t i = 0; i < n; ++i) {
    const Tensor one = reshape(slice(labels, 0, i, i + 1), {labels.size(1), labels.size(2), labels.size(3)}).clone();
    const Tensor small = resample_labels(one, out, classes, LabelResampling::Nearest);
    std::copy_n(small.data<std::int32_t>(), per, result.data<std::int32_t>() + i * per);
  }
  return result;
}

struct Validation {
  double dice = kNaN;
  std::vector<double> per_class;
};

// Sliding-window inference on the validation cases; Dice per class from the true and false
// positives and false negatives summed over the cases (nnU-Net's online pseudo Dice, on whole cases).
// With ranks, rank r infers cases r, r + P, ... and the counts are summed over the ranks (exactly:
// they are integers), so every rank gets the Dice one process would.
Validation validate(UNet3d& model, const std::vector<const PreparedCase*>& cases, const Shape3& patch, int classes,
                    Device dev, Communicator* comm) {
  std::vector<std::int64_t> tp(classes, 0), fp(classes, 0), fn(classes, 0);
  SlidingWindowOptions sw;
  sw.patch = patch;
  sw.overlap = 0.5;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    if (comm != nullptr && static_cast<int>(i % static_cast<std::size_t>(comm->size())) != comm->rank()) continue;
    const PreparedCase* c = cases[i];
    const Tensor logits = sliding_window_logits(model, c->data.image, sw, dev);
    Shape batched = logits.shape();
    batched.insert(batched.begin(), 1);
    Shape label_shape = c->data.label.shape();
    label_shape.insert(label_shape.begin(), 1);
    const SegmentationMetrics m =
        segmentation_metrics_from_logits(reshape(logits, batched), reshape(c->data.label, label_shape));
    for (int k = 0; k < classes; ++k) {
      tp[k] += m.intersection[k];
      fp[k] += m.predicted[k] - m.intersection[k];
      fn[k] += m.reference[k] - m.intersection[k];
    }
  }
  if (comm != nullptr) {
    std::vector<std::int64_t> counts;
    for (const auto* part : {&tp, &fp, &fn}) counts.insert(counts.end(), part->begin(), part->end());
    comm->sum(counts.data(), static_cast<std::int64_t>(counts.size()));
    std::copy_n(counts.begin(), classes, tp.begin());
    std::copy_n(counts.begin() + classes, classes, fp.begin());
    std::copy_n(counts.begin() + 2 * classes, classes, fn.begin());
  }
  Validation v;
  v.per_class.assign(classes, kNaN);
  double sum = 0;
  int n = 0;
  for (int k = 1; k < classes; ++k) {
    const std::int64_t denominator = 2 * tp[k] + fp[k] + fn[k];
    if (denominator == 0) continue;
    v.per_class[k] = 2.0 * static_cast<double>(tp[k]) / static_cast<double>(denominator);
    sum += v.per_class[k];
    ++n;
  }
  if (n > 0) v.dice = sum / n;
  return v;
}

std::unique_ptr<Optimizer> make_optimizer(const TrainingSettings& t, const NamedTensors& params) {
  if (t.optim == "sgd") {
    SgdOptions o;
    o.lr = t.lr;
    o.momentum = 0.99;  // nnU-Net: SGD, Nesterov momentum 0.99, weight decay 3e-5
    o.nesterov = true;
    o.weight_decay = t.weight_decay;
    return std::make_unique<SGD>(params, o);
  }
  if (t.optim == "adam") {
    AdamOptions o;
    o.lr = t.lr;
    o.weight_decay = t.weight_decay;
    return std::make_unique<Adam>(params, o);
  }
  VG_INPUT_FAIL("--optim: unknown optimizer \"" << t.optim << "\" (choices: sgd, adam)");
}

// wce's "auto" weights: n / n_c over the labelled voxels of the training cases (the engine's
// inverse class frequency, taken once over the data rather than per batch); 0 for an absent class.
std::vector<double> inverse_class_frequency(const TrainingData& data, const std::vector<std::string>& train_cases,
                                            std::optional<std::int32_t> ignore_label) {
  const int classes = data.plan.classes;
  std::vector<std::int64_t> counts(classes, 0);
  for (const PreparedCase& pc : data.cases) {
    if (std::find(train_cases.begin(), train_cases.end(), pc.id) == train_cases.end()) continue;
    const Tensor& label = pc.data.label;
    const std::int32_t* v = label.data<std::int32_t>();
    for (std::int64_t i = 0; i < label.numel(); ++i)
      if (v[i] >= 0 && v[i] < classes && (!ignore_label || v[i] != *ignore_label)) ++counts[v[i]];
  }
  std::int64_t total = 0;
  for (std::int64_t n : counts) total += n;
  std::vector<double> weights(classes, 0.0);
  for (int k = 0; k < classes; ++k)
    if (counts[k] > 0) weights[k] = static_cast<double>(total) / static_cast<double>(counts[k]);
  return weights;
}

// The loss settings of a fresh run, every default resolved.
LossSettings resolve_loss_settings(const TrainOptions& o, const TrainingData& data,
                                   const std::vector<std::string>& train_cases) {
  const LossKind kind = parse_loss_kind(o.loss);
  LossSettings s;
  s.classes =
      class_selection_name(o.loss_classes ? parse_class_selection(*o.loss_classes) : default_class_selection(kind));
  s.aggregate = aggregate_name(o.aggregate ? parse_aggregate(*o.aggregate) : default_aggregate(kind));
  s.eps = o.eps.value_or(s.eps);
  s.ce_weight = o.ce_weight.value_or(s.ce_weight);
  s.dice_weight = o.dice_weight.value_or(s.dice_weight);
  s.ignore_label = o.ignore_label;
  if (kind == LossKind::WeightedCrossEntropy) {
    if (o.class_weights && !o.class_weights->empty()) {
      VG_USAGE_CHECK(static_cast<int>(o.class_weights->size()) == data.plan.classes,
                     "--class-weights: " << o.class_weights->size() << " weights given, but the dataset has "
                                         << data.plan.classes << " classes (one weight per label of dataset.json)");
      s.class_weights = *o.class_weights;
      s.class_weights_from = "given";
    } else {
      s.class_weights = inverse_class_frequency(data, train_cases, o.ignore_label);
      s.class_weights_from = "auto";
    }
  }
  return s;
}

// The checkpoint's own record: the progress, and what was optimised (the loss with its settings
// and the seeds), so a checkpoint taken out of its run folder still says how it was made.
std::string checkpoint_config(const TrainingProgress& progress, const TrainingSettings& t) {
  Json j = Json::parse(progress_to_json(progress));
  j["training"] = {{"loss", t.loss},
                   {"loss_options", loss_settings_to_json(t.loss_options)},
                   {"seed", t.seed},
                   {"data_seed", t.data_seed},
                   {"init_from", t.init_from.empty() ? Json(nullptr) : Json(t.init_from)}};
  return j.dump();
}

// --init-from RUN: RUN's latest weights into `model`, after checking that RUN trained the same
// network. Returns the weights file's absolute path, which config.json records.
std::string load_initial_weights(const std::string& run, const RunConfig& config, UNet3d& model) {
  std::error_code ec;
  VG_USAGE_CHECK(fs::is_directory(run, ec), "--init-from '" << run << "': no such run folder");
  const std::string weights = run_file(run, "checkpoint_latest.safetensors");
  VG_USAGE_CHECK(fs::exists(weights, ec),
                 "--init-from " << run << ": " << weights << " is missing (is it a voxgrad train run folder?)");
  const RunConfig source = read_run_config(run);
  const UNet3dConfig& a = source.model;
  const UNet3dConfig& b = config.model;
  auto refuse = [&](const char* what, const std::string& theirs, const std::string& ours) {
    VG_USAGE_FAIL("--init-from " << run << ": its network has " << what << " " << theirs << ", this run's has " << ours
                                 << "; the weights cannot carry over");
  };
  if (a.in_channels != b.in_channels)
    refuse("input channels", std::to_string(a.in_channels), std::to_string(b.in_channels));
  if (a.classes != b.classes) refuse("classes", std::to_string(a.classes), std::to_string(b.classes));
  if (a.base_features != b.base_features)
    refuse("--base", std::to_string(a.base_features), std::to_string(b.base_features));
  if (a.levels != b.levels) refuse("--levels", std::to_string(a.levels), std::to_string(b.levels));
  // Strict: anything else that differs is listed by name; older runs' tensor names are migrated.
  load_checkpoint_weights(weights, model, /*strict=*/true, unet3d_migrate_names);
  return fs::absolute(weights).lexically_normal().string();
}

// A fresh run's settings from the command line and the data.
RunConfig plan_run(const TrainOptions& o, const TrainingData& data, logging::Sink& sink) {
  RunConfig c;
  c.dataset_root = fs::absolute(o.data).lexically_normal().string();
  c.dataset_name = data.dataset.name;
  c.channels = data.dataset.channels;
  c.labels = data.dataset.labels;
  c.plan = data.plan;
  c.model.in_channels = data.dataset.num_channels();
  c.model.classes = data.plan.classes;
  c.model.base_features = o.base;
  c.model.levels = o.levels;
  c.model.deep_supervision = o.deep_supervision;
  TrainingSettings& t = c.training;
  t.loss = loss_kind_name(parse_loss_kind(o.loss));
  t.patch = o.patch ? *o.patch : default_patch(data.median_shape, o.levels);
  t.batch_size = o.batch_size;
  t.epochs = o.epochs;
  t.iters_per_epoch = o.iters_per_epoch;
  t.optim = o.optim;
  t.lr = o.lr ? *o.lr : (o.optim == "adam" ? 3e-4 : 0.01);
  t.seed = o.seed;
  t.data_seed = o.data_seed.value_or(o.seed);
  t.log_grad_norms = o.log_grad_norms;
  std::vector<std::string> ids;
  for (const PreparedCase& pc : data.cases) ids.push_back(pc.id);
  split_cases(ids, t.data_seed, t.train_cases, t.val_cases, sink);
  t.loss_options = resolve_loss_settings(o, data, t.train_cases);
  return c;
}

// A double as the user would write it (1e-07, 0.01), not std::to_string's fixed six decimals.
std::string number_text(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// --resume: a flag given now must agree with the run it continues.
void check_resume_flags(const TrainOptions& o, RunConfig& c, logging::Sink& sink) {
  auto refuse = [&](const std::string& flag, const std::string& now, const std::string& then) {
    VG_USAGE_FAIL(flag << " " << now << " differs from the run's " << then << " (" << run_config_path(o.out)
                       << "); leave it out to continue the run, or train into a new --out");
  };
  const TrainingSettings& t = c.training;
  auto shape_text = [](const Shape3& s) {
    return std::to_string(s[0]) + "," + std::to_string(s[1]) + "," + std::to_string(s[2]);
  };
  if (o.given.count("--loss") && loss_kind_name(parse_loss_kind(o.loss)) != t.loss) refuse("--loss", o.loss, t.loss);
  if (o.given.count("--patch") && o.patch && *o.patch != t.patch)
    refuse("--patch", shape_text(*o.patch), shape_text(t.patch));
  if (o.given.count("--batch-size") && o.batch_size != t.batch_size)
    refuse("--batch-size", std::to_string(o.batch_size), std::to_string(t.batch_size));
  if (o.given.count("--iters-per-epoch") && o.iters_per_epoch != t.iters_per_epoch)
    refuse("--iters-per-epoch", std::to_string(o.iters_per_epoch), std::to_string(t.iters_per_epoch));
  if (o.given.count("--lr") && o.lr && *o.lr != t.lr) refuse("--lr", number_text(*o.lr), number_text(t.lr));
  if (o.given.count("--optim") && o.optim != t.optim) refuse("--optim", o.optim, t.optim);
  if (o.given.count("--base") && o.base != c.model.base_features)
    refuse("--base", std::to_string(o.base), std::to_string(c.model.base_features));
  if (o.given.count("--levels") && o.levels != c.model.levels)
    refuse("--levels", std::to_string(o.levels), std::to_string(c.model.levels));
  if (o.given.count("--norm") && o.norm != normalization_name(c.plan.normalization))
    refuse("--norm", o.norm, normalization_name(c.plan.normalization));
  if (o.given.count("--deep-supervision") && o.deep_supervision != c.model.deep_supervision)
    refuse("--deep-supervision", "on", "off");
  if (o.given.count("--seed") && o.seed != t.seed) refuse("--seed", std::to_string(o.seed), std::to_string(t.seed));
  if (o.given.count("--log-grad-norms") && o.log_grad_norms != t.log_grad_norms)
    refuse("--log-grad-norms", "on", "setting (off)");
  if (o.data_seed && *o.data_seed != t.data_seed)
    refuse("--data-seed", std::to_string(*o.data_seed), std::to_string(t.data_seed));
  VG_USAGE_CHECK(o.init_from.empty(),
                 "--init-from starts a new run; --resume continues " << o.out << " from its own checkpoint");
  const LossSettings& l = t.loss_options;
  if (o.loss_classes && class_selection_name(parse_class_selection(*o.loss_classes)) != l.classes)
    refuse("--loss-classes", *o.loss_classes, l.classes);
  if (o.aggregate && aggregate_name(parse_aggregate(*o.aggregate)) != l.aggregate)
    refuse("--aggregate", *o.aggregate, l.aggregate);
  if (o.eps && *o.eps != l.eps) refuse("--eps", number_text(*o.eps), number_text(l.eps));
  if (o.ce_weight && *o.ce_weight != l.ce_weight)
    refuse("--ce-weight", number_text(*o.ce_weight), number_text(l.ce_weight));
  if (o.dice_weight && *o.dice_weight != l.dice_weight)
    refuse("--dice-weight", number_text(*o.dice_weight), number_text(l.dice_weight));
  if (o.ignore_label && o.ignore_label != l.ignore_label)
    refuse("--ignore-label", std::to_string(*o.ignore_label),
           l.ignore_label ? std::to_string(*l.ignore_label) : std::string("none"));
  if (o.class_weights) {
    const bool now_auto = o.class_weights->empty();
    if (now_auto ? l.class_weights_from != "auto" : *o.class_weights != l.class_weights)
      refuse("--class-weights", now_auto ? "auto" : "(the weights given)",
             l.class_weights_from.empty() ? "none" : l.class_weights_from + " weights");
  }
  if (o.given.count("--data") && fs::absolute(o.data).lexically_normal().string() != c.dataset_root)
    sink.warning("--data " + o.data + " is not the run's dataset folder " + c.dataset_root +
                 "; using it (its cases must be the same)");
  if (o.given.count("--epochs") && o.epochs != t.epochs) {
    sink.warning("--epochs " + std::to_string(o.epochs) + " replaces the run's " + std::to_string(t.epochs) +
                 ": the learning-rate schedule of the remaining epochs changes");
    c.training.epochs = o.epochs;
  }
}

// A loss option the chosen loss does not use is refused: a run must not seem to have used it.
void check_loss_options(const TrainOptions& o) {
  LossKind kind;
  try {
    kind = parse_loss_kind(o.loss);
    if (o.loss_classes) parse_class_selection(*o.loss_classes);
    if (o.aggregate) parse_aggregate(*o.aggregate);
  } catch (const Error& e) {
    VG_USAGE_FAIL(e.what());
  }
  const std::string loss = loss_kind_name(kind);
  VG_USAGE_CHECK(
      kernels::loss_has_region(kind) || (!o.loss_classes && !o.aggregate),
      "--loss-classes and --aggregate apply to the region losses (dice, jaccard, lovasz, dice_ce), not " << loss);
  const bool smoothed = kind == LossKind::Dice || kind == LossKind::Jaccard || kind == LossKind::DiceCrossEntropy;
  VG_USAGE_CHECK(smoothed || !o.eps, "--eps applies to dice, jaccard and dice_ce, not " << loss);
  VG_USAGE_CHECK(!o.eps || (std::isfinite(*o.eps) && *o.eps >= 0), "--eps must be a finite number >= 0");
  VG_USAGE_CHECK(kind == LossKind::WeightedCrossEntropy || !o.class_weights,
                 "--class-weights applies to wce only, not " << loss);
  if (o.class_weights)
    for (double w : *o.class_weights)
      VG_USAGE_CHECK(std::isfinite(w) && w >= 0, "--class-weights: " << w << " is not a finite number >= 0");
  VG_USAGE_CHECK(kind == LossKind::DiceCrossEntropy || (!o.ce_weight && !o.dice_weight),
                 "--ce-weight and --dice-weight apply to dice_ce only, not " << loss);
  for (const auto& [flag, w] : {std::pair{"--ce-weight", o.ce_weight}, std::pair{"--dice-weight", o.dice_weight}})
    VG_USAGE_CHECK(!w || (std::isfinite(*w) && *w >= 0), flag << " must be a finite number >= 0");
}

// What the command line alone can refuse (exit 2), checked before any file is read: a training
// run must not spend minutes on preprocessing before saying that a flag is wrong.
void check_command_line(const TrainOptions& o) {
  if (!o.resume) VG_USAGE_CHECK(!o.data.empty(), "--data is required (a dataset folder with dataset.json)");
  if (!o.data.empty()) {
    std::error_code ec;
    VG_USAGE_CHECK(fs::is_directory(o.data, ec), "--data '" << o.data << "': no such folder");
  }
  if (o.resume) return;  // the network, the patch and the loss come from config.json
  check_loss_options(o);
  // The U-Net is nnU-Net's PlainConvUNet, which downsamples at least once.
  VG_USAGE_CHECK(o.levels >= 2 && o.levels <= 7,
                 "--levels " << o.levels << ": the U-Net needs 2 to 7 resolution levels (levels - 1 downsamplings)");
  if (!o.patch) return;
  // Every level halves each axis, so the patch must divide by 2^(levels-1): refused, never rounded.
  const std::int64_t q = std::int64_t{1} << (o.levels - 1);
  static const char* axis_name[3] = {"D", "H", "W"};
  for (int a = 0; a < 3; ++a) {
    const std::int64_t side = (*o.patch)[a];
    if (side % q == 0) continue;
    const std::int64_t below = side / q * q;
    VG_USAGE_FAIL("--patch: " << axis_name[a] << " = " << side << " is not divisible by " << q << " (--levels "
                              << o.levels << " halves each axis " << o.levels - 1 << " times); use "
                              << (below > 0 ? std::to_string(below) + " or " : std::string()) << below + q);
  }
}

// A CRC-32 over what the ranks must hold alike: a fingerprint, not a defence against forgery.
struct Fingerprint {
  std::uint32_t crc = 0;
  void add(const void* data, std::size_t bytes) { crc = crc32_update(crc, data, bytes); }
  void add(const std::string& text) { add(text.data(), text.size() + 1); }  // with its end
  std::string hex() const {
    char text[9];
    std::snprintf(text, sizeof text, "%08x", static_cast<unsigned>(crc));
    return text;
  }
};

// What every rank must agree on before training together: the options, and the data as prepared.
Communicator::Fingerprints start_fingerprints(const TrainOptions& o, const RunConfig& config,
                                              const TrainingData& data) {
  // Every resolved setting, the split included, but not where the dataset lies: each machine may
  // read its own copy, which the cases' fingerprint checks.
  RunConfig settings = config;
  settings.dataset_root.clear();
  Fingerprint options;
  options.add(run_config_to_json(settings).dump());
  for (const std::string& text : {o.out, o.loss, o.optim, o.norm, o.init_from, std::to_string(o.resume)})
    options.add(text);
  for (const std::string& flag : o.given) options.add(flag);
  Fingerprint cases;
  for (const PreparedCase& pc : data.cases) {
    cases.add(pc.id);
    cases.add(pc.data.image.raw_data(), pc.data.image.nbytes());
    cases.add(pc.data.label.raw_data(), pc.data.label.nbytes());
  }
  return {{"options", options.hex()}, {"dataset", cases.hex()}};
}

// Ranks average their losses, each over its share of the batch: the same loss as one process's
// when the loss is a mean over images or over equally many voxels. Why it is not, or "".
std::string rank_dependent_loss(const TrainingSettings& t) {
  const LossKind kind = parse_loss_kind(t.loss);
  if (kernels::loss_has_region(kind) && t.loss_options.aggregate == "batch")
    return "--aggregate batch makes each rank's share of the batch one set for " + t.loss;
  if (kind == LossKind::WeightedCrossEntropy) return "wce divides by the class weights summed over the batch";
  if (t.loss_options.ignore_label) return "--ignore-label leaves each rank its own count of voxels to average";
  return "";
}

std::int64_t bucket_bytes(double megabytes) {
  VG_USAGE_CHECK(std::isfinite(megabytes) && megabytes >= 0.01 && megabytes <= 4096,
                 "--bucket-mb " << megabytes << ": give 0.01 to 4096 (MB of gradients per all-reduce)");
  return static_cast<std::int64_t>(megabytes * 1024 * 1024);
}

// The parameters' bytes, which the ranks compare after every epoch: they must never drift apart.
std::string weights_fingerprint(const UNet3d& model) {
  Fingerprint f;
  for (const Tensor& p : model.parameters()) f.add(p.raw_data(), p.nbytes());
  return f.hex();
}

}  // namespace

std::vector<double> deep_supervision_weights(int outputs) {
  VG_CHECK(outputs >= 1, "deep supervision needs at least one output");
  if (outputs == 1) return {1.0};
  std::vector<double> w(outputs);
  double sum = 0;
  for (int i = 0; i < outputs; ++i) {
    w[i] = i == outputs - 1 ? 0.0 : 1.0 / static_cast<double>(std::int64_t{1} << i);
    sum += w[i];
  }
  for (double& x : w) x /= sum;
  return w;
}

Trainer::Trainer(TrainOptions options, logging::Sink& sink) : options_(std::move(options)), sink_(sink) {}

TrainResult Trainer::run() {
  started_together_ = false;
  if (comm_) comm_->clear_failure();  // an earlier run's failure is not this one's
  try {
    return train();
  } catch (...) {
    // A rank that fails before the ranks agreed that all of them started tells the others there,
    // where they wait for it; agree() then throws the failure on every rank (and a failure that
    // agree() itself threw has been agreed on already).
    if (comm_ && !started_together_ && !comm_->failure_agreed()) comm_->agree(std::current_exception());
    throw;
  }
}

TrainResult Trainer::train() {
  const TrainOptions& o = options_;
  logging::Sink& sink = sink_;
  Communicator* const comm = comm_.get();
  const int ranks = comm != nullptr ? comm->size() : 1;
  const bool writer = comm == nullptr || comm->rank() == 0;  // the rank that writes the run folder
  // The options first (a usage error), before any file is read.
  check_command_line(o);
  // A GPU rank trains on the GPU its communicator bound it to.
  const Device dev = comm != nullptr && comm->device().is_cuda() ? comm->device() : resolve_device(o.device);
  VG_USAGE_CHECK(comm == nullptr || dev == comm->device(), "--distributed: the ranks exchange gradients on "
                                                               << comm->device().str() << ", but training runs on "
                                                               << dev.str() << "; use --device "
                                                               << (comm->device().is_cpu() ? "cpu" : "cuda"));
  if (o.resume)
    VG_USAGE_CHECK(fs::is_directory(o.out),
                   "--out '" << o.out << "': no such run folder, so there is nothing to resume");

  // The run folder belongs to this process (rank 0 of a distributed run) from here to its exit: a
  // second train (or --resume) into it is refused with this process's id, and the kernel releases
  // it however we exit.
  std::optional<OutputFolder> folder;
  files::FolderLock lock;
  if (writer) {
    folder.emplace(o.out, "--out");
    try {
      lock = files::FolderLock(o.out, "the run folder");
    } catch (const InputError&) {
      folder->keep();  // the holder may be about to write into it
      throw;
    }
  }

  // Everything is read and checked before the first byte is written, so a refused or failed
  // start leaves the folder exactly as it was.
  const std::string latest = run_file(o.out, "checkpoint_latest.safetensors");
  std::error_code ec;
  RunConfig config;
  TrainingData data;
  if (o.resume) {
    VG_USAGE_CHECK(
        fs::exists(latest, ec),
        "--out " << o.out << ": " << latest << " is missing, so there is nothing to resume (start without --resume)");
    config = read_run_config(o.out);
    check_resume_flags(o, config, sink);
    PreprocessPlan plan = config.plan;
    data =
        prepare_training_data(o.given.count("--data") ? o.data : config.dataset_root, plan, /*reuse_plan=*/true, sink);
  } else {
    VG_USAGE_CHECK(!fs::exists(run_config_path(o.out), ec) && !fs::exists(latest, ec),
                   "--out " << o.out << ": already holds a run; --resume continues it, or choose another --out");
    PreprocessPlan plan;
    plan.normalization = parse_normalization(o.norm);
    data = prepare_training_data(o.data, plan, /*reuse_plan=*/false, sink);
    config = plan_run(o, data, sink);
  }
  const TrainingSettings& t = config.training;
  VG_USAGE_CHECK(comm == nullptr || config.model.norm == Norm::Instance,
                 "--distributed: this run's network uses batch norm, whose running statistics the ranks would "
                 "keep apart; data-parallel training needs instance norm (voxgrad train's own network)");
  VG_USAGE_CHECK(t.batch_size % ranks == 0,
                 "--batch-size " << t.batch_size << " is the global batch, split across the ranks, and " << ranks
                                 << " ranks cannot share it evenly; use a multiple of " << ranks);

  Generator init(t.seed);
  UNet3d model(config.model, init);
  model.check_input({t.batch_size, config.model.in_channels, t.patch[0], t.patch[1], t.patch[2]});
  if (!o.resume && !o.init_from.empty()) config.training.init_from = load_initial_weights(o.init_from, config, model);
  model.to(dev);
  std::unique_ptr<Optimizer> optimizer = make_optimizer(t, model.named_parameters());
  const LossKind loss_kind = parse_loss_kind(t.loss);
  const LossOptions loss_options = loss_options_of(t.loss_options);

  // Cases: training ones padded to the patch for the sampler; validation ones as they are (the
  // sliding window pads what it needs).
  std::vector<SamplerCase> sampler_cases;
  std::vector<std::string> sampler_ids;  // the case id of each sampler case, for messages
  std::vector<const PreparedCase*> val_cases;
  for (const PreparedCase& pc : data.cases) {
    const bool train = std::find(t.train_cases.begin(), t.train_cases.end(), pc.id) != t.train_cases.end();
    const bool val = std::find(t.val_cases.begin(), t.val_cases.end(), pc.id) != t.val_cases.end();
    if (train) {
      sampler_cases.push_back(
          {pad_to_at_least(pc.data.image, t.patch, 0.0), pad_to_at_least(pc.data.label, t.patch, 0.0)});
      sampler_ids.push_back(pc.id);
    }
    if (val) val_cases.push_back(&pc);
  }
  VG_INPUT_CHECK(sampler_cases.size() == t.train_cases.size() && val_cases.size() == t.val_cases.size(),
                 "the dataset's training cases are not the ones " << run_config_path(o.out) << " lists");
  PatchSamplerOptions sampling;
  sampling.patch = t.patch;
  sampling.batch_size = t.batch_size;
  sampling.seed = t.data_seed;
  sampling.ranks = ranks;
  sampling.rank = comm != nullptr ? comm->rank() : 0;
  const PatchSampler sampler(std::move(sampler_cases), sampling);

  TrainingProgress progress;
  std::int64_t step = 0;
  if (o.resume) {
    // A checkpoint of a run begun with UNet3d's former names resumes too.
    const TrainingState state = load_training_checkpoint(latest, model, *optimizer, unet3d_migrate_names);
    progress = progress_from_json(state.config, latest);
    step = state.step;
    VG_INPUT_CHECK(state.rng_seed == t.data_seed,
                   latest << ": sampler seed " << state.rng_seed << " differs from config.json's " << t.data_seed);
  }
  if (t.log_grad_norms) {
    std::vector<std::string> layers;
    for (const auto& [layer, norm] : layer_gradient_norms(model)) layers.push_back(layer);
    if (progress.grad_norm_layers.empty()) {
      progress.grad_norm_layers = layers;
      progress.grad_norm_sums.assign(layers.size(), 0.0);
    }
    VG_INPUT_CHECK(progress.grad_norm_layers == layers,
                   latest << ": the layers whose gradient norms it logs are not the network's");
  }
  // Every rank has started: from here on the ranks fail together or not at all (a rank failing
  // alone ends the job through the launcher).
  if (comm != nullptr) {
    Communicator::Fingerprints fingerprints = start_fingerprints(o, config, data);
    // Where the ranks start from: the step and the weights (initialised, given or resumed).
    fingerprints.emplace_back("checkpoint", std::to_string(step) + " " + weights_fingerprint(model));
    comm->agree(nullptr, fingerprints);
    started_together_ = true;
  }
  std::unique_ptr<GradientReducer> reducer;
  if (comm != nullptr) {
    std::vector<Tensor> params;
    for (const auto& [name, p] : model.named_parameters()) params.push_back(p);
    reducer = std::make_unique<GradientReducer>(std::move(params), *comm, bucket_bytes(o.bucket_mb));
  }
  // Whether any rank was asked to stop (every rank calls it at the same points).
  auto stop_agreed = [&](bool mine) {
    if (comm == nullptr) return mine;
    std::int64_t any = mine ? 1 : 0;
    comm->sum(&any, 1);
    return any > 0;
  };

  const std::int64_t total_steps = t.epochs * t.iters_per_epoch;
  TrainResult result;
  result.latest_checkpoint = latest;
  result.epochs = t.epochs;
  auto finish = [&](TrainResult::Status status) {
    result.status = status;
    result.steps = step;
    const EpochRecord* last = progress.history.empty() ? nullptr : &progress.history.back();
    result.train_loss = last ? last->train_loss : kNaN;
    result.val_dice = last ? last->val_dice : kNaN;
    result.best_epoch = progress.best_epoch > 0 ? progress.best_epoch : 0;
    result.best_val_dice = progress.best_epoch > 0 ? progress.best_dice : kNaN;
    return result;
  };
  sink.info("training on " + dev.str() + ": " + std::to_string(model.parameter_count()) + " parameters, patch " +
            std::to_string(t.patch[0]) + "x" + std::to_string(t.patch[1]) + "x" + std::to_string(t.patch[2]) +
            ", batch " + std::to_string(t.batch_size) +
            (ranks > 1
                 ? " (" + std::to_string(t.batch_size / ranks) + " on each of " + std::to_string(ranks) + " ranks)"
                 : std::string()) +
            ", loss " + t.loss + ", " + std::to_string(t.train_cases.size()) + " training / " +
            std::to_string(t.val_cases.size()) + " validation cases, " + std::to_string(t.epochs) + " epochs of " +
            std::to_string(t.iters_per_epoch) + " iterations");
  if (ranks > 1) {
    const std::string why = rank_dependent_loss(t);
    if (!why.empty())
      sink.warning(why + ", so " + std::to_string(ranks) + " ranks, each taking the mean over its share, optimise " +
                   "a slightly different loss than one process does");
  }
  if (step >= total_steps) {
    sink.info("the run has already done its " + std::to_string(t.epochs) + " epochs");
    return finish(TrainResult::Status::AlreadyComplete);
  }

  // The first writes.
  if (folder) folder->keep();
  const std::string title = "voxgrad train: " + config.dataset_name + ", " + t.loss;
  if (o.resume) {
    if (writer) write_run_config(o.out, config);  // --epochs may have changed
    sink.info("resuming " + o.out + " after step " + std::to_string(step) + " (epoch " +
              std::to_string(step / t.iters_per_epoch + 1) + ", iteration " +
              std::to_string(step % t.iters_per_epoch + 1) + " comes next)");
  }
  if (writer) write_run_reports(o.out, progress, config.plan.classes, title);

  auto state_now = [&] {
    TrainingState state;
    state.step = step;
    state.epoch = step / t.iters_per_epoch;
    state.rng_seed = t.data_seed;
    state.rng_offset = static_cast<std::uint64_t>(step);  // the sampler's next batch number
    state.config = checkpoint_config(progress, t);
    return state;
  };
  std::int64_t saved_step = step;  // what checkpoint_latest holds
  auto save_latest = [&] {
    if (writer) save_training_checkpoint(latest, model, *optimizer, state_now());
    saved_step = step;
  };
  // A fresh run saves its initial state at once, so a run stopped (or killed) before its first
  // epoch ends can still be resumed rather than leave a folder that is neither new nor resumable;
  // config.json, which marks the folder as a run, comes right after the checkpoint it needs.
  if (!o.resume) {
    save_latest();
    if (writer) write_run_config(o.out, config);
  }

  const std::vector<double> ds_weights =
      deep_supervision_weights(config.model.deep_supervision ? config.model.levels - 1 : 1);
  BatchPrefetcher prefetcher(sampler, step);
  model.train();
  while (step < total_steps) {
    const std::int64_t epoch = step / t.iters_per_epoch;
    const auto epoch_start = std::chrono::steady_clock::now();
    optimizer->set_lr(poly_lr(t.lr, epoch, t.epochs));
    logging::ProgressBar bar("epoch " + std::to_string(epoch + 1) + "/" + std::to_string(t.epochs), t.iters_per_epoch,
                             "it", sink);
    char fields[96] = "";
    for (std::int64_t it = step % t.iters_per_epoch; it < t.iters_per_epoch; ++it) {
      const Batch batch = prefetcher.next();
      VG_CHECK(batch.index == step, "internal: batch " << batch.index << " arrived for step " << step);
      const Tensor image = batch.image.to(dev);
      optimizer->zero_grad();
      std::vector<Tensor> outputs =
          config.model.deep_supervision ? model.forward_all(image) : std::vector<Tensor>{model.forward(image)};
      Tensor loss;
      for (std::size_t i = 0; i < outputs.size(); ++i) {
        if (ds_weights[i] == 0.0) continue;
        const Tensor labels = labels_at(batch.label, outputs[i].shape(), config.plan.classes).to(dev);
        const Tensor term = mul(segmentation_loss(loss_kind, outputs[i], labels, loss_options), ds_weights[i]);
        loss = loss.defined() ? add(loss, term) : term;
      }
      const double local_value = loss.item();  // of this rank's share
      double value = local_value;
      // The ranks' mean loss and whether any was asked to stop, agreed before the backward pass.
      bool stop_now = stop_requested();
      if (comm != nullptr) {
        double shared[2] = {value, stop_now ? 1.0 : 0.0};
        comm->sum(shared, 2);
        value = shared[0] / ranks;
        stop_now = shared[1] > 0;
      }
      if (!std::isfinite(value)) {
        std::string batch_cases;
        for (int c : batch.cases) batch_cases += (batch_cases.empty() ? "" : ", ") + sampler_ids.at(c);
        if (comm != nullptr) {
          // The cases of every rank whose own share's loss is not finite.
          const std::vector<std::string> shares = comm->all_gather(std::isfinite(local_value) ? "" : batch_cases);
          batch_cases.clear();
          for (std::size_t r = 0; r < shares.size(); ++r)
            if (!shares[r].empty())
              batch_cases += (batch_cases.empty() ? "" : "; ") + shares[r] + " (rank " + std::to_string(r) + ")";
          comm->fail_together();
        }
        VG_INPUT_FAIL("step " << step + 1 << " (epoch " << epoch + 1 << ", iteration " << it + 1 << "): the loss is "
                              << value << " on patches of " << batch_cases << "; training stopped. " << latest
                              << " holds the state after step " << saved_step << "; lower --lr or check those cases");
      }
      if (reducer) {
        reducer->backward(loss);  // every rank then holds the mean of the ranks' gradients
      } else {
        loss.backward();
      }
      if (t.log_grad_norms) {
        const auto norms = layer_gradient_norms(model);
        for (std::size_t l = 0; l < norms.size(); ++l) progress.grad_norm_sums[l] += norms[l].second;
      }
      clip_grad_norm_(model.parameters(), t.grad_clip);
      optimizer->step();
      progress.epoch_loss_sum += value;
      ++step;
      std::snprintf(fields, sizeof fields, "loss %.4f lr %.3g", value, optimizer->lr());
      bar.update(it + 1, fields);
      // One process looks again now; ranks act on what they agreed before the backward pass.
      if ((comm != nullptr ? stop_now : stop_requested()) && it + 1 < t.iters_per_epoch) {
        bar.finish(fields);
        save_latest();
        sink.info("stopped after step " + std::to_string(step) + " (epoch " + std::to_string(epoch + 1) +
                  ", iteration " + std::to_string(it + 1) + "): " + latest + " saved");
        return finish(TrainResult::Status::Stopped);
      }
    }
    bar.finish(fields);

    EpochRecord record;
    record.epoch = epoch + 1;
    record.lr = optimizer->lr();
    record.train_loss = progress.epoch_loss_sum / static_cast<double>(t.iters_per_epoch);
    for (double& sum : progress.grad_norm_sums) {
      record.grad_norms.push_back(sum / static_cast<double>(t.iters_per_epoch));
      sum = 0.0;
    }
    const Validation v = validate(model, val_cases, t.patch, config.plan.classes, dev, comm);
    record.val_dice = v.dice;
    record.val_dice_per_class = v.per_class;
    record.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_start).count();
    progress.history.push_back(record);
    progress.epoch_loss_sum = 0.0;
    const bool best = std::isfinite(v.dice) && v.dice > progress.best_dice;
    if (best) {
      progress.best_dice = v.dice;
      progress.best_epoch = epoch + 1;
    }
    if (comm != nullptr) {
      // The ranks apply the same mean gradients to the same weights, so they must hold the same bits.
      const std::vector<std::string> weights = comm->all_gather(weights_fingerprint(model));
      for (std::size_t k = 1; k < weights.size(); ++k) {
        if (weights[k] == weights[0]) continue;
        comm->fail_together();
        VG_FAIL("rank " << k << "'s weights differ from rank 0's after epoch " << epoch + 1);
      }
    }
    // Best before latest: a crash between the two leaves latest one epoch behind, and resuming
    // redoes that epoch to the same numbers.
    if (best && writer) {
      save_training_checkpoint(run_file(o.out, "checkpoint_best.safetensors"), model, *optimizer, state_now());
      save_model(run_file(o.out, "model_best.safetensors"), model,
                 {{"epoch", std::to_string(epoch + 1)}, {"val_dice", csv_number(v.dice)}});
    }
    save_latest();
    if (writer) write_run_reports(o.out, progress, config.plan.classes, title);
    char line[160];
    std::snprintf(line, sizeof line, "epoch %lld/%lld: train loss %.4f, val Dice %.4f (best %.4f, epoch %lld), %.1f s",
                  static_cast<long long>(epoch + 1), static_cast<long long>(t.epochs), record.train_loss, v.dice,
                  progress.best_dice, static_cast<long long>(progress.best_epoch), record.seconds);
    sink.info(line);
    if (stop_agreed(stop_requested()) && step < total_steps) {
      sink.info("stopped after epoch " + std::to_string(epoch + 1) + ": " + latest + " saved");
      return finish(TrainResult::Status::Stopped);
    }
  }
  return finish(TrainResult::Status::Completed);
}

}  // namespace voxgrad
