// Hard Dice and Jaccard: counts and values against a plain host reference, NaN for classes absent
// from both and their count in the means, J <= D and D = 2J / (1 + J), argmax ties, the ignore
// label, and the CUDA kernels against the CPU (skipped without a GPU).
#include "engine/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "tests/test_support.h"

namespace voxgrad {
namespace {

using Labels = std::vector<std::int32_t>;

struct Maps {
  Shape shape;  // (N, D, H, W)
  std::int64_t N = 0, K = 0, S = 0;
  Labels prediction, labels;
};

// Random maps over K classes; in volume 1 the last class appears in neither map.
Maps random_maps(const Shape& shape, std::int64_t K, std::uint32_t seed) {
  Maps m;
  m.shape = shape;
  m.N = shape[0];
  m.K = K;
  m.S = shape_numel(shape) / m.N;
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::int32_t> label(0, static_cast<std::int32_t>(K - 1));
  for (std::int64_t i = 0; i < m.N * m.S; ++i) {
    std::int32_t a = label(rng), b = label(rng);
    // Agree more often than chance, so scores are neither all 0 nor all 1.
    if (std::bernoulli_distribution(0.5)(rng)) a = b;
    if (i / m.S == 1 && a == K - 1) a = 0;
    if (i / m.S == 1 && b == K - 1) b = 0;
    m.prediction.push_back(a);
    m.labels.push_back(b);
  }
  return m;
}

struct Reference {
  std::vector<double> dice, jaccard;  // (N, K)
};
Reference reference(const Maps& m) {
  Reference r;
  for (std::int64_t n = 0; n < m.N; ++n) {
    for (std::int64_t c = 0; c < m.K; ++c) {
      double a = 0, b = 0, both = 0, either = 0;
      for (std::int64_t s = 0; s < m.S; ++s) {
        const bool in_a = m.prediction[n * m.S + s] == c, in_b = m.labels[n * m.S + s] == c;
        a += in_a;
        b += in_b;
        both += in_a && in_b;
        either += in_a || in_b;
      }
      r.dice.push_back(a + b > 0 ? 2 * both / (a + b) : std::nan(""));
      r.jaccard.push_back(either > 0 ? both / either : std::nan(""));
    }
  }
  return r;
}

void expect_same(const std::vector<double>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(want[i])) {
      EXPECT_TRUE(std::isnan(got[i])) << "element " << i;
    } else {
      EXPECT_NEAR(got[i], want[i], 1e-15) << "element " << i;
    }
  }
}

TEST(Metrics, MatchReferenceWithAbsentClassesLeftOut) {
  const Maps m = random_maps({3, 4, 5, 6}, 4, 1);
  const SegmentationMetrics r =
      segmentation_metrics(from_vector(m.prediction, m.shape), from_vector(m.labels, m.shape), m.K);
  const Reference ref = reference(m);
  expect_same(r.dice, ref.dice);
  expect_same(r.jaccard, ref.jaccard);
  EXPECT_TRUE(std::isnan(r.dice_at(1, 3)));
  EXPECT_EQ(r.class_left_out[3], 1);
  EXPECT_EQ(r.left_out, 1);  // foreground pairs only: class 3 of volume 1
  EXPECT_EQ(r.volume_left_out[1], 1);
  EXPECT_NEAR(r.class_dice[3], (ref.dice[0 * 4 + 3] + ref.dice[2 * 4 + 3]) / 2, 1e-15);
  EXPECT_NEAR(r.volume_dice[1], (ref.dice[4 + 1] + ref.dice[4 + 2]) / 2, 1e-15);
  EXPECT_NEAR(r.mean_dice, (r.class_dice[1] + r.class_dice[2] + r.class_dice[3]) / 3, 1e-15);
  EXPECT_EQ(r.first_class, 1);
  MetricsOptions with_background;
  with_background.include_background = true;
  const SegmentationMetrics b =
      segmentation_metrics(from_vector(m.prediction, m.shape), from_vector(m.labels, m.shape), m.K, with_background);
  EXPECT_NEAR(b.mean_jaccard, (b.class_jaccard[0] + b.class_jaccard[1] + b.class_jaccard[2] + b.class_jaccard[3]) / 4,
              1e-15);
}

TEST(Metrics, JaccardAtMostDiceAndDiceIsTwoJOverOnePlusJ) {
  const Maps m = random_maps({4, 6, 7, 5}, 5, 2);
  const SegmentationMetrics r =
      segmentation_metrics(from_vector(m.prediction, m.shape), from_vector(m.labels, m.shape), m.K);
  int checked = 0;
  for (std::size_t i = 0; i < r.dice.size(); ++i) {
    if (std::isnan(r.dice[i])) {
      EXPECT_TRUE(std::isnan(r.jaccard[i]));
      continue;
    }
    EXPECT_LE(r.jaccard[i], r.dice[i]);
    EXPECT_NEAR(r.dice[i], 2 * r.jaccard[i] / (1 + r.jaccard[i]), 1e-15);
    ++checked;
  }
  EXPECT_GT(checked, 15);
}

TEST(Metrics, ArgmaxTakesTheFirstLargestLogit) {
  // (1, 3, 4): voxel 0 -> class 2, voxel 1 ties 0 and 1 -> 0, voxel 2 ties all -> 0, voxel 3 -> 1.
  const std::vector<double> z{0, 5, 1, 0, 1, 5, 1, 3, 2, 0, 1, 1};
  const Tensor p = argmax_classes(from_vector(z, {1, 3, 4}));
  EXPECT_EQ(p.shape(), (Shape{1, 4}));
  EXPECT_EQ(p.to_vector<std::int32_t>(), (Labels{2, 0, 0, 1}));
  const Maps m = random_maps({2, 3, 4, 5}, 3, 3);
  std::vector<float> logits(m.N * m.K * m.S, 0.0f);
  for (std::int64_t n = 0; n < m.N; ++n)
    for (std::int64_t s = 0; s < m.S; ++s) logits[(n * m.K + m.prediction[n * m.S + s]) * m.S + s] = 1.0f;
  const SegmentationMetrics from_logits =
      segmentation_metrics_from_logits(from_vector(logits, {2, 3, 3, 4, 5}), from_vector(m.labels, m.shape));
  const SegmentationMetrics from_maps =
      segmentation_metrics(from_vector(m.prediction, m.shape), from_vector(m.labels, m.shape), m.K);
  EXPECT_EQ(from_logits.intersection, from_maps.intersection);
  EXPECT_EQ(from_logits.predicted, from_maps.predicted);
}

TEST(Metrics, IgnoreLabelAndUint8) {
  Maps m = random_maps({2, 3, 3, 3}, 3, 4);
  m.labels[0] = 255;
  m.prediction[0] = 2;
  EXPECT_THROW(segmentation_metrics(from_vector(m.prediction, m.shape), from_vector(m.labels, m.shape), m.K), Error);
  MetricsOptions ignore;
  ignore.ignore_label = 255;
  const SegmentationMetrics r =
      segmentation_metrics(from_vector(m.prediction, m.shape), from_vector(m.labels, m.shape), m.K, ignore);
  Maps kept = m;
  kept.prediction[0] = kept.labels[0] = -1;  // in no class: the reference leaves it out
  expect_same(r.dice, reference(kept).dice);
  const std::vector<std::uint8_t> a(m.prediction.begin(), m.prediction.end()), b(m.labels.begin(), m.labels.end());
  const SegmentationMetrics small = segmentation_metrics(from_vector(a, m.shape), from_vector(b, m.shape), m.K, ignore);
  EXPECT_EQ(small.intersection, r.intersection);
  EXPECT_EQ(small.reference, r.reference);
}

TEST(Metrics, InvalidValuesAreRefused) {
  Maps m = random_maps({1, 2, 2, 2}, 3, 5);
  m.prediction[3] = 3;
  try {
    segmentation_metrics(from_vector(m.prediction, m.shape), from_vector(m.labels, m.shape), m.K);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("predicted class 3 at voxel 3 of volume 0 is outside 0..2"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(segmentation_metrics(from_vector(m.prediction, m.shape), from_vector(m.labels, {1, 8}), m.K), Error);
}

TEST(Metrics, CudaMatchesCpu) {
  VG_REQUIRE_CUDA();
  for (std::int64_t K : {3, 2100}) {  // shared-memory counts, and global counts for many classes
    SCOPED_TRACE(K);
    const Maps m = random_maps({2, 16, 20, 30}, K, 6);
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> any(-2.0f, 2.0f);
    std::vector<float> logits(m.N * (K < 10 ? K : 4) * m.S);
    for (auto& v : logits) v = any(rng);
    MetricsOptions ignore;
    ignore.ignore_label = 0;
    const auto on = [&](Device d) {
      return segmentation_metrics(from_vector(m.prediction, m.shape, d), from_vector(m.labels, m.shape, d), K, ignore);
    };
    const SegmentationMetrics cpu = on(Device::cpu()), gpu = on(Device::cuda());
    EXPECT_EQ(gpu.predicted, cpu.predicted);
    EXPECT_EQ(gpu.reference, cpu.reference);
    EXPECT_EQ(gpu.intersection, cpu.intersection);
    const Shape logit_shape{m.N, K < 10 ? K : 4, 16, 20, 30};
    EXPECT_EQ(argmax_classes(from_vector(logits, logit_shape, Device::cuda())).to_vector<std::int32_t>(),
              argmax_classes(from_vector(logits, logit_shape)).to_vector<std::int32_t>());
  }
}

}  // namespace
}  // namespace voxgrad
