// Datasets: MSD v1 (3-D and 4-D multi-channel images) and nnU-Net v2 layouts built in temp folders
// with write_nifti, loaded into (C, Z, Y, X) / (Z, Y, X) tensors, v2 written and read back, and
// every check (missing files, bad JSON, dims, affines, undeclared label values) made to fire.
#include "io/dataset.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "engine/json.h"
#include "io/nifti.h"
#include "tests/test_support.h"

namespace {

namespace fs = std::filesystem;
using namespace voxgrad;
using namespace voxgrad::io;

// Every image here is (X, Y, Z) = (4, 5, 6): tensor shape (6, 5, 4).
constexpr std::int64_t kX = 4, kY = 5, kZ = 6, kVoxels = kX * kY * kZ;

Affine test_affine(double shift_x = 0.0) {
  Affine a = identity_affine();
  a[0][0] = 1.5;
  a[1][1] = 1.0;
  a[2][2] = 2.0;
  a[0][3] = -20.0 + shift_x;
  a[1][3] = 10.0;
  a[2][3] = 5.0;
  return a;
}

std::vector<float> ramp(std::int64_t n, float base) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = base + 0.5f * static_cast<float>(i);
  return v;
}

// A float32 image of `shape` (Z, Y, X) or (C, Z, Y, X) holding ramp(numel, base).
void write_image(const std::string& path, float base, const Shape& shape = {kZ, kY, kX},
                 const Affine& affine = test_affine()) {
  fs::create_directories(fs::path(path).parent_path());
  write_nifti(path, make_volume(from_vector(ramp(shape_numel(shape), base), shape), affine));
}

std::vector<std::int32_t> label_pattern(std::int64_t n, int classes) {
  std::vector<std::int32_t> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i % classes);
  return v;
}

void write_label(const std::string& path, const std::vector<std::int32_t>& values, const Shape& shape = {kZ, kY, kX},
                 const Affine& affine = test_affine()) {
  fs::create_directories(fs::path(path).parent_path());
  write_nifti(path, make_volume(from_vector(values, shape), affine), NiftiWriteType::UInt8);
}

void write_text(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path) << text;
}

using voxgrad::test::error_of;

#define EXPECT_HAS(haystack, needle) EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)

// An nnU-Net v2 dataset with `channels` channels and the given training cases, every file written
// with the test geometry and labels 0/1; dataset.json declares background and "tumor".
std::string make_v2(const std::string& tag, int channels, const std::vector<std::string>& cases,
                    const std::string& extra_json = "") {
  const std::string root = test::temp_dir(tag);
  create_dataset_folders(root);
  std::string channel_json;
  for (int ch = 0; ch < channels; ++ch) {
    channel_json += (ch ? ", " : "") + ("\"" + std::to_string(ch) + "\": \"ch" + std::to_string(ch) + "\"");
    for (std::size_t i = 0; i < cases.size(); ++i)
      write_image(image_path(root, cases[i], ch), static_cast<float>(100 * ch + 10 * i));
  }
  for (const std::string& c : cases) write_label(label_path(root, c), label_pattern(kVoxels, 2));
  write_text(root + "/dataset.json",
             "{\"channel_names\": {" + channel_json +
                 "}, \"labels\": {\"background\": 0, \"tumor\": 1}, \"numTraining\": " + std::to_string(cases.size()) +
                 ", \"file_ending\": \".nii.gz\"" + extra_json + "}");
  return root;
}

std::string joined(const std::vector<std::string>& lines) {
  std::string out;
  for (const std::string& l : lines) out += l + "\n";
  return out;
}

TEST(Dataset, MsdV1SingleChannel) {
  const std::string root = test::temp_dir("ds-v1");
  write_image(root + "/imagesTr/a.nii.gz", 1.0f);
  write_image(root + "/imagesTr/b.nii.gz", 2.0f);
  write_label(root + "/labelsTr/a.nii.gz", label_pattern(kVoxels, 3));
  write_label(root + "/labelsTr/b.nii.gz", label_pattern(kVoxels, 2));
  write_image(root + "/imagesTs/t.nii.gz", 3.0f);
  // The "./" prefix is optional: one entry has it, one does not.
  write_text(root + "/dataset.json", R"({
    "name": "Toy", "description": "a toy liver set", "tensorImageSize": "3D",
    "modality": {"0": "CT"},
    "labels": {"0": "background", "1": "liver", "2": "tumour"},
    "numTraining": 2, "numTest": 1,
    "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"},
                 {"image": "imagesTr/b.nii.gz", "label": "labelsTr/b.nii.gz"}],
    "test": ["./imagesTs/t.nii.gz"]})");

  ::testing::internal::CaptureStderr();
  const Dataset ds = read_dataset(root);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");  // counts agree: no warning
  EXPECT_EQ(ds.layout, DatasetLayout::MsdV1);
  EXPECT_STREQ(dataset_layout_name(ds.layout), "msd_v1");
  EXPECT_EQ(ds.root, root);
  EXPECT_EQ(ds.name, "Toy");
  EXPECT_EQ(ds.description, "a toy liver set");
  EXPECT_EQ(ds.channels, std::vector<std::string>{"CT"});
  EXPECT_EQ(ds.labels, (std::map<int, std::string>{{0, "background"}, {1, "liver"}, {2, "tumour"}}));
  EXPECT_EQ(ds.num_classes(), 3);
  EXPECT_EQ(ds.file_ending, ".nii.gz");
  ASSERT_EQ(ds.training.size(), 2u);
  EXPECT_EQ(ds.training[0].id, "a");
  EXPECT_EQ(ds.training[1].id, "b");
  EXPECT_EQ(ds.training[0].images, std::vector<std::string>{root + "/imagesTr/a.nii.gz"});
  EXPECT_EQ(ds.training[1].label, root + "/labelsTr/b.nii.gz");
  EXPECT_FALSE(ds.training[0].channels_in_one_file);
  ASSERT_EQ(ds.test.size(), 1u);
  EXPECT_EQ(ds.test[0].id, "t");
  EXPECT_TRUE(ds.test[0].label.empty());

  const CaseImage image = load_case_image(ds, ds.training[1]);
  EXPECT_EQ(image.data.shape(), (Shape{1, kZ, kY, kX}));
  EXPECT_EQ(image.data.to_vector<float>(), ramp(kVoxels, 2.0f));
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c) EXPECT_NEAR(image.affine[r][c], test_affine()[r][c], 1e-6) << r << "," << c;
  EXPECT_NEAR(image.spacing[0], 1.5, 1e-6);
  EXPECT_NEAR(image.spacing[2], 2.0, 1e-6);
  const CaseLabel label = load_case_label(ds, ds.training[0]);
  EXPECT_EQ(label.data.shape(), (Shape{kZ, kY, kX}));
  EXPECT_EQ(label.data.dtype(), DType::Int32);
  EXPECT_EQ(label.data.to_vector<std::int32_t>(), label_pattern(kVoxels, 3));
  EXPECT_EQ(load_case_image(ds, ds.test[0]).data.shape(), (Shape{1, kZ, kY, kX}));
  EXPECT_THROW(load_case_label(ds, ds.test[0]), Error);

  EXPECT_EQ(joined(find_dataset_problems(ds)), "");
  EXPECT_NO_THROW(check_dataset(ds));
}

TEST(Dataset, MsdV1FourDimensionalImageHoldsTheChannels) {
  const std::string root = test::temp_dir("ds-v1-4d");
  // (C, Z, Y, X) = (2, 6, 5, 4) is NIfTI (4, 5, 6, 2), like the Decathlon's BRATS (240, 240, 155, 4).
  write_image(root + "/imagesTr/brain_1.nii.gz", 7.0f, {2, kZ, kY, kX});
  write_label(root + "/labelsTr/brain_1.nii.gz", label_pattern(kVoxels, 2));
  const std::string json = R"({
    "name": "Brain", "modality": {"0": "FLAIR", "1": "T1w"%s},
    "labels": {"0": "background", "1": "edema"}, "numTraining": 1,
    "training": [{"image": "./imagesTr/brain_1.nii.gz", "label": "./labelsTr/brain_1.nii.gz"}], "test": []})";
  write_text(root + "/dataset.json", std::string(json).replace(json.find("%s"), 2, ""));

  const Dataset ds = read_dataset(root);
  ASSERT_EQ(ds.training.size(), 1u);
  EXPECT_TRUE(ds.training[0].channels_in_one_file);
  EXPECT_EQ(ds.training[0].images.size(), 1u);
  const CaseImage image = load_case_image(ds, ds.training[0]);
  EXPECT_EQ(image.data.shape(), (Shape{2, kZ, kY, kX}));
  EXPECT_EQ(image.data.to_vector<float>(), ramp(2 * kVoxels, 7.0f));
  EXPECT_EQ(joined(find_dataset_problems(ds)), "");

  // Three declared modalities but two in the file: the check names the counts, loading refuses.
  write_text(root + "/dataset.json", std::string(json).replace(json.find("%s"), 2, ", \"2\": \"T2w\""));
  const Dataset three = read_dataset(root);
  const std::vector<std::string> problems = find_dataset_problems(three);
  ASSERT_EQ(problems.size(), 1u) << joined(problems);
  EXPECT_HAS(problems[0], "case brain_1: the image files hold 2 channel(s) but dataset.json declares 3");
  EXPECT_HAS(error_of([&] { load_case_image(three, three.training[0]); }), "declares 3");
}

TEST(Dataset, NnunetV1ListsImagesWithoutTheChannelSuffix) {
  // nnU-Net v1's converted tasks list ./imagesTr/x.nii.gz while the files are x_0000, x_0001.
  const std::string root = test::temp_dir("ds-v1-split");
  write_image(root + "/imagesTr/x_0000.nii.gz", 1.0f);
  write_image(root + "/imagesTr/x_0001.nii.gz", 2.0f);
  write_label(root + "/labelsTr/x.nii.gz", label_pattern(kVoxels, 2));
  write_text(root + "/dataset.json", R"({"modality": {"0": "T2", "1": "ADC"}, "labels": {"0": "background", "1": "a"},
    "numTraining": 1, "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]})");
  const Dataset ds = read_dataset(root);
  ASSERT_EQ(ds.training.size(), 1u);
  EXPECT_EQ(ds.training[0].images,
            (std::vector<std::string>{root + "/imagesTr/x_0000.nii.gz", root + "/imagesTr/x_0001.nii.gz"}));
  EXPECT_FALSE(ds.training[0].channels_in_one_file);
  const CaseImage image = load_case_image(ds, ds.training[0]);
  std::vector<float> want = ramp(kVoxels, 1.0f), second = ramp(kVoxels, 2.0f);
  want.insert(want.end(), second.begin(), second.end());
  EXPECT_EQ(image.data.to_vector<float>(), want);
}

TEST(Dataset, NnunetV2TwoChannels) {
  const std::string root = make_v2("ds-v2", 2, {"case_b", "case_a"});
  create_dataset_folders(root, /*with_test=*/true);
  write_image(image_path(root, "t1", 0, ".nii.gz", true), 5.0f);
  write_image(image_path(root, "t1", 1, ".nii.gz", true), 6.0f);
  write_text(root + "/imagesTr/._case_a_0000.nii.gz", "macOS resource fork");  // hidden: skipped
  write_text(root + "/imagesTr/README.txt", "not an image");                   // other endings: skipped

  const Dataset ds = read_dataset(root);
  EXPECT_EQ(ds.layout, DatasetLayout::NnunetV2);
  EXPECT_EQ(ds.channels, (std::vector<std::string>{"ch0", "ch1"}));
  EXPECT_EQ(ds.labels, (std::map<int, std::string>{{0, "background"}, {1, "tumor"}}));
  ASSERT_EQ(ds.training.size(), 2u);
  EXPECT_EQ(ds.training[0].id, "case_a");  // sorted by id, as nnU-Net does
  EXPECT_EQ(ds.training[1].id, "case_b");
  EXPECT_EQ(ds.training[0].images,
            (std::vector<std::string>{root + "/imagesTr/case_a_0000.nii.gz", root + "/imagesTr/case_a_0001.nii.gz"}));
  EXPECT_EQ(ds.training[0].label, root + "/labelsTr/case_a.nii.gz");
  ASSERT_EQ(ds.test.size(), 1u);
  EXPECT_EQ(ds.test[0].id, "t1");
  EXPECT_EQ(ds.test[0].images[1], root + "/imagesTs/t1_0001.nii.gz");

  // case_b was written first (i = 0): channel 0 starts at 0, channel 1 at 100.
  const CaseImage image = load_case_image(ds, ds.training[1]);
  EXPECT_EQ(image.data.shape(), (Shape{2, kZ, kY, kX}));
  std::vector<float> want = ramp(kVoxels, 0.0f), second = ramp(kVoxels, 100.0f);
  want.insert(want.end(), second.begin(), second.end());
  EXPECT_EQ(image.data.to_vector<float>(), want);
  EXPECT_EQ(load_case_label(ds, ds.training[1]).data.to_vector<std::int32_t>(), label_pattern(kVoxels, 2));
  EXPECT_EQ(joined(find_dataset_problems(ds)), "");
}

TEST(Dataset, NnunetV2ExplicitCaseList) {
  const std::string root =
      make_v2("ds-v2-list", 1, {"p"},
              R"(, "dataset": {"p": {"images": ["imagesTr/p_0000.nii.gz"], "label": "labelsTr/p.nii.gz"}})");
  const Dataset ds = read_dataset(root);
  ASSERT_EQ(ds.training.size(), 1u);
  EXPECT_EQ(ds.training[0].id, "p");
  EXPECT_EQ(ds.training[0].images, std::vector<std::string>{root + "/imagesTr/p_0000.nii.gz"});
  EXPECT_EQ(ds.training[0].label, root + "/labelsTr/p.nii.gz");
}

TEST(Dataset, NnunetV2RegionLabelsAreRecorded) {
  const std::string root = test::temp_dir("ds-v2-regions");
  create_dataset_folders(root);
  write_image(image_path(root, "r", 0), 0.0f);
  write_label(label_path(root, "r"), label_pattern(kVoxels, 3));
  write_text(root + "/dataset.json", R"({"channel_names": {"0": "T1"}, "file_ending": ".nii.gz", "numTraining": 1,
    "labels": {"background": 0, "edema": 1, "enhancing": 2, "whole tumor": [1, 2]}, "regions_class_order": [1, 2]})");
  const Dataset ds = read_dataset(root);
  EXPECT_EQ(ds.labels, (std::map<int, std::string>{{0, "background"}, {1, "edema"}, {2, "enhancing"}}));
  ASSERT_EQ(ds.regions.size(), 1u);
  EXPECT_EQ(ds.regions[0].name, "whole tumor");
  EXPECT_EQ(ds.regions[0].values, (std::vector<int>{1, 2}));
  EXPECT_EQ(ds.regions_class_order, (std::vector<int>{1, 2}));
  EXPECT_EQ(ds.label_values(), (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(ds.num_classes(), 3);
  EXPECT_EQ(joined(find_dataset_problems(ds)), "");
}

TEST(Dataset, WriteV2ThenReadBack) {
  const std::string root = test::temp_dir("ds-write") + "/Dataset001_Toy";
  DatasetV2Spec spec;
  spec.name = "Toy";
  spec.description = "synthetic spheres";
  spec.channel_names = {"T2", "ADC"};
  spec.labels = {{0, "background"}, {1, "peripheral zone"}, {2, "transition zone"}};
  spec.num_training = 2;
  create_dataset_folders(root);
  for (const std::string id : {"toy_000", "toy_001"}) {
    for (int ch = 0; ch < 2; ++ch) write_image(image_path(root, id, ch), static_cast<float>(ch));
    write_label(label_path(root, id), label_pattern(kVoxels, 3));
  }
  EXPECT_EQ(image_path(root, "toy_000", 1), root + "/imagesTr/toy_000_0001.nii.gz");
  EXPECT_EQ(image_path("/d", "x", 12, ".nii", true), "/d/imagesTs/x_0012.nii");
  EXPECT_EQ(label_path(root, "toy_000"), root + "/labelsTr/toy_000.nii.gz");
  write_dataset_v2(root, spec);

  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(root)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"dataset.json", "imagesTr", "labelsTr"}));  // no temporary left
  const Json j = Json::parse(std::ifstream(root + "/dataset.json"));
  EXPECT_EQ(j["labels"], (Json{{"background", 0}, {"peripheral zone", 1}, {"transition zone", 2}}));
  EXPECT_EQ(j["channel_names"], (Json{{"0", "T2"}, {"1", "ADC"}}));
  EXPECT_EQ(j["numTraining"], 2);
  EXPECT_EQ(j["file_ending"], ".nii.gz");

  ::testing::internal::CaptureStderr();
  const Dataset ds = read_dataset(root);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  EXPECT_EQ(ds.layout, DatasetLayout::NnunetV2);
  EXPECT_EQ(ds.name, spec.name);
  EXPECT_EQ(ds.description, spec.description);
  EXPECT_EQ(ds.channels, spec.channel_names);
  EXPECT_EQ(ds.labels, spec.labels);
  ASSERT_EQ(ds.training.size(), 2u);
  EXPECT_EQ(ds.training[1].id, "toy_001");
  EXPECT_NO_THROW(check_dataset(ds));

  // Rewriting replaces the file whole.
  spec.num_training = 7;
  write_dataset_v2(root, spec);
  EXPECT_EQ(Json::parse(std::ifstream(root + "/dataset.json"))["numTraining"], 7);
  spec.labels.erase(0);
  EXPECT_HAS(error_of([&] { write_dataset_v2(root, spec); }), "must hold 0");
}

TEST(Dataset, MissingDatasetJson) {
  const std::string root = test::temp_dir("ds-nojson");
  EXPECT_HAS(error_of([&] { read_dataset(root); }), root + "/dataset.json: does not exist");
  EXPECT_HAS(error_of([&] { read_dataset(root + "/nowhere"); }), "dataset folder does not exist");
}

TEST(Dataset, MalformedJsonNamesThePosition) {
  const std::string root = test::temp_dir("ds-badjson");
  write_text(root + "/dataset.json", "{\"name\": \"x\",\n \"labels\": {\"0\" \"background\"}}");
  const std::string msg = error_of([&] { read_dataset(root); });
  EXPECT_HAS(msg, root + "/dataset.json: not valid JSON");
  EXPECT_HAS(msg, "line 2");
}

TEST(Dataset, MissingOrMistypedKeys) {
  const std::string root = test::temp_dir("ds-keys");
  write_text(root + "/dataset.json", R"({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz"})");
  EXPECT_HAS(error_of([&] { read_dataset(root); }), "missing key \"labels\"");
  write_text(root + "/dataset.json", R"({"channel_names": ["CT"], "labels": {"background": 0}})");
  EXPECT_HAS(error_of([&] { read_dataset(root); }), "\"channel_names\" must be an object, found array");
  write_text(root + "/dataset.json", R"({"name": "neither layout"})");
  EXPECT_HAS(error_of([&] { read_dataset(root); }), "cannot tell the layout");
  write_text(root + "/dataset.json",
             R"({"channel_names": {"0": "CT"}, "labels": {"background": 0}, "file_ending": ".mha"})");
  EXPECT_HAS(error_of([&] { read_dataset(root); }), "voxgrad reads NIfTI only");
  write_text(root + "/dataset.json", R"({"channel_names": {"0": "CT", "2": "PET"}, "labels": {"background": 0}})");
  EXPECT_HAS(error_of([&] { read_dataset(root); }), "0 to 1 once each; found \"2\"");
}

TEST(Dataset, LabelsMustBeNumberToNameWithoutRepeats) {
  const std::string root = test::temp_dir("ds-labels");
  const std::string v1 = R"({"modality": {"0": "CT"}, "training": [], "labels": )";
  write_text(root + "/dataset.json", v1 + R"({"background": "0"}})");
  EXPECT_HAS(error_of([&] { read_dataset(root); }), "\"labels\" must map numbers to names");
  write_text(root + "/dataset.json", v1 + R"({"0": "background", "1": "a", "1": "b"}})");
  EXPECT_HAS(error_of([&] { read_dataset(root); }), "key \"1\" appears twice in \"labels\"");
  write_text(root + "/dataset.json", v1 + R"({"0": "background", "01": "a", "1": "b"}})");
  EXPECT_HAS(error_of([&] { read_dataset(root); }), "label value 1 is declared twice");
  write_text(root + "/dataset.json", v1 + R"({"1": "a"}})");
  EXPECT_HAS(error_of([&] { read_dataset(root); }), "declares no value 0");

  const std::string v2 = R"({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz", "labels": )";
  write_text(root + "/dataset.json", v2 + R"({"background": 0, "a": 1, "b": 1}})");
  EXPECT_HAS(error_of([&] { read_dataset(root); }), "label value 1 is declared twice (\"a\" and \"b\")");
  write_text(root + "/dataset.json", v2 + R"({"0": "background", "1": "a"}})");
  EXPECT_HAS(error_of([&] { read_dataset(root); }), "MSD v1 form");
}

TEST(Dataset, MissingChannelFileNamesTheCase) {
  const std::string root = make_v2("ds-nochannel", 2, {"c1", "c2", "c3"});
  fs::remove(image_path(root, "c2", 1));
  const std::string msg = error_of([&] { read_dataset(root); });
  EXPECT_HAS(msg, "1 problem\n");
  EXPECT_HAS(msg, "case c2: " + root + "/imagesTr/c2_0001.nii.gz is missing");
}

TEST(Dataset, EveryMissingFileIsListedInOneError) {
  const std::string root = make_v2("ds-many", 1, {"c1", "c2", "c3"});
  fs::remove(label_path(root, "c1"));
  fs::remove(label_path(root, "c3"));
  write_text(root + "/imagesTr/stray.nii.gz", "");
  const std::string msg = error_of([&] { read_dataset(root); });
  EXPECT_HAS(msg, "3 problems");
  EXPECT_HAS(msg, "case c1: label " + root + "/labelsTr/c1.nii.gz is missing");
  EXPECT_HAS(msg, "case c3: label " + root + "/labelsTr/c3.nii.gz is missing");
  EXPECT_HAS(msg, "stray.nii.gz: name does not follow <case>_<XXXX>.nii.gz");
}

TEST(Dataset, MsdV1ReferencedFileMissing) {
  const std::string root = test::temp_dir("ds-v1-missing");
  write_image(root + "/imagesTr/a.nii.gz", 1.0f);
  write_text(root + "/dataset.json", R"({"modality": {"0": "CT"}, "labels": {"0": "background"},
    "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}]})");
  EXPECT_HAS(error_of([&] { read_dataset(root); }), "case a: label " + root + "/labelsTr/a.nii.gz does not exist");
}

TEST(Dataset, LabelDimsMismatch) {
  const std::string root = make_v2("ds-dims", 1, {"c1", "c2"});
  write_label(label_path(root, "c2"), label_pattern(kX * kY * 7, 2), {7, kY, kX});
  const Dataset ds = read_dataset(root);
  const std::vector<std::string> problems = find_dataset_problems(ds);
  ASSERT_EQ(problems.size(), 1u) << joined(problems);
  EXPECT_HAS(problems[0], "case c2: label " + label_path(root, "c2") + " has dims (4, 5, 7) but its image");
  EXPECT_HAS(problems[0], "has (4, 5, 6)");
  const std::string msg = error_of([&] { check_dataset(ds); });
  EXPECT_HAS(msg, "1 problem\n  case c2: label");
  EXPECT_NO_THROW(check_case(ds, ds.training[0]));
  EXPECT_THROW(check_case(ds, ds.training[1]), Error);
}

TEST(Dataset, AffineMismatchBeyondToleranceOnly) {
  const std::string root = make_v2("ds-affine", 2, {"c1"});
  // Largest entry 20 mm: the default tolerance allows 1e-4 * 20 = 0.002 mm.
  write_label(label_path(root, "c1"), label_pattern(kVoxels, 2), {kZ, kY, kX}, test_affine(0.0005));
  const Dataset ds = read_dataset(root);
  EXPECT_EQ(joined(find_dataset_problems(ds)), "");

  write_label(label_path(root, "c1"), label_pattern(kVoxels, 2), {kZ, kY, kX}, test_affine(0.1));
  std::vector<std::string> problems = find_dataset_problems(ds);
  ASSERT_EQ(problems.size(), 1u) << joined(problems);
  EXPECT_HAS(problems[0], "case c1: label " + label_path(root, "c1") + " has affine");
  EXPECT_HAS(problems[0], "largest difference 0.1");
  CheckOptions loose;
  loose.affine_tolerance = 0.01;  // 0.2 mm
  EXPECT_EQ(joined(find_dataset_problems(ds, loose)), "");

  // Channels must agree with channel 0 as well.
  write_label(label_path(root, "c1"), label_pattern(kVoxels, 2));
  write_image(image_path(root, "c1", 1), 0.0f, {kZ, kY, kX}, test_affine(0.1));
  problems = find_dataset_problems(ds);
  ASSERT_EQ(problems.size(), 1u) << joined(problems);
  EXPECT_HAS(problems[0], "case c1: channel file " + image_path(root, "c1", 1) + " has affine");
}

TEST(Dataset, AffinesCloseIsRelativeToTheLargestEntry) {
  Affine a = test_affine(), b = test_affine(0.0019);
  EXPECT_TRUE(affines_close(a, b, 1e-4));
  b = test_affine(0.0021);
  EXPECT_FALSE(affines_close(a, b, 1e-4));
  // Entries all below 1 mm: the scale floors at 1, so the tolerance is 1e-4 mm.
  a = identity_affine();
  b = identity_affine();
  a[0][0] = b[0][0] = 0.5;
  b[1][3] = 0.00009;
  EXPECT_TRUE(affines_close(a, b, 1e-4));
  b[1][3] = 0.00011;
  EXPECT_FALSE(affines_close(a, b, 1e-4));
  b[1][3] = std::nan("");
  EXPECT_FALSE(affines_close(a, b, 1e-4));
}

TEST(Dataset, UndeclaredLabelValueNamesCaseValueAndCount) {
  const std::string root = make_v2("ds-values", 1, {"c1", "c2"});
  std::vector<std::int32_t> values = label_pattern(kVoxels, 2);
  values[3] = 3;
  values[50] = 3;
  values[77] = 7;
  write_label(label_path(root, "c2"), values);
  const Dataset ds = read_dataset(root);
  const std::vector<std::string> problems = find_dataset_problems(ds);
  ASSERT_EQ(problems.size(), 1u) << joined(problems);
  EXPECT_HAS(problems[0], "case c2: label " + label_path(root, "c2") +
                              " holds values that dataset.json's \"labels\" does not declare: 3 (2 voxels), 7 (1 voxel)"
                              "; declared: 0, 1");
  CheckOptions headers_only;
  headers_only.check_label_values = false;
  EXPECT_EQ(joined(find_dataset_problems(ds, headers_only)), "");
}

TEST(Dataset, UnreadableFilesAreProblemsNotExceptions) {
  const std::string root = make_v2("ds-unreadable", 1, {"c1", "c2", "c3"});
  write_text(image_path(root, "c1", 0), "not a NIfTI file");
  std::vector<float> fractional(static_cast<std::size_t>(kVoxels), 0.0f);
  fractional[9] = 0.5f;
  write_nifti(label_path(root, "c3"), make_volume(from_vector(fractional, {kZ, kY, kX}), test_affine()));
  const Dataset ds = read_dataset(root);
  const std::vector<std::string> problems = find_dataset_problems(ds);
  ASSERT_EQ(problems.size(), 2u) << joined(problems);
  EXPECT_HAS(problems[0], "case c1: " + image_path(root, "c1", 0));
  EXPECT_HAS(problems[1], "case c3: label " + label_path(root, "c3"));
  EXPECT_HAS(problems[1], "0.5");
  const std::string msg = error_of([&] { check_dataset(ds); });
  EXPECT_HAS(msg, "dataset " + root + ": 2 problems\n  case c1: ");
}

TEST(Dataset, NumTrainingMismatchIsAWarning) {
  const std::string root = make_v2("ds-count", 1, {"c1"});
  std::string text;
  {
    std::ifstream in(root + "/dataset.json");
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  text.replace(text.find("\"numTraining\": 1"), 16, "\"numTraining\": 5");
  write_text(root + "/dataset.json", text);
  ::testing::internal::CaptureStderr();
  Dataset ds;
  EXPECT_NO_THROW(ds = read_dataset(root));
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_HAS(err,
             "voxgrad: warning: " + root + "/dataset.json: \"numTraining\" says 5 but 1 training cases were found");
  EXPECT_EQ(ds.training.size(), 1u);
}

}  // namespace
