// `voxgrad eval` as a user meets it: Dice, Jaccard and counts equal to hand-computed values on two
// tiny cases, absent classes null and left out of the means, the CSV rows (read back as RFC 4180),
// predictions stored with flipped or permuted axes reoriented, other grid differences refused,
// errors in plain words with the right exit status, no output over an input, a well-formed PNG
// per case; --components (hand-made volumes with corner-touching voxels, and synth data with one
// structure erased) and --probabilities (hand-computed calibration and volume ratios, refusals of
// missing and mismatched files).
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "engine/json.h"
#include "io/nifti.h"
#include "tests/csv_reader.h"
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

using voxgrad::test::lines_of;

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
  // Voxels that do not pair up cannot be scored as stored either.
  const CommandResult ignored = eval(d, "--ignore-geometry");
  EXPECT_EQ(ignored.exit_code, 1);
  EXPECT_NE(ignored.err.find("dims 5x3x2 vs 4x3x2"), std::string::npos) << ignored.err;
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

namespace {

// ---- CSV ----------------------------------------------------------------------------------------

TEST(EvalCli, CsvQuotesCaseNamesAndMakesFormulasInert) {
  const Dataset d = make_dataset("eval-csv-quoting");
  // Case names a spreadsheet would split or run: a comma and a quote, a formula, a sign, a line break.
  const std::vector<std::string> names = {"a,b\"c", "=cmd", "-1", "@x", "two\nlines"};
  for (const std::string& n : names) {
    write_labels(d.ref + "/" + n + ".nii.gz", labels({{0, 1}, {4, 0}}));
    write_labels(d.pred + "/" + n + ".nii.gz", labels({{0, 1}, {2, 0}}));
  }
  const CommandResult r = eval(d, "--labels 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto rows = voxgrad::test::parse_csv(read_file(d.root + "/out/summary.csv"));
  ASSERT_EQ(rows.size(), 1 + 2 + names.size());
  EXPECT_EQ(rows[0], (std::vector<std::string>{"case", "class", "dice", "jaccard", "tp", "fp", "fn"}));
  std::set<std::string> cases;
  for (std::size_t i = 1; i < rows.size(); ++i) {
    ASSERT_EQ(rows[i].size(), 7u) << i;
    cases.insert(rows[i][0]);
    // Numbers stay numbers (bare, parseable); the class is 1 everywhere.
    EXPECT_EQ(rows[i][1], "1");
    EXPECT_NO_THROW((void)std::stod(rows[i][2])) << rows[i][2];
  }
  const std::set<std::string> expected = {"case_a", "case_b", "a,b\"c", "'=cmd", "'-1", "'@x", "two\nlines"};
  EXPECT_EQ(cases, expected);
  // Formula cells are quoted text, never a bare =.
  const std::string raw = read_file(d.root + "/out/summary.csv");
  EXPECT_NE(raw.find("\"'=cmd\",1,0.66666666666666663,0.5,2,0,2\n"), std::string::npos) << raw;
  EXPECT_EQ(raw.find("\n=cmd"), std::string::npos) << raw;
}

// ---- geometry -----------------------------------------------------------------------------------

// A label volume on an explicit grid: dims (x, y, z), voxel -> world affine.
void write_labels_on(const std::string& path, const std::vector<std::int32_t>& v, const std::vector<std::int64_t>& dims,
                     const io::Affine& affine) {
  io::write_nifti(path, io::make_volume(voxgrad::from_vector(v, {dims[2], dims[1], dims[0]}), affine),
                  io::NiftiWriteType::UInt8);
}

// The reference labels `ref` (dims kX x kY x kZ on `ref_affine`, which must be diagonal) stored on
// another grid: each stored voxel holds the reference voxel at the same point in the world.
std::vector<std::int32_t> restore(const std::vector<std::int32_t>& ref, const io::Affine& ref_affine,
                                  const std::vector<std::int64_t>& dims, const io::Affine& affine) {
  std::vector<std::int32_t> out(static_cast<std::size_t>(dims[0] * dims[1] * dims[2]));
  const int ref_dims[3] = {kX, kY, kZ};
  for (std::int64_t k = 0; k < dims[2]; ++k)
    for (std::int64_t j = 0; j < dims[1]; ++j)
      for (std::int64_t i = 0; i < dims[0]; ++i) {
        int r[3];
        for (int a = 0; a < 3; ++a) {
          const double w = affine[a][0] * i + affine[a][1] * j + affine[a][2] * k + affine[a][3];
          r[a] = static_cast<int>(std::lround((w - ref_affine[a][3]) / ref_affine[a][a]));
          if (r[a] < 0 || r[a] >= ref_dims[a]) throw std::runtime_error("restore: outside the reference");
        }
        out[i + dims[0] * (j + dims[1] * k)] = ref[r[0] + kX * (r[1] + kY * r[2])];
      }
  return out;
}

// case_a's prediction replaced by its reference stored on the grid (dims, affine) (case_a's
// reference rewritten on `ref_affine`); case_b stays as make_dataset wrote it.
Dataset make_stored_dataset(const std::string& tag, const io::Affine& ref_affine, const std::vector<std::int64_t>& dims,
                            const io::Affine& affine) {
  Dataset d = make_dataset(tag);
  const std::vector<std::int32_t> ref = labels({{0, 1}, {6, 2}, {10, 0}});
  write_labels_on(d.ref + "/case_a.nii.gz", ref, {kX, kY, kZ}, ref_affine);
  write_labels_on(d.pred + "/case_a.nii.gz", restore(ref, ref_affine, dims, affine), dims, affine);
  return d;
}

io::Affine affine_of(std::initializer_list<std::initializer_list<double>> rows) {
  io::Affine a = io::identity_affine();
  int r = 0;
  for (const auto& row : rows) {
    int c = 0;
    for (double v : row) a[r][c++] = v;
    ++r;
  }
  return a;
}

int count_of(const std::string& text, const std::string& part) {
  int n = 0;
  for (std::size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

// case_a scored perfectly, and stderr saying once that its prediction was reoriented.
void expect_reoriented(const Dataset& d, const CommandResult& r) {
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json s = json::parse(read_file(d.root + "/out/summary.json"));
  EXPECT_EQ(metrics_of(s, "case_a", "1")["Dice"], 1.0) << r.err;
  EXPECT_EQ(metrics_of(s, "case_a", "2")["Dice"], 1.0) << r.err;
  EXPECT_EQ(metrics_of(s, "case_a", "1")["FP"], 0);
  EXPECT_EQ(count_of(r.err, "reoriented"), 1) << r.err;
  EXPECT_NE(r.err.find("case case_a: "), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("warning"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("case_b: the prediction"), std::string::npos) << r.err;
}

TEST(EvalCli, PredictionWithXFlippedIsReoriented) {
  const io::Affine identity = io::identity_affine();
  const Dataset d = make_stored_dataset("eval-flip-x", identity, {kX, kY, kZ},
                                        affine_of({{-1, 0, 0, kX - 1}, {0, 1, 0, 0}, {0, 0, 1, 0}}));
  const CommandResult r = eval(d);
  expect_reoriented(d, r);
  EXPECT_NE(r.err.find("(-x, y, z)"), std::string::npos) << r.err;
}

TEST(EvalCli, PredictionWithYAndZSwappedIsReoriented) {
  const Dataset d = make_stored_dataset("eval-swap-yz", io::identity_affine(), {kX, kZ, kY},
                                        affine_of({{1, 0, 0, 0}, {0, 0, 1, 0}, {0, 1, 0, 0}}));
  const CommandResult r = eval(d);
  expect_reoriented(d, r);
  EXPECT_NE(r.err.find("(x, z, y)"), std::string::npos) << r.err;
}

TEST(EvalCli, PredictionFlippedAndPermutedOnAnAnisotropicGridIsReoriented) {
  // Reference: spacing 2, 1, 3 mm, origin (-10, 5, 7). Prediction: stored z, x, y with x and y reversed.
  const io::Affine ref = affine_of({{2, 0, 0, -10}, {0, 1, 0, 5}, {0, 0, 3, 7}});
  const io::Affine pred = affine_of({{0, -2, 0, -10 + 2 * (kX - 1)}, {0, 0, -1, 5 + (kY - 1)}, {3, 0, 0, 7}});
  const Dataset d = make_stored_dataset("eval-flip-permute", ref, {kZ, kX, kY}, pred);
  const CommandResult r = eval(d);
  expect_reoriented(d, r);
  // The picture is drawn on the reference grid.
  EXPECT_TRUE(fs::exists(d.root + "/out/png/case_a.png"));
}

TEST(EvalCli, ShiftedOriginIsAnErrorNamingTheCaseUnlessIgnored) {
  const Dataset d = make_dataset("eval-shifted");
  // Stored as the reference's voxels, but 5 mm to the right: not the same place in the patient.
  write_labels_on(d.pred + "/case_a.nii.gz", labels({{0, 1}, {6, 2}, {10, 0}}), {kX, kY, kZ},
                  affine_of({{1, 0, 0, 5}, {0, 1, 0, 0}, {0, 0, 1, 0}}));
  const CommandResult r = eval(d);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  const std::vector<std::string> err = lines_of(r.err);
  ASSERT_EQ(err.size(), 1u) << r.err;
  EXPECT_EQ(err[0].rfind("voxgrad: error: case case_a: ", 0), 0u) << r.err;
  EXPECT_NE(err[0].find("origin shifted by 5 mm"), std::string::npos) << r.err;
  EXPECT_NE(err[0].find("--ignore-geometry"), std::string::npos) << r.err;
  EXPECT_EQ(err[0].find(".cpp:"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d.root + "/out")) << "nothing is written before the checks pass";

  const CommandResult ignored = eval(d, "--ignore-geometry");
  ASSERT_EQ(ignored.exit_code, 0) << ignored.err;
  EXPECT_NE(ignored.err.find("warning: case case_a: "), std::string::npos) << ignored.err;
  EXPECT_NE(ignored.err.find("origin shifted by 5 mm"), std::string::npos) << ignored.err;
  // Scored voxel by voxel as stored: the labels are the reference's, so Dice 1.
  const json s = json::parse(read_file(d.root + "/out/summary.json"));
  EXPECT_EQ(metrics_of(s, "case_a", "1")["Dice"], 1.0);
}

TEST(EvalCli, OtherSpacingIsAnErrorNamingTheSpacing) {
  const Dataset d = make_dataset("eval-spacing");
  write_labels_on(d.pred + "/case_b.nii.gz", labels({{0, 1}, {2, 0}}), {kX, kY, kZ},
                  affine_of({{1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 2.5, 0}}));
  const CommandResult r = eval(d);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  const std::vector<std::string> err = lines_of(r.err);
  ASSERT_EQ(err.size(), 1u) << r.err;
  EXPECT_NE(err[0].find("case case_b: "), std::string::npos) << r.err;
  EXPECT_NE(err[0].find("spacing 1x1x2.5 mm vs 1x1x1 mm"), std::string::npos) << r.err;
}

TEST(EvalCli, PredictionWithATrailingUnitAxisIsTheSameGrid) {
  // (x, y, z, 1) holds the voxels of (x, y, z): scored as they are, without a word about geometry.
  const Dataset d = make_dataset("eval-unit-axis");
  const std::vector<std::int32_t> pred = labels({{0, 1}, {2, 0}});
  io::write_nifti(d.pred + "/case_b.nii.gz", io::make_volume(voxgrad::from_vector(pred, {1, kZ, kY, kX})),
                  io::NiftiWriteType::UInt8);
  const CommandResult r = eval(d);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err.find("case_b"), std::string::npos) << r.err;
  const json s = json::parse(read_file(d.root + "/out/summary.json"));
  EXPECT_NEAR(metrics_of(s, "case_b", "1")["Dice"].get<double>(), 2.0 / 3, 1e-12);
}

TEST(EvalCli, RelativeOutInANewFolder) {
  const Dataset d = make_dataset("eval-relative");
  const CommandResult r =
      run_voxgrad("eval --pred pred --ref ref --out new/deeper/summary.json", "cd '" + d.root + "' &&");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(d.root + "/new/deeper/summary.json"));
  EXPECT_TRUE(fs::exists(d.root + "/new/deeper/summary.csv"));
  EXPECT_TRUE(fs::exists(d.root + "/new/deeper/png/case_a.png"));
}

// ---- errors and output places -------------------------------------------------------------------

void expect_plain_error(const CommandResult& r, int status, const std::vector<std::string>& parts) {
  EXPECT_EQ(r.exit_code, status) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  const std::vector<std::string> err = lines_of(r.err);
  ASSERT_EQ(err.size(), 1u) << r.err;
  EXPECT_EQ(err[0].rfind("voxgrad: error: ", 0), 0u) << r.err;
  for (const std::string& p : parts) EXPECT_NE(err[0].find(p), std::string::npos) << p << " in " << r.err;
  // No source text: no C++ expression, no file.cpp:LINE.
  EXPECT_EQ(err[0].find(".cpp:"), std::string::npos) << r.err;
  EXPECT_EQ(err[0].find("static_cast"), std::string::npos) << r.err;
}

TEST(EvalCli, FolderFlagsNamingUnusablePlacesAreUsageErrors) {
  const Dataset d = make_dataset("eval-places");
  const std::string out = " --out '" + d.root + "/out/summary.json'";
  expect_plain_error(run_voxgrad("eval --pred '" + d.root + "/nowhere' --ref '" + d.ref + "'" + out), 2,
                     {"--pred", d.root + "/nowhere", "does not exist"});
  expect_plain_error(run_voxgrad("eval --pred '" + d.pred + "/case_a.nii.gz' --ref '" + d.ref + "'" + out), 2,
                     {"--pred", "not a folder"});
  expect_plain_error(run_voxgrad("eval --pred '" + d.pred + "' --ref '" + d.ref + "' --images '" + d.root +
                                 "/none'" + out),
                     2, {"--images", "does not exist"});
  EXPECT_FALSE(fs::exists(d.root + "/out"));
}

TEST(EvalCli, OutThatCannotBeWrittenIsAUsageError) {
  const Dataset d = make_dataset("eval-bad-out");
  const std::string args = "eval --pred '" + d.pred + "' --ref '" + d.ref + "' ";
  expect_plain_error(run_voxgrad(args + "--out ''"), 2, {"--out is empty"});
  expect_plain_error(run_voxgrad(args + "--out '" + d.root + "'"), 2, {"--out", "is a folder"});
  { std::ofstream(d.root + "/afile") << "x"; }
  expect_plain_error(run_voxgrad(args + "--out '" + d.root + "/afile/summary.json'"), 2,
                     {"--out", d.root + "/afile", "not a folder"});
  fs::create_directories(d.root + "/filled");
  { std::ofstream(d.root + "/filled/png") << "x"; }
  expect_plain_error(run_voxgrad(args + "--out '" + d.root + "/filled/summary.json'"), 2,
                     {"--out", d.root + "/filled/png", "not a folder"});
  fs::create_directories(d.root + "/locked");
  fs::permissions(d.root + "/locked", fs::perms::owner_read | fs::perms::owner_exec);
  if (::access((d.root + "/locked").c_str(), W_OK) != 0)  // root may write anywhere
    expect_plain_error(run_voxgrad(args + "--out '" + d.root + "/locked/sub/summary.json'"), 2,
                       {"--out", "cannot write in", "permission denied"});
  fs::permissions(d.root + "/locked", fs::perms::owner_all);
}

// A FIFO (or any non-regular file) named like a case is refused at once, never opened: opening a
// FIFO waits for a writer forever. `timeout` turns a hang into a failure instead of a stuck suite.
TEST(EvalCli, NonRegularInputsAreRefusedAtOnce) {
  const Dataset d = make_dataset("eval-fifo");
  fs::remove(d.pred + "/case_b.nii.gz");
  ASSERT_EQ(::mkfifo((d.pred + "/case_b.nii.gz").c_str(), 0600), 0);
  expect_plain_error(run_voxgrad("eval --pred '" + d.pred + "' --ref '" + d.ref + "' --out '" + d.root +
                                     "/out/summary.json'",
                                 "timeout 20"),
                     1, {d.pred + "/case_b.nii.gz", "not a regular file"});

  const Dataset e = make_dataset("eval-fifo-image");
  ASSERT_EQ(::mkfifo((e.images + "/case_a_0000.nii.gz").c_str(), 0600), 0);
  expect_plain_error(run_voxgrad("eval --pred '" + e.pred + "' --ref '" + e.ref + "' --images '" + e.images +
                                     "' --out '" + e.root + "/out/summary.json'",
                                 "timeout 20"),
                     1, {e.images + "/case_a_0000.nii.gz", "not a regular file"});
  EXPECT_FALSE(fs::exists(e.root + "/out"));
}

// Every output that would land on an input is refused, before anything is written, naming both.
TEST(EvalCli, RefusesToWriteOverItsInputs) {
  const Dataset d = make_dataset("eval-over-inputs");
  const std::string args = "eval --pred '" + d.pred + "' --ref '" + d.ref + "' ";
  const std::string ref_a = d.ref + "/case_a.nii.gz", pred_b = d.pred + "/case_b.nii.gz";
  const std::string ref_bytes = read_file(ref_a), pred_bytes = read_file(pred_b);
  auto untouched = [&] {
    EXPECT_EQ(read_file(ref_a), ref_bytes);
    EXPECT_EQ(read_file(pred_b), pred_bytes);
    EXPECT_FALSE(fs::exists(d.root + "/out/png"));
    EXPECT_FALSE(fs::exists(d.ref + "/png"));
  };

  // --out is an input, by name.
  expect_plain_error(run_voxgrad(args + "--out '" + ref_a + "'"), 1, {ref_a, "input"});
  untouched();
  // --out is an input under another name (a symbolic link).
  fs::create_directories(d.root + "/out");
  fs::create_symlink(ref_a, d.root + "/out/summary.json");
  expect_plain_error(run_voxgrad(args + "--out '" + d.root + "/out/summary.json'"), 1,
                     {d.root + "/out/summary.json", ref_a});
  untouched();
  EXPECT_TRUE(fs::is_symlink(d.root + "/out/summary.json"));
  fs::remove(d.root + "/out/summary.json");
  // The CSV beside --out is an input (a hard link).
  fs::create_hard_link(pred_b, d.root + "/out/summary.csv");
  expect_plain_error(run_voxgrad(args + "--out '" + d.root + "/out/summary.json'"), 1,
                     {d.root + "/out/summary.csv", pred_b});
  untouched();
  fs::remove(d.root + "/out/summary.csv");
  // A picture is an input.
  fs::create_directories(d.root + "/out2/png");
  fs::create_symlink(ref_a, d.root + "/out2/png/case_b.png");
  expect_plain_error(run_voxgrad(args + "--out '" + d.root + "/out2/summary.json'"), 1,
                     {d.root + "/out2/png/case_b.png", ref_a});
  untouched();
  EXPECT_FALSE(fs::exists(d.root + "/out2/summary.json"));
  EXPECT_FALSE(fs::exists(d.root + "/out2/png/case_a.png"));
}

// Temporaries that a killed eval left behind are removed by the next one; a live process's stay.
TEST(EvalCli, RemovesTemporariesOfDeadProcesses) {
  const Dataset d = make_dataset("eval-stale");
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ASSERT_GT(child, 0);
  ASSERT_EQ(::waitpid(child, nullptr, 0), child);
  const std::string dead = std::to_string(child), alive = std::to_string(::getpid());
  fs::create_directories(d.root + "/out/png");
  const std::vector<std::string> stale = {d.root + "/out/summary.json.tmp-" + dead + "-0",
                                          d.root + "/out/png/case_a.png.tmp-" + dead + "-7"};
  const std::string live = d.root + "/out/png/case_b.png.tmp-" + alive + "-0";
  for (const std::string& f : stale) std::ofstream(f) << "half";
  std::ofstream(live) << "busy";
  const CommandResult r = eval(d);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const std::string& f : stale) EXPECT_FALSE(fs::exists(f)) << f;
  EXPECT_TRUE(fs::exists(live));
}

// A case that fails while its voxels are read (after pictures of earlier cases were drawn) leaves
// the output place as it was: no summary, no pictures, no folders, no temporaries.
TEST(EvalCli, FailureWhileScoringWritesNothing) {
  const Dataset d = make_dataset("eval-fails-late");
  std::vector<float> half(kX * kY * kZ, 0.0f);
  half[3] = 0.5f;
  io::write_nifti(d.pred + "/case_b.nii.gz", io::make_volume(voxgrad::from_vector(half, {kZ, kY, kX})));
  const CommandResult r = eval(d);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find(d.pred + "/case_b.nii.gz"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d.root + "/out")) << "the output folder was made and left behind";

  // Into a folder that exists already: its list of files stays as it was.
  fs::create_directories(d.root + "/out");
  { std::ofstream(d.root + "/out/notes.txt") << "mine"; }
  const CommandResult again = eval(d);
  EXPECT_EQ(again.exit_code, 1) << again.err;
  std::vector<std::string> left;
  for (const auto& e : fs::recursive_directory_iterator(d.root + "/out")) left.push_back(e.path().filename().string());
  EXPECT_EQ(left, std::vector<std::string>{"notes.txt"});
}

// ---- --components ---------------------------------------------------------------------------------

// One case of dims 10 x 10 x 5 (x fastest) on spacing 2 x 1 x 1.5 mm (3 mm^3 a voxel):
//   class 1: the slab z = 0 (100 voxels), found by a single predicted voxel;
//            two voxels touching only at a corner, (1, 1, 2) and (2, 2, 3): one component under
//            26-connectivity, missed (predicted as class 2);
//            a lone voxel (8, 8, 4), missed (predicted as background).
//   class 2: the voxel (5, 5, 2), found whole.
// The prediction also marks class 1 at (0, 9, 4), where the reference has nothing (no component).
constexpr int kBigX = 10, kBigY = 10, kBigZ = 5;

int voxel(int x, int y, int z) { return x + kBigX * (y + kBigY * z); }

struct ComponentCase {
  std::string root, ref, pred, out;
};

ComponentCase make_component_case(const std::string& tag) {
  ComponentCase c;
  c.root = voxgrad::test::temp_dir(tag);
  c.ref = c.root + "/ref";
  c.pred = c.root + "/pred";
  c.out = c.root + "/out/summary.json";
  fs::create_directories(c.ref);
  fs::create_directories(c.pred);
  std::vector<std::int32_t> ref(kBigX * kBigY * kBigZ, 0), pred(ref.size(), 0);
  for (int i = 0; i < kBigX * kBigY; ++i) ref[voxel(i % kBigX, i / kBigX, 0)] = 1;
  pred[voxel(4, 4, 0)] = 1;
  ref[voxel(1, 1, 2)] = ref[voxel(2, 2, 3)] = 1;
  pred[voxel(1, 1, 2)] = pred[voxel(2, 2, 3)] = 2;
  ref[voxel(8, 8, 4)] = 1;
  ref[voxel(5, 5, 2)] = 2;
  pred[voxel(5, 5, 2)] = 2;
  pred[voxel(0, 9, 4)] = 1;
  const io::Affine affine = affine_of({{2, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1.5, 0}});
  write_labels_on(c.ref + "/big.nii.gz", ref, {kBigX, kBigY, kBigZ}, affine);
  write_labels_on(c.pred + "/big.nii.gz", pred, {kBigX, kBigY, kBigZ}, affine);
  return c;
}

CommandResult eval_components(const ComponentCase& c, const std::string& extra = "") {
  return run_voxgrad("eval --components --pred '" + c.pred + "' --ref '" + c.ref + "' --out '" + c.out + "' " + extra);
}

const json& size_bin(const json& components, const std::string& cls, const std::string& bin) {
  for (const json& b : components["per_class"][cls]["recall_by_size"])
    if (b["bin"] == bin) return b;
  throw std::runtime_error("no bin " + bin);
}

TEST(EvalCli, ComponentsAreDetectedOrMissedPerSizeBin) {
  const ComponentCase c = make_component_case("eval-components");
  const CommandResult r = eval_components(c);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json line = json::parse(lines_of(r.out).at(0));
  EXPECT_EQ(line["components_csv"], c.root + "/out/summary_components.csv");

  const json s = json::parse(read_file(c.out));
  const json& comps = s["components"];
  EXPECT_EQ(comps["connectivity"], 26);
  EXPECT_NE(comps["detected_rule"].get<std::string>().find("at least one"), std::string::npos);
  EXPECT_EQ(comps["table"], c.root + "/out/summary_components.csv");
  ASSERT_EQ(comps["size_bins"].size(), 4u);
  EXPECT_EQ(comps["size_bins"][1], json({{"bin", "100-999"}, {"min_voxels", 100}, {"max_voxels", 999}}));
  EXPECT_TRUE(comps["size_bins"][3]["max_voxels"].is_null());
  // Class 1: three components (the corner-touching pair is one), the slab alone found.
  EXPECT_EQ(comps["per_class"]["1"]["components"], 3);
  EXPECT_EQ(comps["per_class"]["1"]["detected"], 1);
  EXPECT_NEAR(comps["per_class"]["1"]["recall"].get<double>(), 1.0 / 3, 1e-12);
  EXPECT_EQ(size_bin(comps, "1", "<100"), json({{"bin", "<100"}, {"components", 2}, {"detected", 0}, {"recall", 0.0}}));
  EXPECT_EQ(size_bin(comps, "1", "100-999")["recall"], 1.0);
  EXPECT_TRUE(size_bin(comps, "1", "1000-9999")["recall"].is_null());
  EXPECT_EQ(comps["per_class"]["2"]["recall"], 1.0);
  EXPECT_EQ(metrics_of(s, "big", "1")["components"], 3);
  EXPECT_EQ(metrics_of(s, "big", "1")["components_detected"], 1);
  EXPECT_EQ(metrics_of(s, "big", "2")["components_detected"], 1);

  const auto rows = voxgrad::test::parse_csv(read_file(c.root + "/out/summary_components.csv"));
  ASSERT_EQ(rows.size(), 5u);
  EXPECT_EQ(rows[0], (std::vector<std::string>{"case", "class", "component", "voxels", "mm3", "detected",
                                               "overlap_voxels", "first_x", "first_y", "first_z"}));
  EXPECT_EQ(rows[1], (std::vector<std::string>{"big", "1", "1", "100", "300", "1", "1", "0", "0", "0"}));
  EXPECT_EQ(rows[2], (std::vector<std::string>{"big", "1", "2", "2", "6", "0", "0", "1", "1", "2"}));
  EXPECT_EQ(rows[3], (std::vector<std::string>{"big", "1", "3", "1", "3", "0", "0", "8", "8", "4"}));
  EXPECT_EQ(rows[4], (std::vector<std::string>{"big", "2", "1", "1", "3", "1", "1", "5", "5", "2"}));
}

TEST(EvalCli, WithoutComponentsNothingAboutThemIsWritten) {
  const ComponentCase c = make_component_case("eval-no-components");
  const CommandResult r = run_voxgrad("eval --pred '" + c.pred + "' --ref '" + c.ref + "' --out '" + c.out + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json s = json::parse(read_file(c.out));
  EXPECT_FALSE(s.contains("components"));
  EXPECT_FALSE(s.contains("calibration"));
  EXPECT_FALSE(metrics_of(s, "big", "1").contains("components"));
  EXPECT_FALSE(json::parse(r.out).contains("components_csv"));
  EXPECT_FALSE(fs::exists(c.root + "/out/summary_components.csv"));
}

TEST(EvalCli, ComponentsTableIsNeverWrittenOverAnInput) {
  const ComponentCase c = make_component_case("eval-components-input");
  fs::create_directories(c.root + "/out");
  fs::create_symlink(c.ref + "/big.nii.gz", c.root + "/out/summary_components.csv");
  const std::string before = read_file(c.ref + "/big.nii.gz");
  const CommandResult r = eval_components(c);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("components CSV"), std::string::npos) << r.err;
  EXPECT_EQ(read_file(c.ref + "/big.nii.gz"), before);
}

// Sizes of the 26-connected components of `value`, by a flood fill, each with its voxel indices.
std::vector<std::vector<std::int64_t>> components_of(const std::vector<std::int32_t>& v, int value,
                                                     const std::array<std::int64_t, 3>& zyx) {
  std::vector<std::vector<std::int64_t>> out;
  std::vector<char> seen(v.size(), 0);
  for (std::int64_t start = 0; start < static_cast<std::int64_t>(v.size()); ++start) {
    if (v[start] != value || seen[start]) continue;
    seen[start] = 1;
    std::vector<std::int64_t> members{start};
    for (std::size_t next = 0; next < members.size(); ++next) {
      const std::int64_t i = members[next];
      const std::int64_t x = i % zyx[2], y = i / zyx[2] % zyx[1], z = i / (zyx[2] * zyx[1]);
      for (int dz = -1; dz <= 1; ++dz)
        for (int dy = -1; dy <= 1; ++dy)
          for (int dx = -1; dx <= 1; ++dx) {
            const std::int64_t zz = z + dz, yy = y + dy, xx = x + dx;
            if (zz < 0 || zz >= zyx[0] || yy < 0 || yy >= zyx[1] || xx < 0 || xx >= zyx[2]) continue;
            const std::int64_t j = (zz * zyx[1] + yy) * zyx[2] + xx;
            if (v[j] == value && !seen[j]) {
              seen[j] = 1;
              members.push_back(j);
            }
          }
    }
    out.push_back(std::move(members));
  }
  return out;
}

TEST(EvalCli, ComponentsOnSynthDataFindTheOneStructureErased) {
  const std::string root = voxgrad::test::temp_dir("eval-components-synth");
  const CommandResult synth =
      run_voxgrad("synth --out '" + root + "/ds' --preset small-structures --cases 2 --test-cases 0 --size 32");
  ASSERT_EQ(synth.exit_code, 0) << synth.err;
  // The prediction: the reference with class 1's smallest component of the first case erased.
  fs::create_directories(root + "/pred");
  std::map<int, std::int64_t> components_per_class, voxels_per_class;
  std::int64_t erased_size = -1;
  for (const std::string name : {"synth_000", "synth_001"}) {
    const std::string file = root + "/ds/labelsTr/" + name + ".nii.gz";
    const io::Volume v = io::read_nifti(file);
    const voxgrad::Tensor t = v.to_labels();
    std::vector<std::int32_t> labels(t.data<std::int32_t>(), t.data<std::int32_t>() + t.numel());
    const std::array<std::int64_t, 3> zyx{t.shape()[0], t.shape()[1], t.shape()[2]};
    for (int k = 1; k <= 2; ++k) {
      const auto comps = components_of(labels, k, zyx);
      components_per_class[k] += static_cast<std::int64_t>(comps.size());
      for (const auto& c : comps) voxels_per_class[k] += static_cast<std::int64_t>(c.size());
      if (name == std::string("synth_000") && k == 1) {
        ASSERT_GE(comps.size(), 2u);
        const auto smallest = std::min_element(comps.begin(), comps.end(),
                                               [](const auto& a, const auto& b) { return a.size() < b.size(); });
        erased_size = static_cast<std::int64_t>(smallest->size());
        for (const std::int64_t i : *smallest) labels[static_cast<std::size_t>(i)] = 0;
      }
    }
    io::Volume pred = v;
    pred.data = voxgrad::from_vector(labels, t.shape());
    io::write_nifti(root + "/pred/" + name + ".nii.gz", pred, io::NiftiWriteType::UInt8);
  }
  const CommandResult r = run_voxgrad("eval --components --pred '" + root + "/pred' --ref '" + root +
                                      "/ds/labelsTr' --out '" + root + "/out/summary.json'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json s = json::parse(read_file(root + "/out/summary.json"));
  for (int k = 1; k <= 2; ++k) {
    const json& pc = s["components"]["per_class"][std::to_string(k)];
    EXPECT_EQ(pc["components"], components_per_class[k]) << k;
    EXPECT_EQ(pc["detected"], components_per_class[k] - (k == 1)) << k;
  }
  const auto rows = voxgrad::test::parse_csv(read_file(root + "/out/summary_components.csv"));
  std::map<int, std::int64_t> voxels_in_table;
  int missed = 0;
  for (std::size_t i = 1; i < rows.size(); ++i) {
    voxels_in_table[std::stoi(rows[i][1])] += std::stoll(rows[i][3]);
    // Voxels of 0.8 x 0.8 x 2 mm (synth's spacing).
    EXPECT_NEAR(std::stod(rows[i][4]), std::stod(rows[i][3]) * 0.8 * 0.8 * 2, 1e-4) << i;
    if (rows[i][5] == "0") {
      ++missed;
      EXPECT_EQ(rows[i][0], "synth_000");
      EXPECT_EQ(rows[i][1], "1");
      EXPECT_EQ(std::stoll(rows[i][3]), erased_size);
      EXPECT_EQ(rows[i][6], "0");
    } else {
      EXPECT_EQ(rows[i][3], rows[i][6]) << "every other component is predicted whole";
    }
  }
  EXPECT_EQ(missed, 1);
  EXPECT_EQ(voxels_in_table, voxels_per_class);
  EXPECT_EQ(static_cast<std::int64_t>(rows.size()) - 1, components_per_class[1] + components_per_class[2]);
}

// ---- --probabilities ------------------------------------------------------------------------------

// Probabilities (K, Z, Y, X) for make_dataset's cases: 0.8 for the predicted class, 0.1 for each of
// the other two (K = 3).
std::vector<float> confident_probabilities(const std::vector<std::int32_t>& pred, int classes = 3) {
  std::vector<float> p(pred.size() * classes);
  for (int k = 0; k < classes; ++k)
    for (std::size_t i = 0; i < pred.size(); ++i) p[k * pred.size() + i] = pred[i] == k ? 0.8f : 0.1f;
  return p;
}

void write_probabilities(const std::string& path, const std::vector<float>& p, int classes = 3,
                         const io::Affine& affine = io::identity_affine(),
                         std::vector<std::int64_t> zyx = {kZ, kY, kX}) {
  io::write_nifti(path, io::make_volume(voxgrad::from_vector(p, {classes, zyx[0], zyx[1], zyx[2]}), affine),
                  io::NiftiWriteType::Float32);
}

Dataset make_probability_dataset(const std::string& tag) {
  Dataset d = make_dataset(tag);
  fs::create_directories(d.root + "/prob");
  write_probabilities(d.root + "/prob/case_a_probabilities.nii.gz",
                      confident_probabilities(labels({{2, 1}, {8, 2}, {12, 0}})));
  write_probabilities(d.root + "/prob/case_b_probabilities.nii.gz", confident_probabilities(labels({{0, 1}, {2, 0}})));
  return d;
}

CommandResult eval_probabilities(const Dataset& d, const std::string& extra = "") {
  return eval(d, "--probabilities '" + d.root + "/prob' " + extra);
}

TEST(EvalCli, CalibrationAndVolumeRatiosMatchHandComputedValues) {
  const Dataset d = make_probability_dataset("eval-calibration");
  const CommandResult r = eval_probabilities(d);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json s = json::parse(read_file(d.root + "/out/summary.json"));
  // case_a, class 1: 6 voxels at 0.8 (bin 12), 4 of them class 1; 18 at 0.1 (bin 1), 2 of them.
  //   ECE = (|4 - 4.8| + |2 - 1.8|) / 24; soft volume 6 * 0.8 + 18 * 0.1 = 6.6 over 6 reference voxels.
  const json& a1 = metrics_of(s, "case_a", "1");
  EXPECT_NEAR(a1["ECE"].get<double>(), 1.0 / 24, 1e-6);
  EXPECT_NEAR(a1["soft_volume"].get<double>(), 6.6, 1e-5);
  EXPECT_NEAR(a1["volume_ratio_soft"].get<double>(), 1.1, 1e-6);
  EXPECT_EQ(a1["volume_ratio_hard"], 1.0);
  // case_a, class 2: 4 at 0.8, 2 of them class 2; 20 at 0.1, 2 of them. ECE = (|2 - 3.2| + |2 - 2|) / 24.
  const json& a2 = metrics_of(s, "case_a", "2");
  EXPECT_NEAR(a2["ECE"].get<double>(), 1.2 / 24, 1e-6);
  EXPECT_NEAR(a2["volume_ratio_soft"].get<double>(), (4 * 0.8 + 20 * 0.1) / 4, 1e-6);
  // case_b, class 1: 2 at 0.8, both class 1; 22 at 0.1, 2 of them. ECE = (|2 - 1.6| + |2 - 2.2|) / 24.
  const json& b1 = metrics_of(s, "case_b", "1");
  EXPECT_NEAR(b1["ECE"].get<double>(), 0.6 / 24, 1e-6);
  EXPECT_EQ(b1["volume_ratio_hard"], 0.5);
  EXPECT_NEAR(b1["volume_ratio_soft"].get<double>(), (2 * 0.8 + 22 * 0.1) / 4, 1e-6);
  // case_b, class 2: in neither volume: no ratio, but the probabilities still have an ECE (24 at 0.1, none).
  const json& b2 = metrics_of(s, "case_b", "2");
  EXPECT_TRUE(b2["volume_ratio_hard"].is_null());
  EXPECT_TRUE(b2["volume_ratio_soft"].is_null());
  EXPECT_NEAR(b2["ECE"].get<double>(), 0.1, 1e-6);
  // Means over the cases where each is defined.
  EXPECT_NEAR(s["mean"]["1"]["ECE"].get<double>(), (1.0 + 0.6) / 48, 1e-6);
  EXPECT_NEAR(s["mean"]["1"]["volume_ratio_hard"].get<double>(), 0.75, 1e-12);
  EXPECT_NEAR(s["mean"]["1"]["volume_ratio_soft"].get<double>(), (1.1 + 0.95) / 2, 1e-6);
  EXPECT_NEAR(s["mean"]["2"]["volume_ratio_soft"].get<double>(), 1.3, 1e-6);
  EXPECT_NEAR(s["mean"]["2"]["ECE"].get<double>(), (1.2 / 24 + 0.1) / 2, 1e-6);
  // Pooled over both cases' 48 voxels: class 1's bin 12 holds 8 voxels, 6 of them class 1.
  const json& cal = s["calibration"];
  EXPECT_EQ(cal["bins"], 15);
  EXPECT_EQ(cal["probabilities"], d.root + "/prob");
  EXPECT_NEAR(cal["per_class"]["1"]["ECE_pooled"].get<double>(), (std::abs(6 - 6.4) + std::abs(4 - 4.0)) / 48, 1e-6);
  const json& bin12 = cal["per_class"]["1"]["reliability"][12];
  EXPECT_EQ(bin12["voxels"], 8);
  EXPECT_NEAR(bin12["mean_probability"].get<double>(), 0.8, 1e-6);
  EXPECT_NEAR(bin12["fraction_positive"].get<double>(), 0.75, 1e-12);
  EXPECT_TRUE(cal["per_class"]["1"]["reliability"][5]["mean_probability"].is_null());
  // The nnU-Net keys stay as they were.
  EXPECT_NEAR(a1["Dice"].get<double>(), 2.0 / 3, 1e-12);
}

TEST(EvalCli, ProbabilitiesStoredWithXFlippedAreReoriented) {
  const Dataset d = make_probability_dataset("eval-calibration-flip");
  const std::vector<float> p = confident_probabilities(labels({{2, 1}, {8, 2}, {12, 0}}));
  std::vector<float> flipped(p.size());
  for (std::size_t i = 0; i < p.size(); ++i) flipped[i - i % kX + (kX - 1 - i % kX)] = p[i];
  write_probabilities(d.root + "/prob/case_a_probabilities.nii.gz", flipped, 3,
                      affine_of({{-1, 0, 0, kX - 1}, {0, 1, 0, 0}, {0, 0, 1, 0}}));
  const CommandResult r = eval_probabilities(d);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json s = json::parse(read_file(d.root + "/out/summary.json"));
  EXPECT_NEAR(metrics_of(s, "case_a", "1")["ECE"].get<double>(), 1.0 / 24, 1e-6);
  EXPECT_NEAR(metrics_of(s, "case_a", "2")["ECE"].get<double>(), 1.2 / 24, 1e-6);
}

// One error line on stderr holding every part (after the progress bar's line when the voxels were
// being read), exit 1, nothing written.
void expect_refused(const Dataset& d, const CommandResult& r, const std::vector<std::string>& parts) {
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  std::vector<std::string> err;
  for (const std::string& line : lines_of(r.err))
    if (line.rfind("eval ", 0) != 0) err.push_back(line);
  ASSERT_EQ(err.size(), 1u) << r.err;
  EXPECT_EQ(err[0].rfind("voxgrad: error: ", 0), 0u) << r.err;
  for (const std::string& part : parts) EXPECT_NE(err[0].find(part), std::string::npos) << part << "\n" << r.err;
  EXPECT_FALSE(voxgrad::test::has_source_text(err[0])) << r.err;
  EXPECT_FALSE(fs::exists(d.root + "/out/summary.json"));
}

TEST(EvalCli, MissingProbabilitiesFileIsOneLineNamingIt) {
  const Dataset d = make_probability_dataset("eval-prob-missing");
  fs::remove(d.root + "/prob/case_b_probabilities.nii.gz");
  expect_refused(d, eval_probabilities(d), {d.root + "/prob/case_b_probabilities.nii.gz", "--save-probabilities"});
}

TEST(EvalCli, ProbabilitiesWithoutAClassAxisAreRefusedNamingTheDims) {
  const Dataset d = make_probability_dataset("eval-prob-3d");
  io::write_nifti(d.root + "/prob/case_b_probabilities.nii.gz",
                  io::make_volume(voxgrad::from_vector(std::vector<float>(kX * kY * kZ, 0.5f), {kZ, kY, kX})));
  expect_refused(d, eval_probabilities(d), {"case_b_probabilities.nii.gz", "dims 4x3x2;", "4x3x2xK"});
}

TEST(EvalCli, ProbabilitiesOnAnotherGridAreRefusedNamingTheDims) {
  const Dataset d = make_probability_dataset("eval-prob-grid");
  write_probabilities(d.root + "/prob/case_b_probabilities.nii.gz", std::vector<float>(5 * kY * kZ * 3, 0.5f), 3,
                      io::identity_affine(), {kZ, kY, 5});
  expect_refused(d, eval_probabilities(d), {"case_b_probabilities.nii.gz", "5x3x2x3", "dims 5x3x2 vs 4x3x2"});
}

TEST(EvalCli, ProbabilitiesWithOtherClassCountsAreRefused) {
  const Dataset d = make_probability_dataset("eval-prob-classes");
  write_probabilities(d.root + "/prob/case_b_probabilities.nii.gz",
                      confident_probabilities(labels({{0, 1}, {2, 0}}), 4), 4);
  expect_refused(d, eval_probabilities(d), {"case_b_probabilities.nii.gz", "4x3x2x4", "case_a_probabilities.nii.gz"});
}

TEST(EvalCli, ProbabilitiesWithTooFewClassesForTheLabelsAreRefused) {
  Dataset d = make_probability_dataset("eval-prob-few");
  // Both files hold classes 0 and 1 only, but case_a's volumes hold class 2.
  write_probabilities(d.root + "/prob/case_a_probabilities.nii.gz", std::vector<float>(kX * kY * kZ * 2, 0.5f), 2);
  write_probabilities(d.root + "/prob/case_b_probabilities.nii.gz", std::vector<float>(kX * kY * kZ * 2, 0.5f), 2);
  expect_refused(d, eval_probabilities(d), {"case case_a", "class 2", "case_a_probabilities.nii.gz", "0..1"});
  // --labels asks for a class beyond the files: refused before any voxel is read.
  fs::remove(d.ref + "/case_a.nii.gz");
  fs::remove(d.pred + "/case_a.nii.gz");
  expect_refused(d, eval_probabilities(d, "--labels 1,2"), {"--labels 2", "case_b_probabilities.nii.gz", "0..1"});
}

TEST(EvalCli, NonFiniteProbabilityIsRefusedNamingTheVoxel) {
  const Dataset d = make_probability_dataset("eval-prob-nan");
  std::vector<float> p = confident_probabilities(labels({{0, 1}, {2, 0}}));
  p[2 * kX * kY * kZ + 5] = std::numeric_limits<float>::quiet_NaN();  // class 2, x 1, y 1, z 0
  write_probabilities(d.root + "/prob/case_b_probabilities.nii.gz", p);
  expect_refused(d, eval_probabilities(d), {"case_b_probabilities.nii.gz", "nan", "(1, 1, 0, 2)"});
  EXPECT_FALSE(fs::exists(d.root + "/out")) << "the output folder was made and left behind";
}

}  // namespace
