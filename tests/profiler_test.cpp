// The profiler: scopes counted per op while enabled and not at all while disabled, the table,
// and the Chrome trace (valid JSON, complete events, written atomically); GPU timing on a GPU.
#include "engine/profiler.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "engine/allocator.h"
#include "engine/error.h"
#include "engine/json.h"
#include "tests/test_support.h"

namespace voxgrad {
namespace {

::testing::AssertionResult contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "' does not contain '" << part << "'";
}

// Each test starts and ends with the profiler off and empty.
class Profiler : public ::testing::Test {
 protected:
  void SetUp() override {
    profiler::finish(nullptr);
    profiler::reset();
  }
  void TearDown() override {
    profiler::finish(nullptr);
    profiler::reset();
  }
};

const profiler::OpStats* find(const std::vector<profiler::OpStats>& rows, const std::string& name) {
  for (const auto& r : rows)
    if (r.name == name) return &r;
  return nullptr;
}

void run_ops() {
  for (int i = 0; i < 3; ++i) {
    VG_PROFILE("alpha", Device::cpu());
  }
  for (int i = 0; i < 5; ++i) {
    VG_PROFILE("beta", Device::cpu());
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

TEST_F(Profiler, CountsCallsPerOpLargestTotalFirst) {
  profiler::enable();
  EXPECT_TRUE(profiler::enabled());
  run_ops();
  const auto rows = profiler::summary();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].name, "beta");  // it slept: the largest total
  EXPECT_EQ(rows[0].calls, 5);
  EXPECT_EQ(rows[0].device, "cpu");
  EXPECT_GE(rows[0].total_ms, 10.0);
  EXPECT_EQ(rows[1].name, "alpha");
  EXPECT_EQ(rows[1].calls, 3);
  EXPECT_GE(rows[1].total_ms, 0.0);
}

TEST_F(Profiler, DisabledScopesRecordNothing) {
  EXPECT_FALSE(profiler::enabled());
  run_ops();
  EXPECT_TRUE(profiler::summary().empty());
  // Nor does a scope that starts after finish().
  profiler::enable();
  profiler::finish(nullptr);
  run_ops();
  EXPECT_TRUE(profiler::summary().empty());
}

TEST_F(Profiler, AScopeStillOpenAtFinishIsDropped) {
  profiler::enable();
  {
    VG_PROFILE("straddling", Device::cpu());
    profiler::finish(nullptr);
  }
  EXPECT_TRUE(profiler::summary().empty());
}

TEST_F(Profiler, EnableStartsAFreshSession) {
  profiler::enable();
  run_ops();
  profiler::enable();
  { VG_PROFILE("gamma", Device::cpu()); }
  const auto rows = profiler::summary();
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].name, "gamma");
}

TEST_F(Profiler, NamesBuiltOnTheFlyOutliveTheirStrings) {
  profiler::enable();
  {
    std::string name = std::string("conv3d") + "_backward";
    ProfileScope scope(name.c_str(), Device::cpu());
    name.assign(64, 'x');  // the scope's pointer now dangles in the caller's terms
  }
  const auto rows = profiler::summary();
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].name, "conv3d_backward");
}

TEST_F(Profiler, TableHasEveryOpAndATotal) {
  profiler::enable();
  run_ops();
  std::ostringstream table;
  profiler::finish(&table);
  EXPECT_FALSE(profiler::enabled());
  const std::string t = table.str();
  for (const char* column : {"op", "device", "calls", "total ms", "mean ms", "share %"})
    EXPECT_TRUE(contains(t, column));
  EXPECT_TRUE(contains(t, "alpha"));
  EXPECT_TRUE(contains(t, "beta"));
  // The total line: every call, and 100 % of the time.
  std::istringstream lines(t);
  std::string line, total;
  while (std::getline(lines, line))
    if (line.rfind("total", 0) == 0) total = line;
  ASSERT_FALSE(total.empty()) << t;
  EXPECT_TRUE(contains(total, " 8 ")) << total;
  EXPECT_TRUE(contains(total, "100.0")) << total;
  EXPECT_LT(t.find("beta"), t.find("alpha"));  // sorted by total
}

TEST_F(Profiler, WritesAChromeTraceAtomically) {
  const std::string dir = test::temp_dir("profiler");
  const std::string path = dir + "/trace.json";
  profiler::enable(path);
  {
    VG_PROFILE("outer", Device::cpu());
    run_ops();
  }
  profiler::finish(nullptr);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  std::ifstream in(path);
  ASSERT_TRUE(in.good()) << path;
  const Json trace = Json::parse(in);  // throws (fails the test) on malformed JSON
  ASSERT_TRUE(trace.contains("traceEvents"));
  EXPECT_EQ(trace["displayTimeUnit"], "ms");
  std::multiset<std::string> names;
  double outer_ts = -1, outer_end = -1, first_inner_ts = 1e300, last_inner_end = -1;
  for (const Json& e : trace["traceEvents"]) {
    if (e["ph"] != "X") {
      EXPECT_EQ(e["ph"], "M");  // thread names
      continue;
    }
    const std::string name = e["name"];
    names.insert(name);
    EXPECT_EQ(e["cat"], "cpu");
    EXPECT_EQ(e["tid"], 0);
    EXPECT_EQ(e["pid"], 1);
    const double ts = e["ts"], dur = e["dur"];
    EXPECT_GE(ts, 0.0);
    EXPECT_GE(dur, 0.0);
    if (name == "outer") {
      outer_ts = ts;
      outer_end = ts + dur;
    } else {
      first_inner_ts = std::min(first_inner_ts, ts);
      last_inner_end = std::max(last_inner_end, ts + dur);
    }
  }
  EXPECT_EQ(names.count("outer"), 1u);
  EXPECT_EQ(names.count("alpha"), 3u);
  EXPECT_EQ(names.count("beta"), 5u);
  // Nested scopes are nested events on the timeline.
  EXPECT_LE(outer_ts, first_inner_ts);
  EXPECT_GE(outer_end, last_inner_end);
}

TEST_F(Profiler, ATraceInAMissingFolderFailsAtEnable) {
  EXPECT_THROW(profiler::enable("/nonexistent-voxgrad-folder/trace.json"), Error);
  EXPECT_FALSE(profiler::enabled());
}

TEST_F(Profiler, TimesGpuOpsWithEvents) {
  VG_REQUIRE_CUDA();
  const std::string path = test::temp_dir("profiler-gpu") + "/trace.json";
  profiler::enable(path);
  // More scopes than the unresolved backlog, so the in-flight resolution runs too.
  for (int i = 0; i < 3000; ++i) {
    VG_PROFILE("gpu_op", Device::cuda(0));
    ScratchArena scratch(Device::cuda(0));
    scratch.get(4096);
  }
  { VG_PROFILE("cpu_op", Device::cpu()); }
  const auto rows = profiler::summary();
  const profiler::OpStats* gpu = find(rows, "gpu_op");
  ASSERT_NE(gpu, nullptr);
  EXPECT_EQ(gpu->device, "cuda");
  EXPECT_EQ(gpu->calls, 3000);
  EXPECT_GE(gpu->total_ms, 0.0);
  ASSERT_NE(find(rows, "cpu_op"), nullptr);
  std::ostringstream table;
  profiler::finish(&table);
  EXPECT_TRUE(contains(table.str(), "cuda"));
  std::ifstream in(path);
  const Json trace = Json::parse(in);
  int gpu_events = 0;
  for (const Json& e : trace["traceEvents"]) {
    if (e["ph"] == "X" && e["name"] == "gpu_op") {
      ++gpu_events;
      EXPECT_EQ(e["tid"], 1);
      EXPECT_EQ(e["cat"], "cuda");
      EXPECT_GE(e["dur"].get<double>(), 0.0);
    }
  }
  EXPECT_EQ(gpu_events, 3000);
}

}  // namespace
}  // namespace voxgrad
