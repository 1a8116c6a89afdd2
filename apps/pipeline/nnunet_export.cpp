// nnU-Net v2's export of a case's logits to labels (and probabilities) on the input's grid: the
// nonlinearity through the engine's ops (any device), the label rules, the uncropping and the
// transposition on the host.
#include "apps/pipeline/nnunet_export.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "apps/pipeline/nnunet_sliding_window.h"
#include "engine/error.h"
#include "engine/float16.h"
#include "engine/ops.h"

namespace voxgrad::pipeline::nnunet {

namespace {

void check_class_volume(const Tensor& t, const char* what) {
  VG_CHECK(
      t.defined() && t.dim() == 4 && t.dtype() == DType::Float32,
      what << ": needs (K, Z, Y, X) float32, got " << (t.defined() ? t.str() : std::string("an undefined tensor")));
}

// `block` (leading axes, then the box's shape) written into `volume` at `box`.
void paste(const Tensor& block, const Tensor& volume, const BoundingBox& box) {
  const Shape3 in = box.shape();
  const Shape3 out{volume.size(-3), volume.size(-2), volume.size(-1)};
  for (int a = 0; a < 3; ++a)
    VG_CHECK(block.size(-3 + a) == in[a] && box.begin[a] >= 0 && box.end[a] <= out[a],
             "uncrop: a block of " << shape_str(block.shape()) << " does not fit the box on axis " << a
                                   << " of a volume " << shape_str(volume.shape()));
  const std::int64_t lead = block.numel() / (in[0] * in[1] * in[2]);
  const std::size_t element = dtype_size(block.dtype());
  const auto* src = static_cast<const unsigned char*>(block.raw_data());
  auto* dst = static_cast<unsigned char*>(volume.raw_data());
  for (std::int64_t l = 0; l < lead; ++l)
    for (std::int64_t z = 0; z < in[0]; ++z)
      for (std::int64_t y = 0; y < in[1]; ++y) {
        const std::int64_t i = ((l * in[0] + z) * in[1] + y) * in[2];
        const std::int64_t o = ((l * out[0] + box.begin[0] + z) * out[1] + box.begin[1] + y) * out[2] + box.begin[2];
        std::memcpy(dst + o * element, src + i * element, static_cast<std::size_t>(in[2]) * element);
      }
}

}  // namespace

Tensor logits_to_probabilities(const Tensor& logits, bool regions) {
  check_class_volume(logits, "logits_to_probabilities");
  return regions ? sigmoid(logits) : softmax(logits, 0);
}

Tensor probabilities_to_segmentation(const Tensor& probabilities, const std::vector<int>& regions_class_order) {
  check_class_volume(probabilities, "probabilities_to_segmentation");
  const Tensor host = probabilities.device().is_cpu() ? probabilities : probabilities.cpu();
  const std::int64_t classes = host.size(0), voxels = host.numel() / classes;
  Tensor segmentation = zeros({host.size(1), host.size(2), host.size(3)}, DType::Int32);
  std::int32_t* labels = segmentation.data<std::int32_t>();
  const float* p = host.data<float>();
  if (regions_class_order.empty()) {
    for (std::int64_t v = 0; v < voxels; ++v) {
      std::int32_t best = 0;
      float best_value = p[v];
      for (std::int64_t k = 1; k < classes; ++k) {
        const float value = p[k * voxels + v];
        // numpy's argmax: the first maximum; a NaN is a maximum the first time it appears.
        if (!std::isnan(best_value) && (value > best_value || std::isnan(value))) {
          best = static_cast<std::int32_t>(k);
          best_value = value;
        }
      }
      labels[v] = best;
    }
    return segmentation;
  }
  VG_CHECK(static_cast<std::int64_t>(regions_class_order.size()) == classes,
           "probabilities_to_segmentation: " << regions_class_order.size() << " entries in regions_class_order for "
                                             << classes << " regions");
  for (std::int64_t k = 0; k < classes; ++k)
    for (std::int64_t v = 0; v < voxels; ++v)
      if (p[k * voxels + v] > 0.5f) labels[v] = regions_class_order[k];
  return segmentation;
}

Tensor logits_to_segmentation(const Tensor& logits, const std::vector<int>& regions_class_order) {
  if (regions_class_order.empty()) return probabilities_to_segmentation(logits, {});
  return probabilities_to_segmentation(logits_to_probabilities(logits, true), regions_class_order);
}

Tensor uncrop_segmentation(const Tensor& segmentation, const BoundingBox& box, const Shape3& shape_before_cropping) {
  VG_CHECK(segmentation.defined() && segmentation.dim() == 3 && segmentation.device().is_cpu(),
           "uncrop_segmentation: needs (Z, Y, X) labels on the CPU");
  Tensor volume =
      zeros({shape_before_cropping[0], shape_before_cropping[1], shape_before_cropping[2]}, segmentation.dtype());
  paste(segmentation, volume, box);
  return volume;
}

Tensor uncrop_probabilities(const Tensor& probabilities, const BoundingBox& box, const Shape3& shape_before_cropping,
                            bool regions) {
  check_class_volume(probabilities, "uncrop_probabilities");
  const Tensor host = probabilities.device().is_cpu() ? probabilities : probabilities.cpu();
  const std::int64_t classes = host.size(0);
  Tensor volume = zeros({classes, shape_before_cropping[0], shape_before_cropping[1], shape_before_cropping[2]});
  if (!regions) {
    float* background = volume.data<float>();
    std::fill(background, background + volume.numel() / classes, 1.0f);
  }
  paste(host, volume, box);
  return volume;
}

ExportedPrediction export_prediction(const Tensor& logits, const LogitsResampler& resample,
                                     const ExportGeometry& geometry, const std::vector<int>& regions_class_order,
                                     bool with_probabilities, bool float16_logits) {
  check_class_volume(logits, "export_prediction");
  Tensor on_crop = resample ? resample(logits, geometry.shape_after_cropping) : logits;
  VG_CHECK(on_crop.defined() && (on_crop.dtype() == DType::Float32 || on_crop.dtype() == DType::Float64),
           "export_prediction: the resampler must return float32 or float64 logits");
  if (on_crop.dtype() == DType::Float64 || float16_logits) {
    const Device device = on_crop.device();
    const Tensor host = on_crop.cpu();
    std::vector<float> values(static_cast<std::size_t>(host.numel()));
    if (host.dtype() == DType::Float64) {
      const double* d = host.data<double>();
      for (std::size_t i = 0; i < values.size(); ++i)
        values[i] = static_cast<float>(float16_logits ? round_to_float16(d[i]) : d[i]);
    } else {
      const float* f = host.data<float>();
      for (std::size_t i = 0; i < values.size(); ++i) values[i] = round_to_float16(f[i]);
    }
    on_crop = from_vector(values, host.shape(), device);
  }
  check_class_volume(on_crop, "export_prediction (after resampling)");
  for (int a = 0; a < 3; ++a)
    VG_CHECK(on_crop.size(1 + a) == geometry.shape_after_cropping[a],
             "export_prediction: logits " << shape_str(on_crop.shape()) << " are not on the cropped grid");
  const bool regions = !regions_class_order.empty();
  ExportedPrediction result;
  Tensor labels;
  if (with_probabilities) {
    const Tensor probabilities = logits_to_probabilities(on_crop, regions);
    labels = probabilities_to_segmentation(probabilities, regions_class_order);
    const Tensor uncropped = uncrop_probabilities(probabilities, geometry.box, geometry.shape_before_cropping, regions);
    result.probabilities = transpose_spatial(uncropped, geometry.transpose_backward);
  } else {
    labels = logits_to_segmentation(on_crop, regions_class_order);
  }
  result.segmentation = transpose_spatial(uncrop_segmentation(labels, geometry.box, geometry.shape_before_cropping),
                                          geometry.transpose_backward);
  return result;
}

}  // namespace voxgrad::pipeline::nnunet
