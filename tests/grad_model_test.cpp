// `voxgrad grad --model RUN --image I --label L`: the loss of a trained run's network on one case,
// the same loss `grad --logits` computes on those logits, and the gradient carried back into the
// network (the head's bias gradient is the logits' gradient summed per class; the padding the
// network needs takes no part), with one clear error line for a wrong combination of flags.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "apps/pipeline/network_gradient.h"
#include "apps/pipeline/preprocess.h"
#include "engine/json.h"
#include "engine/losses.h"
#include "engine/ops.h"
#include "io/nifti.h"
#include "io/volume.h"
#include "tests/test_support.h"

namespace voxgrad {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::CommandResult;
using test::run_voxgrad;
using test::temp_dir;

// A trained run (dice) and a test case whose 22^3 grid is no multiple of the network's 4.
class GradModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(temp_dir("grad-model"));
    ASSERT_EQ(run_voxgrad("synth --out " + *dir_ + "/ds --size 24 --cases 3 --test-cases 1 --seed 5").exit_code, 0);
    ASSERT_EQ(run_voxgrad("synth --out " + *dir_ + "/odd --size 22 --cases 1 --test-cases 1 --seed 6").exit_code, 0);
    const CommandResult r = run_voxgrad("train --data " + *dir_ + "/ds --out " + *dir_ +
                                        "/run --patch 16 --base 4 --levels 3 --device cpu --epochs 1 "
                                        "--iters-per-epoch 2 --loss dice");
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string image() { return *dir_ + "/odd/imagesTs/synth_001_0000.nii.gz"; }
  static std::string label() { return *dir_ + "/odd/labelsTs/synth_001.nii.gz"; }
  static std::string run() { return *dir_ + "/run"; }
  static std::string dir() { return *dir_; }

 private:
  static std::string* dir_;
};
std::string* GradModel::dir_ = nullptr;

json grad_json(const std::string& args) {
  const CommandResult r = run_voxgrad("grad " + args + " --device cpu");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return json::parse(r.out);
}

TEST_F(GradModel, SameLossAsGradOnTheNetworksLogits) {
  // The network's logits on its own grid, as grad --logits takes them (and the label on that grid).
  pipeline::RunNetworkLogits net(run(), "best", Device::cpu());
  const io::Volume image_vol = io::read_nifti(image());
  const Tensor img = reshape(image_vol.data.to(DType::Float32),
                             {1, image_vol.data.size(0), image_vol.data.size(1), image_vol.data.size(2)});
  net.forward(img, io::read_nifti(label()).to_labels(), pipeline::spacing_zyx(image_vol.spacing), image());
  const Tensor z = net.logits();
  const std::string logits_path = dir() + "/logits.nii.gz", labels_path = dir() + "/grid_label.nii.gz";
  io::write_nifti(logits_path, io::make_volume(reshape(z.detach(), {z.size(1), z.size(2), z.size(3), z.size(4)})),
                  io::NiftiWriteType::Float32);  // exact: the network computes in float32
  io::write_nifti(labels_path, io::make_volume(reshape(net.labels(), {z.size(2), z.size(3), z.size(4)})),
                  io::NiftiWriteType::Int32);

  const json through = grad_json("--model " + run() + " --image " + image() + " --label " + label());
  const json direct = grad_json("--logits " + logits_path + " --label " + labels_path + " --loss dice");
  EXPECT_EQ(through.at("loss_name"), "dice");  // the run's own loss
  EXPECT_NEAR(through.at("loss").get<double>(), direct.at("loss").get<double>(), 1e-12);
  EXPECT_EQ(through.at("options"), direct.at("options"));
  for (std::size_t c = 0; c < 3; ++c)
    EXPECT_NEAR(through.at("grad_stats")[c].at("inside").get<double>(),
                direct.at("grad_stats")[c].at("inside").get<double>(), 1e-15);
  EXPECT_EQ(through.at("grid").at("logits"), (std::vector<std::int64_t>{1, 3, z.size(2), z.size(3), z.size(4)}));

  // Another loss on the command line replaces the run's.
  const json ce = grad_json("--model " + run() + " --image " + image() + " --label " + label() + " --loss ce");
  EXPECT_EQ(ce.at("loss_name"), "ce");
  const json ce_direct = grad_json("--logits " + logits_path + " --label " + labels_path + " --loss ce");
  EXPECT_NEAR(ce.at("loss").get<double>(), ce_direct.at("loss").get<double>(), 1e-12);
}

// The head adds its bias to every voxel: its gradient is the logits' gradient summed per class over
// the cropped grid (the padding's voxels add nothing), which checks the way back into the network.
TEST_F(GradModel, TheHeadsBiasGradientIsTheLogitsGradientSummed) {
  pipeline::RunNetworkLogits net(run(), "best", Device::cpu());
  const io::Volume image_vol = io::read_nifti(image());
  const Tensor img = reshape(image_vol.data.to(DType::Float32),
                             {1, image_vol.data.size(0), image_vol.data.size(1), image_vol.data.size(2)});
  net.forward(img, io::read_nifti(label()).to_labels(), pipeline::spacing_zyx(image_vol.spacing), image());
  ASSERT_NE(net.logits().size(2) % 4, 0) << "the case must need padding for this test to mean something";
  segmentation_loss(LossKind::Dice, net.logits(), net.labels()).backward();
  const auto norms = net.backward_into_network();
  ASSERT_FALSE(norms.empty());
  const std::vector<double> dz = net.logits().grad().to_vector<double>();
  const std::int64_t per = dz.size() / 3;
  Tensor bias_grad;
  for (const auto& [name, p] : net.network().named_parameters())
    if (name == "decoder.seg_layers.1.bias") bias_grad = p.grad();
  ASSERT_TRUE(bias_grad.defined());
  const std::vector<float> db = bias_grad.to_vector<float>();
  for (int c = 0; c < 3; ++c) {
    double sum = 0;
    for (std::int64_t i = 0; i < per; ++i) sum += dz[c * per + i];
    EXPECT_NEAR(db[c], sum, 1e-6 + 1e-4 * std::fabs(sum)) << c;
  }
  // The layer norms name the network's layers, head included.
  bool head = false;
  for (const auto& [layer, norm] : norms) head |= layer == "decoder.seg_layers.1" && norm > 0;
  EXPECT_TRUE(head);
}

TEST_F(GradModel, OutIsTheGradientOnTheInputsGrid) {
  const std::string out = dir() + "/g.nii.gz";
  const json j = grad_json("--model " + run() + " --image " + image() + " --label " + label() + " --out " + out);
  const io::Volume g = io::read_nifti(out);
  const io::Volume lab = io::read_nifti(label());
  EXPECT_EQ(g.dims(), (std::vector<std::int64_t>{lab.dims()[0], lab.dims()[1], lab.dims()[2], 3}));
  EXPECT_FALSE(j.at("layer_grad_norms").empty());
  EXPECT_EQ(j.at("checkpoint"), "best");
}

TEST_F(GradModel, WrongFlagCombinationsGiveOneErrorLine) {
  const std::string case_args = " --image " + image() + " --label " + label();
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"--model " + run() + " --label " + label(), "--model needs --image and --label"},
      {"--model " + run() + case_args + " --logits " + image(), "exclude each other"},
      {"--image " + image() + " --label " + label() + " --logits " + image() + " --loss ce",
       "--image and --checkpoint go with --model"},
      {"--logits " + image() + " --label " + label(), "--loss is required"},
      {"--model " + dir() + "/missing" + case_args, "no such run folder"},
      {"--model " + run() + case_args + " --checkpoint final", "--checkpoint"},
  };
  for (const auto& [args, needle] : bad) {
    const CommandResult r = run_voxgrad("grad " + args + " --device cpu");
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << args << "\n" << r.err;
  }
}

}  // namespace
}  // namespace voxgrad
