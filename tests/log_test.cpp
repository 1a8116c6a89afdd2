// The log/progress module and the JSON writer: durations, progress lines (bar, rate, ETA), plain
// mode printing only the first and the final line of a fast loop, and NaN/Inf written as null.
#include "engine/log.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>
#include <string>

#include "engine/json.h"
#include "tests/test_support.h"

namespace {

using voxgrad::logging::format_duration;
using voxgrad::logging::format_progress;

TEST(Log, FormatDuration) {
  EXPECT_EQ(format_duration(0), "00:00");
  EXPECT_EQ(format_duration(12.4), "00:12");
  EXPECT_EQ(format_duration(245), "04:05");
  EXPECT_EQ(format_duration(3599.4), "59:59");
  EXPECT_EQ(format_duration(3723), "1:02:03");
  EXPECT_EQ(format_duration(-1), "?");
  EXPECT_EQ(format_duration(std::nan("")), "?");
  EXPECT_EQ(format_duration(std::numeric_limits<double>::infinity()), "?");
}

TEST(Log, ProgressLineHasBarRateAndEta) {
  // 37 of 100 in 12 s: 3.08 it/s, 63 left -> 20 s.
  EXPECT_EQ(format_progress("toy", 37, 100, "it", 12.0, "loss 0.123", 10),
            "toy  37% |███▋      | 37/100 [00:12<00:20, 3.08 it/s] loss 0.123");
  EXPECT_EQ(format_progress("toy", 37, 100, "it", 12.0, "loss 0.123", 0),
            "toy  37% 37/100 [00:12<00:20, 3.08 it/s] loss 0.123");
  EXPECT_EQ(format_progress("toy", 100, 100, "it", 10.0, "", 4), "toy 100% |████| 100/100 [00:10<00:00, 10.00 it/s]");
  EXPECT_EQ(format_progress("toy", 0, 100, "it", 0.0, "", 2), "toy   0% |  | 0/100 [00:00<?, ? it/s]");
}

TEST(Log, ProgressLineWithoutTotalOrWhenSlow) {
  EXPECT_EQ(format_progress("scan", 5, 0, "file", 2.0, "", 20), "scan 5 file [00:02, 2.50 file/s]");
  EXPECT_EQ(format_progress("train", 1, 10, "step", 4.0, "", 0), "train  10% 1/10 [00:04<00:36, 4.00 s/step]");
}

TEST(Log, PlainProgressPrintsTheFirstAndTheFinalLineOfAFastLoop) {
  const char* old = std::getenv("VOXGRAD_PROGRESS");
  const std::string saved = old ? old : "";
  setenv("VOXGRAD_PROGRESS", "plain", 1);
  ::testing::internal::CaptureStderr();
  {
    voxgrad::logging::ProgressBar bar("fit", 50);
    for (int i = 1; i <= 50; ++i) bar.update(i, "loss 1");
    bar.finish("loss 0.5");
  }
  const std::string err = ::testing::internal::GetCapturedStderr();
  if (old != nullptr)
    setenv("VOXGRAD_PROGRESS", saved.c_str(), 1);
  else
    unsetenv("VOXGRAD_PROGRESS");
  EXPECT_EQ(err.find('\r'), std::string::npos);
  ASSERT_EQ(std::count(err.begin(), err.end(), '\n'), 2) << err;
  EXPECT_EQ(err.rfind("fit   2% 1/50 [", 0), 0u) << err;
  const std::string last = err.substr(err.find('\n') + 1);
  EXPECT_EQ(last.rfind("fit 100% 50/50 [", 0), 0u) << err;
  EXPECT_NE(last.find("loss 0.5\n"), std::string::npos) << err;
}

TEST(Log, MessagesGoToStderrWithTheirPrefix) {
  ::testing::internal::CaptureStderr();
  voxgrad::logging::info("hello");
  voxgrad::logging::warning("careful");
  voxgrad::logging::error("broken");
  voxgrad::logging::notice_once("log-test-key", "said once");
  voxgrad::logging::notice_once("log-test-key", "said once");
  EXPECT_EQ(::testing::internal::GetCapturedStderr(),
            "voxgrad: hello\nvoxgrad: warning: careful\nvoxgrad: error: broken\nvoxgrad: said once\n");
}

TEST(Json, NonFiniteNumbersAreNull) {
  std::ostringstream out;
  voxgrad::write_json_line(out, {{"nan", std::nan("")},
                                 {"inf", std::numeric_limits<double>::infinity()},
                                 {"neg_inf", -std::numeric_limits<float>::infinity()},
                                 {"x", 1.5}});
  EXPECT_EQ(out.str(), "{\"inf\":null,\"nan\":null,\"neg_inf\":null,\"x\":1.5}\n");
}

TEST(Json, InvalidUtf8DoesNotThrow) {
  std::ostringstream out;
  EXPECT_NO_THROW(voxgrad::write_json_line(out, {{"path", std::string("case\xff.nii.gz")}}));
  const std::string text = out.str();
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1);
  EXPECT_TRUE(voxgrad::Json::parse(text).at("path").is_string());
}

// nlohmann-json only asserts that a key read through a const operator[] exists: without the
// project's JSON_ASSERT a missing key is undefined behaviour in a release build.
TEST(Json, AMissingKeyReadFromAConstObjectThrows) {
  const voxgrad::Json j = {{"present", 1}};
  EXPECT_EQ(j["present"], 1);
  try {
    (void)j["absent"];
    FAIL() << "a missing key was read";
  } catch (const voxgrad::Json::out_of_range& e) {
    EXPECT_NE(std::string(e.what()).find("key not found"), std::string::npos) << e.what();
  }
}

}  // namespace
