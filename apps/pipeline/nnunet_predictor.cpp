// The backend of voxgrad::Predictor for nnU-Net v2 trained-model folders (and converted ones):
// reads a case as the model's image reader does, runs nnunet::Inference and puts the result back
// on the file's own grid.
#include <filesystem>

#include "apps/pipeline/nnunet_inference.h"
#include "apps/pipeline/predictor_backend.h"
#include "engine/error.h"
#include "engine/ops.h"

namespace voxgrad::pipeline {

namespace {

namespace fs = std::filesystem;
using namespace nnunet;

class NnunetBackend : public PredictorBackend {
 public:
  NnunetBackend(const std::string& dir, const PredictorOptions& options)
      : inference_(open_model_folder(dir, options.folds, options.checkpoint), resolve_device(options.device)),
        device_name_(inference_.device().str()) {
    settings_.tile_step_size = 1.0 - options.overlap;
    settings_.mirror = options.mirror.value_or(true);
  }

  int in_channels() const override { return inference_.model().input_channels; }
  int classes() const override { return inference_.model().labels.largest_label() + 1; }
  const std::string& device() const override { return device_name_; }
  std::vector<std::string> model_files() const override {
    const ModelFolder& m = inference_.model();
    std::vector<std::string> files;
    if (is_converted_model_folder(m.path))
      files.push_back((fs::path(m.path) / kConvertedModelFile).string());
    else
      files = {m.dataset_json_path, m.plans_json_path};
    for (const FoldCheckpoint& f : m.folds) files.push_back(f.path);
    return files;
  }

  Segmentation segment(const std::vector<io::Volume>& channels, const std::vector<std::string>& names,
                       bool want_probabilities, const WindowProgress& on_window) override {
    return run(read_case(channels, names, inference_.model().image_reader_writer), names[0], want_probabilities,
               on_window);
  }

  Segmentation segment(const Tensor& image, const std::array<double, 3>& spacing,
                       const WindowProgress& on_window) override {
    VG_INPUT_CHECK(image.dtype() == DType::Float32 && image.dim() == 4 && image.device().is_cpu(),
                   "the image must be (C, Z, Y, X) float32 on the CPU, got " << shape_str(image.shape()));
    ReaderCase input;
    input.data = image;
    input.spacing = spacing;
    input.stored_shape = {image.size(1), image.size(2), image.size(3)};
    return run(input, "the image", false, on_window);
  }

 private:
  Segmentation run(const ReaderCase& input, const std::string& name, bool want_probabilities,
                   const WindowProgress& on_window) {
    const PreprocessedCase p = inference_.preprocess(input, name);
    const Tensor logits = inference_.logits(p.data, settings_, on_window);
    const ExportedPrediction exported = inference_.export_logits(logits, p, settings_, want_probabilities);
    const Tensor& seg = exported.segmentation;  // (Z, Y, X) in the reader's array order
    Segmentation out;
    const Tensor labels = to_stored_grid(reshape(seg, {1, seg.size(0), seg.size(1), seg.size(2)}), input);
    out.labels = reshape(labels, {labels.size(1), labels.size(2), labels.size(3)});
    if (want_probabilities) out.probabilities = to_stored_grid(exported.probabilities, input);
    return out;
  }

  Inference inference_;
  std::string device_name_;
  InferenceSettings settings_;
};

}  // namespace

std::unique_ptr<PredictorBackend> open_nnunet_model(const std::string& dir, const PredictorOptions& options,
                                                    logging::Sink&) {
  return std::make_unique<NnunetBackend>(dir, options);
}

}  // namespace voxgrad::pipeline
