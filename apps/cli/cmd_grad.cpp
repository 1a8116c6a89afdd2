// `voxgrad grad`: one loss and its gradient ∂loss/∂logits for logits and labels read from NIfTI,
// as one JSON object on stdout (the loss, each class's term, where the gradient falls per class),
// and optionally the gradient itself as a float32 NIfTI. A measuring instrument: float64 on the CPU.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "apps/cli/cli.h"
#include "apps/cli/cli_checks.h"
#include "apps/cli/loss_flags.h"
#include "apps/pipeline/grad_stats.h"
#include "apps/pipeline/network_gradient.h"
#include "apps/pipeline/predictor_backend.h"
#include "engine/device.h"
#include "engine/error.h"
#include "engine/files.h"
#include "engine/json.h"
#include "engine/log.h"
#include "engine/losses.h"
#include "engine/ops.h"
#include "io/nifti.h"
#include "io/volume.h"

namespace voxgrad::cli {

using namespace pipeline;

namespace {

struct GradOptions {
  std::string logits, label, loss, out;
  std::string model, image, checkpoint = "best";  // --model RUN: the loss through a trained network
  LossFlags loss_flags;
};

std::string dims_str(const std::vector<std::int64_t>& dims) {
  std::ostringstream s;
  s << "(";
  for (std::size_t i = 0; i < dims.size(); ++i) s << (i ? ", " : "") << dims[i];
  s << ")";
  return s.str();
}

Json finite_or_null(double v) { return std::isfinite(v) ? Json(v) : Json(nullptr); }

// The logits' tensor (dims reversed) as (N, K, D, H, W): (X,Y,Z,K) is one image, (X,Y,Z,K,N) a
// batch; (X,Y,Z) is one image with one channel (the hinge's single logit).
Shape logits_shape(const io::Volume& v, const std::string& path) {
  const Shape& s = v.data.shape();
  switch (s.size()) {
    case 3: return {1, 1, s[0], s[1], s[2]};
    case 4: return {1, s[0], s[1], s[2], s[3]};
    case 5: return s;
    default:
      VG_INPUT_FAIL(path << ": logits must be (X,Y,Z,K) for one image or (X,Y,Z,K,N) for a batch, got dims "
                   << dims_str(v.dims()));
  }
}

// The labels' tensor as (N, D, H, W): (X,Y,Z) is one image, (X,Y,Z,N) a batch.
Shape labels_shape(const io::Volume& v, const std::string& path) {
  const Shape& s = v.data.shape();
  switch (s.size()) {
    case 3: return {1, s[0], s[1], s[2]};
    case 4: return s;
    default:
      VG_INPUT_FAIL(path << ": labels must be (X,Y,Z) for one image or (X,Y,Z,N) for a batch, got dims "
                   << dims_str(v.dims()));
  }
}

bool same_affine(const io::Affine& a, const io::Affine& b) {
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c)
      if (std::fabs(a[r][c] - b[r][c]) > 1e-4 * (1.0 + std::fabs(b[r][c]))) return false;
  return true;
}

Json stats_json(const std::vector<ClassGradStats>& stats) {
  Json out = Json::array();
  for (const ClassGradStats& s : stats)
    out.push_back({{"class", s.label},
                   {"channel", s.channel},
                   {"inside", finite_or_null(s.inside)},
                   {"outside", finite_or_null(s.outside)},
                   {"boundary", finite_or_null(s.boundary)},
                   {"voxels", s.voxels},
                   {"outside_voxels", s.outside_voxels},
                   {"boundary_voxels", s.boundary_voxels}});
  return out;
}

// The options the loss really used, so a result file says how it was made; options the loss
// ignores are left out (and were warned about).
Json options_json(const LossOutput& out, const LossOptions& lo) {
  const LossKind k = out.kind;
  Json j = {{"ignore_label", lo.ignore_label ? Json(*lo.ignore_label) : Json(nullptr)}};
  if (kernels::loss_has_region(k)) {
    j["classes"] = class_selection_name(out.classes);
    j["aggregate"] = aggregate_name(out.aggregate);
  }
  if (k == LossKind::Dice || k == LossKind::Jaccard || k == LossKind::DiceCrossEntropy) j["eps"] = lo.eps;
  if (k == LossKind::WeightedCrossEntropy)
    j["class_weights"] = lo.class_weights.empty() ? Json("inverse_class_frequency") : Json(lo.class_weights);
  if (k == LossKind::DiceCrossEntropy) {
    j["ce_weight"] = out.ce_weight;
    j["dice_weight"] = out.dice_weight;
  }
  return j;
}

void warn_unused(LossKind k, const CLI::App& sub) {
  auto given = [&](const char* name) { return sub.count(name) > 0; };
  const std::string loss = loss_kind_name(k);
  if (!kernels::loss_has_region(k) && (given("--loss-classes") || given("--aggregate")))
    logging::warning("--loss-classes and --aggregate do not apply to " + loss + "; ignored");
  if (given("--eps") && k != LossKind::Dice && k != LossKind::Jaccard && k != LossKind::DiceCrossEntropy)
    logging::warning("--eps does not apply to " + loss + "; ignored");
  if (given("--class-weights") && k != LossKind::WeightedCrossEntropy)
    logging::warning("--class-weights applies to wce only; ignored");
  if ((given("--ce-weight") || given("--dice-weight")) && k != LossKind::DiceCrossEntropy)
    logging::warning("--ce-weight and --dice-weight apply to dice_ce only; ignored");
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// The loss options from the flags given; `base` holds what a flag left out (a run's recorded
// settings, or the loss's defaults).
LossOptions loss_options_of(const LossFlags& f, const CLI::App& sub, LossKind kind, LossOptions base,
                            const std::vector<double>& class_weights) {
  auto given = [&](const char* flag) { return sub.count(flag) > 0; };
  if (given("--loss-classes")) base.classes = parse_class_selection(f.classes);
  if (given("--aggregate")) base.aggregate = parse_aggregate(f.aggregate);
  if (given("--ignore-label")) base.ignore_label = f.ignore_label;
  if (given("--eps")) base.eps = f.eps;
  if (kind == LossKind::WeightedCrossEntropy && given("--class-weights")) base.class_weights = class_weights;
  if (given("--ce-weight")) base.ce_weight = f.ce_weight;
  if (given("--dice-weight")) base.dice_weight = f.dice_weight;
  if (kind != LossKind::WeightedCrossEntropy) base.class_weights.clear();
  return base;
}

// The loss of logits z (N, K, D, H, W, a leaf requiring grad) against labels y (N, D, H, W), its
// backward, and the report every grad run prints; `grad` receives ∂loss/∂z as float64 host values.
Json loss_and_gradient(LossKind kind, const Tensor& z, const Tensor& y, const LossOptions& lo,
                       std::vector<double>& grad) {
  const LossOutput out = segmentation_loss_terms(kind, z, y, lo);
  out.loss.backward();
  const LossReport report = loss_report(out);
  const GradGeometry geo{z.size(0), z.size(1), z.size(2), z.size(3), z.size(4)};
  // The hinge's one channel scores the foreground: its "inside" is the voxels labelled 1.
  const std::vector<std::int64_t> channel_label =
      kind == LossKind::LovaszHinge ? std::vector<std::int64_t>{1} : std::vector<std::int64_t>{};
  grad = z.grad().cpu().to(DType::Float64).to_vector<double>();  // float64 lives on the CPU only
  const std::vector<std::int32_t> labels = y.cpu().to_vector<std::int32_t>();
  const std::vector<ClassGradStats> stats = gradient_stats(grad, labels, geo, lo.ignore_label, channel_label);

  double abs_sum = 0, sq_sum = 0, abs_max = 0;
  for (double v : grad) {
    abs_sum += std::fabs(v);
    sq_sum += v * v;
    abs_max = std::max(abs_max, std::fabs(v));
  }
  Json per_class = Json::array();
  for (double v : report.per_class) per_class.push_back(finite_or_null(v));
  return {
      {"loss", finite_or_null(report.loss)},
      {"loss_name", loss_kind_name(kind)},
      {"per_class", per_class},
      {"grad_stats", stats_json(stats)},
      {"sets", report.sets},
      {"sets_chosen", report.sets_chosen},
      {"parts", {{"ce", finite_or_null(report.ce_part)}, {"region", finite_or_null(report.region_part)}}},
      {"options", options_json(out, lo)},
      {"grad",
       {{"abs_mean", grad.empty() ? Json(nullptr) : Json(abs_sum / static_cast<double>(grad.size()))},
        {"abs_max", abs_max},
        {"l2", std::sqrt(sq_sum)}}},
  };
}

// --out, when given, must be a NIfTI path that is none of the inputs.
void check_out(const std::string& out, const std::vector<std::string>& input_paths) {
  if (out.empty()) return;
  // Refused before the work rather than after it: write_nifti writes single files only.
  if (!ends_with(out, ".nii") && !ends_with(out, ".nii.gz"))
    VG_USAGE_FAIL("--out " << out << ": the gradient is written as .nii or .nii.gz");
  // The gradient never lands on one of the files it is computed from (compared by identity).
  files::InputFiles inputs;
  for (const std::string& path : input_paths) inputs.add(path);
  if (const auto input = inputs.overwritten_by(out))
    VG_INPUT_FAIL("--out " << out << ": would overwrite the input " << *input
                           << " (grad never writes over its inputs); choose another --out");
}

// --model RUN --image I --label L: the loss of the run's network on one case, on the grid the
// network sees (the run's plan), and the gradient carried on into the network's parameters.
int run_grad_through_model(const GradOptions& opt, const CLI::App& sub, const GlobalOptions& global) {
  VG_USAGE_CHECK(!opt.image.empty() && !opt.label.empty(), "--model needs --image and --label (one case)");
  for (const auto& [flag, path] : {std::pair{"--image", &opt.image}, std::pair{"--label", &opt.label}})
    VG_USAGE_CHECK(std::filesystem::exists(*path), flag << " '" << *path << "': no such file");
  std::error_code ec;
  VG_USAGE_CHECK(std::filesystem::is_directory(opt.model, ec), "--model '" << opt.model << "': no such run folder");
  check_out(opt.out, {opt.image, opt.label});
  const Device dev = resolve_device(global.device);
  RunNetworkLogits net(opt.model, opt.checkpoint, dev);
  const TrainingSettings& t = net.config().training;
  // The run's own loss and settings unless the command line says otherwise.
  const LossKind kind = parse_loss_kind(sub.count("--loss") > 0 ? opt.loss : t.loss);
  warn_unused(kind, sub);
  const LossOptions recorded = sub.count("--loss") == 0 ? loss_options_of(t.loss_options) : LossOptions{};
  const std::vector<double> class_weights =
      class_weights_of(opt.loss_flags.class_weights).value_or(std::vector<double>{});
  const LossOptions lo = loss_options_of(opt.loss_flags, sub, kind, recorded, class_weights);
  VG_USAGE_CHECK(lo.class_weights.empty() || static_cast<int>(lo.class_weights.size()) == net.config().plan.classes,
                 "--class-weights gives " << lo.class_weights.size() << " weights but the run has "
                                          << net.config().plan.classes << " classes");

  const io::Volume image_vol = io::read_nifti(opt.image);
  const io::Volume label_vol = io::read_nifti(opt.label);
  const Tensor image = stack_channels({image_vol}, {opt.image});
  const Tensor label = label_vol.to_labels();
  VG_INPUT_CHECK(label.dim() == 3 && label.size(0) == image.size(1) && label.size(1) == image.size(2) &&
                     label.size(2) == image.size(3),
                 opt.label << ": dims " << dims_str(label_vol.dims()) << " are not the image's ("
                           << dims_str(image_vol.dims()) << ", " << opt.image << ")");
  net.forward(image, label, spacing_zyx(image_vol.spacing), opt.image);

  std::vector<double> grad;
  Json result = loss_and_gradient(kind, net.logits(), net.labels().to(DType::Int32), lo, grad);
  Json layers = Json::array();
  for (const auto& [layer, norm] : net.backward_into_network()) layers.push_back({{"layer", layer}, {"norm", norm}});
  if (!opt.out.empty()) {
    // (K, Z, Y, X) on the input's grid: a NIfTI of dims (X, Y, Z, K), as a logits file.
    const Tensor g = net.to_input_grid(net.logits().grad());
    io::write_nifti(opt.out, io::make_volume(g, label_vol.affine), io::NiftiWriteType::Float32);
    logging::info("wrote the gradient to " + opt.out);
  }
  result["layer_grad_norms"] = layers;
  result["model"] = opt.model;
  result["checkpoint"] = opt.checkpoint;
  result["image"] = opt.image;
  result["label"] = opt.label;
  result["grid"] = {{"logits", net.logits().shape()}, {"spacing_zyx", net.config().plan.target_spacing}};
  result["out"] = opt.out.empty() ? Json(nullptr) : Json(opt.out);
  result["device"] = dev.str();
  result["dtype"] = "float64";
  write_json_line(std::cout, result);
  return kExitOk;
}

int run_grad(const GradOptions& opt, const CLI::App& sub, const GlobalOptions& global) {
  if (!opt.model.empty()) {
    VG_USAGE_CHECK(opt.logits.empty(), "--logits and --model exclude each other (logits come from the network)");
    return run_grad_through_model(opt, sub, global);
  }
  VG_USAGE_CHECK(!opt.logits.empty() && !opt.label.empty(),
                 "--logits and --label are required (or --model RUN "
                 "--image I --label L)");
  VG_USAGE_CHECK(!opt.loss.empty(), "--loss is required with --logits");
  VG_USAGE_CHECK(opt.image.empty() && sub.count("--checkpoint") == 0, "--image and --checkpoint go with --model");
  const LossKind kind = parse_loss_kind(opt.loss);
  warn_unused(kind, sub);
  for (const auto& [flag, path] : {std::pair{"--logits", &opt.logits}, std::pair{"--label", &opt.label}})
    VG_USAGE_CHECK(std::filesystem::exists(*path), flag << " '" << *path << "': no such file");
  check_out(opt.out, {opt.logits, opt.label});
  const Device dev = resolve_device(global.device);
  const io::Volume logits_vol = io::read_nifti(opt.logits);
  const io::Volume label_vol = io::read_nifti(opt.label);
  const Shape zs = logits_shape(logits_vol, opt.logits);  // (N, K, D, H, W)
  const Shape ys = labels_shape(label_vol, opt.label);    // (N, D, H, W)
  const Shape z_spatial(zs.begin() + 2, zs.end()), y_spatial(ys.begin() + 1, ys.end());
  if (zs[0] != ys[0] || z_spatial != y_spatial)
    VG_INPUT_FAIL("the logits and the labels disagree: " << opt.logits << " has dims " << dims_str(logits_vol.dims())
                                                   << " (" << zs[0] << " image(s) of X,Y,Z " << zs[4] << "x" << zs[3]
                                                   << "x" << zs[2] << "), " << opt.label << " has dims "
                                                   << dims_str(label_vol.dims()) << " (" << ys[0]
                                                   << " image(s) of X,Y,Z " << ys[3] << "x" << ys[2] << "x" << ys[1]
                                                   << ")");
  const std::int64_t K = zs[1];
  if (kind == LossKind::LovaszHinge && K != 1)
    VG_INPUT_FAIL("lovasz_hinge takes one logit channel (K = 1), but " << opt.logits << " has K = " << K << " (dims "
                                                                 << dims_str(logits_vol.dims())
                                                                 << "); use --loss lovasz for K classes");
  const std::vector<double> class_weights =
      class_weights_of(opt.loss_flags.class_weights).value_or(std::vector<double>{});
  if (kind == LossKind::WeightedCrossEntropy && !class_weights.empty() &&
      static_cast<std::int64_t>(class_weights.size()) != K)
    VG_USAGE_FAIL("--class-weights gives " << class_weights.size() << " weights but " << opt.logits << " has K = " << K
                                           << " classes");
  if (!same_affine(logits_vol.affine, label_vol.affine))
    logging::warning(opt.logits + " and " + opt.label + " have different affines; --out uses the label's");

  // A measuring instrument on the CPU (float64); the GPU computes what training computes (float32).
  const DType dtype = dev.is_cuda() ? DType::Float32 : DType::Float64;
  // A NaN or Inf logit makes every number below meaningless: refused, with where the first one is.
  const Tensor logits64 = logits_vol.data.to(DType::Float64);
  {
    const double* v = logits64.data<double>();
    std::int64_t bad = 0, first = -1;
    for (std::int64_t i = 0; i < logits64.numel(); ++i)
      if (!std::isfinite(v[i])) {
        if (first < 0) first = i;
        ++bad;
      }
    VG_INPUT_CHECK(bad == 0, opt.logits << ": " << bad
                                        << " logits are not finite (NaN or Inf; the first at voxel index " << first
                                        << "); the loss and its gradient need finite logits");
  }
  Tensor z = reshape(logits64.to(dtype).to(dev), zs).detach();  // (N, K, D, H, W)
  z.requires_grad_(true);
  const Tensor y = reshape(label_vol.to_labels().to(dev), ys);  // (N, D, H, W) int32

  LossOptions defaults;
  const LossOptions lo = loss_options_of(opt.loss_flags, sub, kind, defaults, class_weights);
  std::vector<double> g;
  Json result = loss_and_gradient(kind, z, y, lo, g);
  if (!opt.out.empty()) {
    // The logits file's own shape (dims as it has them), in the label's space.
    const Tensor g32 = reshape(z.grad().cpu().to(DType::Float32), logits_vol.data.shape());
    io::Volume gv = io::make_volume(g32, label_vol.affine);
    for (std::size_t i = 3; i < gv.spacing.size() && i < logits_vol.spacing.size(); ++i)
      gv.spacing[i] = logits_vol.spacing[i];
    io::write_nifti(opt.out, gv, io::NiftiWriteType::Float32);
    logging::info("wrote the gradient to " + opt.out);
  }
  result["shape"] = {{"logits", zs}, {"labels", ys}};
  result["logits"] = opt.logits;
  result["label"] = opt.label;
  result["out"] = opt.out.empty() ? Json(nullptr) : Json(opt.out);
  result["device"] = dev.str();
  result["dtype"] = dtype == DType::Float64 ? "float64" : "float32";
  write_json_line(std::cout, result);
  return kExitOk;
}

}  // namespace

Command grad_command() {
  return {"grad",
          "Compute a loss and its gradient for NIfTI logits and labels: the loss, each class's term and "
          "where the gradient falls per class (one JSON object), optionally the gradient as NIfTI",
          [](CLI::App& sub) -> RunFn {
            auto opt = std::make_shared<GradOptions>();
            sub.add_option("--logits", opt->logits, "Float NIfTI logits (X,Y,Z,K), or (X,Y,Z,K,N) for a batch")
                ->type_name("FILE");
            sub.add_option("--label", opt->label, "Integer NIfTI labels (X,Y,Z), or (X,Y,Z,N) for a batch")
                ->type_name("FILE");
            sub.add_option("--model", opt->model,
                           "A voxgrad train run folder: the loss of its network on --image against --label, "
                           "on the network's grid, and each layer's parameter-gradient norm")
                ->type_name("RUN");
            sub.add_option("--image", opt->image, "With --model: the case's image (NIfTI)")->type_name("FILE");
            sub.add_option("--checkpoint", opt->checkpoint, "With --model: best (model_best) or latest")
                ->check(one_of({"best", "latest"}))
                ->capture_default_str();
            sub.add_option("--loss", opt->loss, "The loss")
                ->check(one_of({"ce", "wce", "dice", "jaccard", "lovasz", "lovasz_hinge", "dice_ce"}));
            add_loss_flags(sub, opt->loss_flags, /*classes_alias=*/true, "inverse class frequency of --label");
            sub.add_option("--out", opt->out, "Write ∂loss/∂logits as a float32 NIfTI (.nii or .nii.gz)")
                ->type_name("FILE");
            CLI::App* app = &sub;
            return [opt, app](const GlobalOptions& global) { return run_grad(*opt, *app, global); };
          }};
}

}  // namespace voxgrad::cli
