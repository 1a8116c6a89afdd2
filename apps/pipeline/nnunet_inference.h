// One nnU-Net v2 model's inference, step by step as nnUNetPredictor runs it: the preprocessing of
// a case as read (transpose, crop to the nonzero region, normalise, resample to the configuration's
// spacing), the sliding-window logits of every fold and their mean, and the export back to the
// input's grid. voxgrad::Predictor's backend for nnU-Net folders runs it; tests compare each step.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "apps/pipeline/nnunet_export.h"
#include "apps/pipeline/nnunet_image_io.h"
#include "apps/pipeline/nnunet_model.h"
#include "apps/pipeline/nnunet_preprocessing.h"
#include "apps/pipeline/nnunet_resampling.h"
#include "apps/pipeline/predictor.h"
#include "engine/device.h"

namespace voxgrad::pipeline::nnunet {

// A case after nnU-Net's DefaultPreprocessor, with what the export needs to undo it.
struct PreprocessedCase {
  Tensor data;                     // (C, Z, Y, X) float32 at the configuration's spacing
  Spacing3 spacing_transposed{};   // the input's spacing, in transposed array order
  Spacing3 target_spacing{};       // the configuration's (a 2-D one keeps the slice axis' own)
  Shape3 shape_before_cropping{};  // transposed
  Shape3 shape_after_cropping{};
  BoundingBox box;
};

struct InferenceSettings {
  double tile_step_size = 0.5;
  bool mirror = true;  // over the checkpoint's inference_allowed_mirroring_axes (none: no mirroring)
  // nnU-Net 2.8.1 sums windows, averages folds and resamples logits in float16, on the CPU too.
  // Where a tile's corners overlap, its float16 products of logits and tiny Gaussian weights are
  // coarse (errors of tenths of a logit), and they decide labels there: so voxgrad repeats that
  // arithmetic by default. False: float32 sums, nearer the exact blend but not nnU-Net's output.
  bool float16_like_nnunet = true;
};

class Inference {
 public:
  // Builds every fold's network from `model` (its weights move into the networks) on `device`.
  Inference(ModelFolder model, Device device);

  const ModelFolder& model() const { return model_; }
  const Device& device() const { return device_; }
  int segmentation_heads() const { return model_.labels.segmentation_heads(); }

  PreprocessedCase preprocess(const ReaderCase& input, const std::string& name) const;
  // The folds' mean logits (K, Z, Y, X) float32 on the CPU, on the preprocessed grid.
  Tensor logits(const Tensor& preprocessed, const InferenceSettings& settings,
                const WindowProgress& on_window = {}) const;
  // Labels (and probabilities) on the reader's grid of the input (before any reorientation back).
  ExportedPrediction export_logits(const Tensor& logits, const PreprocessedCase& p, const InferenceSettings& settings,
                                   bool with_probabilities) const;
  // One network alone (fold index), for checks against PyTorch.
  NnunetNetwork& network(std::size_t fold) const { return *networks_.at(fold); }

 private:
  ModelFolder model_;
  Device device_;
  std::vector<NormalizationScheme> schemes_;
  ResamplingSettings data_resampling_, probability_resampling_;
  std::vector<std::shared_ptr<NnunetNetwork>> networks_;
};

}  // namespace voxgrad::pipeline::nnunet
