// `mpirun -np 2 voxgrad train ... --distributed`: two ranks take the step one process takes with
// the same global batch (instance norm and per-image losses are per sample), every run of them the
// same bits; a stop on one rank stops both after a checkpoint, and resuming ends where an
// uninterrupted run ends; bad starts give one error line. Two ranks on two cores oversubscribe
// the machine, which costs time, not correctness.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "apps/distributed/mpi_world.h"
#include "engine/checkpoint.h"
#include "engine/json.h"
#include "tests/csv_reader.h"
#include "tests/test_support.h"

namespace {

using voxgrad::test::CommandResult;
using voxgrad::test::lines_of;
using voxgrad::test::log_without_seconds;
using voxgrad::test::read_file;
using voxgrad::test::run_voxgrad;
using voxgrad::test::temp_dir;

// Open MPI refuses root unless told twice; CI containers run as root.
const std::string kMpiEnv =
    "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1";

// One patch of 32^3 per rank and step, a U-Net of 3 levels from 8 features: each step is the
// whole computation of a real run, small.
const std::string kTiny = "--patch 32 --base 8 --levels 3 --device cpu --seed 1";

bool mpirun_installed() { return std::system("command -v mpirun >/dev/null 2>&1") == 0; }

#define SKIP_WITHOUT_MPI()                                                                                 \
  do {                                                                                                     \
    if (!voxgrad::distributed::built_with_mpi()) GTEST_SKIP() << "this build has no MPI (libopenmpi-dev)"; \
    if (!mpirun_installed()) GTEST_SKIP() << "mpirun is not installed (openmpi-bin)";                      \
  } while (0)

// `mpirun -np <ranks> voxgrad <args>`; with `second`, rank 1 runs those arguments instead (MPMD).
CommandResult mpirun(int ranks, const std::string& args, const std::string& second = "") {
  std::string binary = "'";
  binary += voxgrad::test::voxgrad_binary();
  binary += "' ";
  std::string launch = kMpiEnv + " mpirun -np " + std::to_string(second.empty() ? ranks : 1) + " ";
  launch += binary;
  launch += args;
  if (!second.empty()) {
    launch += " : -np 1 ";
    launch += binary;
    launch += second;
  }
  return voxgrad::test::run_shell(launch);
}

class DistributedTrain : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(temp_dir("distributed-train"));
    for (const char* seed : {"5", "6"}) {
      const CommandResult r =
          run_voxgrad("synth --out " + *dir_ + "/ds" + seed + " --size 32 --cases 6 --test-cases 1 --seed " + seed);
      ASSERT_EQ(r.exit_code, 0) << r.err;
    }
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string dir() { return *dir_; }
  static std::string data() { return *dir_ + "/ds5"; }

 private:
  static std::string* dir_;
};
std::string* DistributedTrain::dir_ = nullptr;

// The model's tensors of a run's latest checkpoint, name -> values.
std::map<std::string, std::vector<float>> weights_of(const std::string& run) {
  std::map<std::string, std::vector<float>> out;
  for (const auto& [name, t] : voxgrad::load_safetensors(run + "/checkpoint_latest.safetensors").tensors)
    if (name.rfind("model.", 0) == 0 && t.dtype() == voxgrad::DType::Float32) out[name] = t.to_vector<float>();
  return out;
}

// log.csv's train_loss column (the third).
std::vector<double> train_losses(const std::string& run) {
  const auto rows = voxgrad::test::parse_csv(read_file(run + "/log.csv"));
  std::vector<double> out;
  for (std::size_t r = 1; r < rows.size(); ++r) out.push_back(std::stod(rows[r].at(2)));
  return out;
}

int error_lines(const std::string& err) {
  int n = 0;
  for (const std::string& line : lines_of(err)) n += line.rfind("voxgrad: error: ", 0) == 0 ? 1 : 0;
  return n;
}

TEST_F(DistributedTrain, TwoRanksTakeTheStepOneProcessTakesAndRepeatTheirBits) {
  SKIP_WITHOUT_MPI();
  // One step per epoch: log.csv then holds the loss of every step.
  const std::string args =
      "train --data " + data() + " " + kTiny + " --batch-size 2 --epochs 4 --iters-per-epoch 1 --out ";
  const CommandResult one = run_voxgrad(args + dir() + "/one");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  const CommandResult two = mpirun(2, args + dir() + "/two --distributed");
  ASSERT_EQ(two.exit_code, 0) << two.err;
  EXPECT_NE(two.err.find("batch 2 (1 on each of 2 ranks)"), std::string::npos) << two.err;
  EXPECT_EQ(lines_of(two.out).size(), 1u) << "rank 0 alone prints the result line:\n" << two.out;

  // The ranks' gradients are the single process's sums split in two and added: float32 sums of
  // about 2^16 products per weight in another order, which differ by about sqrt(2^16) * 2^-24 =
  // 1.5e-5 of a gradient. Four SGD steps (lr 0.01, momentum 0.99) carry that into the weights as
  // about 4 * 0.01 * 1.5e-5 * |g|, with |g| below 1 after clipping: ~1e-6 (2e-6 measured). The
  // losses are means of float32 sums over 2^16 voxels, in halves (2e-7 relative measured).
  const std::vector<double> l1 = train_losses(dir() + "/one"), l2 = train_losses(dir() + "/two");
  ASSERT_EQ(l1.size(), 4u);
  EXPECT_TRUE(voxgrad::test::all_close(l2, l1, 0, 1e-5));
  EXPECT_EQ(l2.front() == l1.front() && l2.back() == l1.back(), false)
      << "bit-equal losses: the ranks may not have split the batch at all";
  const auto w1 = weights_of(dir() + "/one"), w2 = weights_of(dir() + "/two");
  ASSERT_EQ(w1.size(), w2.size());
  double largest = 0, moved = 0;
  for (const auto& [name, values] : w1) {
    ASSERT_EQ(w2.at(name).size(), values.size()) << name;
    for (std::size_t i = 0; i < values.size(); ++i)
      largest = std::max(largest, double(std::fabs(values[i] - w2.at(name)[i])));
  }
  EXPECT_LE(largest, 2e-5) << "largest weight difference from one process";
  // The comparison means something only if training moved the weights far more than that.
  const auto initial_run = dir() + "/initial";
  ASSERT_EQ(run_voxgrad(args + initial_run + " --lr 1e-30").exit_code, 0);
  for (const auto& [name, values] : weights_of(initial_run))
    for (std::size_t i = 0; i < values.size(); ++i)
      moved = std::max(moved, double(std::fabs(values[i] - w1.at(name)[i])));
  EXPECT_GT(moved, 1000 * largest) << "training moved the weights by only " << moved;

  // Every 2-rank run of the same command computes the same bits, whatever its buckets (tens of
  // them at 0.05 MB, one at the default 4 MB).
  const CommandResult again = mpirun(2, args + dir() + "/two-again --distributed --bucket-mb 0.05");
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(weights_of(dir() + "/two-again"), w2);
  EXPECT_EQ(log_without_seconds(dir() + "/two-again"), log_without_seconds(dir() + "/two"));
}

TEST_F(DistributedTrain, AHeadNoLossReachesStaysAsOneProcessLeavesIt) {
  SKIP_WITHOUT_MPI();
  // With deep supervision the lowest head's weight is 0: its output is never part of the loss, so
  // one process never updates it (no gradient, no weight decay, no momentum state).
  const std::string args = "train --data " + data() + " " + kTiny +
                           " --batch-size 2 --epochs 1 --iters-per-epoch 2 --deep-supervision --out ";
  ASSERT_EQ(run_voxgrad(args + dir() + "/ds-one").exit_code, 0);
  const CommandResult two = mpirun(2, args + dir() + "/ds-two --distributed");
  ASSERT_EQ(two.exit_code, 0) << two.err;
  const auto w1 = weights_of(dir() + "/ds-one"), w2 = weights_of(dir() + "/ds-two");
  int heads = 0;
  for (const auto& [name, values] : w1) {
    if (name.find("seg_layers.0.") == std::string::npos) continue;
    ++heads;
    EXPECT_EQ(w2.at(name), values) << name;
  }
  EXPECT_EQ(heads, 2) << "the lowest head's weight and bias";
  for (const char* run : {"/ds-one", "/ds-two"})
    for (const auto& [name, t] : voxgrad::load_safetensors(dir() + run + "/checkpoint_latest.safetensors").tensors)
      EXPECT_FALSE(name.rfind("state.", 0) == 0 && name.find("seg_layers.0.") != std::string::npos)
          << run << " keeps optimizer state for the unused head: " << name;
}

TEST_F(DistributedTrain, AStopOnOneRankStopsBothAndResumingEndsWhereAnUninterruptedRunEnds) {
  SKIP_WITHOUT_MPI();
  const std::string args =
      "train --data " + data() + " " + kTiny + " --epochs 2 --iters-per-epoch 12 --distributed --out ";
  const CommandResult whole = mpirun(2, args + dir() + "/whole");
  ASSERT_EQ(whole.exit_code, 0) << whole.err;

  // SIGTERM to the newest rank once training has begun (config.json is written at its start).
  const std::string run = dir() + "/stopped";
  const std::string binary = voxgrad::test::voxgrad_binary();
  const std::string script = dir() + "/stop.sh";
  std::ofstream(script) << kMpiEnv << " mpirun -np 2 '" << binary << "' " << args << run << " >'" << dir()
                        << "/stopped.out' 2>'" << dir() << "/stopped.err' &\n"
                        << "m=$!\n"
                        << "for i in $(seq 600); do [ -f '" << run << "/config.json' ] && break; sleep 0.1; done\n"
                        << "sleep 1\n"
                        << "pkill -TERM -n -f -- '--out " << run << "$'\n"
                        << "wait $m\n"
                        << "echo $? >'" << dir() << "/stopped.rc'\n";
  ASSERT_EQ(std::system(("bash '" + script + "'").c_str()), 0);
  const std::string err = read_file(dir() + "/stopped.err");
  EXPECT_EQ(std::stoi(read_file(dir() + "/stopped.rc")), 130) << err;
  EXPECT_NE(err.find("stopped after step"), std::string::npos) << err;
  EXPECT_NE(err.find("--resume"), std::string::npos) << err;
  EXPECT_EQ(error_lines(err), 0) << err;

  const CommandResult resumed = mpirun(2, "train --out " + run + " --resume --distributed");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("resuming"), std::string::npos) << resumed.err;
  EXPECT_EQ(weights_of(run), weights_of(dir() + "/whole"));
  EXPECT_EQ(log_without_seconds(run), log_without_seconds(dir() + "/whole"));
}

TEST_F(DistributedTrain, BadStartsGiveOneErrorLineFromRankZero) {
  SKIP_WITHOUT_MPI();
  const std::string args = "train --data " + data() + " " + kTiny + " --epochs 1 --iters-per-epoch 1 --distributed";
  const std::string pair = " --batch-size 2";
  struct Case {
    std::string name, rank0, rank1, needle;
  };
  std::vector<Case> cases = {
      {"indivisible batch", args + " --batch-size 3 --out " + dir() + "/b3", "",
       "--batch-size 3 is the global batch, split across the ranks, and 2 ranks cannot share it evenly"},
      {"rank 1's flags", args + pair + " --out " + dir() + "/lr", args + pair + " --out " + dir() + "/lr --lr 0.02",
       "rank 1 differs from rank 0 in its options"},
      {"rank 1's data", args + " --out " + dir() + "/data",
       "train --data " + dir() + "/ds6 " + kTiny + " --epochs 1 --iters-per-epoch 1 --distributed --out " + dir() +
           "/data",
       "rank 1 differs from rank 0 in its dataset"},
      {"rank 1 fails alone", args + pair + " --out " + dir() + "/missing",
       "train --data " + dir() + "/nowhere " + kTiny + pair + " --distributed --out " + dir() + "/missing",
       "rank 1: --data '" + dir() + "/nowhere': no such folder"},
  };
  if (!voxgrad::test::has_cuda()) {
    std::string on_gpu = args + pair + " --out " + dir() + "/gpu";
    on_gpu.replace(on_gpu.find("--device cpu"), 12, "--device cuda");
    cases.push_back({"--device cuda without a GPU", on_gpu, "", "--device cuda"});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const CommandResult r = mpirun(2, c.rank0, c.rank1);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_EQ(error_lines(r.err), 1) << r.err;
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << r.err;
  }
  // Nothing was written: every check came before rank 0's first write.
  for (const char* run : {"/b3", "/lr", "/data", "/missing", "/gpu"})
    EXPECT_FALSE(std::filesystem::exists(dir() + run)) << run;
}

TEST_F(DistributedTrain, ANonFiniteLossStopsEveryRankWithOneErrorNamingTheRanksCases) {
  SKIP_WITHOUT_MPI();
  const CommandResult r = mpirun(2, "train --data " + data() + " " + kTiny +
                                        " --batch-size 2 --epochs 2 --iters-per-epoch 10 --lr 1e30 --distributed "
                                        "--out " +
                                        dir() + "/nan");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(error_lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("the loss is"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("(rank "), std::string::npos) << "the cases are named with their rank:\n" << r.err;
}

TEST_F(DistributedTrain, BenchTrainMeasuresTheAllReduceAndEachRankTracesItsOwn) {
  SKIP_WITHOUT_MPI();
  const std::string trace = dir() + "/bench.json";
  const CommandResult r = mpirun(2,
                                 "bench train --distributed --json --device cpu --patch 16 --base 4 --levels 3 "
                                 "--batch-size 2 --steps 2 --warmup 1 --trace " +
                                     trace);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<std::string> lines = lines_of(r.out);
  ASSERT_EQ(lines.size(), 1u) << "rank 0 alone prints:\n" << r.out;
  const nlohmann::json j = nlohmann::json::parse(lines[0]);
  EXPECT_EQ(j.at("ranks"), 2);
  EXPECT_EQ(j.at("batch_per_rank"), 1);
  // Every parameter's gradient crosses once per step, as float32.
  EXPECT_EQ(j.at("allreduce_bytes").get<std::int64_t>(), 4 * j.at("params").get<std::int64_t>());
  EXPECT_GE(j.at("buckets").get<int>(), 1);
  EXPECT_GT(j.at("allreduce_alone_s").get<double>(), 0.0);
  EXPECT_GE(j.at("overlap").get<double>(), 0.0);
  EXPECT_LE(j.at("overlap").get<double>(), 1.0);
  // Rank 1's trace lies beside rank 0's; both hold their all-reduces on the communication track.
  for (const std::string& path : {trace, dir() + "/bench.rank1.json"}) {
    const nlohmann::json events = nlohmann::json::parse(read_file(path)).at("traceEvents");
    int reductions = 0;
    for (const auto& e : events) reductions += e.value("name", "") == "allreduce" && e.value("tid", -1) == 2;
    // Per bucket: one per step (1 warm-up, 2 timed) and one per repeat of the all-reduce alone (3).
    EXPECT_EQ(reductions, 6 * j.at("buckets").get<int>()) << path;
  }
}

TEST(DistributedTrainAlone, DistributedWithoutALauncherSaysHowToStartIt) {
  const std::string data = temp_dir("distributed-alone");
  const CommandResult r = run_voxgrad("train --data " + data + " --out " + data + "/run --distributed");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_EQ(error_lines(r.err), 1) << r.err;
  const std::string needle = voxgrad::distributed::built_with_mpi() ? "no MPI launcher started this process"
                                                                    : "built without MPI; install OpenMPI";
  EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
}

}  // namespace
