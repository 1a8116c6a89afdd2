// Inference as a library call: a trained model opened once, then cases segmented one at a time with
// the model's preprocessing, Gaussian-weighted sliding-window inference (optionally with mirroring
// test-time augmentation) and the result brought back to the input's grid. Installed as
// <voxgrad/predictor.h>; `voxgrad predict` and the C API (<voxgrad/voxgrad.h>) are its clients.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/log.h"
#include "engine/tensor.h"
#include "export.h"  // beside this header, here and where it is installed
#include "io/volume.h"

namespace voxgrad {

struct PredictorOptions {
  std::string device = "auto";  // cpu | cuda | auto
  // Empty for the folder's default. Run folder: best (model_best.safetensors, default) or latest
  // (checkpoint_latest's weights). nnU-Net model: final (checkpoint_final.pth, default) or best.
  std::string checkpoint;
  std::string folds;     // nnU-Net model: "" for every fold present, "all", or a list such as "0,1,4"
  double overlap = 0.5;  // sliding-window overlap in [0, 1) (nnU-Net's step size is 1 - overlap)
  // Test-time augmentation, the mean over the mirrored inputs (8 in 3-D: 8 times slower). Unset:
  // off for run folders, on for nnU-Net models (over the axes their checkpoint allows).
  std::optional<bool> mirror;
};

// Called after each sliding window with (windows done, windows total) of the current case.
using WindowProgress = std::function<void(std::int64_t done, std::int64_t total)>;

// Not thread-safe: one thread uses a Predictor at a time (separate Predictors may run at once on
// the CPU; on a GPU they share its memory). Errors throw voxgrad::Error; voxgrad::InputError names
// the file and the reason.
class VG_API Predictor {
 public:
  // `model_dir` is a voxgrad run folder (voxgrad train --out; its config and weights, every checksum
  // verified) or an nnU-Net v2 trained-model folder (dataset.json, plans.json, fold_K/checkpoint_*.pth:
  // segmented as nnUNetPredictor does, the folds' mean). Warnings (unusual images) go to `sink`.
  explicit Predictor(const std::string& model_dir, PredictorOptions options = {},
                     logging::Sink& sink = logging::silent_sink());
  ~Predictor();
  Predictor(Predictor&&) noexcept;
  Predictor& operator=(Predictor&&) noexcept;

  int in_channels() const;            // channel files (or image channels) a case needs
  int classes() const;                // labels including background: outputs are 0..classes-1
  const std::string& device() const;  // "cpu" or "cuda:N", resolved
  std::vector<std::string> model_files() const;  // the files the model was read from

  // One case given as its channel files (NIfTI; 2-D slices or 3-D volumes, channel 0 first): writes
  // the label map (uint8 when classes <= 256, else int32; intent "label") to `labels_path` on the
  // input's grid with its affine and, when `probabilities_path` is not empty, the softmax (float32,
  // classes along the 4th axis). What `voxgrad predict` writes for that case.
  void predict_files(const std::vector<std::string>& channel_files, const std::string& labels_path,
                     const std::string& probabilities_path = "", const WindowProgress& on_window = {});

  // One case in memory: `image` (C, Z, Y, X) float32 on the CPU with its voxel spacing in mm (z, y,
  // x). Returns the labels (Z, Y, X) int32 on the CPU, on the image's grid.
  Tensor predict(const Tensor& image, const std::array<double, 3>& spacing_zyx, const WindowProgress& on_window = {});

  // One case as Volumes (one per channel, sharing one grid): the label Volume on that grid, with
  // its affine, spacing and units, ready for io::write_nifti.
  io::Volume predict(const std::vector<io::Volume>& channels, const WindowProgress& on_window = {});

  struct Model;  // the network, its configuration and device (opaque)

 private:
  std::unique_ptr<Model> model_;
};

}  // namespace voxgrad
