// Datasets: MSD v1 (3-D and 4-D multi-channel images) and nnU-Net v2 layouts built in temp folders
// with write_nifti, loaded into (C, Z, Y, X) / (Z, Y, X) tensors, v2 written and read back, and
// every check (missing files, bad JSON, dims, affines, undeclared label values, label values and
// counts out of range, FIFOs, unusable image values, memory) made to fire.
#include "io/dataset.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
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
    // Appended piece by piece: `const char* + std::string` here trips GCC 12's false -Wrestrict.
    const std::string n = std::to_string(ch);
    channel_json.append(ch ? ", " : "").append("\"").append(n).append("\": \"ch").append(n).append("\"");
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

  const Dataset ds = read_dataset(root);
  EXPECT_TRUE(ds.warnings.empty());  // counts agree: no warning
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

  const Dataset ds = read_dataset(root);
  EXPECT_TRUE(ds.warnings.empty());
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
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");  // io reports, the caller prints
  ASSERT_EQ(ds.warnings.size(), 1u);
  EXPECT_EQ(ds.warnings[0],
            root + "/dataset.json: \"numTraining\" says 5 but 1 training cases were found; using the 1");
  EXPECT_EQ(ds.training.size(), 1u);
}

// ---- hostile dataset.json values, non-regular files, unusable images ----------------------------

// A v2 dataset.json (one channel, no cases) with `labels` as given.
std::string v2_json(const std::string& labels, const std::string& extra = "") {
  return R"({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz", "numTraining": 0, "labels": )" + labels + extra +
         "}";
}

std::string error_reading(const std::string& root, const std::string& json) {
  write_text(root + "/dataset.json", json);
  fs::create_directories(root + "/imagesTr");
  fs::create_directories(root + "/labelsTr");
  return error_of([&] { read_dataset(root); });
}

TEST(DatasetHostile, LabelValuesMustFitTheEightBitLabelMaps) {
  const std::string root = test::temp_dir("ds-label-range");
  const std::string path = root + "/dataset.json";
  // The value that built a 100001-class network, the one that wrapped the class count, and the
  // unsigned one that wrapped to -1.
  EXPECT_HAS(error_reading(root, v2_json(R"({"background": 0, "tumor": 100000})")),
             path + ": label \"tumor\" has value 100000; label values must be 0..255");
  EXPECT_HAS(error_reading(root, v2_json(R"({"background": 0, "tumor": 2147483647})")),
             "label \"tumor\" has value 2147483647; label values must be 0..255");
  EXPECT_HAS(error_reading(root, v2_json(R"({"background": 0, "tumor": 18446744073709551615})")),
             "label \"tumor\" has value 18446744073709551615; label values must be whole numbers 0..255");
  EXPECT_HAS(error_reading(root, v2_json(R"({"background": 0, "tumor": 256})")), "has value 256;");
  EXPECT_HAS(error_reading(root, v2_json(R"({"background": 0, "tumor": -1})")), "has value -1;");
  EXPECT_HAS(error_reading(root, v2_json(R"({"background": 0, "tumor": 1.5})")),
             "label \"tumor\" has value 1.5; label values must be whole numbers 0..255");
  EXPECT_HAS(error_reading(root, v2_json(R"({"background": 0, "tumor": 1e300})")), "has value 1e+300;");
  // Regions and the class order hold label values too.
  EXPECT_HAS(error_reading(root, v2_json(R"({"background": 0, "a": 1, "whole": [1, 300]})")),
             "region \"whole\" in \"labels\" has value 300; label values must be 0..255");
  EXPECT_HAS(error_reading(root, v2_json(R"({"background": 0, "a": 1})", R"(, "regions_class_order": [1, 4096])")),
             "\"regions_class_order\" entry has value 4096");
  // MSD v1 keys, including digits beyond 64 bits.
  const std::string v1 = R"({"modality": {"0": "CT"}, "training": [], "labels": )";
  EXPECT_HAS(error_reading(root, v1 + R"({"0": "background", "100000": "edema"}})"),
             path + ": label \"edema\" has value 100000; label values must be 0..255");
  EXPECT_HAS(error_reading(root, v1 + R"({"0": "background", "99999999999999999999": "edema"}})"),
             "label \"edema\" has value 99999999999999999999; label values must be 0..255");

  // 255 is the largest value a uint8 label map holds: 256 classes.
  write_text(path, v2_json(R"({"background": 0, "last": 255.0})"));
  const Dataset ds = read_dataset(root);
  EXPECT_EQ(ds.num_classes(), 256);
  EXPECT_EQ(ds.labels.at(255), "last");
}

TEST(DatasetHostile, ChannelCountIsBoundedByTheFileNames) {
  const std::string root = test::temp_dir("ds-channels");
  std::string channels;
  for (int i = 0; i <= kMaxChannels; ++i) channels += (i ? ", \"" : "\"") + std::to_string(i) + "\": \"c\"";
  const std::string msg = error_reading(
      root, R"({"channel_names": {)" + channels + R"(}, "file_ending": ".nii.gz", "labels": {"background": 0}})");
  EXPECT_HAS(msg, "\"channel_names\" declares 10001 channels");
  EXPECT_HAS(msg, "at most 10000");
  EXPECT_HAS(error_reading(root, R"({"channel_names": {"4294967296": "CT"}, "file_ending": ".nii.gz",
                                     "labels": {"background": 0}})"),
             "keys must be channel numbers \"0\", \"1\", ...; found \"4294967296\"");
}

TEST(DatasetHostile, CaseCountsThatAreNotCountsAreWarnings) {
  const std::string root = make_v2("ds-counts", 1, {"c1"});
  std::string text;
  {
    std::ifstream in(root + "/dataset.json");
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  for (const std::string count : {"18446744073709551615", "-1", "2.5", "1e300", "\"one\""}) {
    std::string edited = text;
    edited.replace(edited.find("\"numTraining\": 1"), 16, "\"numTraining\": " + count);
    write_text(root + "/dataset.json", edited);
    Dataset ds;
    EXPECT_NO_THROW(ds = read_dataset(root)) << count;
    ASSERT_EQ(ds.warnings.size(), 1u) << count;
    const std::string& err = ds.warnings[0];
    EXPECT_HAS(err, "\"numTraining\" is not a count of cases: ");
    EXPECT_HAS(err, "; 1 training cases were found");
    EXPECT_EQ(ds.training.size(), 1u);
  }
}

TEST(DatasetHostile, FifosAreRefusedWithoutBeingOpened) {
  // A FIFO's open() waits for a writer: every one of these would hang a command that opened it.
  const std::string root = make_v2("ds-fifo", 1, {"c1", "c2", "c3"});
  fs::remove(image_path(root, "c1", 0));
  ASSERT_EQ(::mkfifo(image_path(root, "c1", 0).c_str(), 0600), 0);
  fs::remove(label_path(root, "c2"));
  ASSERT_EQ(::mkfifo(label_path(root, "c2").c_str(), 0600), 0);
  fs::remove(image_path(root, "c3", 0));
  fs::create_directory(image_path(root, "c3", 0));
  std::string msg = error_of([&] { read_dataset(root); });
  EXPECT_HAS(msg, "3 problems");
  EXPECT_HAS(msg, "case c1: " + image_path(root, "c1", 0) + ": not a regular file (a FIFO)");
  EXPECT_HAS(msg, "case c2: label " + label_path(root, "c2") + ": not a regular file (a FIFO)");
  EXPECT_HAS(msg, "case c3: " + image_path(root, "c3", 0) + ": not a regular file (a folder)");

  // dataset.json itself.
  fs::remove(root + "/dataset.json");
  ASSERT_EQ(::mkfifo((root + "/dataset.json").c_str(), 0600), 0);
  msg = error_of([&] { read_dataset(root); });
  EXPECT_HAS(msg, root + "/dataset.json: not a regular file (a FIFO)");

  // MSD v1 lists its files: a listed FIFO is named as such, not as missing.
  const std::string v1 = test::temp_dir("ds-fifo-v1");
  write_image(v1 + "/imagesTr/a.nii.gz", 1.0f);
  fs::create_directories(v1 + "/labelsTr");
  ASSERT_EQ(::mkfifo((v1 + "/labelsTr/a.nii.gz").c_str(), 0600), 0);
  write_text(v1 + "/dataset.json", R"({"modality": {"0": "CT"}, "labels": {"0": "background"},
    "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}]})");
  EXPECT_HAS(error_of([&] { read_dataset(v1); }),
             "case a: label " + v1 + "/labelsTr/a.nii.gz: not a regular file (a FIFO)");
}

TEST(DatasetHostile, ProblemsAreInputErrors) {
  // Exit status 1 and no source text: the user's dataset is at fault, not voxgrad.
  const std::string root = make_v2("ds-input-error", 1, {"c1"});
  fs::remove(label_path(root, "c1"));
  EXPECT_THROW(read_dataset(root), InputError);
  write_text(root + "/dataset.json", "{\"labels\": ");
  EXPECT_THROW(read_dataset(root), InputError);
  const std::string msg = error_of([&] { read_dataset(root); });
  EXPECT_EQ(msg.find(".cpp:"), std::string::npos) << msg;
}

TEST(DatasetHostile, DeepNestingAndHugeFilesAreRefused) {
  const std::string root = test::temp_dir("ds-deep");
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_HAS(error_reading(root, v2_json(R"({"background": 0})", ", \"x\": " + deep)),
             "values nested more than 32 deep");
  // Sparse: 65 MiB that takes no disk.
  write_text(root + "/dataset.json", "{");
  fs::resize_file(root + "/dataset.json", 65 << 20);
  EXPECT_HAS(error_of([&] { read_dataset(root); }), "65.0 MiB is far more than a dataset description takes");
}

TEST(DatasetHostile, WritingIsAtomicAndClearsStaleTemporaries) {
  const std::string root = test::temp_dir("ds-atomic");
  // A temporary left by a killed writer: no process has a pid this large (pid_max is at most 2^22).
  write_text(root + "/dataset.json.tmp-99999999-0", "{half");
  DatasetV2Spec spec;
  spec.channel_names = {"CT"};
  spec.labels = {{0, "background"}, {255, "last"}};
  write_dataset_v2(root, spec);
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(root)) names.push_back(e.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"dataset.json"});
  EXPECT_EQ(Json::parse(test::read_file(root + "/dataset.json"))["labels"]["last"], 255);
  // Others may read what the dataset holds, as with any file the user writes (umask permitting).
  struct stat st {};
  ASSERT_EQ(::stat((root + "/dataset.json").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0600, 0600u);
  // dataset.json must be a file: a folder in its place is named, and left as it is.
  const std::string blocked = test::temp_dir("ds-atomic-blocked");
  fs::create_directory(blocked + "/dataset.json");
  EXPECT_THROW(write_dataset_v2(blocked, spec), InputError);
  EXPECT_TRUE(fs::is_directory(blocked + "/dataset.json"));
  EXPECT_EQ(std::distance(fs::directory_iterator(blocked), fs::directory_iterator()), 1);
}

TEST(DatasetHostile, ImagesWithoutFiniteVoxelsOrVarianceAreProblems) {
  const std::string root = make_v2("ds-values-image", 2, {"c1", "c2", "c3"});
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  // c1: a few infinite voxels among finite ones is usable (preprocessing zeroes them, with a warning).
  std::vector<float> some = ramp(kVoxels, 0.0f);
  some[3] = inf;
  some[4] = -inf;
  write_nifti(image_path(root, "c1", 0), make_volume(from_vector(some, {kZ, kY, kX}), test_affine()));
  // c2: channel 1 holds nothing finite; c3: channel 0 is one value everywhere.
  std::vector<float> none(static_cast<std::size_t>(kVoxels), inf);
  none[0] = nan;
  write_nifti(image_path(root, "c2", 1), make_volume(from_vector(none, {kZ, kY, kX}), test_affine()));
  write_nifti(image_path(root, "c3", 0),
              make_volume(from_vector(std::vector<float>(kVoxels, 3.5f), {kZ, kY, kX}), test_affine()));
  const Dataset ds = read_dataset(root);
  const std::vector<std::string> problems = find_dataset_problems(ds);
  ASSERT_EQ(problems.size(), 2u) << joined(problems);
  EXPECT_EQ(problems[0], "case c2: " + image_path(root, "c2", 1) + ": no finite voxel (all 120 are NaN or infinite)");
  EXPECT_EQ(problems[1], "case c3: " + image_path(root, "c3", 0) +
                             ": every finite voxel holds the same value (3.5): zero variance, the channel carries no "
                             "information");
  CheckOptions headers_only;
  headers_only.check_image_values = false;
  EXPECT_EQ(joined(find_dataset_problems(ds, headers_only)), "");
}

TEST(DatasetHostile, AnImageLargerThanMemoryIsAProblemFromItsHeaders) {
  // Uncompressed files whose headers claim 20000 x 20000 x 5000 voxels, made sparse so they take
  // no disk: the reader accepts them (the file backs the voxels), but no machine holds 7 TiB.
  const std::string root = test::temp_dir("ds-huge");
  write_text(root + "/dataset.json", R"({"channel_names": {"0": "CT"}, "file_ending": ".nii", "numTraining": 1,
                                          "labels": {"background": 0, "a": 1}})");
  const auto write_huge = [&](const std::string& path, std::int64_t bytes_per_voxel) {
    if (bytes_per_voxel == 1)
      write_label(path, label_pattern(kVoxels, 2));
    else
      write_image(path, 0.0f);
    {
      std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
      const std::int16_t dims[3] = {20000, 20000, 5000};  // dim[1..3] at byte 42
      f.seekp(42);
      f.write(reinterpret_cast<const char*>(dims), sizeof dims);
    }
    std::error_code ec;
    fs::resize_file(path, 352 + std::uintmax_t{20000} * 20000 * 5000 * bytes_per_voxel, ec);
    return !ec;
  };
  if (!write_huge(image_path(root, "c1", 0, ".nii"), 4) || !write_huge(label_path(root, "c1", ".nii"), 1))
    GTEST_SKIP() << "this file system cannot hold a sparse 7 TiB file";
  const Dataset ds = read_dataset(root);
  const std::vector<std::string> problems = find_dataset_problems(ds);
  ASSERT_EQ(problems.size(), 2u) << joined(problems);
  EXPECT_HAS(problems[0], "case c1: loading its image " + image_path(root, "c1", 0, ".nii") + " would need 21.8 TiB");
  EXPECT_HAS(problems[0], "(1 channel of (20000, 20000, 5000) voxels as float32), more than the ");
  EXPECT_HAS(problems[0], " this machine has available");
  EXPECT_HAS(problems[1], "case c1: reading its label " + label_path(root, "c1", ".nii") + " would need 9.1 TiB");
  // Loading refuses before it reads or allocates anything.
  EXPECT_THROW(load_case_image(ds, ds.training[0]), InputError);
  EXPECT_THROW(load_case_label(ds, ds.training[0]), InputError);
}

}  // namespace
