// The backend of voxgrad::Predictor for voxgrad run folders: the run's network and preprocessing,
// sliding windows, logits resampled back to the input's grid, argmax.
#include <algorithm>
#include <cmath>
#include <filesystem>

#include "apps/pipeline/predictor_backend.h"
#include "apps/pipeline/preprocess.h"
#include "apps/pipeline/run_config.h"
#include "apps/pipeline/sliding_window.h"
#include "engine/checkpoint.h"
#include "engine/device.h"
#include "engine/error.h"
#include "engine/memory_budget.h"
#include "engine/metrics.h"
#include "engine/ops.h"
#include "io/image_health.h"
#include "models/unet3d.h"

namespace voxgrad::pipeline {

namespace {

namespace fs = std::filesystem;
struct RunFolderModel {
  RunConfig config;
  UNet3d network;
  Device device;
  std::string device_name;
  PredictorOptions options;
  logging::Sink* sink;

  RunFolderModel(RunConfig c, const PredictorOptions& o, logging::Sink& s)
      : config(std::move(c)), network(config.model), device(resolve_device(o.device)), options(o), sink(&s) {
    device_name = device.str();
  }
};

// The network's logits (K, Z, Y, X) float32 on the image's own grid.
Tensor logits_on_grid(RunFolderModel& m, const Tensor& image, const Spacing3& spacing,
                      const std::vector<std::string>& names, const WindowProgress& on_window) {
  VG_INPUT_CHECK(image.dtype() == DType::Float32 && image.dim() == 4 && image.device().is_cpu(),
                 names[0] << ": the image must be (C, Z, Y, X) float32 on the CPU, got " << shape_str(image.shape()));
  VG_INPUT_CHECK(image.size(0) == m.config.model.in_channels,
                 names[0] << ": " << image.size(0) << " channels; the model takes " << m.config.model.in_channels);
  for (int a = 0; a < 3; ++a)
    VG_INPUT_CHECK(std::isfinite(spacing[a]) && spacing[a] > 0,
                   names[0] << ": voxel spacing " << spacing[a] << " mm is not a positive number");
  const PreprocessedCase pre = preprocess_case(image, Tensor(), spacing, m.config.plan, names[0]);
  // Non-finite voxels (set to 0), an image with no finite voxel or one value everywhere: the
  // prediction still comes, but the caller hears why it may be empty.
  for (const std::string& warning : io::health_warnings(pre.health, names)) m.sink->warning(warning);
  SlidingWindowOptions sw;
  sw.patch = m.config.training.patch;
  sw.overlap = m.options.overlap;
  sw.mirror = m.options.mirror.value_or(false);
  sw.on_window = on_window;
  Tensor logits = sliding_window_logits(m.network, pre.image, sw, m.device);
  const Shape3 original = pre.original_shape;
  if (logits.size(1) != original[0] || logits.size(2) != original[1] || logits.size(3) != original[2]) {
    memory::check_fits(memory::saturating_product({logits.size(0), original[0], original[1], original[2], 4}),
                       names[0] + ": resampling the prediction back to the input's grid");
    logits = resample_image(logits, original);
  }
  return logits;
}

// The engine's argmax over the class axis (the first class on ties): (K, Z, Y, X) -> (Z, Y, X)
// int32.
Tensor labels_of(const Tensor& logits) {
  Shape batched = logits.shape();
  batched.insert(batched.begin(), 1);
  const Tensor labels = argmax_classes(reshape(logits, batched));
  return reshape(labels, {logits.size(1), logits.size(2), logits.size(3)});
}

class RunFolderBackend : public PredictorBackend {
 public:
  RunFolderBackend(const std::string& dir, const PredictorOptions& options, logging::Sink& sink)
      : dir_(dir), m_(read_run_config(dir), options, sink) {
    load_run_weights(m_.network, dir, options.checkpoint.empty() ? "best" : options.checkpoint);
    m_.network.to(m_.device);
    m_.network.eval();
  }
  int in_channels() const override { return static_cast<int>(m_.config.model.in_channels); }
  int classes() const override { return static_cast<int>(m_.config.plan.classes); }
  const std::string& device() const override { return m_.device_name; }
  std::vector<std::string> model_files() const override {
    std::vector<std::string> files;
    for (const char* f : {"config.json", "model_best.safetensors", "checkpoint_latest.safetensors"})
      files.push_back(run_file(dir_, f));
    return files;
  }
  Segmentation segment(const std::vector<io::Volume>& channels, const std::vector<std::string>& names,
                       bool want_probabilities, const WindowProgress& on_window) override {
    const Tensor logits =
        logits_on_grid(m_, stack_channels(channels, names), spacing_zyx(channels[0].spacing), names, on_window);
    Segmentation out{labels_of(logits), Tensor()};
    if (want_probabilities) out.probabilities = softmax(logits, 0);
    return out;
  }
  Segmentation segment(const Tensor& image, const std::array<double, 3>& spacing,
                       const WindowProgress& on_window) override {
    return {labels_of(logits_on_grid(m_, image, spacing, {"the image"}, on_window)), Tensor()};
  }

 private:
  std::string dir_;
  RunFolderModel m_;
};

}  // namespace

std::unique_ptr<PredictorBackend> open_run_folder(const std::string& dir, const PredictorOptions& options,
                                                  logging::Sink& sink) {
  return std::make_unique<RunFolderBackend>(dir, options, sink);
}

}  // namespace voxgrad::pipeline
