// `voxgrad predict` and `voxgrad convert` on nnU-Net model folders as a user meets them: the flags
// shared with run folders and their clashes (usage errors, status 2), one clear error line for each
// kind of bad model or input, and a converted model that predicts exactly what its source does.
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <tuple>

#include "engine/json.h"
#include "tests/test_support.h"

namespace {

namespace fs = std::filesystem;
using voxgrad::test::CommandResult;
using voxgrad::test::run_voxgrad;

using voxgrad::test::lines_of;

// One "voxgrad: error:" line holding `needle`, nothing on stdout, the given status.
void expect_one_error(const CommandResult& r, int status, const std::string& needle) {
  EXPECT_EQ(r.exit_code, status) << r.err;
  EXPECT_EQ(r.out, "");
  const auto lines = lines_of(r.err);
  ASSERT_EQ(lines.size(), 1u) << r.err;
  EXPECT_EQ(lines[0].rfind("voxgrad: error: ", 0), 0u) << lines[0];
  EXPECT_NE(lines[0].find(needle), std::string::npos) << lines[0];
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// A folder that is an nnU-Net model folder by its names only (the flag checks come before any read).
std::string fake_nnunet_folder() {
  const std::string dir = voxgrad::test::temp_dir("nnunet-names");
  write_text(dir + "/dataset.json", "{}");
  write_text(dir + "/plans.json", "{}");
  return dir;
}

// A folder that is no model of either kind.
std::string plain_folder() { return voxgrad::test::temp_dir("no-model"); }

std::string predict_args(const std::string& model, const std::string& extra) {
  return "predict --model " + model + " --input " + voxgrad::test::source_path("tests/data") + " --out " +
         voxgrad::test::temp_dir("nnunet-out") + "/out " + extra + " --device cpu";
}

TEST(NnunetCli, CheckpointNamesBelongToTheirKindOfFolder) {
  expect_one_error(run_voxgrad(predict_args(fake_nnunet_folder(), "--checkpoint latest")), 2,
                   "is an nnU-Net model folder; choose final or best");
  expect_one_error(run_voxgrad(predict_args(plain_folder(), "--checkpoint final")), 2,
                   "is a voxgrad run folder; choose best or latest");
  expect_one_error(run_voxgrad(predict_args(plain_folder(), "--folds 0")), 2, "has no folds");
  expect_one_error(run_voxgrad(predict_args(fake_nnunet_folder(), "--checkpoint newest")), 2, "--checkpoint");
}

TEST(NnunetCli, StepSizeAndOverlapAreOneSetting) {
  expect_one_error(run_voxgrad(predict_args(fake_nnunet_folder(), "--step-size 0.5 --overlap 0.5")), 2, "--step-size");
  expect_one_error(run_voxgrad(predict_args(fake_nnunet_folder(), "--step-size 0")), 2, "--step-size");
  expect_one_error(run_voxgrad(predict_args(fake_nnunet_folder(), "--step-size 1.5")), 2, "--step-size");
}

TEST(NnunetCli, TtaAndDisableTtaClash) {
  expect_one_error(run_voxgrad(predict_args(fake_nnunet_folder(), "--tta --disable-tta")), 2, "--tta");
  expect_one_error(run_voxgrad(predict_args(plain_folder(), "--disable-tta --tta")), 2, "--tta");
}

TEST(NnunetCli, BadFoldListsAreUsageErrors) {
  for (const char* folds : {"0,,1", "a", "0,0", "1,"})
    expect_one_error(run_voxgrad(predict_args(fake_nnunet_folder(), std::string("--folds ") + folds)), 2, "--folds");
}

TEST(NnunetCli, AFolderOfNeitherKindSaysWhatAModelHolds) {
  const CommandResult r = run_voxgrad(predict_args(plain_folder(), ""));
  expect_one_error(r, 1, "neither a voxgrad run folder");
  EXPECT_NE(r.err.find("dataset.json, plans.json"), std::string::npos) << r.err;
}

TEST(NnunetCli, ConvertRefusesWhatIsNoNnunetModel) {
  const std::string out = voxgrad::test::temp_dir("convert-out") + "/converted";
  expect_one_error(run_voxgrad("convert --model " + plain_folder() + " --out " + out), 2,
                   "not an nnU-Net trained-model folder");
  EXPECT_FALSE(fs::exists(out));
  expect_one_error(run_voxgrad("convert --model " + fake_nnunet_folder() + " --out " + out + " --checkpoint latest"), 2,
                   "--checkpoint");
}

const std::string kFixtures = "tests/data/nnunet";

std::string fixture(const std::string& relative) { return voxgrad::test::source_path(kFixtures + "/" + relative); }

// Dataset903's CT model (one channel) and Dataset904's two-fold ensemble, as committed.
std::string ct_model() { return fixture("models/Dataset903_CTBorder/nnUNetTrainer__nnUNetPlans__3d_fullres"); }
std::string ct_inputs() { return fixture("inputs/Dataset903_CTBorder"); }
std::string ensemble_model() { return fixture("models/Dataset904_IsoMR/nnUNetTrainer__nnUNetPlans__3d_fullres"); }
std::string ensemble_inputs() { return fixture("inputs/Dataset904_IsoMR"); }

// A copy of `model` whose plans.json `edit` changes.
std::string edited_copy(const std::string& model, const std::function<void(nlohmann::json&)>& edit) {
  const std::string dir = voxgrad::test::temp_dir("nnunet-edited") + "/model";
  fs::copy(model, dir, fs::copy_options::recursive);
  nlohmann::json plans = nlohmann::json::parse(std::ifstream(dir + "/plans.json"));
  edit(plans);
  std::ofstream(dir + "/plans.json") << plans.dump(2);
  return dir;
}

CommandResult predict(const std::string& model, const std::string& inputs, const std::string& out,
                      const std::string& extra = "") {
  return run_voxgrad("predict --model " + model + " --input " + inputs + " --out " + out + " --device cpu " + extra);
}

TEST(NnunetCli, AMissingFoldNamesItsCheckpointAndTheFoldsPresent) {
  const CommandResult r =
      predict(ensemble_model(), ensemble_inputs(), voxgrad::test::temp_dir("o") + "/o", "--folds 0,3");
  expect_one_error(r, 1, "fold_3/checkpoint_final.pth: missing; folds present: 0, 1");
}

TEST(NnunetCli, WeightsThatDoNotFitThePlansListEveryDifference) {
  const std::string model = edited_copy(ct_model(), [](nlohmann::json& plans) {
    for (auto& [name, c] : plans["configurations"].items())
      if (c.contains("architecture")) c["architecture"]["arch_kwargs"]["features_per_stage"][1] = 9;
  });
  const CommandResult r = predict(model, ct_inputs(), voxgrad::test::temp_dir("o") + "/o");
  expect_one_error(r, 1, "fold_0/checkpoint_final.pth");
  EXPECT_NE(r.err.find("shape"), std::string::npos) << r.err;
}

TEST(NnunetCli, ANetworkVoxgradCannotBuildIsNamed) {
  const std::string model = edited_copy(ct_model(), [](nlohmann::json& plans) {
    for (auto& [name, c] : plans["configurations"].items())
      if (c.contains("architecture")) c["architecture"]["network_class_name"] = "my_package.networks.MyTransformerUNet";
  });
  const CommandResult r = predict(model, ct_inputs(), voxgrad::test::temp_dir("o") + "/o");
  expect_one_error(r, 1, "MyTransformerUNet");
}

TEST(NnunetCli, CascadeConfigurationsAreRefusedClearly) {
  const std::string model = edited_copy(
      ct_model(), [](nlohmann::json& plans) { plans["configurations"]["3d_fullres"]["previous_stage"] = "3d_lowres"; });
  const CommandResult r = predict(model, ct_inputs(), voxgrad::test::temp_dir("o") + "/o");
  expect_one_error(r, 1, "cascades are not supported yet");
}

TEST(NnunetCli, AnInputWithTheWrongChannelCountNamesTheNaming) {
  // The aniso MR model takes two channels; the CT cases have one.
  const std::string model = fixture("models/Dataset901_AnisoMR/nnUNetTrainer__nnUNetPlans__3d_fullres");
  const CommandResult r = predict(model, ct_inputs(), voxgrad::test::temp_dir("o") + "/o");
  expect_one_error(r, 1, "has no channel 1 file (case_other_0001)");
}

TEST(NnunetCli, ConvertedModelPredictsByteForByteWhatItsSourceDoes) {
  const std::string dir = voxgrad::test::temp_dir("nnunet-convert");
  const CommandResult c = run_voxgrad("convert --model " + ensemble_model() + " --out " + dir + "/converted");
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_NE(c.out.find("nnunet_model.json"), std::string::npos) << c.out;
  for (const char* f : {"nnunet_model.json", "fold_0.safetensors", "fold_1.safetensors"})
    EXPECT_TRUE(fs::exists(dir + "/converted/" + f)) << f;
  // No .pth is read at deployment: the converted folder runs alone, moved away from its source.
  fs::rename(dir + "/converted", dir + "/moved");
  const CommandResult a = predict(ensemble_model(), ensemble_inputs(), dir + "/a", "--save-probabilities");
  const CommandResult b = predict(dir + "/moved", ensemble_inputs(), dir + "/b", "--save-probabilities");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  ASSERT_EQ(b.exit_code, 0) << b.err;
  for (const char* f : {"case_plan.nii.gz", "case_plan_probabilities.nii.gz", "case_other.nii.gz"})
    EXPECT_EQ(voxgrad::test::read_file(dir + "/a/" + f), voxgrad::test::read_file(dir + "/b/" + f)) << f;
  // One fold of it, and the checkpoint it was not made from.
  const CommandResult one = predict(dir + "/moved", ensemble_inputs(), dir + "/c", "--folds 1");
  EXPECT_EQ(one.exit_code, 0) << one.err;
  expect_one_error(predict(dir + "/moved", ensemble_inputs(), dir + "/d", "--checkpoint best"), 1,
                   "converted from checkpoint_final.pth");
}

TEST(NnunetCli, ConvertNeverWritesIntoItsModelAndReplacesAWholeModel) {
  const std::string dir = voxgrad::test::temp_dir("nnunet-convert-places");
  fs::copy(ensemble_model(), dir + "/model", fs::copy_options::recursive);
  const auto before = voxgrad::test::folder_snapshot(dir + "/model");
  expect_one_error(run_voxgrad("convert --model " + dir + "/model --out " + dir + "/model/."), 2,
                   "is the --model folder");
  EXPECT_EQ(voxgrad::test::folder_snapshot(dir + "/model"), before);
  // --overwrite replaces the description with the new conversion's (fold 1 only).
  ASSERT_EQ(run_voxgrad("convert --model " + dir + "/model --out " + dir + "/c").exit_code, 0);
  const CommandResult again =
      run_voxgrad("convert --model " + dir + "/model --out " + dir + "/c --folds 1 --overwrite");
  ASSERT_EQ(again.exit_code, 0) << again.err;
  const nlohmann::json description = nlohmann::json::parse(std::ifstream(dir + "/c/nnunet_model.json"));
  ASSERT_EQ(description["folds"].size(), 1u);
  EXPECT_EQ(description["folds"][0]["fold"], "1");
}

TEST(NnunetCli, ADamagedConvertedWeightFileIsRefused) {
  const std::string dir = voxgrad::test::temp_dir("nnunet-convert-damaged");
  ASSERT_EQ(run_voxgrad("convert --model " + ct_model() + " --out " + dir + "/m").exit_code, 0);
  const std::string weights = dir + "/m/fold_0.safetensors";
  std::string bytes = voxgrad::test::read_file(weights);
  bytes[bytes.size() - 3] ^= 0x10;  // one bit of one weight
  std::ofstream(weights, std::ios::binary) << bytes;
  expect_one_error(predict(dir + "/m", ct_inputs(), dir + "/o"), 1, "fold_0.safetensors");
}

// A copy of the CT model whose `file` (plans.json or dataset.json) `edit` changes.
std::string edited_file_copy(const std::string& file, const std::function<void(nlohmann::json&)>& edit) {
  const std::string dir = voxgrad::test::temp_dir("nnunet-hostile") + "/model";
  fs::copy(ct_model(), dir, fs::copy_options::recursive);
  nlohmann::json j = nlohmann::json::parse(std::ifstream(dir + "/" + file));
  edit(j);
  std::ofstream(dir + "/" + file) << j.dump(2);
  return dir;
}

// Hostile or broken model descriptions: each is one error line naming the file (exit 1), never a
// crash, a hang or an allocation the size of the machine.
TEST(NnunetCli, BrokenPlansAndDatasetJsonAreOneErrorLineEach) {
  using J = nlohmann::json;
  const auto cfg = [](J& plans) -> J& { return plans["configurations"]["3d_fullres"]; };
  const std::vector<std::tuple<std::string, std::string, std::function<void(J&)>>> cases = {
      {"plans.json", "patch_size", [&](J& p) { cfg(p)["patch_size"] = "big"; }},
      {"plans.json", "patch_size",
       [&](J& p) {
         cfg(p)["patch_size"] = J::array({0, 16, 16});
       }},
      {"plans.json", "spacing",
       [&](J& p) {
         cfg(p)["spacing"] = J::array({-1.0, 1.0, 1.0});
       }},
      {"plans.json", "transpose_forward",
       [](J& p) {
         p["transpose_forward"] = J::array({0, 0, 1});
       }},
      {"plans.json", "Unknown", [&](J& p) { cfg(p)["normalization_schemes"] = J::array({"UnknownNormalization"}); }},
      {"plans.json", "my_resampler", [&](J& p) { cfg(p)["resampling_fn_data"] = "my_resampler"; }},
      {"plans.json", "cycle", [&](J& p) { cfg(p)["inherits_from"] = "3d_fullres"; }},
      {"plans.json", "n_stages", [&](J& p) { cfg(p)["architecture"]["arch_kwargs"]["n_stages"] = 1000; }},
      {"plans.json", "patch",
       [&](J& p) {
         cfg(p)["patch_size"] = J::array({100000, 100000, 100000});
       }},
      {"plans.json", "image_reader_writer", [](J& p) { p["image_reader_writer"] = "Tiff3DIO"; }},
      {"dataset.json", "background", [](J& d) { d["labels"].erase("background"); }},
      {"dataset.json", "labels.tumour", [](J& d) { d["labels"]["tumour"] = "one"; }},
      {"dataset.json", "regions_class_order",
       [](J& d) {
         d["labels"]["both"] = J::array({1, 2});
       }},
      {"dataset.json", "channel_names", [](J& d) { d.erase("channel_names"); }},
  };
  for (const auto& [file, needle, edit] : cases) {
    const std::string model = edited_file_copy(file, edit);
    const CommandResult r = predict(model, ct_inputs(), voxgrad::test::temp_dir("o") + "/o");
    SCOPED_TRACE(file + ": " + needle);
    expect_one_error(r, 1, needle);
    EXPECT_FALSE(voxgrad::test::has_source_text(r.err)) << r.err;
  }
  // Not JSON at all.
  const std::string model = edited_file_copy("plans.json", [](J&) {});
  std::ofstream(model + "/plans.json") << "{\"configurations\": ";
  expect_one_error(predict(model, ct_inputs(), voxgrad::test::temp_dir("o") + "/o"), 1, "plans.json: not valid JSON");
}

}  // namespace
