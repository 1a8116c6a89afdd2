// The command line as a user meets it: help everywhere, one error line and status 2 for usage
// errors, status 1 for run failures, stdout holding only results (JSON), and the global options
// (--device, --profile, --trace) working after every subcommand.
#include "apps/cli/cli.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/json.h"
#include "tests/test_support.h"

namespace {

using voxgrad::test::CommandResult;
using voxgrad::test::run_voxgrad;

using voxgrad::test::lines_of;

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// A usage error: status 2, nothing on stdout, exactly one "voxgrad: error:" line on stderr.
void expect_usage_error(const CommandResult& r, const std::string& hint) {
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_EQ(r.out, "");
  const auto lines = lines_of(r.err);
  ASSERT_EQ(lines.size(), 1u) << r.err;
  EXPECT_TRUE(starts_with(lines[0], "voxgrad: error: ")) << lines[0];
  EXPECT_NE(lines[0].find("(see '" + hint + "')"), std::string::npos) << lines[0];
}

// stdout holds exactly one JSON document on one line; returns it parsed.
nlohmann::json single_json_line(const CommandResult& r) {
  const auto lines = lines_of(r.out);
  EXPECT_EQ(lines.size(), 1u) << r.out;
  if (lines.size() != 1) return nullptr;
  return nlohmann::json::parse(lines[0]);
}

TEST(Cli, RootHelpListsEverySubcommand) {
  const CommandResult r = run_voxgrad("--help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.err, "");
  EXPECT_NE(r.out.find("Usage:"), std::string::npos) << r.out;
  for (const auto& cmd : voxgrad::cli::commands()) EXPECT_NE(r.out.find(cmd.name), std::string::npos) << cmd.name;
}

TEST(Cli, EverySubcommandHasHelpWithTheGlobalOptions) {
  for (const auto& cmd : voxgrad::cli::commands()) {
    const CommandResult r = run_voxgrad(cmd.name + " --help");
    EXPECT_EQ(r.exit_code, 0) << cmd.name;
    EXPECT_EQ(r.err, "") << cmd.name;
    EXPECT_NE(r.out.find("Usage:"), std::string::npos) << cmd.name << ": " << r.out;
    for (const char* opt : {"--device", "--profile", "--trace"})
      EXPECT_NE(r.out.find(opt), std::string::npos) << cmd.name << " help lacks " << opt;
  }
}

TEST(Cli, VersionIsOneLineOnStdout) {
  const CommandResult r = run_voxgrad("--version");
  EXPECT_EQ(r.exit_code, 0);
  ASSERT_EQ(lines_of(r.out).size(), 1u) << r.out;
  EXPECT_TRUE(starts_with(r.out, "voxgrad ")) << r.out;
  // The build's CUDA: its architectures when compiled in.
#if VOXGRAD_HAS_CUDA
  EXPECT_NE(r.out.find("compiled in for architectures "), std::string::npos) << r.out;
#else
  EXPECT_NE(r.out.find("CPU only"), std::string::npos) << r.out;
#endif
}

TEST(Cli, NoSubcommandPrintsUsageAndFails) {
  const CommandResult r = run_voxgrad("");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.out.find("Usage:"), std::string::npos) << r.out;
}

TEST(Cli, UnknownSubcommandIsOneErrorLine) {
  const CommandResult r = run_voxgrad("frobnicate --steps 3");
  expect_usage_error(r, "voxgrad --help");
  EXPECT_NE(r.err.find("frobnicate"), std::string::npos) << r.err;
}

TEST(Cli, UnknownFlagIsOneErrorLine) {
  expect_usage_error(run_voxgrad("toy --no-such-flag"), "voxgrad toy --help");
  expect_usage_error(run_voxgrad("--no-such-flag"), "voxgrad --help");
  expect_usage_error(run_voxgrad("devices --no-such-flag"), "voxgrad devices --help");
}

TEST(Cli, BadValuesAreUsageErrors) {
  expect_usage_error(run_voxgrad("toy --device tpu"), "voxgrad toy --help");
  expect_usage_error(run_voxgrad("toy --steps many"), "voxgrad toy --help");
  expect_usage_error(run_voxgrad("toy --steps 0"), "voxgrad toy --help");
  expect_usage_error(run_voxgrad("bench --shape 1,2,3"), "voxgrad bench --help");
  expect_usage_error(run_voxgrad("bench --cases nothing"), "voxgrad bench --help");
  expect_usage_error(run_voxgrad("toy stray"), "voxgrad toy --help");
}

TEST(Cli, ToyFitsOnTheCpu) {
  const CommandResult r = run_voxgrad("toy --steps 30 --device cpu");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = single_json_line(r);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_EQ(j.at("device"), "cpu");
  EXPECT_EQ(j.at("steps"), 30);
  const double first = j.at("loss_first"), last = j.at("loss_last");
  EXPECT_LT(last, 0.6 * first) << r.out;  // the loss falls clearly, not by noise
  EXPECT_GT(j.at("accuracy").get<double>(), 0.9) << r.out;
  EXPECT_GE(j.at("seconds").get<double>(), 0.0);
}

TEST(Cli, CudaWithoutADeviceIsOneErrorLine) {
  if (voxgrad::test::has_cuda()) GTEST_SKIP() << "this machine has a CUDA device";
  const CommandResult r = run_voxgrad("toy --steps 2 --device cuda");
  EXPECT_EQ(r.exit_code, 2);  // a flag asking for what this machine does not have: a usage error
  EXPECT_EQ(r.out, "");
  const auto lines = lines_of(r.err);
  ASSERT_EQ(lines.size(), 1u) << r.err;
  EXPECT_TRUE(starts_with(lines[0], "voxgrad: error: ")) << lines[0];
  EXPECT_NE(lower(lines[0]).find("cuda"), std::string::npos) << lines[0];
}

TEST(Cli, DevicesIsJson) {
  const CommandResult r = run_voxgrad("devices");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = single_json_line(r);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_EQ(j.at("built_with_cuda").get<bool>(), voxgrad::built_with_cuda());
  const int count = j.at("cuda_devices");
  EXPECT_EQ(count, voxgrad::cuda_device_count());
  EXPECT_EQ(j.at("devices").size(), static_cast<std::size_t>(count));
  if (count == 0)
    EXPECT_TRUE(j.at("reason").is_string()) << r.out;
  else
    EXPECT_TRUE(j.at("reason").is_null()) << r.out;
}

// The machine's peaks go to a cache of the test's own, not the user's.
std::string own_cache(const std::string& tag) { return "XDG_CACHE_HOME='" + voxgrad::test::temp_dir(tag) + "'"; }

TEST(Cli, ProfilePrintsATableOnStderrOnly) {
  const CommandResult r = run_voxgrad("toy --steps 3 --device cpu --profile", own_cache("profile-cache"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(single_json_line(r).is_object()) << r.out;
  EXPECT_NE(r.err.find("add"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("log_softmax"), std::string::npos) << r.err;
  // The roofline: columns for the ops with a cost model, and the peaks they are measured against.
  EXPECT_NE(r.err.find("GFLOP/s"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("% peak"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("roofline cpu: "), std::string::npos) << r.err;
}

TEST(Cli, TraceWritesAChromeTrace) {
  const std::string path = voxgrad::test::temp_dir("trace") + "/trace.json";
  const CommandResult r = run_voxgrad("toy --steps 3 --device cpu --trace '" + path + "'", own_cache("trace-cache"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(single_json_line(r).is_object()) << r.out;
  std::ifstream in(path);
  ASSERT_TRUE(in.good()) << path;
  const auto trace = nlohmann::json::parse(in);
  // Chrome's trace format is either a bare array of events or an object with "traceEvents".
  const auto& events = trace.is_array() ? trace : trace.at("traceEvents");
  ASSERT_TRUE(events.is_array());
  EXPECT_GT(events.size(), 0u);
  // Ops with a cost model carry the table's roofline numbers as arguments.
  int bounded = 0;
  for (const auto& e : events) {
    if (!e.contains("args") || !e["args"].contains("flops")) continue;
    EXPECT_GE(e["args"]["bytes"].get<double>(), 0.0) << e.dump();
    if (e["args"]["bound"] == "") continue;  // too short for the clock to time
    ++bounded;
    EXPECT_TRUE(e["args"]["bound"] == "compute" || e["args"]["bound"] == "memory") << e.dump();
    EXPECT_GT(e["args"]["fraction_of_peak"].get<double>(), 0.0) << e.dump();
  }
  EXPECT_GT(bounded, 0) << trace.dump();
}

TEST(Cli, UnwritableTraceFailsBeforeRunning) {
  const CommandResult r = run_voxgrad("toy --device cpu --trace /nonexistent-voxgrad-dir/trace.json");
  EXPECT_EQ(r.exit_code, 2);  // a flag naming a place that cannot be used
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(lines_of(r.err).size(), 1u) << r.err;
  // A refused command leaves no trace file behind.
  const std::string dir = voxgrad::test::temp_dir("cli-trace");
  const CommandResult refused = run_voxgrad("toy --device cpu --steps 0 --trace " + dir + "/t.json");
  EXPECT_EQ(refused.exit_code, 2) << refused.err;
  EXPECT_FALSE(std::filesystem::exists(dir + "/t.json"));
}

// Error lines caused by the user never end with source text (a C++ expression, file.cpp:LINE),
// and CLI11's own phrasing does not leak through.
TEST(Cli, UserErrorsCarryNoSourceText) {
  const std::string dir = voxgrad::test::temp_dir("cli-plain");
  for (const std::string& args :
       {"info " + dir + "/missing.nii.gz", "predict --model " + dir + " --input " + dir + " --out " + dir + "/p",
        "eval --pred " + dir + "/p --ref " + dir + " --out " + dir + "/s.json", "train --data " + dir + " --out " + dir,
        "train --out " + dir + "/r --resume", "synth --out " + dir + "/s --size 16 --cases 1 --cases 2",
        std::string("toy --steps 1 --steps 2"), std::string("train --out x --epochs")}) {
    const CommandResult r = run_voxgrad(args + " --device cpu");
    EXPECT_NE(r.exit_code, 0) << args;
    for (const std::string& line : lines_of(r.err)) {
      EXPECT_FALSE(voxgrad::test::has_source_text(line)) << args << ": " << line;
      EXPECT_EQ(line.find("At Most"), std::string::npos) << line;
      EXPECT_EQ(line.find("required but received"), std::string::npos) << line;
    }
  }
}

TEST(Cli, PlainProgressLinesGoToStderr) {
  const CommandResult r = run_voxgrad("toy --steps 20 --device cpu", "VOXGRAD_PROGRESS=plain");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(single_json_line(r).is_object()) << r.out;
  EXPECT_EQ(r.err.find('\r'), std::string::npos) << "plain mode must not redraw in place";
  bool final_line = false;
  for (const auto& line : lines_of(r.err))
    final_line = final_line || (starts_with(line, "toy") && line.find("20/20") != std::string::npos);
  EXPECT_TRUE(final_line) << r.err;
}

TEST(Cli, BenchPrintsOneJsonLinePerCase) {
  const CommandResult all = run_voxgrad("bench --device cpu --shape 1,4,6,6,6 --reps 2 --warmup 1");
  ASSERT_EQ(all.exit_code, 0) << all.err;
  const auto lines = lines_of(all.out);
  EXPECT_GE(lines.size(), 6u) << all.out;
  for (const auto& line : lines) {
    const auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j.at("device"), "cpu");
    EXPECT_GE(j.at("forward").at("median_ms").get<double>(), 0.0);
    EXPECT_GE(j.at("forward_backward").at("max_ms").get<double>(), j.at("forward_backward").at("min_ms").get<double>());
  }
  EXPECT_NE(all.err.find("softmax"), std::string::npos) << "the table goes to stderr";

  const CommandResult one = run_voxgrad("bench --device cpu --shape 1,4,6,6,6 --reps 1 --cases exp");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  EXPECT_EQ(single_json_line(one).at("case"), "exp");
}

}  // namespace
