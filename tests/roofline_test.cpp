// The profiler's roofline: an op's bound from its intensity against the ridge, the cost models
// the ops carry (conv3d forward and backward counted by hand), cost expressions evaluated only
// while profiling, and the machine's peaks measured once and then read from the cache.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <string>

#include "engine/autograd.h"
#include "engine/conv.h"
#include "engine/machine_peaks.h"
#include "engine/ops.h"
#include "engine/profiler.h"
#include "engine/tensor.h"
#include "tests/test_support.h"

namespace voxgrad {
namespace {

MachinePeaks toy_peaks() {
  MachinePeaks p;
  p.gflops = 100;  // ridge: 10 FLOP per byte
  p.gbytes_per_s = 10;
  return p;
}

TEST(Roofline, BoundFollowsTheIntensityAgainstTheRidge) {
  // 1 GFLOP over 1 GB in 0.1 s: intensity 1 < 10, memory-bound at 10 GB/s, the whole peak.
  const RooflinePoint memory = roofline_point(1e9, 1e9, 0.1, toy_peaks());
  EXPECT_EQ(memory.bound, "memory");
  EXPECT_DOUBLE_EQ(memory.intensity, 1.0);
  EXPECT_NEAR(memory.gbytes_per_s, 10.0, 1e-9);
  EXPECT_NEAR(memory.fraction, 1.0, 1e-9);
  // 50 GFLOP over 1 GB in 1 s: intensity 50 > 10, compute-bound at half the FLOP peak.
  const RooflinePoint compute = roofline_point(50e9, 1e9, 1.0, toy_peaks());
  EXPECT_EQ(compute.bound, "compute");
  EXPECT_NEAR(compute.fraction, 0.5, 1e-9);
  // No cost model, or no time: no point.
  EXPECT_EQ(roofline_point(0, 0, 1.0, toy_peaks()).bound, "");
  EXPECT_EQ(roofline_point(1e9, 1e9, 0.0, toy_peaks()).bound, "");
}

class RooflineProfile : public ::testing::Test {
 protected:
  void SetUp() override { profiler::reset(); }
  void TearDown() override {
    profiler::finish(nullptr);
    profiler::reset();
  }
};

TEST_F(RooflineProfile, CostIsEvaluatedOnlyWhileProfiling) {
  int evaluated = 0;
  auto cost = [&] {
    ++evaluated;
    return OpCost{1, 1};
  };
  { VG_PROFILE_COST("off", Device::cpu(), cost()); }
  EXPECT_EQ(evaluated, 0);
  profiler::enable();
  { VG_PROFILE_COST("on", Device::cpu(), cost()); }
  EXPECT_EQ(evaluated, 1);
}

TEST_F(RooflineProfile, Conv3dCarriesItsMultiplyAdds) {
  // x (2, 3, 6, 5, 4), w (4, 3, 3, 3, 3), padding 1: output (2, 4, 6, 5, 4).
  Generator gen(3);
  Tensor x = randn({2, 3, 6, 5, 4}, gen), w = randn({4, 3, 3, 3, 3}, gen), b = randn({4}, gen);
  x.requires_grad_(true);
  w.requires_grad_(true);
  b.requires_grad_(true);
  profiler::enable();
  Conv3dParams p;
  p.padding = {1, 1, 1};
  sum(conv3d(x, w, b, p)).backward();
  const std::vector<profiler::OpStats> rows = profiler::summary();
  const double outputs = 2.0 * 4 * 6 * 5 * 4, taps = outputs * 3 * 27;
  const double x_n = 2.0 * 3 * 6 * 5 * 4, w_n = 4.0 * 3 * 27;
  bool forward = false, backward = false;
  for (const profiler::OpStats& r : rows) {
    if (r.name == "conv3d") {
      forward = true;
      EXPECT_DOUBLE_EQ(r.flops, 2 * taps + outputs);  // multiply-adds, then the bias
      EXPECT_DOUBLE_EQ(r.bytes, 4 * (x_n + w_n + outputs));
      EXPECT_GT(r.costed_ms, 0.0);
    }
    if (r.name == "conv3d_backward") {
      backward = true;
      EXPECT_DOUBLE_EQ(r.flops, 2 * (2 * taps) + outputs);  // dx and dw, then db
      EXPECT_DOUBLE_EQ(r.bytes, 4 * (outputs + (w_n + x_n) + (x_n + w_n)));
    }
  }
  EXPECT_TRUE(forward && backward);
}

TEST(MachinePeaks, MeasuredOnceThenReadFromTheCache) {
  const std::string cache = test::temp_dir("peaks");
  const char* before = std::getenv("XDG_CACHE_HOME");
  const std::string saved = before != nullptr ? before : "";
  ::setenv("XDG_CACHE_HOME", cache.c_str(), 1);
  EXPECT_EQ(peaks_cache_path(), cache + "/voxgrad/peaks.json");
  const MachinePeaks first = cpu_peaks();
  const MachinePeaks second = cpu_peaks();
  if (before != nullptr)
    ::setenv("XDG_CACHE_HOME", saved.c_str(), 1);
  else
    ::unsetenv("XDG_CACHE_HOME");
  EXPECT_EQ(first.source, "measured");
  EXPECT_EQ(second.source, "cache " + cache + "/voxgrad/peaks.json");
  EXPECT_TRUE(std::filesystem::exists(cache + "/voxgrad/peaks.json"));
  EXPECT_GT(first.gflops, 0.0);
  EXPECT_GT(first.gbytes_per_s, 0.0);
  EXPECT_DOUBLE_EQ(second.gflops, first.gflops);
  EXPECT_DOUBLE_EQ(second.gbytes_per_s, first.gbytes_per_s);
  EXPECT_EQ(second.level, first.level);
  EXPECT_GE(first.levels.size(), 1u);  // sse2 at least, on x86-64
}

}  // namespace
}  // namespace voxgrad
