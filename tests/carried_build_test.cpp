// What a test build carried to a GPU machine (tools/gpu-check) relies on, checked on the CPU: suites
// find the source tree from $VOXGRAD_SOURCE_DIR or their own location before the path recorded at
// build time, and the VOXGRAD_CUDA_SYNC switch behind every kernel launch check reads as documented.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <string>

#include "kernels/cuda/launch.h"
#include "kernels/error.h"
#include "tests/test_support.h"

namespace {

namespace fs = std::filesystem;
using voxgrad::test::find_source_dir;

const std::string kNowhere = "/nonexistent/voxgrad-built-here";

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an exception";
  return "";
}

TEST(SourceDir, ThisSuiteFindsTheTree) {
  EXPECT_TRUE(fs::is_regular_file(voxgrad::test::source_path("tests/test_support.h")));
  EXPECT_TRUE(fs::is_directory(voxgrad::test::source_path("tests/data/nifti_malformed")));
}

TEST(SourceDir, TheEnvironmentWins) {
  const std::string tree = voxgrad::test::source_dir();
  const std::string outside = voxgrad::test::temp_dir("carried") + "/bin/some_test";
  EXPECT_EQ(find_source_dir(tree.c_str(), outside, kNowhere), tree);
}

TEST(SourceDir, AWrongEnvironmentIsAnErrorNotPassedOver) {
  const std::string tree = voxgrad::test::source_dir();
  const std::string wrong = voxgrad::test::temp_dir("not-a-tree");
  const std::string msg = message_of([&] { find_source_dir(wrong.c_str(), tree + "/build/some_test", tree); });
  EXPECT_NE(msg.find("VOXGRAD_SOURCE_DIR=" + wrong + " does not hold voxgrad's source tree"), std::string::npos) << msg;
}

TEST(SourceDir, FoundAboveTheExecutableWhateverTheBuildRecorded) {
  const std::string tree = voxgrad::test::source_dir();
  EXPECT_EQ(find_source_dir(nullptr, tree + "/build-gpu/bin/conv_test", kNowhere), tree);
  EXPECT_EQ(find_source_dir("", tree + "/build-gpu/bin/conv_test", kNowhere), tree);
}

TEST(SourceDir, TheRecordedPathIsTheLastResort) {
  const std::string tree = voxgrad::test::source_dir();
  const std::string outside = voxgrad::test::temp_dir("carried") + "/bin/some_test";
  EXPECT_EQ(find_source_dir(nullptr, outside, tree), tree);
}

TEST(SourceDir, NowhereToBeFoundSaysWhatItTried) {
  const std::string outside = voxgrad::test::temp_dir("carried") + "/bin/some_test";
  const std::string msg = message_of([&] { find_source_dir(nullptr, outside, kNowhere); });
  EXPECT_NE(msg.find("source tree not found"), std::string::npos) << msg;
  EXPECT_NE(msg.find(outside), std::string::npos) << msg;
  EXPECT_NE(msg.find(kNowhere), std::string::npos) << msg;
  EXPECT_NE(msg.find("set VOXGRAD_SOURCE_DIR"), std::string::npos) << msg;
}

TEST(LaunchSyncSwitch, OnlyOneTurnsItOn) {
  using voxgrad::kernels::cuda::launch_sync_requested;
  EXPECT_FALSE(launch_sync_requested(nullptr));
  EXPECT_FALSE(launch_sync_requested(""));
  EXPECT_FALSE(launch_sync_requested("0"));
  EXPECT_TRUE(launch_sync_requested("1"));
}

TEST(LaunchSyncSwitch, AnythingElseIsRefusedNamingTheVariable) {
  using voxgrad::kernels::cuda::launch_sync_requested;
  for (const char* value : {"yes", "true", "2", " 1", "01"}) {
    SCOPED_TRACE(value);
    try {
      launch_sync_requested(value);
      ADD_FAILURE() << "accepted";
    } catch (const voxgrad::InputError& e) {
      EXPECT_EQ(std::string(e.what()), std::string("VOXGRAD_CUDA_SYNC=") + value +
                                           ": expected 1 (synchronise after every kernel launch) or 0");
    }
  }
}

}  // namespace
