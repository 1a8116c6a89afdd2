// The segmentation losses as differentiable ops: logits (N, K, D, H, W) and integer labels
// (N, D, H, W) in, a scalar loss out, recorded as ONE autograd node whose backward is ∂loss/∂logits.
// float32 on both devices, float64 on the CPU. Definitions: issue 5 and kernels/losses.h.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tensor.h"
#include "../kernels/losses.h"

namespace voxgrad {

using kernels::Aggregate;
using kernels::ClassSelection;
using kernels::LossKind;
using kernels::LovaszSort;

// Command-line names: ce, wce, dice, jaccard, lovasz, lovasz_hinge, dice_ce; all|fg|present;
// per-image|batch. Parsing fails with an Error that lists the choices.
LossKind parse_loss_kind(const std::string& name);
std::string loss_kind_name(LossKind kind);
ClassSelection parse_class_selection(const std::string& name);
std::string class_selection_name(ClassSelection c);
Aggregate parse_aggregate(const std::string& name);
std::string aggregate_name(Aggregate a);

// Defaults per loss: dice, jaccard and dice_ce use fg and per-image; lovasz uses present and batch
// (Berman's reference); lovasz_hinge is per image; ce and wce are over the whole batch.
ClassSelection default_class_selection(LossKind kind);
Aggregate default_aggregate(LossKind kind);

struct LossOptions {
  std::optional<ClassSelection> classes;  // region losses; unset: the loss's default
  std::optional<Aggregate> aggregate;     // region losses; unset: the loss's default
  std::optional<std::int32_t> ignore_label;
  double eps = 1e-5;                  // Dice and Jaccard smoothing
  std::vector<double> class_weights;  // wce only, one per class; empty: inverse class frequency over the batch
  double ce_weight = 1.0;             // dice_ce = ce_weight * ce + dice_weight * dice
  double dice_weight = 1.0;
  LovaszSort lovasz_sort = LovaszSort::CompositeKeys;  // the CUDA sort (bench compares them)
};

// A loss and the terms it was built from, all on the logits' device and dtype.
struct LossOutput {
  LossKind kind = LossKind::CrossEntropy;
  ClassSelection classes = ClassSelection::All;
  Aggregate aggregate = Aggregate::Batch;
  double ce_weight = 1.0, dice_weight = 1.0;
  Tensor loss;          // () recorded as one node; loss.backward() puts ∂loss/∂logits in logits.grad()
  Tensor region_terms;  // (sets, K) each chosen class's term per set (1 - D_c, 1 - J_c, Lovász loss_c;
                        // the hinge's set loss), NaN where the class was not chosen; NaN for ce and wce
  Tensor ce_terms;      // (K) mean -log p_{i,c} over the voxels of class c, NaN where none; NaN without a CE part
  Tensor parts;         // (2) the unweighted cross-entropy part and region part, NaN where the loss has none
};

// The loss with its terms. logits: float32 or float64, (N, K, spatial...) with K >= 1;
// labels: int32 or uint8 of shape (N, spatial...) on the same device, each in [0, K) (0/1 for the
// hinge) or the ignore label, else an Error.
LossOutput segmentation_loss_terms(LossKind kind, const Tensor& logits, const Tensor& labels,
                                   const LossOptions& options = {});
Tensor segmentation_loss(LossKind kind, const Tensor& logits, const Tensor& labels, const LossOptions& options = {});

Tensor cross_entropy_loss(const Tensor& logits, const Tensor& labels, const LossOptions& options = {});
Tensor weighted_cross_entropy_loss(const Tensor& logits, const Tensor& labels, const LossOptions& options = {});
Tensor dice_loss(const Tensor& logits, const Tensor& labels, const LossOptions& options = {});
Tensor jaccard_loss(const Tensor& logits, const Tensor& labels, const LossOptions& options = {});
Tensor lovasz_softmax_loss(const Tensor& logits, const Tensor& labels, const LossOptions& options = {});
Tensor lovasz_hinge_loss(const Tensor& logits, const Tensor& labels, const LossOptions& options = {});
Tensor dice_ce_loss(const Tensor& logits, const Tensor& labels, const LossOptions& options = {});

// The host-side summary of a LossOutput (copies a few values from the device), what `voxgrad grad`
// prints. NaN means "not defined" (JSON null).
struct LossReport {
  double loss = 0.0;
  std::int64_t sets = 0;  // sets the region part averages over
  // Each class's term averaged over the sets where it was chosen (NaN where never chosen):
  //   ce, wce: ce_per_class; dice, jaccard, lovasz, lovasz_hinge: region_per_class;
  //   dice_ce: ce_weight * ce_per_class + dice_weight * region_per_class, over the parts the
  //   class takes part in.
  std::vector<double> per_class;            // (K)
  std::vector<std::int64_t> sets_chosen;    // (K) sets where the class was chosen (ce, wce: 1 if it has
                                            // voxels; dice_ce: its Dice part)
  double ce_part = 0.0, region_part = 0.0;  // the unweighted parts, NaN where absent
  std::vector<double> ce_per_class;         // (K) mean -log p over the class's voxels
  std::vector<double> region_per_class;     // (K) region term averaged over the sets where chosen
};
LossReport loss_report(const LossOutput& output);

}  // namespace voxgrad
