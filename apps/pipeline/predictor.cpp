// voxgrad::Predictor: opens the backend for the kind of model folder it is given (a voxgrad run
// folder or an nnU-Net v2 trained-model folder), reads the cases' files and writes the results.
#include "apps/pipeline/predictor.h"

#include <algorithm>
#include <filesystem>

#include "apps/pipeline/nnunet_model.h"
#include "apps/pipeline/predictor_backend.h"
#include "apps/pipeline/preprocess.h"
#include "engine/error.h"
#include "engine/ops.h"
#include "io/dataset.h"
#include "io/nifti.h"

namespace voxgrad {

namespace fs = std::filesystem;
using namespace pipeline;

struct Predictor::Model {
  std::unique_ptr<PredictorBackend> backend;
  logging::Sink* sink;
};

namespace pipeline {

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

}  // namespace pipeline

namespace {

std::vector<std::string> channel_names(const std::vector<io::Volume>& channels) {
  std::vector<std::string> names;
  for (std::size_t ch = 0; ch < channels.size(); ++ch)
    names.push_back(channels[ch].path.empty() ? "channel " + std::to_string(ch) : channels[ch].path);
  return names;
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
  VG_USAGE_CHECK(fs::is_directory(model_dir, ec), "--model '" << model_dir
                                                              << "': no such folder (a voxgrad run folder or an "
                                                                 "nnU-Net trained-model folder)");
  VG_USAGE_CHECK(options.overlap >= 0 && options.overlap < 1, "--overlap " << options.overlap << ": must be in [0, 1)");
  model_ = std::make_unique<Model>();
  model_->sink = &sink;
  const bool nnunet_model = nnunet::is_nnunet_model_folder(model_dir);
  VG_INPUT_CHECK(nnunet_model || fs::exists(fs::path(model_dir) / "config.json", ec),
                 model_dir << ": neither a voxgrad run folder (it has no config.json; voxgrad train --out writes one) "
                              "nor an nnU-Net trained-model folder (dataset.json, plans.json, "
                              "fold_K/checkpoint_final.pth)");
  model_->backend =
      nnunet_model ? open_nnunet_model(model_dir, options, sink) : open_run_folder(model_dir, options, sink);
}

Predictor::~Predictor() = default;
Predictor::Predictor(Predictor&&) noexcept = default;
Predictor& Predictor::operator=(Predictor&&) noexcept = default;

int Predictor::in_channels() const { return model_->backend->in_channels(); }
int Predictor::classes() const { return model_->backend->classes(); }
const std::string& Predictor::device() const { return model_->backend->device(); }
std::vector<std::string> Predictor::model_files() const { return model_->backend->model_files(); }

void Predictor::predict_files(const std::vector<std::string>& channel_files, const std::string& labels_path,
                              const std::string& probabilities_path, const WindowProgress& on_window) {
  VG_USAGE_CHECK(static_cast<int>(channel_files.size()) == in_channels(),
                 channel_files.size() << " channel files given; the model takes " << in_channels());
  std::vector<io::Volume> channels;
  for (const std::string& file : channel_files) channels.push_back(io::read_nifti(file));
  if (channels[0].intent_code == 1002)
    model_->sink->warning(channel_files[0] +
                          " is marked as a label map (NIfTI intent 1002); "
                          "predicting on it anyway");
  const io::Volume& reference = channels[0];
  const Segmentation result = model_->backend->segment(channels, channel_files, !probabilities_path.empty(), on_window);
  io::write_nifti(labels_path, label_volume(result.labels, reference, classes()));
  if (probabilities_path.empty()) return;
  io::Volume prob = io::make_volume(result.probabilities, reference.affine);
  const Spacing3 spacing = spacing_zyx(reference.spacing);  // 2-D slices have 2 pixdims
  for (int a = 0; a < 3; ++a) prob.spacing[a] = spacing[2 - a];
  prob.xyzt_units = reference.xyzt_units;
  io::write_nifti(probabilities_path, prob, io::NiftiWriteType::Float32);
}

Tensor Predictor::predict(const Tensor& image, const std::array<double, 3>& spacing_zyx,
                          const WindowProgress& on_window) {
  return model_->backend->segment(image, spacing_zyx, on_window).labels;
}

io::Volume Predictor::predict(const std::vector<io::Volume>& channels, const WindowProgress& on_window) {
  VG_USAGE_CHECK(static_cast<int>(channels.size()) == in_channels(),
                 channels.size() << " channels given; the model takes " << in_channels());
  const Segmentation result = model_->backend->segment(channels, channel_names(channels), false, on_window);
  return label_volume(result.labels, channels[0], classes());
}

}  // namespace voxgrad
