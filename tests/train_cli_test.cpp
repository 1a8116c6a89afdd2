// `voxgrad train` and `voxgrad predict` as a user meets them, on a tiny synthetic dataset: the run
// folder's files, predictions on the input's grid (checked here, with nifti_tool and, when present,
// nibabel), Ctrl-C and --resume giving bit-identical numbers, a SIGKILLed run resuming from its
// last complete checkpoint, a non-finite loss stopping the run, and one clear error line for bad input.
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <span>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "apps/pipeline/run_config.h"
#include "apps/pipeline/train_data.h"
#include "apps/pipeline/trainer.h"
#include "engine/checkpoint.h"
#include "engine/json.h"
#include "engine/ops.h"
#include "io/nifti.h"
#include "tests/test_support.h"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using voxgrad::test::log_without_seconds;
using voxgrad::test::read_file;
using voxgrad::test::voxgrad_binary;
namespace io = voxgrad::io;
using nlohmann::json;
using voxgrad::test::CommandResult;
using voxgrad::test::run_voxgrad;
using voxgrad::test::temp_dir;

// The tiny network and schedule every run here uses (a training step takes milliseconds).
const std::string kTiny = "--patch 16 --base 4 --levels 3 --batch-size 2 --seed 3 --device cpu";

// One dataset for the whole suite: 3 training and 2 test cases of 24^3 voxels, 3 classes.
class TrainCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = new std::string(temp_dir("train-data") + "/ds");
    const CommandResult r = run_voxgrad("synth --out " + *data_ + " --size 24 --cases 3 --test-cases 2 --seed 5");
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  static void TearDownTestSuite() {
    delete data_;
    data_ = nullptr;
  }
  static const std::string& data() { return *data_; }

  static CommandResult train(const std::string& out, const std::string& more) {
    return run_voxgrad("train --data " + data() + " --out " + out + " " + kTiny + " " + more);
  }

 private:
  static std::string* data_;
};
std::string* TrainCli::data_ = nullptr;

// The one "voxgrad: error:" line of a failed run (progress lines may come before it).
std::vector<std::string> error_lines(const std::string& err) {
  std::vector<std::string> lines;
  std::istringstream in(err);
  for (std::string line; std::getline(in, line);)
    if (line.rfind("voxgrad: error:", 0) == 0) lines.push_back(line);
  return lines;
}

void expect_one_error(const CommandResult& r, int status, const std::string& needle) {
  EXPECT_EQ(r.exit_code, status) << r.err;
  const std::vector<std::string> lines = error_lines(r.err);
  ASSERT_EQ(lines.size(), 1u) << r.err;
  EXPECT_NE(lines[0].find(needle), std::string::npos) << lines[0];
  EXPECT_FALSE(voxgrad::test::has_source_text(lines[0])) << lines[0];
}

// The tensors of a safetensors file, name -> bytes.
std::map<std::string, std::vector<float>> tensors_of(const std::string& path) {
  std::map<std::string, std::vector<float>> out;
  for (const auto& [name, t] : voxgrad::load_safetensors(path).tensors)
    if (t.dtype() == voxgrad::DType::Float32) out[name] = t.to_vector<float>();
  return out;
}

void expect_same_tensors(const std::string& a, const std::string& b) {
  const auto ta = tensors_of(a), tb = tensors_of(b);
  ASSERT_EQ(ta.size(), tb.size());
  ASSERT_GT(ta.size(), 10u);
  for (const auto& [name, values] : ta) {
    ASSERT_TRUE(tb.count(name)) << name;
    // Bit for bit: memcmp, not a tolerance.
    ASSERT_EQ(values.size(), tb.at(name).size()) << name;
    EXPECT_EQ(std::memcmp(values.data(), tb.at(name).data(), values.size() * sizeof(float)), 0)
        << name << " differs between " << a << " and " << b;
  }
}

// voxgrad started in the background, stdout and stderr into files.
struct Background {
  pid_t pid = -1;
  std::string err_path;
  int wait() const {
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
};

Background start_voxgrad(const std::vector<std::string>& args, const std::string& dir) {
  Background b;
  b.err_path = dir + "/stderr";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, (dir + "/stdout").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, 2, b.err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<std::string> all{voxgrad_binary()};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  EXPECT_EQ(posix_spawn(&b.pid, argv[0], &actions, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  return b;
}

std::vector<std::string> split_words(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

// Waits (up to two minutes) until the run's metrics.json counts `epochs` finished epochs (it is
// written atomically, so it always parses).
bool wait_for_epochs(const std::string& run, int epochs) {
  for (int i = 0; i < 24000; ++i) {
    if (fs::exists(run + "/metrics.json") &&
        json::parse(read_file(run + "/metrics.json")).at("epochs_done").get<int>() >= epochs)
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

std::string checkpoint_step(const std::string& path) { return voxgrad::load_safetensors(path).metadata.at("step"); }

// A tensor name of a run folder's file as voxgrad wrote it before UNet3d was built as nnU-Net's
// PlainConvUNet, for a U-Net without deep supervision: "" for names those files did not have (the
// aliases, the unused seg layers). Checkpoint names keep their "model." prefix, and
// "optimizer.state.<parameter>.<what>" has its parameter renamed.
std::string former_run_file_name(const std::string& name, int levels) {
  for (const std::string prefix : {"model.", "optimizer.state."})
    if (name.rfind(prefix, 0) == 0) {
      const bool state = prefix == "optimizer.state.";
      const std::size_t end = state ? name.rfind('.') : name.size();
      const std::string renamed = former_run_file_name(name.substr(prefix.size(), end - prefix.size()), levels);
      return renamed.empty() ? "" : prefix + renamed + name.substr(end);
    }
  if (name.rfind("optimizer.", 0) == 0) return name;
  if (name.find("all_modules") != std::string::npos || name.rfind("decoder.encoder.", 0) == 0) return "";
  const std::string former = voxgrad::test::former_unet3d_name(name, levels);
  // Only the full-resolution head was written: heads.0.
  return former.rfind("heads.", 0) == 0 && former.rfind("heads.0.", 0) != 0 ? "" : former;
}

TEST_F(TrainCli, EndToEndTrainPredictEval) {
  const std::string dir = temp_dir("train-e2e");
  const std::string run = dir + "/run";
  const CommandResult t = train(run, "--epochs 2 --iters-per-epoch 3 --loss dice_ce");
  ASSERT_EQ(t.exit_code, 0) << t.err;
  const json result = json::parse(t.out);
  EXPECT_EQ(result.at("steps"), 6);
  for (const char* f : {"config.json", "log.csv", "metrics.json", "checkpoint_latest.safetensors",
                        "checkpoint_best.safetensors", "model_best.safetensors", "training_curve.svg"})
    EXPECT_TRUE(fs::exists(run + "/" + f)) << f;
  // Two epochs in the log, each with a validation Dice in [0, 1].
  const json metrics = json::parse(read_file(run + "/metrics.json"));
  ASSERT_EQ(metrics.at("epochs").size(), 2u);
  for (const json& e : metrics.at("epochs")) {
    EXPECT_TRUE(e.at("train_loss").is_number());
    ASSERT_TRUE(e.at("val_dice").is_number());
    EXPECT_GE(e.at("val_dice").get<double>(), 0.0);
    EXPECT_LE(e.at("val_dice").get<double>(), 1.0);
  }
  const voxgrad::pipeline::RunConfig config = voxgrad::pipeline::read_run_config(run);
  EXPECT_EQ(config.training.train_cases.size() + config.training.val_cases.size(), 3u);
  EXPECT_EQ(config.model.classes, 3);
  EXPECT_EQ(config.training.patch, (voxgrad::pipeline::Shape3{16, 16, 16}));
  // synth writes pixdim (0.8, 0.8, 2.0) mm: the plan keeps it in tensor order (z, y, x).
  EXPECT_NEAR(config.plan.target_spacing[0], 2.0, 1e-6);  // pixdim is float32
  EXPECT_NEAR(config.plan.target_spacing[1], 0.8, 1e-6);
  EXPECT_NEAR(config.plan.target_spacing[2], 0.8, 1e-6);
  EXPECT_NE(t.err.find("epoch 2/2"), std::string::npos) << t.err;

  const std::string pred = dir + "/pred";
  const CommandResult p = run_voxgrad("predict --model " + run + " --input " + data() + "/imagesTs --out " + pred +
                                      " --tta --save-probabilities --device cpu");
  ASSERT_EQ(p.exit_code, 0) << p.err;
  EXPECT_EQ(json::parse(p.out).at("cases"), 2);
  for (const char* id : {"synth_003", "synth_004"}) {
    const io::Volume input = io::read_nifti(data() + "/imagesTs/" + id + "_0000.nii.gz");
    const io::Volume labels = io::read_nifti(pred + "/" + id + ".nii.gz");
    EXPECT_EQ(labels.dims(), input.dims());
    EXPECT_EQ(labels.affine, input.affine);
    const std::vector<std::int32_t> values = labels.to_labels().to_vector<std::int32_t>();
    const std::set<std::int32_t> distinct(values.begin(), values.end());
    for (std::int32_t v : distinct) EXPECT_TRUE(v >= 0 && v < 3) << v;
    const io::Volume prob = io::read_nifti(pred + "/" + id + "_probabilities.nii.gz");
    EXPECT_EQ(prob.dims(), (std::vector<std::int64_t>{24, 24, 24, 3}));
    const std::vector<float> p_values = prob.to_float32().to_vector<float>();
    const std::size_t n = values.size();
    for (std::size_t v = 0; v < n; v += 97) {
      const double sum = p_values[v] + p_values[n + v] + p_values[2 * n + v];
      EXPECT_NEAR(sum, 1.0, 1e-5);
      // The label is the most probable class.
      const int k = values[v];
      EXPECT_GE(p_values[k * n + v], std::max({p_values[v], p_values[n + v], p_values[2 * n + v]}) - 1e-6);
    }
    // nifti_tool (Debian nifti-bin, installed by tools/deps --test-data) agrees on dims and sform.
    const std::string probe = dir + "/nifti_tool.txt";
    const std::string cmd =
        "nifti_tool -disp_hdr -field dim -field sform_code -infiles " + pred + "/" + id + ".nii.gz >" + probe + " 2>&1";
    if (std::system("command -v nifti_tool >/dev/null 2>&1") == 0) {
      ASSERT_EQ(std::system(cmd.c_str()), 0) << read_file(probe);
      const std::string text = read_file(probe);
      EXPECT_NE(text.find("3 24 24 24 1 1 1 1"), std::string::npos) << text;
    }
  }
  // nibabel, when Debian's python3-nibabel is installed, opens the prediction on the image's grid.
  if (std::system("/usr/bin/python3 -c 'import nibabel' >/dev/null 2>&1") == 0) {
    const std::string script =
        "import nibabel as nib, numpy as np, sys; a = nib.load(sys.argv[1]); b = nib.load(sys.argv[2]); "
        "assert a.shape == b.shape, (a.shape, b.shape); "
        "assert np.allclose(a.affine, b.affine), (a.affine, b.affine); "
        "assert set(np.unique(np.asanyarray(a.dataobj))) <= {0, 1, 2}";
    const std::string cmd = "/usr/bin/python3 -c \"" + script + "\" " + pred + "/synth_003.nii.gz " + data() +
                            "/imagesTs/synth_003_0000.nii.gz";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }

  const CommandResult e =
      run_voxgrad("eval --pred " + pred + " --ref " + data() + "/labelsTs --out " + dir + "/eval/summary.json");
  ASSERT_EQ(e.exit_code, 0) << e.err;
  EXPECT_TRUE(json::parse(e.out).contains("foreground_mean"));
  EXPECT_TRUE(fs::exists(dir + "/eval/summary.json"));
}

TEST_F(TrainCli, DeepSupervisionAndEveryLossTrain) {
  const std::string dir = temp_dir("train-losses");
  for (const char* loss : {"ce", "wce", "dice", "jaccard", "lovasz"}) {
    const CommandResult r = train(dir + "/" + loss, std::string("--epochs 1 --iters-per-epoch 2 --loss ") + loss);
    EXPECT_EQ(r.exit_code, 0) << loss << ": " << r.err;
  }
  const CommandResult ct = train(dir + "/ct", "--epochs 1 --iters-per-epoch 2 --norm ct");
  ASSERT_EQ(ct.exit_code, 0) << ct.err;
  const voxgrad::pipeline::RunConfig ct_config = voxgrad::pipeline::read_run_config(dir + "/ct");
  ASSERT_EQ(ct_config.plan.ct_stats.size(), 1u);
  EXPECT_LT(ct_config.plan.ct_stats[0].lower, ct_config.plan.ct_stats[0].upper);
  const CommandResult r = train(dir + "/ds", "--epochs 1 --iters-per-epoch 2 --deep-supervision --optim adam");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(voxgrad::pipeline::read_run_config(dir + "/ds").model.deep_supervision);
  const CommandResult p = run_voxgrad("predict --model " + dir + "/ds --checkpoint latest --input " + data() +
                                      "/imagesTs/synth_003_0000.nii.gz --out " + dir + "/pred --device cpu");
  ASSERT_EQ(p.exit_code, 0) << p.err;
  EXPECT_TRUE(fs::exists(dir + "/pred/synth_003.nii.gz"));
}

// Ctrl-C in the middle of an epoch saves checkpoint_latest and exits 130; --resume then ends with
// the same numbers, bit for bit, as a run that was never interrupted.
TEST_F(TrainCli, CtrlCThenResumeIsBitIdentical) {
  const std::string dir = temp_dir("train-resume");
  const std::string schedule = "--epochs 4 --iters-per-epoch 30";
  const CommandResult whole = train(dir + "/whole", schedule);
  ASSERT_EQ(whole.exit_code, 0) << whole.err;

  // The interruption must land inside an epoch (where the running loss sum and the sampler's
  // position matter); a signal that lands during an epoch's closing validation stops at the epoch
  // boundary instead, so that case is retried a little later.
  const std::string run = dir + "/parts";
  std::int64_t saved_step = 0;
  for (int attempt = 0; attempt < 5 && saved_step % 30 == 0; ++attempt) {
    fs::remove_all(run);
    const Background b =
        start_voxgrad(split_words("train --data " + data() + " --out " + run + " " + kTiny + " " + schedule), dir);
    ASSERT_TRUE(wait_for_epochs(run, 1));
    std::this_thread::sleep_for(std::chrono::milliseconds(20 + 40 * attempt));
    kill(b.pid, SIGINT);
    ASSERT_EQ(b.wait(), 130) << read_file(b.err_path);
    EXPECT_NE(read_file(b.err_path).find("--resume"), std::string::npos);
    saved_step = std::stoll(checkpoint_step(run + "/checkpoint_latest.safetensors"));
  }
  ASSERT_NE(saved_step % 30, 0) << "no interruption landed inside an epoch";
  const json partial = json::parse(read_file(run + "/metrics.json"));
  EXPECT_LT(partial.at("epochs_done").get<int>(), 4);

  const CommandResult resumed = run_voxgrad("train --out " + run + " --resume --device cpu");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("resuming"), std::string::npos);
  EXPECT_EQ(log_without_seconds(run), log_without_seconds(dir + "/whole"));
  expect_same_tensors(run + "/checkpoint_latest.safetensors", dir + "/whole/checkpoint_latest.safetensors");
  expect_same_tensors(run + "/model_best.safetensors", dir + "/whole/model_best.safetensors");
}

// SIGKILL leaves no chance to save: the run resumes from the last complete checkpoint (atomic
// writes: never a torn file) and still ends where an uninterrupted run ends.
TEST_F(TrainCli, SigkillResumesFromLastCompleteCheckpoint) {
  const std::string dir = temp_dir("train-kill");
  const std::string schedule = "--epochs 3 --iters-per-epoch 30";
  const CommandResult whole = train(dir + "/whole", schedule);
  ASSERT_EQ(whole.exit_code, 0) << whole.err;

  const std::string run = dir + "/killed";
  const Background b =
      start_voxgrad(split_words("train --data " + data() + " --out " + run + " " + kTiny + " " + schedule), dir);
  ASSERT_TRUE(wait_for_epochs(run, 1));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  kill(b.pid, SIGKILL);
  ASSERT_EQ(b.wait(), 128 + SIGKILL);
  // The checkpoint on disk is whole: it loads.
  EXPECT_NO_THROW(voxgrad::load_safetensors(run + "/checkpoint_latest.safetensors"));

  const CommandResult resumed = run_voxgrad("train --out " + run + " --resume --device cpu");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_EQ(log_without_seconds(run), log_without_seconds(dir + "/whole"));
  expect_same_tensors(run + "/checkpoint_latest.safetensors", dir + "/whole/checkpoint_latest.safetensors");
}

TEST_F(TrainCli, NonFiniteLossStopsAndNamesTheStep) {
  const std::string dir = temp_dir("train-nan");
  const CommandResult r = train(dir + "/run", "--epochs 3 --iters-per-epoch 10 --lr 1e30");
  expect_one_error(r, 1, "the loss is");
  EXPECT_NE(r.err.find("step "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("training stopped"), std::string::npos) << r.err;
  // It diverges within the first epoch: checkpoint_latest still holds the initial state (step 0),
  // and the error says so.
  EXPECT_EQ(checkpoint_step(dir + "/run/checkpoint_latest.safetensors"), "0");
  EXPECT_NE(r.err.find("after step 0"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir + "/run/model_best.safetensors"));
}

// A run folder belongs to one process for its whole life: a second train, or a --resume, is
// refused at once naming the holder's process id; nothing is written to take it (no lock file), and
// the kernel releases it when the holder dies, however it dies.
TEST_F(TrainCli, OneProcessOwnsARunFolder) {
  const std::string dir = temp_dir("train-lock");
  const std::string run = dir + "/run";
  const Background first = start_voxgrad(
      split_words("train --data " + data() + " --out " + run + " " + kTiny + " --epochs 200 --iters-per-epoch 50"),
      dir);
  // Wait until it has started writing (its initial checkpoint), then try to share the folder.
  for (int i = 0; i < 24000 && !fs::exists(run + "/config.json"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_TRUE(fs::exists(run + "/config.json")) << read_file(first.err_path);
  const std::string holder = "in use by process " + std::to_string(first.pid);
  const auto t0 = std::chrono::steady_clock::now();
  expect_one_error(train(run, "--epochs 1 --iters-per-epoch 1"), 1, holder);
  expect_one_error(run_voxgrad("train --out " + run + " --resume --device cpu"), 1, holder);
  // Refused at once: before any dataset is read.
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 30.0);
  for (const auto& e : fs::directory_iterator(run))
    EXPECT_EQ(e.path().filename().string().find("lock"), std::string::npos) << e.path();
  kill(first.pid, SIGKILL);
  ASSERT_EQ(first.wait(), 128 + SIGKILL);
  const CommandResult resumed = run_voxgrad("train --out " + run + " --resume --device cpu --epochs 1");
  EXPECT_EQ(error_lines(resumed.err).size(), 0u) << resumed.err;
}

// Every check comes before any write: a refused or failed command leaves the run folder's list of
// files and every byte of them as it found them, and a refused fresh run leaves no folder behind.
TEST_F(TrainCli, ARefusedCommandChangesNothing) {
  const std::string dir = temp_dir("train-nochange");
  const std::string run = dir + "/run";
  ASSERT_EQ(train(run, "--epochs 1 --iters-per-epoch 2").exit_code, 0);
  const auto before = voxgrad::test::folder_snapshot(run);
  // Another dataset (other case ids): the resume fails, after reading everything, before writing.
  const std::string other = dir + "/other";
  ASSERT_EQ(run_voxgrad("synth --out " + other + " --size 24 --cases 3 --test-cases 0 --seed 9").exit_code, 0);
  for (const auto& e : fs::directory_iterator(other + "/imagesTr"))
    fs::rename(e.path(), other + "/imagesTr/x" + e.path().filename().string());
  for (const auto& e : fs::directory_iterator(other + "/labelsTr"))
    fs::rename(e.path(), other + "/labelsTr/x" + e.path().filename().string());
  const CommandResult r = run_voxgrad("train --out " + run + " --resume --data " + other + " --epochs 3 --device cpu");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(voxgrad::test::folder_snapshot(run), before);
  // Refusals of every kind, on the existing run and on new folders.
  expect_one_error(run_voxgrad("train --out " + run + " --resume --lr 0.5 --epochs 3"), 2, "--lr");
  expect_one_error(train(run, "--epochs 1"), 2, "already holds a run");
  EXPECT_EQ(voxgrad::test::folder_snapshot(run), before);
  fs::create_directories(dir + "/broken");
  std::ofstream(dir + "/broken/dataset.json") << "{ not json";
  expect_one_error(run_voxgrad("train --data " + dir + "/broken --out " + dir + "/new/deeper " + kTiny), 1,
                   "dataset.json");
  EXPECT_FALSE(fs::exists(dir + "/new")) << "a refused run leaves no folder behind";
}

// What the command line alone can tell is refused first, with status 2, before any case is read.
TEST_F(TrainCli, UsageErrorsComeFirstWithStatusTwo) {
  const std::string dir = temp_dir("train-usage");
  std::ofstream(dir + "/afile") << "x";
  fs::create_directories(dir + "/locked");
  fs::permissions(dir + "/locked", fs::perms::owner_read | fs::perms::owner_exec);
  const std::string base = "train --data " + data() + " --device cpu --base 4 --levels 3 --epochs 1 ";
  expect_one_error(run_voxgrad(base + "--out " + dir + "/afile"), 2, "exists and is not a folder");
  expect_one_error(run_voxgrad(base + "--out " + dir + "/afile/run"), 2, "is not a folder");
  expect_one_error(run_voxgrad(base + "--out ''"), 2, "--out is empty");
  if (geteuid() != 0)  // root writes anywhere
    expect_one_error(run_voxgrad(base + "--out " + dir + "/locked/run"), 2, "not writable");
  expect_one_error(run_voxgrad(base + "--out " + dir + "/r --patch 30,32,32"), 2, "D = 30 is not divisible by 4");
  expect_one_error(run_voxgrad(base + "--out " + dir + "/r --seed -1"), 2, "--seed");
  expect_one_error(run_voxgrad(base + "--out " + dir + "/r --seed 18446744073709551616"), 2, "--seed");
  expect_one_error(run_voxgrad(base + "--out " + dir + "/r --lr inf"), 2, "--lr");
  expect_one_error(run_voxgrad(base + "--out " + dir + "/r --lr nan"), 2, "--lr");
  expect_one_error(run_voxgrad(base + "--out " + dir + "/r --epochs 2"), 2, "--epochs is given 2 times");
  if (!voxgrad::test::has_cuda())
    expect_one_error(run_voxgrad("train --data " + data() + " --out " + dir + "/r --device cuda"), 2, "--device cuda");
  EXPECT_FALSE(fs::exists(dir + "/r"));
  fs::permissions(dir + "/locked", fs::perms::owner_all);
}

// A plain (not a terminal) progress log ends each epoch at 100%, and SIGHUP (a dropped ssh
// session) saves a checkpoint and stops like SIGTERM.
// A run folder written before UNet3d was built as nnU-Net's PlainConvUNet (its tensors named
// encoder.{i}.conv1, decoder.{i}.up, heads.{i}, ...) predicts from model_best and from
// checkpoint_latest, and resumes, exactly as the same run written with the current names.
TEST_F(TrainCli, RunsWithTheFormerTensorNamesPredictAndResume) {
  const std::string dir = temp_dir("train-former-names");
  const std::string current = dir + "/current", former = dir + "/former";
  const CommandResult t = train(current, "--epochs 1 --iters-per-epoch 2");
  ASSERT_EQ(t.exit_code, 0) << t.err;
  fs::copy(current, former, fs::copy_options::recursive);
  for (const char* file : {"model_best.safetensors", "checkpoint_latest.safetensors", "checkpoint_best.safetensors"}) {
    const std::string path = former + "/" + file;
    const voxgrad::SafeTensors written = voxgrad::load_safetensors(path);
    voxgrad::NamedTensors renamed;
    for (const auto& [name, tensor] : written.tensors)
      if (const std::string old = former_run_file_name(name, 3); !old.empty()) renamed.emplace_back(old, tensor);
    voxgrad::save_safetensors(path, renamed, written.metadata);
  }
  const auto former_names = tensors_of(former + "/checkpoint_latest.safetensors");
  for (const char* name : {"model.encoder.0.conv1.weight", "model.decoder.1.up.weight", "model.decoder.0.norm2.bias",
                           "model.heads.0.weight", "optimizer.state.encoder.2.conv2.weight.momentum_buffer"})
    EXPECT_EQ(former_names.count(name), 1u) << name;
  for (const auto& [name, values] : former_names) EXPECT_EQ(name.find("stages"), std::string::npos) << name;
  EXPECT_EQ(tensors_of(former + "/model_best.safetensors").count("encoder.1.norm1.weight"), 1u);

  for (const char* checkpoint : {"best", "latest"}) {
    SCOPED_TRACE(checkpoint);
    std::vector<std::vector<float>> probabilities;
    std::vector<std::vector<std::int32_t>> labels;
    for (const std::string& run : {current, former}) {
      const std::string out = run + "-pred-" + checkpoint;
      const CommandResult p =
          run_voxgrad("predict --model " + run + " --checkpoint " + checkpoint + " --input " + data() +
                      "/imagesTs/synth_003_0000.nii.gz --out " + out + " --save-probabilities --device cpu");
      ASSERT_EQ(p.exit_code, 0) << p.err;
      labels.push_back(io::read_nifti(out + "/synth_003.nii.gz").to_labels().to_vector<std::int32_t>());
      probabilities.push_back(io::read_nifti(out + "/synth_003_probabilities.nii.gz").to_float32().to_vector<float>());
    }
    EXPECT_EQ(labels[1], labels[0]);
    EXPECT_EQ(probabilities[1], probabilities[0]);
  }

  for (const std::string& run : {current, former}) {
    const CommandResult r = run_voxgrad("train --out " + run + " --resume --epochs 2 --device cpu");
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  EXPECT_EQ(log_without_seconds(former), log_without_seconds(current));
  // Bit for bit, but for the seg layer of the lower decoder stage: the former files did not have
  // it (a U-Net without deep supervision never uses it), so the migration gave it zeros.
  for (const char* file : {"/checkpoint_latest.safetensors", "/model_best.safetensors"}) {
    const auto resumed = tensors_of(former + file), reference = tensors_of(current + file);
    ASSERT_EQ(resumed.size(), reference.size()) << file;
    for (const auto& [name, values] : reference) {
      ASSERT_EQ(resumed.count(name), 1u) << name;
      if (name.find("seg_layers.0.") != std::string::npos) {
        EXPECT_EQ(resumed.at(name), std::vector<float>(values.size(), 0.0f)) << name;
      } else {
        EXPECT_EQ(std::memcmp(resumed.at(name).data(), values.data(), values.size() * sizeof(float)), 0) << name;
      }
    }
  }
}

TEST_F(TrainCli, PlainProgressEndsAtTheLastStepAndSighupSaves) {
  const std::string dir = temp_dir("train-hup");
  const CommandResult done = train(dir + "/short", "--epochs 2 --iters-per-epoch 3");
  ASSERT_EQ(done.exit_code, 0) << done.err;
  EXPECT_NE(done.err.find("epoch 1/2 100% 3/3"), std::string::npos) << done.err;
  EXPECT_NE(done.err.find("epoch 2/2 100% 3/3"), std::string::npos) << done.err;

  const std::string run = dir + "/run";
  const Background b = start_voxgrad(
      split_words("train --data " + data() + " --out " + run + " " + kTiny + " --epochs 50 --iters-per-epoch 30"), dir);
  ASSERT_TRUE(wait_for_epochs(run, 1));
  kill(b.pid, SIGHUP);
  ASSERT_EQ(b.wait(), 130) << read_file(b.err_path);
  EXPECT_NE(read_file(b.err_path).find("--resume"), std::string::npos);
  EXPECT_GT(std::stoll(checkpoint_step(run + "/checkpoint_latest.safetensors")), 0);
}

// A run killed before its first epoch ends resumes from its initial checkpoint.
TEST_F(TrainCli, RunKilledInItsFirstEpochResumes) {
  const std::string dir = temp_dir("train-early");
  const std::string run = dir + "/run";
  const std::string schedule = " --epochs 1 --iters-per-epoch 60";
  const Background b =
      start_voxgrad(split_words("train --data " + data() + " --out " + run + " " + kTiny + schedule), dir);
  // config.json comes right after the initial checkpoint: from then on the folder is a run.
  for (int i = 0; i < 60000 && !fs::exists(run + "/config.json"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  kill(b.pid, SIGKILL);
  ASSERT_EQ(b.wait(), 128 + SIGKILL);
  ASSERT_EQ(checkpoint_step(run + "/checkpoint_latest.safetensors"), "0");
  const CommandResult r = run_voxgrad("train --out " + run + " --resume --device cpu");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(checkpoint_step(run + "/checkpoint_latest.safetensors"), "60");
  EXPECT_EQ(json::parse(read_file(run + "/metrics.json")).at("epochs_done"), 1);
}

// An input on another grid than training's (twice the voxel size in x, half the voxels) is
// resampled to the training spacing for the network and the labels come back on the input's grid.
TEST_F(TrainCli, PredictResamplesToTheTrainingSpacingAndBack) {
  const std::string dir = temp_dir("predict-spacing");
  ASSERT_EQ(train(dir + "/run", "--epochs 1 --iters-per-epoch 2").exit_code, 0);
  io::Volume image = io::read_nifti(data() + "/imagesTs/synth_003_0000.nii.gz");
  // Every other voxel along x (the last tensor axis), with the x column of the affine doubled.
  const voxgrad::Tensor full = image.to_float32();
  std::vector<float> half;
  const std::vector<float> v = full.to_vector<float>();
  for (std::size_t i = 0; i < v.size(); i += 2) half.push_back(v[i]);
  io::Affine affine = image.affine;
  for (int r = 0; r < 3; ++r) affine[r][0] *= 2;
  fs::create_directories(dir + "/in");
  io::write_nifti(dir + "/in/coarse.nii.gz", io::make_volume(voxgrad::from_vector(half, {24, 24, 12}), affine));
  const CommandResult p = run_voxgrad("predict --model " + dir + "/run --checkpoint latest --input " + dir +
                                      "/in --out " + dir + "/pred --device cpu");
  ASSERT_EQ(p.exit_code, 0) << p.err;
  const io::Volume labels = io::read_nifti(dir + "/pred/coarse.nii.gz");
  EXPECT_EQ(labels.dims(), (std::vector<std::int64_t>{12, 24, 24}));
  EXPECT_EQ(labels.affine, affine);
  EXPECT_NEAR(labels.spacing[0], 1.6, 1e-6);
}

TEST_F(TrainCli, BadInputGivesOneErrorLine) {
  const std::string dir = temp_dir("train-bad");
  // Exit 2 for the command line (a flag, its value, a place a flag names that cannot be used),
  // found before any dataset is read; 1 for the content of the inputs.
  expect_one_error(run_voxgrad("train --data " + dir + "/nowhere --out " + dir + "/r1"), 2, "nowhere");
  expect_one_error(run_voxgrad("train --data " + data() + " --out " + dir + "/r2 --no-such-flag"), 2, "--no-such-flag");
  expect_one_error(run_voxgrad("train --data " + data() + " --out " + dir + "/r3 --loss hinge"), 2, "--loss");
  expect_one_error(run_voxgrad("train --data " + data() + " --out " + dir + "/r4 --patch 0,4"), 2, "--patch");
  expect_one_error(run_voxgrad("train --out " + dir + "/r5 --resume"), 2, "nothing to resume");
  // The U-Net (nnU-Net's PlainConvUNet) downsamples at least once: 2 levels or more.
  for (const char* levels : {"1", "0", "8"}) {
    SCOPED_TRACE(levels);
    expect_one_error(run_voxgrad("train --data " + data() + " --out " + dir + "/r5b --levels " + levels + " --patch 8"),
                     2, "--levels");
    EXPECT_FALSE(fs::exists(dir + "/r5b"));
  }
  // A patch the U-Net cannot take (3 levels need multiples of 4).
  expect_one_error(run_voxgrad("train --data " + data() + " --out " + dir + "/r6 --patch 18 --levels 3 --device cpu"),
                   2, "D = 18 is not divisible by 4");
  // An existing run is never overwritten.
  ASSERT_EQ(train(dir + "/r7", "--epochs 1 --iters-per-epoch 1").exit_code, 0);
  expect_one_error(train(dir + "/r7", "--epochs 1 --iters-per-epoch 1"), 2, "already holds a run");
  // --resume refuses a flag that contradicts the run.
  expect_one_error(run_voxgrad("train --out " + dir + "/r7 --resume --lr 0.5"), 2, "--lr");

  // A copy of the dataset with a label value outside the declared set, and one with a label of
  // the wrong dims.
  const std::string bad = dir + "/bad";
  fs::copy(data(), bad, fs::copy_options::recursive);
  {
    io::Volume label = io::read_nifti(bad + "/labelsTr/synth_001.nii.gz");
    label.data.data<std::uint8_t>()[0] = 7;
    io::write_nifti(bad + "/labelsTr/synth_001.nii.gz", label);
  }
  expect_one_error(run_voxgrad("train --data " + bad + " --out " + dir + "/r8 " + kTiny), 1, "synth_001");
  {
    io::Volume label = io::read_nifti(data() + "/labelsTr/synth_001.nii.gz");
    io::write_nifti(bad + "/labelsTr/synth_001.nii.gz", label);
    io::Volume small = io::make_volume(voxgrad::zeros({20, 24, 24}, voxgrad::DType::UInt8), label.affine);
    io::write_nifti(bad + "/labelsTr/synth_002.nii.gz", small);
  }
  expect_one_error(run_voxgrad("train --data " + bad + " --out " + dir + "/r9 " + kTiny), 1, "synth_002");
  EXPECT_FALSE(fs::exists(dir + "/r9/config.json"));
  // A training image that is missing.
  io::write_nifti(bad + "/labelsTr/synth_002.nii.gz", io::read_nifti(data() + "/labelsTr/synth_002.nii.gz"));
  fs::remove(bad + "/imagesTr/synth_000_0000.nii.gz");
  expect_one_error(run_voxgrad("train --data " + bad + " --out " + dir + "/r10 " + kTiny), 1, "synth_000");
}

TEST_F(TrainCli, PredictBadInputGivesOneErrorLine) {
  const std::string dir = temp_dir("predict-bad");
  const std::string run = dir + "/run";
  ASSERT_EQ(train(run, "--epochs 1 --iters-per-epoch 1").exit_code, 0);
  expect_one_error(run_voxgrad("predict --model " + dir + "/none --input " + data() + "/imagesTs --out " + dir + "/p"),
                   2, "none");
  expect_one_error(run_voxgrad("predict --model " + run + " --input " + dir + "/missing.nii.gz --out " + dir + "/p"), 2,
                   "missing.nii.gz");
  fs::create_directories(dir + "/empty");
  expect_one_error(run_voxgrad("predict --model " + run + " --input " + dir + "/empty --out " + dir + "/p"), 2,
                   "no .nii");
  EXPECT_FALSE(fs::exists(dir + "/p")) << "a refused predict leaves no --out folder behind";
  expect_one_error(run_voxgrad("predict --model " + run + " --input x --out y --overlap 1.5"), 2, "--overlap");
  expect_one_error(run_voxgrad("predict --model " + run + " --input x --out y --checkpoint newest"), 2, "--checkpoint");
  // For a one-channel model, names ending in _0001, _0002 are cases, not channels.
  fs::create_directories(dir + "/numbered");
  fs::copy_file(data() + "/imagesTs/synth_003_0000.nii.gz", dir + "/numbered/liver_0001.nii.gz");
  fs::copy_file(data() + "/imagesTs/synth_004_0000.nii.gz", dir + "/numbered/liver_0002.nii.gz");
  const CommandResult numbered =
      run_voxgrad("predict --model " + run + " --input " + dir + "/numbered --out " + dir + "/pn --device cpu");
  ASSERT_EQ(numbered.exit_code, 0) << numbered.err;
  EXPECT_TRUE(fs::exists(dir + "/pn/liver_0001.nii.gz"));
  EXPECT_TRUE(fs::exists(dir + "/pn/liver_0002.nii.gz"));
  // A corrupt image: one error line naming the file.
  fs::create_directories(dir + "/corrupt");
  std::ofstream(dir + "/corrupt/case_0000.nii.gz") << "not a nifti file";
  const CommandResult corrupt =
      run_voxgrad("predict --model " + run + " --input " + dir + "/corrupt --out " + dir + "/p --device cpu");
  EXPECT_EQ(corrupt.exit_code, 1);
  const std::vector<std::string> lines = error_lines(corrupt.err);
  ASSERT_EQ(lines.size(), 2u) << corrupt.err;
  EXPECT_NE(lines[0].find("case_0000.nii.gz"), std::string::npos) << lines[0];
  EXPECT_NE(lines[1].find("1 of 1 cases failed: case"), std::string::npos) << lines[1];
}

// predict never writes over one of its inputs (compared by identity, so any spelling or link is
// caught) and never replaces a file it did not write unless told: refused before anything is
// written, naming both paths, with every byte left as it was.
TEST_F(TrainCli, PredictNeverOverwritesInputsOrFilesItDidNotWrite) {
  const std::string dir = temp_dir("predict-inputs");
  const std::string run = dir + "/run";
  ASSERT_EQ(train(run, "--epochs 1 --iters-per-epoch 1").exit_code, 0);
  const std::string predict = "predict --model " + run + " --device cpu";

  // A folder of images named without _0000: case "patient" would be written over patient.nii.gz.
  const std::string images = dir + "/images";
  fs::create_directories(images);
  fs::copy_file(data() + "/imagesTs/synth_003_0000.nii.gz", images + "/patient.nii.gz");
  const auto before = voxgrad::test::folder_snapshot(images);
  for (const std::string& out : {images, images + "/.", dir + "/images/../images"}) {
    const CommandResult r = run_voxgrad(predict + " --input " + images + " --out " + out);
    expect_one_error(r, 1, "would overwrite the input " + images + "/patient.nii.gz");
    EXPECT_EQ(voxgrad::test::folder_snapshot(images), before) << out;
  }
  // The single-file form, and --overwrite does not lift the rule.
  expect_one_error(run_voxgrad(predict + " --overwrite --input " + images + "/patient.nii.gz --out " + images), 1,
                   "would overwrite the input");
  EXPECT_EQ(voxgrad::test::folder_snapshot(images), before);

  // --out pointing at reference labels: they are not this run's files.
  const std::string labels = dir + "/labelsTs";
  fs::create_directories(labels);
  fs::copy_file(data() + "/labelsTs/synth_003.nii.gz", labels + "/synth_003.nii.gz");
  const std::string truth = read_file(labels + "/synth_003.nii.gz");
  const std::string case_input = " --input " + data() + "/imagesTs/synth_003_0000.nii.gz --out " + labels;
  expect_one_error(run_voxgrad(predict + case_input), 1,
                   labels + "/synth_003.nii.gz: exists and was not written by this run");
  EXPECT_EQ(read_file(labels + "/synth_003.nii.gz"), truth);
  // --continue skips the case whose output exists; --overwrite replaces it.
  const CommandResult skipped = run_voxgrad(predict + " --continue" + case_input);
  ASSERT_EQ(skipped.exit_code, 0) << skipped.err;
  EXPECT_EQ(json::parse(skipped.out).at("skipped"), 1);
  EXPECT_EQ(read_file(labels + "/synth_003.nii.gz"), truth);
  const CommandResult replaced = run_voxgrad(predict + " --overwrite" + case_input);
  ASSERT_EQ(replaced.exit_code, 0) << replaced.err;
  EXPECT_NE(read_file(labels + "/synth_003.nii.gz"), truth);
  expect_one_error(run_voxgrad(predict + " --overwrite --continue" + case_input), 2, "--continue");
}

// --num-parts N --part-id K: N jobs into one folder write exactly what one run writes, byte for
// byte; a part rerun with --continue skips its cases; bad part numbers are usage errors.
TEST_F(TrainCli, PredictInPartsWritesWhatOneRunWrites) {
  const std::string dir = temp_dir("predict-parts");
  const std::string run = dir + "/run";
  ASSERT_EQ(train(run, "--epochs 1 --iters-per-epoch 1").exit_code, 0);
  const std::string images = dir + "/images";  // five cases: the test and the training images
  fs::create_directories(images);
  for (const char* folder : {"/imagesTs", "/imagesTr"})
    for (const auto& entry : fs::directory_iterator(data() + folder))
      fs::copy_file(entry.path(), images + "/" + entry.path().filename().string());
  const std::string predict = "predict --model " + run + " --device cpu --input " + images + " --out ";
  const CommandResult whole = run_voxgrad(predict + dir + "/whole");
  ASSERT_EQ(whole.exit_code, 0) << whole.err;
  ASSERT_EQ(json::parse(whole.out).at("cases"), 5);

  std::int64_t cases = 0;
  for (int k = 0; k < 3; ++k) {
    const CommandResult part = run_voxgrad(predict + dir + "/parts --num-parts 3 --part-id " + std::to_string(k));
    ASSERT_EQ(part.exit_code, 0) << part.err;
    const json j = json::parse(part.out);
    EXPECT_EQ(j.at("part").at("id"), k);
    EXPECT_EQ(j.at("part").at("of"), 3);
    EXPECT_EQ(j.at("part").at("all_cases"), 5);
    cases += j.at("cases").get<std::int64_t>();
  }
  EXPECT_EQ(cases, 5);
  EXPECT_EQ(voxgrad::test::folder_snapshot(dir + "/parts"), voxgrad::test::folder_snapshot(dir + "/whole"));

  const auto before = voxgrad::test::folder_snapshot(dir + "/parts");
  const CommandResult again = run_voxgrad(predict + dir + "/parts --num-parts 3 --part-id 1 --continue");
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(json::parse(again.out).at("cases"), 0);
  EXPECT_EQ(json::parse(again.out).at("skipped"), json::parse(again.out).at("part").at("cases"));
  EXPECT_EQ(voxgrad::test::folder_snapshot(dir + "/parts"), before);

  expect_one_error(run_voxgrad(predict + dir + "/p --num-parts 3 --part-id 3"), 2, "--part-id 3");
  expect_one_error(run_voxgrad(predict + dir + "/p --num-parts 0"), 2, "--num-parts");
  expect_one_error(run_voxgrad(predict + dir + "/p --part-id 1"), 2, "--part-id");
  EXPECT_FALSE(fs::exists(dir + "/p"));
}

// A bad case is reported and the others are still segmented; the status says something failed.
// Temporaries that a killed predict left in --out are cleared by the next one.
TEST_F(TrainCli, PredictGoesOnPastABadCaseAndClearsStaleTemporaries) {
  const std::string dir = temp_dir("predict-partial");
  const std::string run = dir + "/run";
  ASSERT_EQ(train(run, "--epochs 1 --iters-per-epoch 1").exit_code, 0);
  const std::string images = dir + "/images";
  fs::create_directories(images);
  std::ofstream(images + "/a_0000.nii.gz") << "not a nifti file";
  fs::copy_file(data() + "/imagesTs/synth_003_0000.nii.gz", images + "/b_0000.nii.gz");
  const std::string out = dir + "/out";
  fs::create_directories(out);
  // A dead process's temporary (its pid: one that has exited) and a file of the user's.
  const pid_t child = fork();
  if (child == 0) _exit(0);
  waitpid(child, nullptr, 0);
  const std::string stale = out + "/b.nii.gz.tmp-" + std::to_string(child) + "-0";
  std::ofstream(stale) << "half a file";
  const CommandResult r =
      run_voxgrad("predict --model " + run + " --input " + images + " --out " + out + " --device cpu");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  const json result = json::parse(r.out);
  EXPECT_EQ(result.at("failed"), json::array({"a"}));
  EXPECT_EQ(result.at("cases"), 1);
  EXPECT_TRUE(fs::exists(out + "/b.nii.gz"));
  EXPECT_FALSE(fs::exists(out + "/a.nii.gz"));
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_NE(r.err.find("1 of 2 cases failed: a"), std::string::npos) << r.err;
}

// A non-finite voxel is left out and set to 0 with a warning naming the file and the count, so the
// prediction is the same as without it (it was all background); an image with no finite voxel is a
// named dataset problem for train. A corrupt model file is refused, naming it, and a FIFO among
// the cases is a failed case, not a hang.
TEST_F(TrainCli, NonFiniteVoxelsCorruptModelsAndFifos) {
  const std::string dir = temp_dir("predict-hostile");
  const std::string run = dir + "/run";
  ASSERT_EQ(train(run, "--epochs 1 --iters-per-epoch 2").exit_code, 0);
  const std::string clean = data() + "/imagesTs/synth_003_0000.nii.gz";
  io::Volume v = io::read_nifti(clean);
  v.data.data<float>()[100] = INFINITY;
  fs::create_directories(dir + "/inf");
  io::write_nifti(dir + "/inf/case_0000.nii.gz", v, io::NiftiWriteType::Float32);
  const std::string predict = "predict --model " + run + " --device cpu --input ";
  const CommandResult with_inf = run_voxgrad(predict + dir + "/inf --out " + dir + "/p_inf");
  ASSERT_EQ(with_inf.exit_code, 0) << with_inf.err;
  EXPECT_NE(with_inf.err.find(dir + "/inf/case_0000.nii.gz: 1 of"), std::string::npos) << with_inf.err;
  ASSERT_EQ(run_voxgrad(predict + clean + " --out " + dir + "/p_clean").exit_code, 0);
  // One voxel left out of the statistics may move a few borderline voxels, no more.
  const auto a = io::read_nifti(dir + "/p_inf/case.nii.gz").data.to_vector<std::uint8_t>();
  const auto b = io::read_nifti(dir + "/p_clean/synth_003.nii.gz").data.to_vector<std::uint8_t>();
  ASSERT_EQ(a.size(), b.size());
  std::size_t differ = 0, foreground = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    differ += a[i] != b[i];
    foreground += a[i] != 0;
  }
  EXPECT_LE(differ, a.size() / 100);
  EXPECT_EQ(foreground > 0, std::count_if(b.begin(), b.end(), [](std::uint8_t x) { return x != 0; }) > 0);

  // One altered byte in the model's tensor data: refused, naming the file.
  const std::string model = run + "/model_best.safetensors";
  std::string bytes = read_file(model);
  bytes[bytes.size() - 7] = static_cast<char>(bytes[bytes.size() - 7] ^ 0x10);
  std::ofstream(model, std::ios::binary | std::ios::trunc) << bytes;
  expect_one_error(run_voxgrad(predict + clean + " --out " + dir + "/p_corrupt"), 1, model);
  EXPECT_FALSE(fs::exists(dir + "/p_corrupt"));

  // A FIFO named like a case: reported as a failed case at once, the other case still segmented.
  fs::create_directories(dir + "/fifo");
  ASSERT_EQ(mkfifo((dir + "/fifo/a_0000.nii.gz").c_str(), 0644), 0);
  fs::copy_file(clean, dir + "/fifo/b_0000.nii.gz");
  const CommandResult fifo = run_voxgrad(
      "predict --model " + run + " --checkpoint latest --device cpu --input " + dir + "/fifo --out " + dir + "/p_fifo",
      "timeout -s KILL 120");
  EXPECT_EQ(fifo.exit_code, 1) << fifo.err;
  EXPECT_NE(fifo.err.find("not a regular file"), std::string::npos) << fifo.err;
  EXPECT_TRUE(fs::exists(dir + "/p_fifo/b.nii.gz"));

  // Training: an image whose voxels are all NaN is a dataset problem naming the case and the file.
  const std::string bad = dir + "/bad";
  fs::copy(data(), bad, fs::copy_options::recursive);
  io::Volume nan = io::read_nifti(bad + "/imagesTr/synth_001_0000.nii.gz");
  for (float& x : std::span(nan.data.data<float>(), static_cast<std::size_t>(nan.data.numel()))) x = NAN;
  io::write_nifti(bad + "/imagesTr/synth_001_0000.nii.gz", nan, io::NiftiWriteType::Float32);
  expect_one_error(run_voxgrad("train --data " + bad + " --out " + dir + "/r_nan " + kTiny), 1,
                   "case synth_001: " + bad + "/imagesTr/synth_001_0000.nii.gz: no finite voxel");
  EXPECT_FALSE(fs::exists(dir + "/r_nan"));
}

// Single slices, which train takes, are segmented too: the output has the input's dims.
TEST_F(TrainCli, PredictTakesTwoDimensionalSlices) {
  const std::string dir = temp_dir("predict-2d");
  const std::string run = dir + "/run";
  ASSERT_EQ(train(run, "--epochs 1 --iters-per-epoch 1").exit_code, 0);
  const io::Volume volume = io::read_nifti(data() + "/imagesTs/synth_003_0000.nii.gz");  // (Z, Y, X)
  const voxgrad::Tensor one = voxgrad::reshape(voxgrad::slice(volume.data, 0, 5, 6), {24, 24}).clone();
  io::Volume flat = io::make_volume(one, volume.affine);
  flat.spacing = {volume.spacing[0], volume.spacing[1]};
  io::write_nifti(dir + "/slice.nii.gz", flat);
  const CommandResult r =
      run_voxgrad("predict --model " + run + " --input " + dir + "/slice.nii.gz --out " + dir + "/p --device cpu");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const io::Volume labels = io::read_nifti(dir + "/p/slice.nii.gz");
  EXPECT_EQ(labels.dims(), flat.dims());
}

// The CUDA path end to end: training runs on the device, and the device's prediction of the same
// weights agrees with the CPU's on almost every voxel (float32 sums in another order can flip a
// voxel whose two best classes tie within rounding).
TEST_F(TrainCli, CudaTrainsAndPredictsLikeTheCpu) {
  VG_REQUIRE_CUDA();
  const std::string dir = temp_dir("train-cuda");
  const CommandResult t = run_voxgrad("train --data " + data() + " --out " + dir +
                                      "/run --patch 16 --base 4 --levels 3 --batch-size 2 --seed 3 --device cuda "
                                      "--epochs 2 --iters-per-epoch 5 --deep-supervision");
  ASSERT_EQ(t.exit_code, 0) << t.err;
  for (const char* device : {"cpu", "cuda"}) {
    const CommandResult p = run_voxgrad("predict --model " + dir + "/run --checkpoint latest --tta --input " + data() +
                                        "/imagesTs --out " + dir + "/pred_" + device + " --device " + device);
    ASSERT_EQ(p.exit_code, 0) << device << ": " << p.err;
  }
  for (const char* id : {"synth_003", "synth_004"}) {
    const auto cpu = io::read_nifti(dir + "/pred_cpu/" + id + ".nii.gz").to_labels().to_vector<std::int32_t>();
    const auto gpu = io::read_nifti(dir + "/pred_cuda/" + id + ".nii.gz").to_labels().to_vector<std::int32_t>();
    ASSERT_EQ(cpu.size(), gpu.size());
    std::size_t differ = 0;
    for (std::size_t i = 0; i < cpu.size(); ++i) differ += cpu[i] != gpu[i];
    EXPECT_LE(differ, cpu.size() / 1000) << id << ": " << differ << " voxels differ";
  }
}

TEST(TrainRecipe, DeepSupervisionWeightsAreNnunets) {
  const std::vector<double> w = voxgrad::deep_supervision_weights(4);
  // 1, 1/2, 1/4, 0 normalised by 1.75.
  ASSERT_EQ(w.size(), 4u);
  EXPECT_DOUBLE_EQ(w[0], 1.0 / 1.75);
  EXPECT_DOUBLE_EQ(w[1], 0.5 / 1.75);
  EXPECT_DOUBLE_EQ(w[2], 0.25 / 1.75);
  EXPECT_DOUBLE_EQ(w[3], 0.0);
  EXPECT_EQ(voxgrad::deep_supervision_weights(1), std::vector<double>{1.0});
}

TEST(TrainRecipe, SplitHoldsOutAFifthDeterministically) {
  std::vector<std::string> ids;
  for (int i = 0; i < 10; ++i) ids.push_back(std::string("c").append(std::to_string(i)));
  std::vector<std::string> train, val, train2, val2;
  voxgrad::pipeline::split_cases(ids, 1, train, val);
  EXPECT_EQ(val.size(), 2u);
  EXPECT_EQ(train.size(), 8u);
  voxgrad::pipeline::split_cases(ids, 1, train2, val2);
  EXPECT_EQ(val, val2);
  std::set<std::string> all(train.begin(), train.end());
  all.insert(val.begin(), val.end());
  EXPECT_EQ(all.size(), 10u);
  voxgrad::pipeline::split_cases({"only"}, 1, train, val);
  EXPECT_EQ(train, std::vector<std::string>{"only"});
  EXPECT_EQ(val, std::vector<std::string>{"only"});
}

TEST(TrainRecipe, DefaultPatchFitsTheNetwork) {
  EXPECT_EQ(voxgrad::pipeline::default_patch({48, 50, 300}, 4), (voxgrad::pipeline::Shape3{48, 48, 128}));
  EXPECT_EQ(voxgrad::pipeline::default_patch({5, 17, 9}, 3), (voxgrad::pipeline::Shape3{4, 16, 8}));
  EXPECT_EQ(voxgrad::pipeline::default_patch({2, 17, 9}, 3), (voxgrad::pipeline::Shape3{4, 16, 8}));
}

TEST(TrainRecipe, RunConfigRoundTrips) {
  voxgrad::pipeline::RunConfig c;
  c.dataset_root = "/data/x";
  c.dataset_name = "x";
  c.channels = {"CT"};
  c.labels = {{0, "background"}, {1, "liver"}};
  c.model.classes = 2;
  c.plan.classes = 2;
  c.plan.normalization = voxgrad::pipeline::Normalization::CT;
  c.plan.ct_stats = {{-100.5, 200.25, 50.0, 30.0}};
  c.plan.target_spacing = {2.5, 0.75, 0.75};
  c.training.patch = {32, 64, 48};
  c.training.val_cases = {"a"};
  const json j = voxgrad::pipeline::run_config_to_json(c);
  const voxgrad::pipeline::RunConfig back = voxgrad::pipeline::run_config_from_json(j, "config.json");
  EXPECT_EQ(voxgrad::pipeline::run_config_to_json(back), j);
  json broken = j;
  broken["model"].erase("levels");
  try {
    voxgrad::pipeline::run_config_from_json(broken, "config.json");
    FAIL() << "no error for a missing key";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("levels"), std::string::npos) << e.what();
  }
  // One level would be a U-Net that never downsamples, which nnU-Net's PlainConvUNet is not: one line says so.
  broken = j;
  broken["model"]["levels"] = 1;
  try {
    voxgrad::pipeline::run_config_from_json(broken, "config.json");
    FAIL() << "no error for levels 1";
  } catch (const voxgrad::InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("config.json model: \"levels\" is 1; it must be a whole number from 2 to 7"), std::string::npos)
        << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

}  // namespace
