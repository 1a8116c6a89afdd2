// nnUNetPredictor's path for one case, in voxgrad: DefaultPreprocessor.run_case_npy's order of
// steps, predict_sliding_window_return_logits per fold, the folds' mean, and
// convert_predicted_logits_to_segmentation_with_correct_shape.
#include "apps/pipeline/nnunet_inference.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "apps/pipeline/nnunet_sliding_window.h"
#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/memory_budget.h"

namespace voxgrad::pipeline::nnunet {

Inference::Inference(ModelFolder model, Device device) : model_(std::move(model)), device_(device) {
  const Configuration& c = model_.configuration;
  // One tile's sums, weights and Gaussian must fit before any case is read.
  std::uint64_t tile_bytes = 4 * static_cast<std::uint64_t>(model_.input_channels + 2 * segmentation_heads() + 1);
  for (const std::int64_t extent : c.patch_size)
    tile_bytes =
        memory::saturating_product({static_cast<std::int64_t>(std::min<std::uint64_t>(tile_bytes, INT64_MAX)), extent});
  memory::check_fits(tile_bytes, model_.plans_json_path + ": the patch_size of configuration " + c.name);
  for (const std::string& scheme : c.normalization_schemes) schemes_.push_back(parse_normalization_scheme(scheme));
  data_resampling_ = parse_resampling_settings(c.resampling_fn_data, c.resampling_fn_data_kwargs,
                                               model_.plans_json_path + ": resampling_fn_data");
  probability_resampling_ =
      parse_resampling_settings(c.resampling_fn_probabilities, c.resampling_fn_probabilities_kwargs,
                                model_.plans_json_path + ": resampling_fn_probabilities");
  networks_ = build_fold_networks(model_);
  for (const auto& network : networks_) network->to(device_);
}

PreprocessedCase Inference::preprocess(const ReaderCase& input, const std::string& name) const {
  VG_INPUT_CHECK(input.data.size(0) == model_.input_channels,
                 name << ": " << input.data.size(0) << " channel(s); the model takes " << model_.input_channels
                      << " (dataset.json's channel_names): give <case>_0000 ... files, one per channel");
  for (int a = 0; a < 3; ++a)
    VG_INPUT_CHECK(std::isfinite(input.spacing[a]) && input.spacing[a] > 0,
                   name << ": voxel spacing " << input.spacing[a] << " mm is not a positive number");
  PreprocessedCase p;
  const AxisOrder& forward = model_.transpose_forward;
  const Tensor transposed = transpose_spatial(input.data, forward);
  for (int a = 0; a < 3; ++a) p.spacing_transposed[a] = input.spacing[forward[a]];
  p.shape_before_cropping = {transposed.size(1), transposed.size(2), transposed.size(3)};
  NonzeroCrop crop = crop_to_nonzero(transposed);
  p.box = crop.box;
  p.shape_after_cropping = {crop.data.size(1), crop.data.size(2), crop.data.size(3)};
  p.target_spacing = model_.configuration.spacing;
  if (model_.configuration.is_2d()) p.target_spacing[0] = p.spacing_transposed[0];
  normalize(crop.data, schemes_, model_.configuration.use_mask_for_norm, model_.intensity_properties, crop.mask,
            forward, name);
  const Shape3 new_shape = compute_new_shape(p.shape_after_cropping, p.spacing_transposed, p.target_spacing);
  memory::check_fits(memory::saturating_product({crop.data.size(0), new_shape[0], new_shape[1], new_shape[2], 8}),
                     name + ": resampling to the model's spacing");
  p.data = resample_to_shape(crop.data, new_shape, p.spacing_transposed, p.target_spacing, data_resampling_);
  return p;
}

Tensor Inference::logits(const Tensor& preprocessed, const InferenceSettings& settings,
                         const WindowProgress& on_window) const {
  // The image padded to at least the patch, its window sums (K) and weights, and the tiles: sized
  // from the plans' patch, so a hostile plans file is refused before anything that large is made.
  const std::vector<std::int64_t>& patch = model_.configuration.patch_size;
  const std::size_t first = 3 - patch.size();
  std::uint64_t bytes = 4 * static_cast<std::uint64_t>(preprocessed.size(0) + 2 * segmentation_heads() + 1);
  for (std::size_t a = 0; a < 3; ++a) {
    const std::int64_t extent = std::max(preprocessed.size(1 + a), a >= first ? patch[a - first] : std::int64_t{1});
    const auto so_far = static_cast<std::int64_t>(std::min<std::uint64_t>(bytes, INT64_MAX));
    bytes = memory::saturating_product({so_far, extent});
  }
  memory::check_fits(bytes, model_.plans_json_path + ": the sliding window over the patch_size of configuration " +
                                model_.configuration.name);
  SlidingWindowOptions sw;
  sw.patch = model_.configuration.patch_size;
  sw.tile_step_size = settings.tile_step_size;
  sw.use_mirroring = settings.mirror && !model_.mirror_axes.empty();
  sw.mirror_axes = model_.mirror_axes;
  sw.float16_accumulation = settings.float16_like_nnunet;
  sw.device = device_;
  sw.classes = segmentation_heads();
  const std::int64_t folds = static_cast<std::int64_t>(networks_.size());
  Tensor sum;
  NoGradGuard no_grad;
  for (std::int64_t f = 0; f < folds; ++f) {
    NnunetNetwork& network = *networks_[static_cast<std::size_t>(f)];
    sw.on_tile = [&](std::int64_t done, std::int64_t total) {
      if (on_window) on_window(f * total + done, folds * total);
    };
    const Tensor fold_logits = sliding_window_logits(
        preprocessed, [&](const Tensor& tile) { return network.forward(tile); }, sw);
    add_fold_logits(sum, fold_logits, settings.float16_like_nnunet);
  }
  finish_fold_mean(sum, folds, settings.float16_like_nnunet);
  return sum;
}

ExportedPrediction Inference::export_logits(const Tensor& logits, const PreprocessedCase& p,
                                            const InferenceSettings& settings, bool with_probabilities) const {
  const ResultPrecision precision =
      settings.float16_like_nnunet ? ResultPrecision::HalfInFloat32 : ResultPrecision::SameAsInput;
  const LogitsResampler resample = [&](const Tensor& l, const Shape3& shape) {
    return resample_to_shape(l, shape, p.target_spacing, p.spacing_transposed, probability_resampling_, precision);
  };
  ExportGeometry geometry;
  geometry.shape_after_cropping = p.shape_after_cropping;
  geometry.box = p.box;
  geometry.shape_before_cropping = p.shape_before_cropping;
  geometry.transpose_backward = model_.transpose_backward;
  const std::vector<int> region_order =
      model_.labels.has_regions ? model_.labels.regions_class_order : std::vector<int>{};
  return export_prediction(logits, resample, geometry, region_order, with_probabilities, settings.float16_like_nnunet);
}

}  // namespace voxgrad::pipeline::nnunet
