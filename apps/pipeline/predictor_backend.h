// What voxgrad::Predictor runs behind its interface: one backend per kind of model folder (a
// voxgrad run folder, an nnU-Net v2 trained-model folder), each segmenting one case from its
// channels as read and returning the result on the input's grid. The Predictor writes the files.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "apps/pipeline/predictor.h"
#include "engine/log.h"
#include "engine/tensor.h"
#include "io/volume.h"

namespace voxgrad::pipeline {

// One case's result on the input's grid.
struct Segmentation {
  Tensor labels;         // (Z, Y, X) int32, CPU
  Tensor probabilities;  // (K, Z, Y, X) float32, CPU; only when asked for
};

class PredictorBackend {
 public:
  virtual ~PredictorBackend() = default;
  virtual int in_channels() const = 0;
  virtual int classes() const = 0;  // the largest label it writes, plus one
  virtual const std::string& device() const = 0;
  // The files the model was read from: outputs must never land on them.
  virtual std::vector<std::string> model_files() const = 0;
  // `channels` share one grid (checked by the caller for their count only); `names` name them in
  // errors.
  virtual Segmentation segment(const std::vector<io::Volume>& channels, const std::vector<std::string>& names,
                               bool want_probabilities, const WindowProgress& on_window) = 0;
  // One case in memory: (C, Z, Y, X) float32 on the CPU with its spacing (z, y, x) in mm.
  virtual Segmentation segment(const Tensor& image, const std::array<double, 3>& spacing_zyx,
                               const WindowProgress& on_window) = 0;
};

std::unique_ptr<PredictorBackend> open_run_folder(const std::string& dir, const PredictorOptions& options,
                                                  logging::Sink& sink);
std::unique_ptr<PredictorBackend> open_nnunet_model(const std::string& dir, const PredictorOptions& options,
                                                    logging::Sink& sink);

// Channels as (C, Z, Y, X) float32: 3-D volumes, single slices (2-D) and 4-D files holding one
// volume; every channel must have the first one's dims and affine.
Tensor stack_channels(const std::vector<io::Volume>& channels, const std::vector<std::string>& names);

}  // namespace voxgrad::pipeline
