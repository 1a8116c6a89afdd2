// `voxgrad train`'s loss settings as a study needs them: every loss option a flag, resolved and
// recorded in config.json and in the checkpoint, refused where the loss does not use it or where it
// would change a resumed run; wce's dataset-wide "auto" weights; --init-from (another run's weights,
// a fresh optimizer) and --data-seed (the split and the sampler, apart from the weights' --seed).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "apps/pipeline/run_config.h"
#include "apps/pipeline/train_data.h"
#include "engine/checkpoint.h"
#include "engine/json.h"
#include "io/nifti.h"
#include "tests/csv_reader.h"
#include "tests/test_support.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using voxgrad::test::CommandResult;
using voxgrad::test::log_without_seconds;
using voxgrad::test::read_file;
using voxgrad::test::run_voxgrad;
using voxgrad::test::temp_dir;

const std::string kTiny =
    "--patch 16 --base 4 --levels 3 --batch-size 2 --seed 3 --device cpu --epochs 1 --iters-per-epoch 2";

class TrainLossOptions : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = new std::string(temp_dir("train-loss-options") + "/ds");
    const CommandResult r = run_voxgrad("synth --out " + *data_ + " --size 24 --cases 5 --test-cases 1 --seed 5");
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
std::string* TrainLossOptions::data_ = nullptr;

json training_of(const std::string& run) { return json::parse(read_file(run + "/config.json")).at("training"); }

// The "training" record the checkpoint keeps in its metadata.
json checkpoint_training(const std::string& run) {
  const auto file = voxgrad::load_safetensors(run + "/checkpoint_latest.safetensors");
  return json::parse(file.metadata.at("config")).at("training");
}

// The model's tensors of a training checkpoint (not the optimizer's), name -> values.
std::map<std::string, std::vector<float>> model_tensors(const std::string& path) {
  std::map<std::string, std::vector<float>> out;
  for (const auto& [name, t] : voxgrad::load_safetensors(path).tensors)
    if (name.rfind("model.", 0) == 0 && t.dtype() == voxgrad::DType::Float32) out[name] = t.to_vector<float>();
  return out;
}

void expect_error(const CommandResult& r, const std::string& needle) {
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("voxgrad: error: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
}

TEST_F(TrainLossOptions, SettingsAreResolvedRecordedAndUsed) {
  const std::string dir = temp_dir("train-loss-settings");
  // Defaults resolved: dice is per-image over the foreground classes.
  ASSERT_EQ(train(dir + "/implicit", "--loss dice").exit_code, 0);
  const json implicit = training_of(dir + "/implicit").at("loss_options");
  EXPECT_EQ(implicit.at("classes"), "fg");
  EXPECT_EQ(implicit.at("aggregate"), "per-image");
  EXPECT_EQ(implicit.at("eps").get<double>(), 1e-5);
  EXPECT_TRUE(implicit.at("ignore_label").is_null());
  EXPECT_EQ(checkpoint_training(dir + "/implicit").at("loss_options"), implicit);
  // The same settings spelled out train the same numbers; other settings train other numbers.
  ASSERT_EQ(train(dir + "/explicit", "--loss dice --loss-classes fg --aggregate per-image --eps 1e-5").exit_code, 0);
  EXPECT_EQ(log_without_seconds(dir + "/explicit"), log_without_seconds(dir + "/implicit"));
  const CommandResult other = train(dir + "/other", "--loss dice --loss-classes all --aggregate batch --eps 0.5");
  ASSERT_EQ(other.exit_code, 0) << other.err;
  EXPECT_NE(log_without_seconds(dir + "/other"), log_without_seconds(dir + "/implicit"));
  const json recorded = training_of(dir + "/other").at("loss_options");
  EXPECT_EQ(recorded.at("classes"), "all");
  EXPECT_EQ(recorded.at("aggregate"), "batch");
  EXPECT_EQ(recorded.at("eps").get<double>(), 0.5);
  EXPECT_EQ(checkpoint_training(dir + "/other").at("loss_options"), recorded);
  // Lovász keeps Berman's defaults unless told otherwise.
  ASSERT_EQ(train(dir + "/lovasz", "--loss lovasz").exit_code, 0);
  EXPECT_EQ(training_of(dir + "/lovasz").at("loss_options").at("classes"), "present");
  EXPECT_EQ(training_of(dir + "/lovasz").at("loss_options").at("aggregate"), "batch");
  // dice_ce's part weights.
  ASSERT_EQ(train(dir + "/dice_ce", "--loss dice_ce --ce-weight 0.25 --dice-weight 2").exit_code, 0);
  EXPECT_EQ(training_of(dir + "/dice_ce").at("loss_options").at("ce_weight").get<double>(), 0.25);
  EXPECT_EQ(training_of(dir + "/dice_ce").at("loss_options").at("dice_weight").get<double>(), 2.0);
}

// auto: n / n_c over the labelled voxels of the training cases (synth writes them on the plan's grid,
// so the label files count what the trainer counts), fixed for the run.
TEST_F(TrainLossOptions, WceAutoWeightsAreTheTrainingSetsInverseClassFrequency) {
  const std::string dir = temp_dir("train-wce");
  const CommandResult r = train(dir + "/auto", "--loss wce");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json t = training_of(dir + "/auto");
  EXPECT_EQ(t.at("loss_options").at("class_weights_from"), "auto");
  const auto weights = t.at("loss_options").at("class_weights").get<std::vector<double>>();
  ASSERT_EQ(weights.size(), 3u);
  std::vector<std::int64_t> counts(3, 0);
  std::int64_t total = 0;
  for (const std::string& id : t.at("train_cases").get<std::vector<std::string>>()) {
    const voxgrad::Tensor label = voxgrad::io::read_nifti(data() + "/labelsTr/" + id + ".nii.gz").to_labels();
    const std::int32_t* v = label.data<std::int32_t>();
    for (std::int64_t i = 0; i < label.numel(); ++i) ++counts.at(v[i]);
    total += label.numel();
  }
  for (int k = 0; k < 3; ++k) {
    ASSERT_GT(counts[k], 0);
    EXPECT_NEAR(weights[k], static_cast<double>(total) / static_cast<double>(counts[k]), 1e-9 * weights[k]) << k;
  }
  EXPECT_GT(weights[1], weights[0]);  // the background is the most frequent class

  ASSERT_EQ(train(dir + "/given", "--loss wce --class-weights 1,3,10").exit_code, 0);
  const json given = training_of(dir + "/given").at("loss_options");
  EXPECT_EQ(given.at("class_weights_from"), "given");
  EXPECT_EQ(given.at("class_weights").get<std::vector<double>>(), (std::vector<double>{1, 3, 10}));
  EXPECT_NE(log_without_seconds(dir + "/given"), log_without_seconds(dir + "/auto"));
  expect_error(train(dir + "/short", "--loss wce --class-weights 1,3"), "the dataset has 3 classes");
  EXPECT_FALSE(fs::exists(dir + "/short/config.json"));
}

TEST_F(TrainLossOptions, OptionsTheLossDoesNotUseAreRefused) {
  const std::string dir = temp_dir("train-loss-refused");
  expect_error(train(dir + "/a", "--loss ce --eps 0.1"), "--eps applies to dice, jaccard and dice_ce, not ce");
  expect_error(train(dir + "/a", "--loss lovasz --eps 0.1"), "--eps applies to dice, jaccard and dice_ce");
  expect_error(train(dir + "/a", "--loss dice --class-weights 1,1,1"), "--class-weights applies to wce only");
  expect_error(train(dir + "/a", "--loss dice --class-weights auto"), "--class-weights applies to wce only");
  expect_error(train(dir + "/a", "--loss jaccard --ce-weight 2"), "apply to dice_ce only");
  expect_error(train(dir + "/a", "--loss wce --loss-classes fg"), "--loss-classes and --aggregate apply to");
  expect_error(train(dir + "/a", "--loss ce --aggregate batch"), "--loss-classes and --aggregate apply to");
  expect_error(train(dir + "/a", "--loss wce --class-weights 1,x,1"), "--class-weights");
  expect_error(train(dir + "/a", "--loss dice --loss-classes some"), "--loss-classes");
  EXPECT_FALSE(fs::exists(dir + "/a"));
}

TEST_F(TrainLossOptions, ResumeRefusesAChangedLossSetting) {
  const std::string dir = temp_dir("train-loss-resume");
  ASSERT_EQ(train(dir + "/run", "--loss dice --eps 0.01").exit_code, 0);
  const std::string resume = "train --out " + dir + "/run --resume --device cpu ";
  expect_error(run_voxgrad(resume + "--eps 0.5"), "--eps 0.5 differs from the run's 0.01");
  expect_error(run_voxgrad(resume + "--loss-classes all"), "--loss-classes all differs from the run's fg");
  expect_error(run_voxgrad(resume + "--data-seed 9"), "--data-seed 9 differs from the run's 3");
  expect_error(run_voxgrad(resume + "--init-from " + dir + "/run"), "--init-from starts a new run");
  // The same values again are no change: the run continues (to more epochs here).
  const CommandResult same = run_voxgrad(resume + "--eps 0.01 --loss-classes fg --epochs 2");
  EXPECT_EQ(same.exit_code, 0) << same.err;
}

// --init-from carries a run's weights into a new run with another loss. With a learning rate too
// small to move a float32 weight, the new run ends on exactly the weights it started from.
TEST_F(TrainLossOptions, InitFromStartsFromAnotherRunsWeights) {
  const std::string dir = temp_dir("train-init-from");
  ASSERT_EQ(train(dir + "/ce", "--loss ce").exit_code, 0);
  const CommandResult r = train(dir + "/dice", "--loss dice --lr 1e-30 --init-from " + dir + "/ce");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string source = fs::absolute(dir + "/ce/checkpoint_latest.safetensors").lexically_normal().string();
  EXPECT_EQ(training_of(dir + "/dice").at("init_from"), source);
  EXPECT_EQ(checkpoint_training(dir + "/dice").at("init_from"), source);
  const auto from = model_tensors(dir + "/ce/checkpoint_latest.safetensors");
  const auto to = model_tensors(dir + "/dice/checkpoint_latest.safetensors");
  ASSERT_EQ(from.size(), to.size());
  ASSERT_GT(from.size(), 10u);
  for (const auto& [name, values] : from) {
    ASSERT_TRUE(to.count(name)) << name;
    EXPECT_EQ(std::memcmp(values.data(), to.at(name).data(), values.size() * sizeof(float)), 0) << name;
  }
  // Without --init-from the same run starts from its seed's weights instead.
  ASSERT_EQ(train(dir + "/fresh", "--loss dice --lr 1e-30").exit_code, 0);
  const auto fresh = model_tensors(dir + "/fresh/checkpoint_latest.safetensors");
  bool any_differs = false;
  for (const auto& [name, values] : from)
    any_differs |= std::memcmp(values.data(), fresh.at(name).data(), values.size() * sizeof(float)) != 0;
  EXPECT_TRUE(any_differs);
  EXPECT_TRUE(training_of(dir + "/fresh").at("init_from").is_null());

  expect_error(run_voxgrad("train --data " + data() + " --out " + dir + "/wide --patch 16 --base 8 --levels 3 " +
                           "--device cpu --loss dice --init-from " + dir + "/ce"),
               "its network has --base 4, this run's has 8");
  expect_error(train(dir + "/none", "--loss dice --init-from " + dir + "/missing"), "no such run folder");
  expect_error(train(dir + "/data", "--loss dice --init-from " + data()), "checkpoint_latest.safetensors is missing");
  EXPECT_FALSE(fs::exists(dir + "/wide/config.json"));
}

// --data-seed alone decides the validation split; --seed alone the initial weights.
TEST_F(TrainLossOptions, DataSeedSplitsApartFromTheWeightsSeed) {
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) ids.push_back("synth_00" + std::to_string(i));
  auto val_of = [&](std::uint64_t seed) {
    std::vector<std::string> train, val;
    voxgrad::pipeline::split_cases(ids, seed, train, val, voxgrad::logging::silent_sink());
    return val;
  };
  std::uint64_t data_seed = 4;
  while (val_of(data_seed) == val_of(3)) ++data_seed;  // a data seed whose split differs from seed 3's

  const std::string dir = temp_dir("train-data-seed");
  const std::string ds = " --data-seed " + std::to_string(data_seed);
  ASSERT_EQ(train(dir + "/a", "--loss ce" + ds).exit_code, 0);
  const json a = training_of(dir + "/a");
  EXPECT_EQ(a.at("seed").get<std::uint64_t>(), 3u);
  EXPECT_EQ(a.at("data_seed").get<std::uint64_t>(), data_seed);
  EXPECT_EQ(a.at("val_cases").get<std::vector<std::string>>(), val_of(data_seed));
  EXPECT_EQ(checkpoint_training(dir + "/a").at("data_seed").get<std::uint64_t>(), data_seed);
  ASSERT_EQ(train(dir + "/b", "--loss ce").exit_code, 0);
  EXPECT_EQ(training_of(dir + "/b").at("data_seed").get<std::uint64_t>(), 3u);
  EXPECT_EQ(training_of(dir + "/b").at("val_cases").get<std::vector<std::string>>(), val_of(3));
}

std::vector<std::vector<std::string>> csv_rows(const std::string& path) {
  return voxgrad::test::parse_csv(read_file(path));
}

// One column per layer (each parameter name less its last part, in the model's order), one row per
// epoch, positive finite norms that depend on the loss; resumed runs keep logging.
TEST_F(TrainLossOptions, GradientNormsPerLayerPerEpoch) {
  const std::string dir = temp_dir("train-grad-norms");
  for (const char* loss : {"ce", "dice"})
    ASSERT_EQ(run_voxgrad("train --data " + data() + " --out " + dir + "/" + loss + " --loss " + loss +
                          " --patch 16 --base 4 --levels 3 --seed 3 --device cpu --epochs 2 --iters-per-epoch 2 "
                          "--log-grad-norms")
                  .exit_code,
              0);
  const auto ce = csv_rows(dir + "/ce/grad_norms.csv"), dice = csv_rows(dir + "/dice/grad_norms.csv");
  ASSERT_EQ(ce.size(), 3u);
  // The model file's tensors, each once (the names that alias another tensor load as that tensor).
  std::vector<std::string> layers{"epoch"};
  std::set<const void*> seen;
  for (const auto& [name, t] : voxgrad::load_safetensors(dir + "/ce/model_best.safetensors").tensors) {
    if (!seen.insert(t.data<float>()).second) continue;
    const std::string layer = name.substr(0, name.rfind('.'));
    if (layer != layers.back()) layers.push_back(layer);
  }
  std::vector<std::string> header = ce[0];
  EXPECT_EQ(header, layers);
  EXPECT_EQ(dice[0], header);
  for (std::size_t row = 1; row < 3; ++row) {
    EXPECT_EQ(ce[row][0], std::to_string(row));
    for (std::size_t c = 1; c < header.size(); ++c) {
      const double norm = std::stod(ce[row][c]);
      // Without deep supervision the lower-resolution head takes no part in the loss.
      if (header[c] == "decoder.seg_layers.0")
        EXPECT_EQ(norm, 0.0);
      else
        EXPECT_TRUE(std::isfinite(norm) && norm > 0) << header[c] << " " << ce[row][c];
    }
  }
  EXPECT_NE(ce[1], dice[1]);
  EXPECT_TRUE(training_of(dir + "/ce").at("log_grad_norms").get<bool>());
  EXPECT_FALSE(fs::exists(dir + "/other/grad_norms.csv"));
  const CommandResult more = run_voxgrad("train --out " + dir + "/ce --resume --device cpu --epochs 3");
  ASSERT_EQ(more.exit_code, 0) << more.err;
  EXPECT_EQ(csv_rows(dir + "/ce/grad_norms.csv").size(), 4u);
}

// A config.json written before the loss settings were recorded reads as the settings it ran with.
TEST(TrainLossRecord, OlderRunConfigsReadAsTheirDefaults) {
  voxgrad::pipeline::RunConfig c;
  c.dataset_name = "x";
  c.channels = {"MR"};
  c.labels = {{0, "background"}, {1, "a"}};
  c.model.classes = 2;
  c.plan.classes = 2;
  c.training.loss = "lovasz";
  c.training.seed = 7;
  json j = voxgrad::pipeline::run_config_to_json(c);
  for (const char* key : {"loss_options", "data_seed", "init_from"}) j["training"].erase(key);
  const voxgrad::pipeline::RunConfig old = voxgrad::pipeline::run_config_from_json(j, "config.json");
  EXPECT_EQ(old.training.data_seed, 7u);
  EXPECT_EQ(old.training.loss_options.classes, "present");
  EXPECT_EQ(old.training.loss_options.aggregate, "batch");
  EXPECT_TRUE(old.training.loss_options.class_weights.empty());
  EXPECT_TRUE(old.training.init_from.empty());

  json bad = voxgrad::pipeline::run_config_to_json(c);
  bad["training"]["loss_options"]["aggregate"] = "per-voxel";
  try {
    voxgrad::pipeline::run_config_from_json(bad, "config.json");
    FAIL() << "no error for an unknown aggregate";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("per-voxel"), std::string::npos) << e.what();
  }
}

}  // namespace
