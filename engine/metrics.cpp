// Hard metrics: argmax and overlap counts on the tensors' device, then Dice, Jaccard and their
// NaN-aware means on the host from the (N, K) integer counts.
#include "engine/metrics.h"

#include <cmath>
#include <limits>

#include "engine/allocator.h"
#include "engine/dispatch.h"
#include "engine/profiler.h"
#include "kernels/metrics.h"

namespace voxgrad {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

Tensor as_int32(const Tensor& t, const char* what) {
  VG_CHECK(t.defined(), "metrics: undefined " << what);
  VG_CHECK(t.dtype() == DType::Int32 || t.dtype() == DType::UInt8,
           "metrics: " << what << " must be int32 or uint8, got " << dtype_name(t.dtype()));
  return t.dtype() == DType::Int32 ? t : t.to(DType::Int32);
}

// Mean of the non-NaN values, NaN when there are none.
double nan_mean(const std::vector<double>& values, std::int64_t* left_out) {
  double sum = 0.0;
  std::int64_t n = 0;
  for (double v : values) {
    if (std::isnan(v)) {
      ++*left_out;
      continue;
    }
    sum += v;
    ++n;
  }
  return n > 0 ? sum / static_cast<double>(n) : kNaN;
}

}  // namespace

Tensor argmax_classes(const Tensor& logits) {
  detail::check_floating(logits, "argmax_classes");
  VG_CHECK(logits.dim() >= 2, "argmax_classes: logits must be (N, K, ...), got " << shape_str(logits.shape()));
  const std::int64_t N = logits.shape()[0], K = logits.shape()[1];
  Shape out_shape{N};
  out_shape.insert(out_shape.end(), logits.shape().begin() + 2, logits.shape().end());
  const std::int64_t S = shape_numel(Shape(logits.shape().begin() + 2, logits.shape().end()));
  VG_CHECK(K > 0, "argmax_classes: no classes in logits of shape " << shape_str(logits.shape()));
  Tensor prediction = empty(out_shape, DType::Int32, logits.device());  // (N, D, H, W)
  VG_PROFILE("argmax_classes", logits.device());
  detail::dispatch_floating(logits, [&]<class T>(auto on) {
    VG_LAUNCH(on, argmax_classes, logits.data<T>(), prediction.data<std::int32_t>(), N, K, S);
  });
  return prediction;
}

SegmentationMetrics segmentation_metrics(const Tensor& prediction_in, const Tensor& labels_in, std::int64_t classes,
                                         const MetricsOptions& options) {
  const Tensor prediction = as_int32(prediction_in, "prediction");
  const Tensor labels = as_int32(labels_in, "labels");
  VG_CHECK(prediction.shape() == labels.shape(), "metrics: prediction of shape "
                                                     << shape_str(prediction.shape()) << " and labels of shape "
                                                     << shape_str(labels.shape()) << " differ");
  VG_CHECK(prediction.device() == labels.device(),
           "metrics: prediction on " << prediction.device().str() << " but labels on " << labels.device().str());
  VG_CHECK(prediction.dim() >= 1, "metrics: prediction must be (N, ...)");
  VG_CHECK(classes > 0, "metrics: need at least one class, got " << classes);
  const std::int64_t N = prediction.shape()[0], K = classes;
  const std::int64_t S = N > 0 ? prediction.numel() / N : 0;

  Tensor counts = empty({N, K, kernels::kOverlapCounts}, DType::Int32, prediction.device());  // (N, K, 3)
  kernels::OverlapProblem pb;
  pb.prediction = prediction.data<std::int32_t>();
  pb.labels = labels.data<std::int32_t>();
  pb.counts = counts.data<std::int32_t>();
  pb.images = N;
  pb.classes = K;
  pb.voxels = S;
  pb.has_ignore_label = options.ignore_label.has_value();
  pb.ignore_label = options.ignore_label.value_or(0);
  kernels::InvalidClass invalid;
  {
    VG_PROFILE("overlap_counts", prediction.device());
    detail::dispatch_device(prediction.device(), [&](auto on) {
      ScratchArena scratch(prediction.device());
      invalid = VG_LAUNCH(on.with_cuda_args(scratch), overlap_counts, pb);
    });
  }
  if (invalid.found != 0) {
    VG_FAIL(
        "metrics: " << (invalid.input == 0 ? "predicted class " : "label ") << invalid.value << " at voxel "
                    << (S > 0 ? invalid.voxel % S : 0) << " of volume " << (S > 0 ? invalid.voxel / S : 0)
                    << " is outside 0.." << (K - 1)
                    << (invalid.input == 1 && !options.ignore_label ? "; mark such voxels with --ignore-label" : ""));
  }

  const std::vector<std::int32_t> c = counts.to_vector<std::int32_t>();
  SegmentationMetrics m;
  m.volumes = N;
  m.classes = K;
  m.first_class = options.include_background || K == 1 ? 0 : 1;
  m.predicted.resize(N * K);
  m.reference.resize(N * K);
  m.intersection.resize(N * K);
  m.dice.assign(N * K, kNaN);
  m.jaccard.assign(N * K, kNaN);
  for (std::int64_t i = 0; i < N * K; ++i) {
    const std::int64_t a = c[i * kernels::kOverlapCounts + kernels::kPredicted];
    const std::int64_t b = c[i * kernels::kOverlapCounts + kernels::kReference];
    const std::int64_t both = c[i * kernels::kOverlapCounts + kernels::kIntersection];
    m.predicted[i] = a;
    m.reference[i] = b;
    m.intersection[i] = both;
    if (a + b == 0) continue;
    m.dice[i] = 2.0 * static_cast<double>(both) / static_cast<double>(a + b);
    m.jaccard[i] = static_cast<double>(both) / static_cast<double>(a + b - both);
  }

  m.class_dice.assign(K, kNaN);
  m.class_jaccard.assign(K, kNaN);
  m.class_left_out.assign(K, 0);
  for (std::int64_t k = 0; k < K; ++k) {
    std::vector<double> d, j;
    for (std::int64_t n = 0; n < N; ++n) {
      d.push_back(m.dice_at(n, k));
      j.push_back(m.jaccard_at(n, k));
    }
    std::int64_t unused = 0;
    m.class_dice[k] = nan_mean(d, &m.class_left_out[k]);
    m.class_jaccard[k] = nan_mean(j, &unused);
  }
  m.volume_dice.assign(N, kNaN);
  m.volume_jaccard.assign(N, kNaN);
  m.volume_left_out.assign(N, 0);
  for (std::int64_t n = 0; n < N; ++n) {
    std::vector<double> d, j;
    for (std::int64_t k = m.first_class; k < K; ++k) {
      d.push_back(m.dice_at(n, k));
      j.push_back(m.jaccard_at(n, k));
    }
    std::int64_t unused = 0;
    m.volume_dice[n] = nan_mean(d, &m.volume_left_out[n]);
    m.volume_jaccard[n] = nan_mean(j, &unused);
    m.left_out += m.volume_left_out[n];
  }
  std::int64_t unused = 0;
  m.mean_dice = nan_mean(std::vector<double>(m.class_dice.begin() + m.first_class, m.class_dice.end()), &unused);
  m.mean_jaccard =
      nan_mean(std::vector<double>(m.class_jaccard.begin() + m.first_class, m.class_jaccard.end()), &unused);
  return m;
}

SegmentationMetrics segmentation_metrics_from_logits(const Tensor& logits, const Tensor& labels,
                                                     const MetricsOptions& options) {
  VG_CHECK(logits.defined() && logits.dim() >= 2, "metrics: logits must be (N, K, ...)");
  return segmentation_metrics(argmax_classes(logits), labels, logits.shape()[1], options);
}

}  // namespace voxgrad
