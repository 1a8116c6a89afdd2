// A trained run's network on one case, opened up for a loss: the case preprocessed as the run's
// plan says, the network's logits on that grid as a leaf a loss's gradient lands on, and the way
// back from ∂loss/∂logits into the network's parameters (each layer's gradient norm). What
// `voxgrad grad --model RUN --image I --label L` measures.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "apps/pipeline/preprocess.h"
#include "apps/pipeline/run_config.h"
#include "engine/device.h"
#include "engine/tensor.h"
#include "models/unet3d.h"

namespace voxgrad::pipeline {

class RunNetworkLogits {
 public:
  // The run's config.json and weights ("best" or "latest", as predict's --checkpoint).
  RunNetworkLogits(const std::string& run, const std::string& checkpoint, Device device);

  // image (C, Z, Y, X) float32 and label (Z, Y, X) int32 on the CPU at `spacing` (z, y, x) mm:
  // preprocessed, padded to what the network takes (the padding is cropped off the logits again),
  // and run forward. `source` names the case in errors.
  void forward(const Tensor& image, const Tensor& label, const Spacing3& spacing, const std::string& source);

  // (1, K, Z', Y', X') float64 on the plan's grid, a leaf that requires grad: give it to the loss.
  const Tensor& logits() const { return logits_; }
  // (1, Z', Y', X') int32, the label on the same grid.
  const Tensor& labels() const { return labels_; }

  // After the loss's backward: logits().grad() carried back through the network; returns each
  // layer's (parameter name less its last part) gradient L2 norm, in the network's order.
  std::vector<std::pair<std::string, double>> backward_into_network();

  // ∂loss/∂logits (1, K, Z', Y', X') resampled (trilinearly) to the input's grid: (K, Z, Y, X) float32.
  Tensor to_input_grid(const Tensor& grad) const;

  const RunConfig& config() const { return config_; }
  const UNet3d& network() const { return network_; }

 private:
  RunConfig config_;
  UNet3d network_;
  Device device_;
  Tensor network_out_;  // (1, K, padded...) with the network's autograd history
  Tensor logits_, labels_;
  Shape3 pad_before_{}, grid_{}, original_{};
};

// Each layer's gradient L2 norm: the parameters grouped by name less its last part
// ("encoder.stages.0.0.convs.0.conv"), in the module's order; a layer without gradients has norm 0.
std::vector<std::pair<std::string, double>> layer_gradient_norms(const Module& module);

}  // namespace voxgrad::pipeline
