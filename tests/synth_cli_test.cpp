// `voxgrad synth` as a user meets it: a small dataset that read_dataset accepts without problems,
// labels with exactly the declared classes (each present in every training case), the declared
// spacing and affine, byte-identical output for one seed, small structures in their preset, and
// refusals of bad values and of a non-empty --out.
#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "engine/json.h"
#include "io/dataset.h"
#include "io/nifti.h"
#include "tests/test_support.h"

namespace {

namespace fs = std::filesystem;
namespace io = voxgrad::io;
using nlohmann::json;
using voxgrad::test::CommandResult;
using voxgrad::test::run_voxgrad;
using voxgrad::test::temp_dir;

using voxgrad::test::read_file;

// Every file under root, relative path -> bytes.
std::map<std::string, std::string> all_files(const std::string& root) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(root))
    if (e.is_regular_file()) files[fs::relative(e.path(), root).string()] = read_file(e.path());
  return files;
}

CommandResult synth(const std::string& out, const std::string& more) {
  return run_voxgrad("synth --out " + out + " " + more);
}

// Sizes of the 6-connected components of each class (value -> sizes), labels (Z, Y, X) of side s.
std::map<int, std::vector<std::int64_t>> component_sizes(const std::vector<std::int32_t>& label, int s) {
  std::map<int, std::vector<std::int64_t>> sizes;
  std::vector<char> seen(label.size(), 0);
  std::vector<std::int64_t> stack;
  const std::int64_t S = s;
  for (std::int64_t start = 0; start < static_cast<std::int64_t>(label.size()); ++start) {
    if (label[start] == 0 || seen[start]) continue;
    const int value = label[start];
    std::int64_t n = 0;
    stack.assign(1, start);
    seen[start] = 1;
    while (!stack.empty()) {
      const std::int64_t i = stack.back();
      stack.pop_back();
      ++n;
      const std::int64_t x = i % S, y = (i / S) % S, z = i / (S * S);
      const std::int64_t nb[6][3] = {{x - 1, y, z}, {x + 1, y, z}, {x, y - 1, z}, {x, y + 1, z}, {x, y, z - 1}, {x, y, z + 1}};
      for (const auto& q : nb) {
        if (q[0] < 0 || q[1] < 0 || q[2] < 0 || q[0] >= S || q[1] >= S || q[2] >= S) continue;
        const std::int64_t j = (q[2] * S + q[1]) * S + q[0];
        if (!seen[j] && label[j] == value) {
          seen[j] = 1;
          stack.push_back(j);
        }
      }
    }
    sizes[value].push_back(n);
  }
  return sizes;
}

TEST(SynthCli, SmallDatasetReadsBackClean) {
  const std::string out = temp_dir("synth") + "/ds";
  const CommandResult r = synth(out, "--size 24 --cases 2 --test-cases 1 --classes 3 --seed 5");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["out"], out);
  EXPECT_EQ(j["preset"], "demo");
  EXPECT_EQ(j["cases_train"], 2);
  EXPECT_EQ(j["cases_test"], 1);
  EXPECT_EQ(j["size"], json({24, 24, 24}));
  EXPECT_EQ(j["classes"], 3);
  EXPECT_EQ(j["spacing"], json({0.8, 0.8, 2.0}));

  const io::Dataset ds = io::read_dataset(out);
  EXPECT_EQ(ds.layout, io::DatasetLayout::NnunetV2);
  ASSERT_EQ(ds.training.size(), 2u);
  ASSERT_EQ(ds.test.size(), 1u);
  EXPECT_EQ(ds.channels, std::vector<std::string>{"synthetic"});
  EXPECT_EQ(ds.label_values(), (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(ds.file_ending, ".nii.gz");
  const std::vector<std::string> problems = io::find_dataset_problems(ds);
  EXPECT_TRUE(problems.empty()) << problems.front();

  for (const io::Case& c : ds.training) {
    const io::CaseImage image = io::load_case_image(ds, c);
    EXPECT_EQ(image.data.shape(), (voxgrad::Shape{1, 24, 24, 24}));
    // pixdim is float32 in the header: 0.8 comes back as 0.800000011920929.
    const std::array<double, 3> spacing{0.8, 0.8, 2.0};
    for (int a = 0; a < 3; ++a) EXPECT_NEAR(image.spacing[a], spacing[a], 1e-6) << c.id << " axis " << a;
    io::Affine want = io::identity_affine();
    want[0][0] = 0.8, want[1][1] = 0.8, want[2][2] = 2.0;
    EXPECT_TRUE(io::affines_close(image.affine, want, 1e-6)) << c.id;
    EXPECT_EQ(io::read_nifti(c.images[0]).source_datatype, 16) << "images are float32";
    EXPECT_EQ(io::read_nifti(c.label).source_datatype, 2) << "labels are uint8";

    const io::CaseLabel label = io::load_case_label(ds, c);
    std::set<int> values;
    for (std::int32_t v : label.data.to_vector<std::int32_t>()) values.insert(v);
    EXPECT_EQ(values, (std::set<int>{0, 1, 2})) << c.id << ": every class, nothing else";
  }
  // The test case's label sits in labelsTs beside imagesTs (read_dataset does not look there).
  const fs::path test_label = fs::path(out) / "labelsTs" / (ds.test[0].id + ".nii.gz");
  ASSERT_TRUE(fs::exists(test_label)) << test_label;
  EXPECT_EQ(io::read_nifti(test_label.string()).data.shape(), (voxgrad::Shape{24, 24, 24}));
}

TEST(SynthCli, SameSeedSameBytesOtherSeedOtherBytes) {
  const std::string root = temp_dir("synth-seed");
  const std::string args = "--size 16 --cases 1 --test-cases 1 --preset small-structures";
  ASSERT_EQ(synth(root + "/a", args + " --seed 3").exit_code, 0);
  ASSERT_EQ(synth(root + "/b", args + " --seed 3").exit_code, 0);
  ASSERT_EQ(synth(root + "/c", args + " --seed 4").exit_code, 0);
  const auto a = all_files(root + "/a"), b = all_files(root + "/b"), c = all_files(root + "/c");
  EXPECT_EQ(a.size(), 5u);  // dataset.json, one image and label each in Tr and Ts
  EXPECT_TRUE(a == b);
  for (const auto& [name, bytes] : a)
    if (name.ends_with(".nii.gz")) {
      EXPECT_NE(bytes, c.at(name)) << name;
    }
}

TEST(SynthCli, SmallStructuresBesideLargeOnes) {
  const std::string out = temp_dir("synth-small") + "/ds";
  const CommandResult r = synth(out, "--preset small-structures --size 48 --cases 1 --test-cases 0 --seed 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const io::Dataset ds = io::read_dataset(out);
  ASSERT_EQ(ds.training.size(), 1u);
  EXPECT_TRUE(ds.test.empty());
  const auto sizes = component_sizes(io::load_case_label(ds, ds.training[0]).data.to_vector<std::int32_t>(), 48);
  ASSERT_EQ(sizes.size(), 2u);
  for (const auto& [value, list] : sizes) {
    EXPECT_LT(*std::min_element(list.begin(), list.end()), 1000) << "class " << value << " has no small structure";
    EXPECT_GE(*std::max_element(list.begin(), list.end()), 1000) << "class " << value << " has no large structure";
  }
}

TEST(SynthCli, RefusesBadValues) {
  const std::string root = temp_dir("synth-bad");
  for (const char* bad : {"--size 15", "--classes 1", "--cases 0", "--preset huge", "--classes 256"}) {
    const CommandResult r = synth(root + "/x", bad);
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.err;
    EXPECT_NE(r.err.find("voxgrad: error:"), std::string::npos) << r.err;
  }
  EXPECT_FALSE(fs::exists(root + "/x"));
  EXPECT_EQ(run_voxgrad("synth --size 16").exit_code, 2) << "--out is required";
}

TEST(SynthCli, NonEmptyOutNeedsForceAndKeepsOtherFiles) {
  const std::string out = temp_dir("synth-force");
  std::ofstream(out + "/notes.txt") << "mine";
  const CommandResult refused = synth(out, "--size 16 --cases 1 --test-cases 0");
  EXPECT_EQ(refused.exit_code, 2);  // --out names a place it cannot use: a usage error
  EXPECT_NE(refused.err.find("--force"), std::string::npos) << refused.err;
  EXPECT_FALSE(fs::exists(out + "/dataset.json"));

  ASSERT_EQ(synth(out, "--size 16 --cases 3 --test-cases 0 --force").exit_code, 0);
  ASSERT_EQ(synth(out, "--size 16 --cases 1 --test-cases 0 --force").exit_code, 0);
  EXPECT_EQ(read_file(out + "/notes.txt"), "mine");
  // The smaller second run leaves no stale cases behind.
  EXPECT_EQ(io::read_dataset(out).training.size(), 1u);
}

}  // namespace
