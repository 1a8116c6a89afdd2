// `voxgrad info` as a user meets it: one JSON line with exactly the promised keys per good file, one
// "voxgrad: error: PATH: reason" line per bad one and status 1, header values equal to what the
// reference library's nifti_tool prints, spacing and affine in mm with the file's unit named, NaN
// voxels and a NaN scl_inter reported as the command promises, and FIFOs and corrupt gzip refused.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "engine/json.h"
#include "io/nifti.h"
#include "tests/test_support.h"

namespace {

namespace io = voxgrad::io;
using nlohmann::json;
using voxgrad::test::CommandResult;
using voxgrad::test::run_voxgrad;

const std::string kCh2 = "/usr/share/mricron/templates/ch2.nii.gz";
const std::string kJhu = "/usr/share/mricron/templates/JHU-WhiteMatter-labels-2mm.nii.gz";
const std::string kReference =
    "/usr/share/doc/libnifti2-2/examples/ATestReferenceImageForReadingAndWriting.nii.gz";

// Exactly these, no more and no fewer.
const std::set<std::string> kKeys = {"path",   "format",    "pair",      "gzip", "dims", "datatype", "byte_order",
                                     "spacing", "units",    "affine",    "scl_slope", "scl_inter", "min", "max",
                                     "mean",    "nan_count"};

bool exists(const std::string& path) { return ::access(path.c_str(), R_OK) == 0; }
bool have_nifti_tool() { return std::system("command -v nifti_tool >/dev/null 2>&1") == 0; }

// Skips the test when a package's file is absent (tools/test installs the packages).
#define REQUIRE_FILE(path, package)                                                               \
  do {                                                                                            \
    if (!exists(path)) GTEST_SKIP() << (path) << " is absent (Debian package " << (package) << ")"; \
  } while (0)
#define REQUIRE_NIFTI_TOOL()                                                                      \
  do {                                                                                            \
    if (!have_nifti_tool()) GTEST_SKIP() << "nifti_tool is absent (Debian package nifti-bin)";    \
  } while (0)

std::string quoted(const std::string& s) { return "'" + s + "'"; }

using voxgrad::test::lines_of;

std::set<std::string> keys_of(const json& j) {
  std::set<std::string> keys;
  for (auto it = j.begin(); it != j.end(); ++it) keys.insert(it.key());
  return keys;
}

// `nifti_tool -disp_nim` as field name -> numbers (string fields are not needed here).
std::map<std::string, std::vector<double>> tool_nim(const std::string& file) {
  std::map<std::string, std::vector<double>> fields;
  FILE* p = ::popen(("nifti_tool -disp_nim -infiles " + quoted(file) + " 2>/dev/null").c_str(), "r");
  if (p == nullptr) return fields;
  std::string text;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) text.append(buf, n);
  EXPECT_EQ(::pclose(p), 0) << "nifti_tool -disp_nim " << file;
  bool table = false;
  for (const std::string& line : lines_of(text)) {
    if (line.find("-------------------") != std::string::npos) {
      table = true;
      continue;
    }
    std::istringstream row(line);
    std::string name, offset, nvals;
    if (!table || !(row >> name >> offset >> nvals)) continue;
    std::vector<double> values;
    for (std::string word; row >> word;) values.push_back(std::strtod(word.c_str(), nullptr));
    fields[name] = values;
  }
  return fields;
}

void expect_near_all(const json& got, const std::vector<double>& want, double tol, const std::string& what) {
  ASSERT_TRUE(got.is_array()) << what;
  ASSERT_EQ(got.size(), want.size()) << what;
  for (std::size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i].get<double>(), want[i], tol) << what << "[" << i << "]";
}

// A small float32 .nii holding NaNs (written by our writer), with its slope and inter patched.
std::string nan_file(const std::string& dir, const std::vector<float>& values, float slope, float inter) {
  const std::string path = dir + "/nan.nii";
  io::write_nifti(path, io::make_volume(voxgrad::from_vector(values, {1, 2, static_cast<std::int64_t>(values.size() / 2)})),
                  io::NiftiWriteType::Float32);
  // NIfTI-1: scl_slope at byte 112, scl_inter at 116, float32, little-endian as we write.
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(112);
  f.write(reinterpret_cast<const char*>(&slope), 4);
  f.write(reinterpret_cast<const char*>(&inter), 4);
  EXPECT_TRUE(f.good()) << path;
  return path;
}

TEST(InfoCli, GoodFilesPrintOneLineEachAndBadFilesOneErrorLine) {
  REQUIRE_FILE(kCh2, "mricron-data");
  REQUIRE_FILE(kReference, "nifti-bin");
  const std::string dir = voxgrad::test::temp_dir("info");
  const std::string garbage = dir + "/garbage.nii.gz";
  std::ofstream(garbage) << "this is not an image\n";
  const std::string missing = dir + "/missing.nii";

  const CommandResult r =
      run_voxgrad("info " + quoted(kCh2) + " " + quoted(garbage) + " " + quoted(kReference) + " " + quoted(missing));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  const auto out = lines_of(r.out);
  ASSERT_EQ(out.size(), 2u) << r.out;
  const json first = json::parse(out[0]), second = json::parse(out[1]);
  EXPECT_EQ(keys_of(first), kKeys);
  EXPECT_EQ(keys_of(second), kKeys);
  EXPECT_EQ(first.at("path"), kCh2);
  EXPECT_EQ(second.at("path"), kReference);

  const auto err = lines_of(r.err);
  ASSERT_EQ(err.size(), 2u) << r.err;
  const std::string bad[2] = {garbage, missing};
  for (int i = 0; i < 2; ++i) {
    const std::string prefix = "voxgrad: error: " + bad[i] + ": ";
    EXPECT_EQ(err[static_cast<std::size_t>(i)].rfind(prefix, 0), 0u) << err[static_cast<std::size_t>(i)];
    EXPECT_GT(err[static_cast<std::size_t>(i)].size(), prefix.size()) << "a reason follows the path";
    // The path once: the reader's message already starts with it.
    EXPECT_EQ(err[static_cast<std::size_t>(i)].find(bad[i], prefix.size()), std::string::npos)
        << err[static_cast<std::size_t>(i)];
  }
}

TEST(InfoCli, OnlyGoodFilesExitZeroWithNothingOnStderr) {
  REQUIRE_FILE(kCh2, "mricron-data");
  REQUIRE_FILE(kJhu, "mricron-data");
  // --device cuda is accepted and ignored: info never initialises CUDA, so it works without a GPU.
  const CommandResult r = run_voxgrad("info " + quoted(kCh2) + " " + quoted(kJhu) + " --device cuda");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  const auto out = lines_of(r.out);
  ASSERT_EQ(out.size(), 2u) << r.out;
  for (const auto& line : out) EXPECT_EQ(keys_of(json::parse(line)), kKeys) << line;
}

TEST(InfoCli, NoFileIsAUsageError) {
  const CommandResult r = run_voxgrad("info");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.out, "");
  ASSERT_EQ(lines_of(r.err).size(), 1u) << r.err;
  EXPECT_EQ(r.err.rfind("voxgrad: error: ", 0), 0u) << r.err;
}

// One `voxgrad info` line against nifti_tool's reading of the same file, field by field.
void expect_info_matches_tool(const json& j, const std::string& file) {
  SCOPED_TRACE(file);
  auto nim = tool_nim(file);
  const int ndim = static_cast<int>(nim.at("ndim").at(0));
  const int nifti_type = static_cast<int>(nim.at("nifti_type").at(0));  // 1: NIfTI-1 single file
  ASSERT_EQ(nifti_type, 1) << "a NIfTI-1 single file";
  EXPECT_EQ(j.at("path"), file);
  EXPECT_EQ(j.at("format"), "nifti1");
  EXPECT_EQ(j.at("pair"), false);
  const std::vector<double>& dim = nim.at("dim");
  const std::vector<double>& pixdim = nim.at("pixdim");
  expect_near_all(j.at("dims"), std::vector<double>(dim.begin() + 1, dim.begin() + 1 + ndim), 0, "dims");
  expect_near_all(j.at("spacing"), std::vector<double>(pixdim.begin() + 1, pixdim.begin() + 1 + ndim), 1e-6, "spacing");
  const std::map<int, std::string> type_names = {{2, "uint8"}, {4, "int16"}, {8, "int32"}, {16, "float32"}, {64, "float64"}};
  EXPECT_EQ(j.at("datatype"), type_names.at(static_cast<int>(nim.at("datatype").at(0))));
  EXPECT_EQ(j.at("byte_order"), nim.at("byteorder").at(0) == 2 ? "big" : "little");
  // The affine by the standard's precedence.
  const bool sform = nim.at("sform_code").at(0) > 0;
  ASSERT_TRUE(sform || nim.at("qform_code").at(0) > 0) << "the test files carry an orientation";
  const std::vector<double>& m = nim.at(sform ? "sto_xyz" : "qto_xyz");
  ASSERT_EQ(j.at("affine").size(), 4u);
  for (std::size_t row = 0; row < 4; ++row)
    expect_near_all(j.at("affine")[row], std::vector<double>(m.begin() + 4 * row, m.begin() + 4 * row + 4), 1e-5,
                    "affine row " + std::to_string(row));
  EXPECT_NEAR(j.at("scl_slope").get<double>(), nim.at("scl_slope").at(0), 1e-6);
  EXPECT_NEAR(j.at("scl_inter").get<double>(), nim.at("scl_inter").at(0), 1e-6);
}

TEST(InfoCli, Ch2MatchesNiftiTool) {
  REQUIRE_FILE(kCh2, "mricron-data");
  REQUIRE_NIFTI_TOOL();
  const CommandResult r = run_voxgrad("info " + quoted(kCh2));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(r.out);
  expect_info_matches_tool(j, kCh2);
  EXPECT_EQ(j.at("gzip"), true);
  EXPECT_EQ(j.at("nan_count"), 0);
  EXPECT_LE(j.at("min").get<double>(), j.at("mean").get<double>());
  EXPECT_LE(j.at("mean").get<double>(), j.at("max").get<double>());
}

// The reference image's raw voxels are their linear indices 0..n-1, so the scaled statistics are
// known exactly from nifti_tool's nvox, scl_slope and scl_inter.
TEST(InfoCli, ReferenceImageStatisticsFollowFromItsDefinition) {
  REQUIRE_FILE(kReference, "nifti-bin");
  REQUIRE_NIFTI_TOOL();
  const CommandResult r = run_voxgrad("info " + quoted(kReference));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(r.out);
  // Big-endian, 5-D, with a scaling and a spacing of its own on every axis: the header fields too.
  expect_info_matches_tool(j, kReference);
  auto nim = tool_nim(kReference);
  const double n = nim.at("nvox").at(0), slope = nim.at("scl_slope").at(0), inter = nim.at("scl_inter").at(0);
  EXPECT_EQ(j.at("byte_order"), "big");
  EXPECT_EQ(j.at("datatype"), "int32");
  EXPECT_DOUBLE_EQ(j.at("min").get<double>(), inter);
  EXPECT_DOUBLE_EQ(j.at("max").get<double>(), slope * (n - 1) + inter);
  EXPECT_NEAR(j.at("mean").get<double>(), slope * (n - 1) / 2 + inter, 1e-9 * (slope * n + inter));
  EXPECT_EQ(j.at("nan_count"), 0);
}

TEST(InfoCli, NanVoxelsAreCountedAndLeftOutOfTheStatistics) {
  const std::string dir = voxgrad::test::temp_dir("info-nan");
  const float nan = std::nanf("");
  const std::vector<float> values = {1, nan, 2, 3, nan, 6};
  // slope 0: the standard's "no scaling".
  const CommandResult plain = run_voxgrad("info " + quoted(nan_file(dir, values, 0.0f, 0.0f)));
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  json j = json::parse(plain.out);
  EXPECT_EQ(j.at("datatype"), "float32");
  EXPECT_EQ(j.at("nan_count"), 2);
  EXPECT_DOUBLE_EQ(j.at("min").get<double>(), 1);
  EXPECT_DOUBLE_EQ(j.at("max").get<double>(), 6);
  EXPECT_DOUBLE_EQ(j.at("mean").get<double>(), 3);
  EXPECT_EQ(j.at("scl_slope"), 0);
  EXPECT_EQ(j.at("scl_inter"), 0);

  // slope 2 and a NaN inter: scl_inter null, the inter counts as 0, the slope still applies.
  const CommandResult scaled = run_voxgrad("info " + quoted(nan_file(dir, values, 2.0f, nan)));
  ASSERT_EQ(scaled.exit_code, 0) << scaled.err;
  j = json::parse(scaled.out);
  EXPECT_EQ(keys_of(j), kKeys);
  EXPECT_TRUE(j.at("scl_inter").is_null()) << scaled.out;
  EXPECT_EQ(j.at("scl_slope"), 2);
  EXPECT_EQ(j.at("nan_count"), 2);
  EXPECT_DOUBLE_EQ(j.at("min").get<double>(), 2);
  EXPECT_DOUBLE_EQ(j.at("max").get<double>(), 12);
  EXPECT_DOUBLE_EQ(j.at("mean").get<double>(), 6);

  // Every voxel NaN: no statistics to give, but the count.
  const CommandResult all_nan = run_voxgrad("info " + quoted(nan_file(dir, {nan, nan}, 0.0f, 0.0f)));
  ASSERT_EQ(all_nan.exit_code, 0) << all_nan.err;
  j = json::parse(all_nan.out);
  EXPECT_EQ(j.at("nan_count"), 2);
  EXPECT_TRUE(j.at("min").is_null()) << all_nan.out;
  EXPECT_TRUE(j.at("max").is_null()) << all_nan.out;
  EXPECT_TRUE(j.at("mean").is_null()) << all_nan.out;
}

// The same grid stored in metres, millimetres, micrometres and with no unit: info prints spacing
// and affine in mm, and the unit the file declared.
TEST(InfoCli, SpacingAndAffineInMillimetresWithTheFilesUnit) {
  const std::string dir = voxgrad::test::temp_dir("info-units");
  std::string args;
  const std::pair<int, const char*> units[] = {{1, "m"}, {2, "mm"}, {3, "um"}, {0, "unknown"}};
  for (const auto& [code, name] : units) {
    const double per_mm = code == 1 ? 1e-3 : code == 3 ? 1e3 : 1.0;  // file units per mm
    io::Affine a = io::identity_affine();
    const double zoom[3] = {2, 3, 4}, offset[3] = {10, -20, 30};
    for (int i = 0; i < 3; ++i) {
      a[static_cast<std::size_t>(i)][static_cast<std::size_t>(i)] = zoom[i] * per_mm;
      a[static_cast<std::size_t>(i)][3] = offset[i] * per_mm;
    }
    io::Volume v = io::make_volume(voxgrad::zeros({2, 2, 2}), a);
    v.xyzt_units = code | 8;
    const std::string path = dir + "/" + name + ".nii.gz";
    io::write_nifti(path, v, io::NiftiWriteType::UInt8);
    args.append(" ").append(quoted(path));  // not " " + ...: GCC 12 warns falsely (-Wrestrict)
  }
  const CommandResult r = run_voxgrad("info" + args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto out = lines_of(r.out);
  ASSERT_EQ(out.size(), 4u) << r.out;
  for (std::size_t f = 0; f < 4; ++f) {
    const json j = json::parse(out[f]);
    SCOPED_TRACE(units[f].second);
    EXPECT_EQ(keys_of(j), kKeys);
    EXPECT_EQ(j.at("units"), units[f].second);
    expect_near_all(j.at("spacing"), {2, 3, 4}, 1e-4, "spacing");
    expect_near_all(j.at("affine")[0], {2, 0, 0, 10}, 1e-4, "affine row 0");
    expect_near_all(j.at("affine")[1], {0, 3, 0, -20}, 1e-4, "affine row 1");
    expect_near_all(j.at("affine")[2], {0, 0, 4, 30}, 1e-4, "affine row 2");
  }
}

// A FIFO named like an image would block open() for ever: info refuses it at once with exit 1,
// and still prints the good file named after it. (Run under `timeout`, so an info that blocks
// fails this test instead of hanging it.)
TEST(InfoCli, FifosAreRefusedAtOnce) {
  const std::string dir = voxgrad::test::temp_dir("info-fifo");
  const std::string fifo = dir + "/x.nii", fifo_gz = dir + "/x.nii.gz", good = dir + "/good.nii";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  ASSERT_EQ(::mkfifo(fifo_gz.c_str(), 0600), 0);
  io::write_nifti(good, io::make_volume(voxgrad::zeros({2, 2})));
  const auto t0 = std::chrono::steady_clock::now();
  const CommandResult r =
      run_voxgrad("info " + quoted(fifo) + " " + quoted(fifo_gz) + " " + quoted(good), "timeout -s KILL 20");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_LT(seconds, 10.0);
  EXPECT_EQ(r.err, "voxgrad: error: " + fifo + ": not a regular file (a FIFO)\n" + "voxgrad: error: " + fifo_gz +
                       ": not a regular file (a FIFO)\n");
  ASSERT_EQ(lines_of(r.out).size(), 1u) << r.out;
  EXPECT_EQ(json::parse(lines_of(r.out)[0]).at("path"), good);
}

// A gzip trailer that disagrees with the data is an error, in fixed words, never a silent read.
TEST(InfoCli, CorruptGzipIsRefused) {
  const std::string corpus = voxgrad::test::source_path("tests/data/nifti_malformed/");
  const std::string crc = corpus + "crc_mismatch.nii.gz", cut = corpus + "truncated_trailer.nii.gz";
  const CommandResult r = run_voxgrad("info " + quoted(crc) + " " + quoted(cut));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
  const auto err = lines_of(r.err);
  ASSERT_EQ(err.size(), 2u) << r.err;
  EXPECT_EQ(err[0], "voxgrad: error: " + crc + ": corrupt gzip data (CRC mismatch)");
  EXPECT_EQ(err[1].rfind("voxgrad: error: " + cut + ": file truncated", 0), 0u) << err[1];
}

// An ANALYZE 7.5 pair (a NIfTI pair made by nifti_tool with its magic cleared, as the reference
// library then also reads it) prints format "analyze".
TEST(InfoCli, AnalyzePairPrintsFormatAnalyze) {
  REQUIRE_FILE(kJhu, "mricron-data");
  REQUIRE_NIFTI_TOOL();
  const std::string dir = voxgrad::test::temp_dir("info-analyze");
  const std::string hdr = dir + "/jhu.hdr";
  ASSERT_EQ(std::system(("nifti_tool -copy_im -prefix " + quoted(hdr) + " -infiles " + quoted(kJhu) +
                         " >/dev/null 2>&1")
                            .c_str()),
            0);
  {
    std::fstream f(hdr, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(344);
    f.write("\0\0\0\0", 4);
    ASSERT_TRUE(f.good());
  }
  ASSERT_EQ(tool_nim(hdr).at("nifti_type").at(0), 0) << "nifti_tool should see ANALYZE";
  const CommandResult r = run_voxgrad("info " + quoted(hdr));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j.at("format"), "analyze");
  EXPECT_EQ(j.at("pair"), true);
  EXPECT_EQ(j.at("gzip"), false);
  EXPECT_EQ(keys_of(j), kKeys);
}

}  // namespace
