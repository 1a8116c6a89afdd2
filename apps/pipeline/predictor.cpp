// voxgrad::Predictor: a run folder's network and preprocessing, and the one inference path every
// client shares: preprocess, sliding windows, logits resampled back to the input's grid, argmax.
#include "apps/pipeline/predictor.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "apps/pipeline/preprocess.h"
#include "apps/pipeline/run_config.h"
#include "apps/pipeline/sliding_window.h"
#include "engine/checkpoint.h"
#include "engine/device.h"
#include "engine/error.h"
#include "engine/memory_budget.h"
#include "engine/metrics.h"
#include "engine/ops.h"
#include "io/dataset.h"
#include "io/image_health.h"
#include "io/nifti.h"
#include "models/unet3d.h"

namespace voxgrad {

namespace fs = std::filesystem;
using namespace pipeline;

struct Predictor::Model {
  RunConfig config;
  UNet3d network;
  Device device;
  std::string device_name;
  PredictorOptions options;
  logging::Sink* sink;

  Model(RunConfig c, const PredictorOptions& o, logging::Sink& s)
      : config(std::move(c)), network(config.model), device(resolve_device(o.device)), options(o), sink(&s) {
    device_name = device.str();
  }
};

namespace {

// The run's weights: model_best (weights only) or the model part of checkpoint_latest; either
// file's checksum is verified as it loads.
void load_weights(UNet3d& network, const std::string& model_dir, const std::string& checkpoint) {
  std::error_code ec;
  if (checkpoint == "best") {
    const std::string path = run_file(model_dir, "model_best.safetensors");
    VG_INPUT_CHECK(fs::exists(path, ec),
                   path << ": missing (the run has no validated epoch yet; try --checkpoint latest)");
    load_model(path, network);
    return;
  }
  VG_USAGE_CHECK(checkpoint == "latest", "--checkpoint '" << checkpoint << "': choose best or latest");
  const std::string path = run_file(model_dir, "checkpoint_latest.safetensors");
  VG_INPUT_CHECK(fs::exists(path, ec), path << ": missing (is " << model_dir << " a voxgrad train --out folder?)");
  load_checkpoint_weights(path, network);
}

// Channels as (C, Z, Y, X) float32: 3-D volumes, single slices (2-D, as train takes them) and 4-D
// files holding one volume. The first channel is the reference for dims and affine.
Tensor stack_channels(const std::vector<io::Volume>& channels, const std::vector<std::string>& names) {
  VG_INPUT_CHECK(!channels.empty(), "a case needs at least one channel");
  std::vector<Tensor> data;
  for (std::size_t ch = 0; ch < channels.size(); ++ch) {
    const io::Volume& v = channels[ch];
    VG_INPUT_CHECK(v.ndim() == 2 || v.ndim() == 3 || (v.ndim() == 4 && v.data.size(0) == 1),
                   names[ch] << ": a " << v.ndim() << "-D image; voxgrad predict takes 2-D slices and 3-D volumes");
    Tensor d = v.to_float32();
    d = v.ndim() == 2 ? reshape(d, {1, d.size(0), d.size(1)}) : reshape(d, {d.size(-3), d.size(-2), d.size(-1)});
    if (ch > 0) {
      VG_INPUT_CHECK(d.shape() == data[0].shape(), names[ch] << ": dims differ from " << names[0]);
      VG_INPUT_CHECK(io::affines_close(v.affine, channels[0].affine, 1e-4),
                     names[ch] << ": its affine differs from " << names[0] << "'s (the channels must share one grid)");
    }
    data.push_back(d);
  }
  const Shape spatial = data[0].shape();
  Tensor image = empty({static_cast<std::int64_t>(data.size()), spatial[0], spatial[1], spatial[2]});
  const std::int64_t n = data[0].numel();
  for (std::size_t ch = 0; ch < data.size(); ++ch)
    std::copy_n(data[ch].data<float>(), n, image.data<float>() + static_cast<std::int64_t>(ch) * n);
  return image;
}

std::vector<std::string> channel_names(const std::vector<io::Volume>& channels) {
  std::vector<std::string> names;
  for (std::size_t ch = 0; ch < channels.size(); ++ch)
    names.push_back(channels[ch].path.empty() ? "channel " + std::to_string(ch) : channels[ch].path);
  return names;
}

// The network's logits (K, Z, Y, X) float32 on the image's own grid.
Tensor logits_on_grid(Predictor::Model& m, const Tensor& image, const Spacing3& spacing,
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
  sw.mirror = m.options.mirror;
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

// The engine's argmax over the class axis (the first class on ties): (K, Z, Y, X) -> (Z, Y, X) int32.
Tensor labels_of(const Tensor& logits) {
  Shape batched = logits.shape();
  batched.insert(batched.begin(), 1);
  const Tensor labels = argmax_classes(reshape(logits, batched));
  return reshape(labels, {logits.size(1), logits.size(2), logits.size(3)});
}

// The label Volume on the grid of `reference` (the first channel as read).
io::Volume label_volume(const Tensor& labels, const io::Volume& reference, int classes) {
  const Tensor stored = classes <= 256 ? labels.to(DType::UInt8) : labels;
  io::Volume out = io::make_volume(reshape(stored, reference.data.shape()), reference.affine);
  out.spacing = reference.spacing;
  out.xyzt_units = reference.xyzt_units;
  out.intent_code = 1002;  // NIFTI_INTENT_LABEL: viewers show it as a label map
  return out;
}

}  // namespace

Predictor::Predictor(const std::string& model_dir, PredictorOptions options, logging::Sink& sink) {
  std::error_code ec;
  VG_USAGE_CHECK(fs::is_directory(model_dir, ec), "--model '" << model_dir << "': no such run folder");
  VG_USAGE_CHECK(options.overlap >= 0 && options.overlap < 1, "--overlap " << options.overlap << ": must be in [0, 1)");
  model_ = std::make_unique<Model>(read_run_config(model_dir), options, sink);
  load_weights(model_->network, model_dir, options.checkpoint);
  model_->network.to(model_->device);
  model_->network.eval();
}

Predictor::~Predictor() = default;
Predictor::Predictor(Predictor&&) noexcept = default;
Predictor& Predictor::operator=(Predictor&&) noexcept = default;

int Predictor::in_channels() const { return static_cast<int>(model_->config.model.in_channels); }
int Predictor::classes() const { return static_cast<int>(model_->config.plan.classes); }
const std::string& Predictor::device() const { return model_->device_name; }

void Predictor::predict_files(const std::vector<std::string>& channel_files, const std::string& labels_path,
                              const std::string& probabilities_path, const WindowProgress& on_window) {
  VG_USAGE_CHECK(static_cast<int>(channel_files.size()) == in_channels(),
                 channel_files.size() << " channel files given; the model takes " << in_channels());
  std::vector<io::Volume> channels;
  for (const std::string& file : channel_files) channels.push_back(io::read_nifti(file));
  if (channels[0].intent_code == 1002)
    model_->sink->warning(channel_files[0] + " is marked as a label map (NIfTI intent 1002); predicting on it anyway");
  const io::Volume& reference = channels[0];
  const Spacing3 spacing = spacing_zyx(reference.spacing);
  const Tensor logits =
      logits_on_grid(*model_, stack_channels(channels, channel_files), spacing, channel_files, on_window);
  io::write_nifti(labels_path, label_volume(labels_of(logits), reference, classes()));
  if (probabilities_path.empty()) return;
  io::Volume prob = io::make_volume(softmax(logits, 0), reference.affine);
  for (int a = 0; a < 3; ++a) prob.spacing[a] = spacing[2 - a];
  io::write_nifti(probabilities_path, prob, io::NiftiWriteType::Float32);
}

Tensor Predictor::predict(const Tensor& image, const std::array<double, 3>& spacing_zyx,
                          const WindowProgress& on_window) {
  return labels_of(logits_on_grid(*model_, image, spacing_zyx, {"the image"}, on_window));
}

io::Volume Predictor::predict(const std::vector<io::Volume>& channels, const WindowProgress& on_window) {
  VG_USAGE_CHECK(static_cast<int>(channels.size()) == in_channels(),
                 channels.size() << " channels given; the model takes " << in_channels());
  const std::vector<std::string> names = channel_names(channels);
  const Tensor logits =
      logits_on_grid(*model_, stack_channels(channels, names), spacing_zyx(channels[0].spacing), names, on_window);
  return label_volume(labels_of(logits), channels[0], classes());
}

}  // namespace voxgrad
