// The run's network forward on one preprocessed case, the logits detached into a float64 leaf for
// the loss, and the loss's gradient carried back into the network through the padded output.
#include "apps/pipeline/network_gradient.h"

#include <cmath>

#include "apps/pipeline/resample.h"
#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/ops.h"

namespace voxgrad::pipeline {

std::vector<std::pair<std::string, double>> layer_gradient_norms(const Module& module) {
  NoGradGuard no_grad;
  std::vector<std::pair<std::string, double>> norms;
  for (const auto& [name, p] : module.named_parameters()) {
    const std::size_t dot = name.rfind('.');
    const std::string layer = dot == std::string::npos ? name : name.substr(0, dot);
    if (norms.empty() || norms.back().first != layer) norms.emplace_back(layer, 0.0);
    // Squares summed per layer here, the root taken below.
    if (p.grad().defined()) norms.back().second += sum(mul(p.grad(), p.grad())).item();
  }
  for (auto& [layer, squares] : norms) squares = std::sqrt(squares);
  return norms;
}

RunNetworkLogits::RunNetworkLogits(const std::string& run, const std::string& checkpoint, Device device)
    : config_(read_run_config(run)), network_(config_.model), device_(device) {
  load_run_weights(network_, run, checkpoint);
  network_.to(device_);
  network_.eval();  // the network as predict runs it
}

void RunNetworkLogits::forward(const Tensor& image, const Tensor& label, const Spacing3& spacing,
                               const std::string& source) {
  VG_INPUT_CHECK(image.dim() == 4 && image.size(0) == config_.model.in_channels,
                 source << ": " << (image.dim() == 4 ? image.size(0) : 0) << " channel(s); the run's network takes "
                        << config_.model.in_channels);
  VG_INPUT_CHECK(label.defined(), source << ": a label is needed for the loss");
  const PreprocessedCase pre = preprocess_case(image, label, spacing, config_.plan, source);
  original_ = pre.original_shape;
  grid_ = {pre.image.size(1), pre.image.size(2), pre.image.size(3)};
  // Every level halves each axis: pad up to a multiple of 2^(levels - 1), and crop the logits back.
  const std::int64_t q = std::int64_t{1} << (config_.model.levels - 1);
  Shape3 padded{};
  for (int a = 0; a < 3; ++a) padded[a] = (grid_[a] + q - 1) / q * q;
  const Tensor x = pad_to_at_least(pre.image, padded, 0.0, &pad_before_);
  network_out_ = network_.forward(reshape(x, {1, x.size(0), padded[0], padded[1], padded[2]}).to(device_));
  Tensor cropped;
  {
    NoGradGuard no_grad;
    cropped = crop_spatial(network_out_.detach().cpu(), pad_before_, grid_);
  }
  logits_ = cropped.to(DType::Float64).detach();
  logits_.requires_grad_(true);
  labels_ = reshape(pre.label, {1, grid_[0], grid_[1], grid_[2]});
}

std::vector<std::pair<std::string, double>> RunNetworkLogits::backward_into_network() {
  VG_CHECK(logits_.defined() && logits_.grad().defined(), "backward_into_network: the loss has not run backward");
  Shape3 padded{network_out_.size(2), network_out_.size(3), network_out_.size(4)};
  Tensor g;
  {
    NoGradGuard no_grad;
    // The gradient on the cropped grid, zero over the padding the logits were cropped from.
    Shape3 before{};
    g = pad_to_at_least(logits_.grad().to(DType::Float32), padded, 0.0, &before);
    VG_CHECK(before == pad_before_, "backward_into_network: the padding does not match the forward's");
  }
  network_out_.backward(g.to(device_));
  return layer_gradient_norms(network_);
}

Tensor RunNetworkLogits::to_input_grid(const Tensor& grad) const {
  NoGradGuard no_grad;
  const Tensor g = reshape(grad.cpu().to(DType::Float32), {grad.size(1), grid_[0], grid_[1], grid_[2]});
  if (grid_ == original_) return g;
  return resample_image(g, original_);
}

}  // namespace voxgrad::pipeline
