// The segmentation losses: input checks, the per-loss defaults, one dispatch to the CPU twin or the
// CUDA kernels inside a profiler scope, one recorded backward closure per loss, and the host-side
// report of the per-class terms.
#include "engine/losses.h"

#include <cmath>
#include <limits>

#include "engine/allocator.h"
#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "engine/profiler.h"

namespace voxgrad {

using detail::data_or_null;
using detail::dispatch_floating;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

struct KindName {
  LossKind kind;
  const char* name;
};
constexpr KindName kKindNames[] = {
    {LossKind::CrossEntropy, "ce"},
    {LossKind::WeightedCrossEntropy, "wce"},
    {LossKind::Dice, "dice"},
    {LossKind::Jaccard, "jaccard"},
    {LossKind::LovaszSoftmax, "lovasz"},
    {LossKind::LovaszHinge, "lovasz_hinge"},
    {LossKind::DiceCrossEntropy, "dice_ce"},
};

// A literal: profiler scopes keep the pointer.
const char* kind_literal(LossKind kind) {
  for (const auto& k : kKindNames)
    if (k.kind == kind) return k.name;
  return "loss";
}

std::vector<double> host_values(const Tensor& t) {
  const Tensor h = t.cpu();
  if (h.dtype() == DType::Float64) return h.to_vector<double>();
  const std::vector<float> f = h.to_vector<float>();
  return {f.begin(), f.end()};
}

// The checked geometry of a (logits, labels) pair: (N, K, S) with S the product of the spatial axes.
kernels::LossConfig loss_geometry(const char* name, const Tensor& logits, const Tensor& labels) {
  detail::check_floating(logits, name);
  VG_CHECK(logits.dim() >= 2,
           name << ": logits must be (N, K, D, H, W) (at least (N, K)), got shape " << shape_str(logits.shape()));
  VG_CHECK(labels.defined(), name << ": undefined labels");
  VG_CHECK(labels.dtype() == DType::Int32 || labels.dtype() == DType::UInt8,
           name << ": labels must be int32 or uint8, got " << dtype_name(labels.dtype()));
  VG_CHECK(labels.device() == logits.device(), name << ": logits on " << logits.device().str() << " but labels on "
                                                    << labels.device().str() << "; move both to one device");
  Shape expected{logits.shape()[0]};
  expected.insert(expected.end(), logits.shape().begin() + 2, logits.shape().end());
  VG_CHECK(labels.shape() == expected, name << ": labels of shape " << shape_str(labels.shape())
                                            << " do not match logits " << shape_str(logits.shape()) << "; expected "
                                            << shape_str(expected) << " (the logits' shape without the class axis)");
  kernels::LossConfig cfg;
  cfg.images = logits.shape()[0];
  cfg.classes = logits.shape()[1];
  cfg.voxels = shape_numel(Shape(logits.shape().begin() + 2, logits.shape().end()));
  VG_CHECK(cfg.images > 0 && cfg.classes > 0 && cfg.voxels > 0,
           name << ": empty logits of shape " << shape_str(logits.shape()));
  return cfg;
}

}  // namespace

// ---- names and defaults -----------------------------------------------------------------------

LossKind parse_loss_kind(const std::string& name) {
  for (const auto& k : kKindNames)
    if (name == k.name) return k.kind;
  VG_FAIL("unknown loss '" << name << "'; choose one of ce, wce, dice, jaccard, lovasz, lovasz_hinge, dice_ce");
}

std::string loss_kind_name(LossKind kind) { return kind_literal(kind); }

ClassSelection parse_class_selection(const std::string& name) {
  if (name == "all") return ClassSelection::All;
  if (name == "fg") return ClassSelection::Foreground;
  if (name == "present") return ClassSelection::Present;
  VG_FAIL("unknown class selection '" << name << "'; choose one of all, fg, present");
}

std::string class_selection_name(ClassSelection c) {
  switch (c) {
    case ClassSelection::All:
      return "all";
    case ClassSelection::Foreground:
      return "fg";
    case ClassSelection::Present:
      return "present";
  }
  return "all";
}

Aggregate parse_aggregate(const std::string& name) {
  if (name == "per-image") return Aggregate::PerImage;
  if (name == "batch") return Aggregate::Batch;
  VG_FAIL("unknown aggregation '" << name << "'; choose per-image or batch");
}

std::string aggregate_name(Aggregate a) { return a == Aggregate::Batch ? "batch" : "per-image"; }

ClassSelection default_class_selection(LossKind kind) {
  switch (kind) {
    case LossKind::LovaszSoftmax:
      return ClassSelection::Present;
    case LossKind::Dice:
    case LossKind::Jaccard:
    case LossKind::DiceCrossEntropy:
      return ClassSelection::Foreground;
    default:
      return ClassSelection::All;
  }
}

Aggregate default_aggregate(LossKind kind) {
  switch (kind) {
    case LossKind::Dice:
    case LossKind::Jaccard:
    case LossKind::DiceCrossEntropy:
    case LossKind::LovaszHinge:
      return Aggregate::PerImage;
    default:
      return Aggregate::Batch;
  }
}

// ---- the op -----------------------------------------------------------------------------------

LossOutput segmentation_loss_terms(LossKind kind, const Tensor& logits, const Tensor& labels,
                                   const LossOptions& options) {
  const char* name = kind_literal(kind);
  kernels::LossConfig cfg = loss_geometry(name, logits, labels);
  cfg.kind = kind;
  const bool region = kernels::loss_has_region(kind);
  // The cross-entropies have no sets: one sum over the batch, whatever the region options say.
  cfg.class_selection = region ? options.classes.value_or(default_class_selection(kind)) : ClassSelection::All;
  cfg.aggregate = region ? options.aggregate.value_or(default_aggregate(kind)) : Aggregate::Batch;
  cfg.has_ignore_label = options.ignore_label.has_value();
  cfg.ignore_label = options.ignore_label.value_or(0);
  cfg.eps = options.eps;
  cfg.ce_weight = options.ce_weight;
  cfg.dice_weight = options.dice_weight;
  cfg.lovasz_sort = options.lovasz_sort;
  VG_CHECK(std::isfinite(cfg.eps) && cfg.eps >= 0, name << ": eps must be finite and >= 0, got " << cfg.eps);
  VG_CHECK(std::isfinite(cfg.ce_weight) && std::isfinite(cfg.dice_weight),
           name << ": the ce and dice weights must be finite");
  if (kind == LossKind::LovaszHinge) {
    VG_CHECK(cfg.classes == 1, "lovasz_hinge: takes one logit channel (N, 1, D, H, W) and binary labels, got "
                                   << cfg.classes << " channels; use lovasz for several classes");
  }
  if (!options.class_weights.empty()) {
    VG_CHECK(kind == LossKind::WeightedCrossEntropy, name << ": class weights apply to wce only");
    VG_CHECK(static_cast<std::int64_t>(options.class_weights.size()) == cfg.classes,
             "wce: " << options.class_weights.size() << " class weights for " << cfg.classes << " classes");
    for (double w : options.class_weights)
      VG_CHECK(std::isfinite(w) && w >= 0, "wce: class weights must be finite and >= 0, got " << w);
  }

  const Device device = logits.device();
  const DType dtype = logits.dtype();
  const Tensor y = labels.dtype() == DType::Int32 ? labels : labels.to(DType::Int32);  // (N, D, H, W)
  const std::int64_t sets = kernels::loss_sets(cfg), K = cfg.classes;
  Tensor weights;  // (K)
  if (!options.class_weights.empty()) {
    weights = from_vector(options.class_weights, {K}, Device::cpu()).to(dtype).to(device);
  }
  const Tensor probs = kernels::loss_uses_softmax(kind) ? empty_like(logits) : Tensor();       // (N, K, D, H, W)
  const Tensor lovasz_grad = kernels::loss_uses_lovasz(kind) ? empty_like(logits) : Tensor();  // (N, K, D, H, W)
  Tensor loss = empty({}, dtype, device);
  const Tensor region_terms = empty({sets, K}, dtype, device);
  const Tensor ce_terms = empty({K}, dtype, device);
  const Tensor parts = empty({2}, dtype, device);
  const Tensor coefs = empty({kernels::loss_coefficient_count(cfg)}, dtype, device);

  // The losses' cost model: the logits and labels read, the softmax (and the Lovász gradient)
  // written; about 10 operations a logit (max, exp, sum, normalise, the class sums). The backward
  // reads what the forward kept and writes dz, about 6 operations a logit. The Lovász sort's
  // passes are memory traffic this model leaves out, so its op shows how far above it the sort runs.
  const double logit_bytes = static_cast<double>(logits.nbytes()), label_bytes = static_cast<double>(y.nbytes());
  const double kept = (probs.defined() ? logit_bytes : 0.0) + (lovasz_grad.defined() ? logit_bytes : 0.0);
  const double logit_count = static_cast<double>(logits.numel());
  {
    VG_PROFILE_COST(name, device, OpCost{10.0 * logit_count, logit_bytes + label_bytes + kept});
    dispatch_floating(logits, [&]<class T>(auto on) {
      kernels::LossForwardArgs<T> a;
      a.logits = logits.data<T>();
      a.labels = y.data<std::int32_t>();
      a.class_weights = data_or_null<T>(weights);
      a.probs = data_or_null<T>(probs);
      a.lovasz_grad = data_or_null<T>(lovasz_grad);
      a.loss = loss.data<T>();
      a.region_terms = region_terms.data<T>();
      a.ce_terms = ce_terms.data<T>();
      a.parts = parts.data<T>();
      a.coefs = coefs.data<T>();
      ScratchArena scratch(device);
      VG_LAUNCH(on.with_cuda_args(scratch), loss_forward, cfg, a);
    });
  }

  // The backward reads the softmax (the logits for the hinge), the labels, the Lovász gradient
  // and the coefficients the forward left; it is a single pass over the voxels.
  const Tensor x_saved = saved(kernels::loss_uses_softmax(kind) ? probs : logits);
  loss = record(
      name, loss, {logits},
      [cfg, x_saved, y_saved = saved(y), lg_saved = saved(lovasz_grad), coefs_saved = saved(coefs)](const Tensor& dy) {
        Tensor dz = empty_like(x_saved);  // (N, K, D, H, W)
        dispatch_floating(dz, [&]<class T>(auto on) {
          kernels::LossBackwardArgs<T> a;
          a.saved = x_saved.data<T>();
          a.labels = y_saved.data<std::int32_t>();
          a.lovasz_grad = data_or_null<T>(lg_saved);
          a.coefs = coefs_saved.data<T>();
          a.grad_output = dy.data<T>();
          a.grad_logits = dz.data<T>();
          VG_LAUNCH(on, loss_backward, cfg, a);
        });
        return std::vector<Tensor>{dz};
      });
  if (profiler::enabled()) set_backward_cost(loss, OpCost{6.0 * logit_count, kept + label_bytes + logit_bytes});

  LossOutput out;
  out.kind = kind;
  out.classes = cfg.class_selection;
  out.aggregate = cfg.aggregate;
  out.ce_weight = cfg.ce_weight;
  out.dice_weight = cfg.dice_weight;
  out.loss = loss;
  out.region_terms = region_terms;
  out.ce_terms = ce_terms;
  out.parts = parts;
  return out;
}

Tensor segmentation_loss(LossKind kind, const Tensor& logits, const Tensor& labels, const LossOptions& options) {
  return segmentation_loss_terms(kind, logits, labels, options).loss;
}

Tensor cross_entropy_loss(const Tensor& logits, const Tensor& labels, const LossOptions& options) {
  return segmentation_loss(LossKind::CrossEntropy, logits, labels, options);
}
Tensor weighted_cross_entropy_loss(const Tensor& logits, const Tensor& labels, const LossOptions& options) {
  return segmentation_loss(LossKind::WeightedCrossEntropy, logits, labels, options);
}
Tensor dice_loss(const Tensor& logits, const Tensor& labels, const LossOptions& options) {
  return segmentation_loss(LossKind::Dice, logits, labels, options);
}
Tensor jaccard_loss(const Tensor& logits, const Tensor& labels, const LossOptions& options) {
  return segmentation_loss(LossKind::Jaccard, logits, labels, options);
}
Tensor lovasz_softmax_loss(const Tensor& logits, const Tensor& labels, const LossOptions& options) {
  return segmentation_loss(LossKind::LovaszSoftmax, logits, labels, options);
}
Tensor lovasz_hinge_loss(const Tensor& logits, const Tensor& labels, const LossOptions& options) {
  return segmentation_loss(LossKind::LovaszHinge, logits, labels, options);
}
Tensor dice_ce_loss(const Tensor& logits, const Tensor& labels, const LossOptions& options) {
  return segmentation_loss(LossKind::DiceCrossEntropy, logits, labels, options);
}

// ---- the report -------------------------------------------------------------------------------

LossReport loss_report(const LossOutput& out) {
  VG_CHECK(out.loss.defined(), "loss_report: no loss computed");
  LossReport r;
  r.loss = out.loss.item();
  const std::vector<double> region = host_values(out.region_terms);  // (sets, K)
  const std::vector<double> parts = host_values(out.parts);
  r.ce_per_class = host_values(out.ce_terms);
  r.sets = out.region_terms.size(0);
  const std::int64_t K = out.region_terms.size(1);
  r.ce_part = parts[0];
  r.region_part = parts[1];
  r.region_per_class.assign(K, kNaN);
  std::vector<std::int64_t> region_sets(K, 0);
  for (std::int64_t c = 0; c < K; ++c) {
    double sum = 0.0;
    for (std::int64_t s = 0; s < r.sets; ++s) {
      const double v = region[s * K + c];
      if (std::isnan(v)) continue;
      sum += v;
      ++region_sets[c];
    }
    if (region_sets[c] > 0) r.region_per_class[c] = sum / static_cast<double>(region_sets[c]);
  }
  r.per_class.assign(K, kNaN);
  r.sets_chosen.assign(K, 0);
  for (std::int64_t c = 0; c < K; ++c) {
    const double ce = r.ce_per_class[c], reg = r.region_per_class[c];
    switch (out.kind) {
      case LossKind::CrossEntropy:
      case LossKind::WeightedCrossEntropy:
        r.per_class[c] = ce;
        r.sets_chosen[c] = std::isnan(ce) ? 0 : 1;
        break;
      case LossKind::DiceCrossEntropy:
        if (!std::isnan(ce) || !std::isnan(reg)) {
          r.per_class[c] =
              (std::isnan(ce) ? 0.0 : out.ce_weight * ce) + (std::isnan(reg) ? 0.0 : out.dice_weight * reg);
        }
        r.sets_chosen[c] = region_sets[c];
        break;
      default:
        r.per_class[c] = reg;
        r.sets_chosen[c] = region_sets[c];
        break;
    }
  }
  return r;
}

}  // namespace voxgrad
