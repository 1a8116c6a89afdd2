// `voxgrad eval` as a user meets it: Dice, Jaccard and counts equal to hand-computed values on two
// tiny cases, absent classes null and left out of the means, the CSV rows, one-line errors for a
// missing prediction and mismatched dims, and a well-formed PNG per case.
#include <zlib.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "io/nifti.h"
#include "tests/test_support.h"

namespace {

namespace fs = std::filesystem;
namespace io = voxgrad::io;
using nlohmann::json;
using voxgrad::test::CommandResult;
using voxgrad::test::run_voxgrad;

// Volumes of NIfTI dims 4 x 3 x 2 (x fastest): 24 voxels, identity affine.
constexpr int kX = 4, kY = 3, kZ = 2;

void write_labels(const std::string& path, const std::vector<std::int32_t>& v, int x = kX) {
  io::write_nifti(path, io::make_volume(voxgrad::from_vector(v, {kZ, kY, x})), io::NiftiWriteType::UInt8);
}

std::vector<std::int32_t> labels(std::initializer_list<std::pair<int, int>> runs_of, int n = kX * kY * kZ) {
  // (first voxel, label) pairs, each run lasting until the next pair's first voxel; 0 from the last.
  std::vector<std::int32_t> v(n, 0);
  std::vector<std::pair<int, int>> runs(runs_of);
  for (std::size_t i = 0; i + 1 < runs.size(); ++i)
    for (int k = runs[i].first; k < runs[i + 1].first; ++k) v[k] = runs[i].second;
  return v;
}

using voxgrad::test::read_file;

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// Two cases, two classes:
//   case_a: ref 1 on voxels 0..5, 2 on 6..9; pred 1 on 2..7, 2 on 8..11
//           class 1: TP 4 FP 2 FN 2 -> Dice 8/12, Jaccard 4/8; class 2: TP 2 FP 2 FN 2 -> 4/8, 2/6
//   case_b: ref 1 on 0..3; pred 1 on 0..1; no class 2 anywhere
//           class 1: TP 2 FP 0 FN 2 -> Dice 4/6, Jaccard 2/4; class 2 absent from both -> null
struct Dataset {
  std::string root, ref, pred, images;
};

Dataset make_dataset(const std::string& tag) {
  Dataset d;
  d.root = voxgrad::test::temp_dir(tag);
  d.ref = d.root + "/ref";
  d.pred = d.root + "/pred";
  d.images = d.root + "/images";
  fs::create_directories(d.ref);
  fs::create_directories(d.pred);
  fs::create_directories(d.images);
  write_labels(d.ref + "/case_a.nii.gz", labels({{0, 1}, {6, 2}, {10, 0}}));
  write_labels(d.pred + "/case_a.nii.gz", labels({{2, 1}, {8, 2}, {12, 0}}));
  write_labels(d.ref + "/case_b.nii.gz", labels({{0, 1}, {4, 0}}));
  write_labels(d.pred + "/case_b.nii.gz", labels({{0, 1}, {2, 0}}));
  return d;
}

CommandResult eval(const Dataset& d, const std::string& extra = "") {
  return run_voxgrad("eval --pred '" + d.pred + "' --ref '" + d.ref + "' --out '" + d.root + "/out/summary.json' " +
                     extra);
}

const json& metrics_of(const json& summary, const std::string& file_part, const std::string& cls) {
  for (const json& c : summary["metric_per_case"])
    if (c["reference_file"].get<std::string>().find(file_part) != std::string::npos) return c["metrics"][cls];
  throw std::runtime_error("no case " + file_part);
}

TEST(EvalCli, DiceJaccardAndCountsMatchHandComputedValues) {
  const Dataset d = make_dataset("eval-values");
  const CommandResult r = eval(d);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<std::string> out = lines_of(r.out);
  ASSERT_EQ(out.size(), 1u) << r.out;
  const json line = json::parse(out[0]);
  EXPECT_NEAR(line["foreground_mean"]["Dice"].get<double>(), (2.0 / 3 + 0.5) / 2, 1e-12);
  EXPECT_NEAR(line["foreground_mean"]["IoU"].get<double>(), (0.5 + 1.0 / 3) / 2, 1e-12);
  EXPECT_EQ(line["summary"], d.root + "/out/summary.json");
  EXPECT_EQ(line["left_out"], 1);

  const json s = json::parse(read_file(d.root + "/out/summary.json"));
  EXPECT_EQ(s["classes"], json::array({1, 2}));  // the union of positive reference values
  const json& a1 = metrics_of(s, "case_a", "1");
  EXPECT_NEAR(a1["Dice"].get<double>(), 2.0 / 3, 1e-12);
  EXPECT_NEAR(a1["IoU"].get<double>(), 0.5, 1e-12);
  EXPECT_EQ(a1["Jaccard"], a1["IoU"]);
  EXPECT_EQ(a1["TP"], 4);
  EXPECT_EQ(a1["FP"], 2);
  EXPECT_EQ(a1["FN"], 2);
  EXPECT_EQ(a1["n_ref"], 6);
  EXPECT_EQ(a1["n_pred"], 6);
  const json& a2 = metrics_of(s, "case_a", "2");
  EXPECT_NEAR(a2["Dice"].get<double>(), 0.5, 1e-12);
  EXPECT_NEAR(a2["IoU"].get<double>(), 1.0 / 3, 1e-12);
  EXPECT_EQ(a2["TP"], 2);
  EXPECT_EQ(a2["FP"], 2);
  EXPECT_EQ(a2["FN"], 2);
  const json& b1 = metrics_of(s, "case_b", "1");
  EXPECT_NEAR(b1["Dice"].get<double>(), 2.0 / 3, 1e-12);
  EXPECT_NEAR(b1["IoU"].get<double>(), 0.5, 1e-12);
  EXPECT_EQ(b1["TP"], 2);
  EXPECT_EQ(b1["FP"], 0);
  EXPECT_EQ(b1["FN"], 2);
  EXPECT_EQ(b1["n_ref"], 4);
  EXPECT_EQ(b1["n_pred"], 2);
  const json& b2 = metrics_of(s, "case_b", "2");
  EXPECT_TRUE(b2["Dice"].is_null());
  EXPECT_TRUE(b2["IoU"].is_null());
  EXPECT_EQ(b2["TP"], 0);

  // Class 2's mean is case_a's alone: case_b's null is left out, not counted as 0 or 1.
  EXPECT_NEAR(s["mean"]["1"]["Dice"].get<double>(), 2.0 / 3, 1e-12);
  EXPECT_NEAR(s["mean"]["2"]["Dice"].get<double>(), 0.5, 1e-12);
  EXPECT_NEAR(s["mean"]["2"]["IoU"].get<double>(), 1.0 / 3, 1e-12);
  EXPECT_EQ(s["mean"]["2"]["cases_left_out"], 1);
  EXPECT_NEAR(s["foreground_mean"]["Dice"].get<double>(), 7.0 / 12, 1e-12);
  EXPECT_NEAR(s["foreground_mean"]["IoU"].get<double>(), 5.0 / 12, 1e-12);
  EXPECT_EQ(s["left_out"], 1);
  EXPECT_EQ(s["left_out_of"], 4);

  // Every defined entry: J <= D and D = 2J / (1 + J).
  int defined = 0;
  for (const json& c : s["metric_per_case"])
    for (const auto& [cls, m] : c["metrics"].items()) {
      if (m["Dice"].is_null()) continue;
      const double dice = m["Dice"].get<double>(), jac = m["IoU"].get<double>();
      EXPECT_LE(jac, dice) << cls;
      EXPECT_NEAR(dice, 2 * jac / (1 + jac), 1e-12) << cls;
      ++defined;
    }
  EXPECT_EQ(defined, 3);
}

TEST(EvalCli, ClassAbsentEverywhereIsNullAndCounted) {
  const Dataset d = make_dataset("eval-absent");
  const CommandResult r = eval(d, "--labels 1,2,3");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json s = json::parse(read_file(d.root + "/out/summary.json"));
  EXPECT_TRUE(metrics_of(s, "case_a", "3")["Dice"].is_null());
  EXPECT_TRUE(metrics_of(s, "case_b", "3")["Dice"].is_null());
  EXPECT_TRUE(s["mean"]["3"]["Dice"].is_null());
  EXPECT_EQ(s["mean"]["3"]["cases_left_out"], 2);
  // Class 3 has no mean, so it stays out of the foreground mean too.
  EXPECT_NEAR(s["foreground_mean"]["Dice"].get<double>(), 7.0 / 12, 1e-12);
  EXPECT_EQ(s["left_out"], 3);
  EXPECT_EQ(s["left_out_of"], 6);
  EXPECT_NE(r.err.find("3 (case, class) pair(s)"), std::string::npos) << r.err;
}

TEST(EvalCli, CsvHasOneRowPerCaseAndClass) {
  const Dataset d = make_dataset("eval-csv");
  const CommandResult r = eval(d);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<std::string> rows = lines_of(read_file(d.root + "/out/summary.csv"));
  ASSERT_EQ(rows.size(), 5u);
  EXPECT_EQ(rows[0], "case,class,dice,jaccard,tp,fp,fn");
  EXPECT_EQ(rows[1], "case_a,1,0.66666666666666663,0.5,4,2,2");
  EXPECT_EQ(rows[2], "case_a,2,0.5,0.33333333333333331,2,2,2");
  EXPECT_EQ(rows[3], "case_b,1,0.66666666666666663,0.5,2,0,2");
  EXPECT_EQ(rows[4], "case_b,2,nan,nan,0,0,0");
  // Atomic writes leave no temporary files behind.
  for (const auto& e : fs::directory_iterator(d.root + "/out"))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
}

TEST(EvalCli, MissingPredictionIsOneLineNamingTheCase) {
  const Dataset d = make_dataset("eval-missing");
  fs::remove(d.pred + "/case_b.nii.gz");
  const CommandResult r = eval(d);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(r.out.empty()) << r.out;
  const std::vector<std::string> err = lines_of(r.err);
  ASSERT_EQ(err.size(), 1u) << r.err;
  EXPECT_NE(err[0].find("case_b"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d.root + "/out/summary.json"));
}

TEST(EvalCli, ExtraPredictionIsAWarning) {
  const Dataset d = make_dataset("eval-extra");
  write_labels(d.pred + "/case_z.nii.gz", labels({{0, 1}, {1, 0}}));
  const CommandResult r = eval(d);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("warning"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("case_z"), std::string::npos) << r.err;
}

TEST(EvalCli, DimsMismatchFailsNamingTheCase) {
  const Dataset d = make_dataset("eval-dims");
  write_labels(d.pred + "/case_b.nii.gz", labels({{0, 1}, {2, 0}}, 5 * kY * kZ), 5);
  const CommandResult r = eval(d);
  EXPECT_EQ(r.exit_code, 1);
  const std::vector<std::string> err = lines_of(r.err);
  ASSERT_EQ(err.size(), 1u) << r.err;
  EXPECT_NE(err[0].find("case_b"), std::string::npos) << r.err;
  EXPECT_NE(err[0].find("dims"), std::string::npos) << r.err;
}

TEST(EvalCli, UnknownFlagIsAUsageError) {
  const Dataset d = make_dataset("eval-flag");
  const CommandResult r = eval(d, "--no-such-flag");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("no-such-flag"), std::string::npos) << r.err;
}

std::uint32_t be32(const std::string& s, std::size_t at) {
  return (std::uint32_t(std::uint8_t(s[at])) << 24) | (std::uint32_t(std::uint8_t(s[at + 1])) << 16) |
         (std::uint32_t(std::uint8_t(s[at + 2])) << 8) | std::uint32_t(std::uint8_t(s[at + 3]));
}

void check_png(const std::string& path, std::uint32_t width, std::uint32_t height) {
  const std::string png = read_file(path);
  ASSERT_GE(png.size(), 8u + 25u) << path;
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(png.substr(12, 4), "IHDR");
  EXPECT_EQ(be32(png, 16), width);
  EXPECT_EQ(be32(png, 20), height);
  // Gather the IDAT data and inflate it: one filter byte and 3 bytes a pixel per row.
  std::string idat;
  bool iend = false;
  for (std::size_t at = 8; at + 12 <= png.size();) {
    const std::uint32_t n = be32(png, at);
    const std::string type = png.substr(at + 4, 4);
    const uLong crc = crc32(0L, reinterpret_cast<const Bytef*>(png.data() + at + 4), 4 + n);
    EXPECT_EQ(be32(png, at + 8 + n), static_cast<std::uint32_t>(crc)) << type;
    if (type == "IDAT") idat += png.substr(at + 8, n);
    if (type == "IEND") iend = true;
    at += 12 + n;
  }
  EXPECT_TRUE(iend);
  const std::size_t expected = height * (1 + 3 * width);
  std::vector<Bytef> raw(expected + 16);
  uLongf raw_size = raw.size();
  ASSERT_EQ(uncompress(raw.data(), &raw_size, reinterpret_cast<const Bytef*>(idat.data()), idat.size()), Z_OK);
  EXPECT_EQ(raw_size, expected);
}

TEST(EvalCli, WritesOnePngPerCase) {
  const Dataset d = make_dataset("eval-png");
  // An image for case_a only (nnU-Net v2 naming); case_b falls back to its reference labels.
  std::vector<float> image(kX * kY * kZ);
  for (std::size_t i = 0; i < image.size(); ++i) image[i] = static_cast<float>(i);
  io::write_nifti(d.images + "/case_a_0000.nii.gz", io::make_volume(voxgrad::from_vector(image, {kZ, kY, kX})));
  const CommandResult r = eval(d, "--images '" + d.images + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Axial slice of an identity-affine volume: x across, y down.
  check_png(d.root + "/out/png/case_a.png", kX, kY);
  check_png(d.root + "/out/png/case_b.png", kX, kY);
  EXPECT_NE(r.err.find("case_b_0000"), std::string::npos) << r.err;
}

}  // namespace
