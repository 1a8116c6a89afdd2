// The pipeline's C++ API as an embedding program meets it: a Trainer reports to the sink it is given
// and prints nothing itself, stop() ends a run that resumes to the numbers of an uninterrupted one,
// and a Predictor gives the same labels from files, from Volumes and from a tensor.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "apps/pipeline/predictor.h"
#include "apps/pipeline/trainer.h"
#include "engine/error.h"
#include "engine/log.h"
#include "engine/ops.h"
#include "io/nifti.h"
#include "tests/test_support.h"

namespace {

using voxgrad::Predictor;
using voxgrad::Trainer;
using voxgrad::TrainOptions;
using voxgrad::TrainResult;
using voxgrad::test::run_voxgrad;
using voxgrad::test::temp_dir;

// Everything a sink hears, and a hook to act on progress (e.g. stop the run).
class RecordingSink : public voxgrad::logging::Sink {
 public:
  void message(voxgrad::logging::Level level, const std::string& text) override {
    messages.push_back((level == voxgrad::logging::Level::Warning ? "warning: " : "") + text);
  }
  void task_begin(const std::string& label, std::int64_t total, const std::string&) override {
    tasks.push_back(label + "/" + std::to_string(total));
  }
  void task_update(std::int64_t done, const std::string&) override {
    ++updates;
    if (on_update) on_update(done);
  }
  void task_end(const std::string&, bool completed) override { ended += completed ? 1 : 0; }

  std::vector<std::string> messages;
  std::vector<std::string> tasks;
  int updates = 0;
  int ended = 0;
  std::function<void(std::int64_t)> on_update;
};

class PipelineApi : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = new std::string(temp_dir("pipeline-api") + "/ds");
    const auto r = run_voxgrad("synth --out " + *data_ + " --size 16 --cases 3 --test-cases 1 --classes 2 --seed 4");
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  static void TearDownTestSuite() {
    delete data_;
    data_ = nullptr;
  }
  static TrainOptions tiny(const std::string& out) {
    TrainOptions o;
    o.data = *data_;
    o.out = out;
    o.device = "cpu";
    o.patch = std::array<std::int64_t, 3>{16, 16, 16};
    o.base = 4;
    o.levels = 2;
    o.batch_size = 1;
    o.epochs = 2;
    o.iters_per_epoch = 3;
    o.seed = 3;
    return o;
  }
  static std::string* data_;
};
std::string* PipelineApi::data_ = nullptr;

TEST_F(PipelineApi, TrainerReportsToItsSinkAndPrintsNothing) {
  RecordingSink sink;
  ::testing::internal::CaptureStderr();
  Trainer trainer(tiny(temp_dir("api-train") + "/run"), sink);
  const TrainResult r = trainer.run();
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(err, "") << "the library printed instead of reporting to its sink";
  EXPECT_EQ(r.status, TrainResult::Status::Completed);
  EXPECT_EQ(r.steps, 6);
  EXPECT_TRUE(std::isfinite(r.train_loss));
  // Preprocessing over the cases, then one bar per epoch, each ended; the summary lines as messages.
  ASSERT_GE(sink.tasks.size(), 3u);
  EXPECT_EQ(sink.tasks[sink.tasks.size() - 2], "epoch 1/2/3");
  EXPECT_EQ(sink.tasks.back(), "epoch 2/2/3");
  EXPECT_EQ(sink.ended, static_cast<int>(sink.tasks.size()));
  EXPECT_GE(sink.updates, 6);
  ASSERT_FALSE(sink.messages.empty());
  EXPECT_EQ(sink.messages[0].rfind("training on cpu", 0), 0u) << sink.messages[0];
}

TEST_F(PipelineApi, StopThenResumeGivesTheUninterruptedNumbers) {
  const TrainResult whole = Trainer(tiny(temp_dir("api-whole") + "/run")).run();
  ASSERT_EQ(whole.status, TrainResult::Status::Completed);

  const std::string out = temp_dir("api-stopped") + "/run";
  RecordingSink sink;
  Trainer first(tiny(out), sink);
  sink.on_update = [&](std::int64_t done) {
    // From inside the loop, as another thread or a signal handler would.
    if (sink.tasks.back().rfind("epoch 1/", 0) == 0 && done == 2) first.stop();
  };
  const TrainResult stopped = first.run();
  EXPECT_EQ(stopped.status, TrainResult::Status::Stopped);
  EXPECT_EQ(stopped.steps, 2);

  TrainOptions again = tiny(out);
  again.resume = true;
  const TrainResult resumed = Trainer(again).run();
  EXPECT_EQ(resumed.status, TrainResult::Status::Completed);
  EXPECT_EQ(resumed.steps, whole.steps);
  EXPECT_EQ(resumed.train_loss, whole.train_loss);  // bit-identical
  EXPECT_EQ(resumed.best_epoch, whole.best_epoch);
  EXPECT_TRUE(resumed.val_dice == whole.val_dice || (std::isnan(resumed.val_dice) && std::isnan(whole.val_dice)));

  // Once done, a resume has nothing to do.
  EXPECT_EQ(Trainer(again).run().status, TrainResult::Status::AlreadyComplete);
}

TEST_F(PipelineApi, PredictorGivesOneAnswerFromFilesVolumesAndTensors) {
  const std::string dir = temp_dir("api-predict");
  TrainOptions o = tiny(dir + "/run");
  o.epochs = 1;
  ASSERT_EQ(Trainer(o).run().status, TrainResult::Status::Completed);

  voxgrad::PredictorOptions options;
  options.device = "cpu";
  Predictor predictor(dir + "/run", options);
  EXPECT_EQ(predictor.in_channels(), 1);
  EXPECT_EQ(predictor.classes(), 2);
  EXPECT_EQ(predictor.device(), "cpu");

  const std::string image = *data_ + "/imagesTs/synth_003_0000.nii.gz";
  predictor.predict_files({image}, dir + "/labels.nii.gz");
  const voxgrad::io::Volume written = voxgrad::io::read_nifti(dir + "/labels.nii.gz");
  EXPECT_EQ(written.intent_code, 1002);

  const voxgrad::io::Volume input = voxgrad::io::read_nifti(image);
  const voxgrad::io::Volume from_volumes = predictor.predict(std::vector<voxgrad::io::Volume>{input});
  EXPECT_EQ(from_volumes.data.to(voxgrad::DType::Int32).to_vector<std::int32_t>(),
            written.data.to(voxgrad::DType::Int32).to_vector<std::int32_t>());

  voxgrad::Tensor chw = voxgrad::reshape(input.to_float32(), {1, 16, 16, 16});
  const std::array<double, 3> spacing{input.spacing[2], input.spacing[1], input.spacing[0]};
  const voxgrad::Tensor from_tensor = predictor.predict(chw, spacing);
  EXPECT_EQ(from_tensor.to_vector<std::int32_t>(), written.data.to(voxgrad::DType::Int32).to_vector<std::int32_t>());

  // Wrong input: an error naming the problem, the predictor still usable.
  EXPECT_NE(voxgrad::test::error_of([&] {
              predictor.predict_files({image, image}, dir + "/x.nii.gz");
            }).find("the model takes 1"),
            std::string::npos);
  EXPECT_NE(voxgrad::test::error_of([&] {
              predictor.predict(chw, {0.0, 1.0, 1.0});
            }).find("spacing"),
            std::string::npos);
  EXPECT_NO_THROW(predictor.predict(chw, spacing));
}

}  // namespace
