// The NIfTI reader and writer against files no one here wrote (Debian's mricron-data, nifti-bin and
// insighttoolkit5-examples) and against the reference C library: every expected number comes from
// `nifti_tool`, run here at test time, never from values pasted into this file.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <span>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "engine/json.h"
#include "io/gzip_stream.h"
#include "io/nifti.h"
#include "tests/test_support.h"

namespace {

namespace io = voxgrad::io;
using voxgrad::DType;
using voxgrad::Shape;
using voxgrad::Tensor;
using voxgrad::test::all_close;

const std::string kTemplates = "/usr/share/mricron/templates/";
const std::string kItkData = "/usr/share/doc/insighttoolkit5-examples/examples/Data/";
const std::string kReference =
    "/usr/share/doc/libnifti2-2/examples/ATestReferenceImageForReadingAndWriting.nii.gz";

bool exists(const std::string& path) { return ::access(path.c_str(), R_OK) == 0; }

bool have_nifti_tool() {
  static const bool found = std::system("command -v nifti_tool >/dev/null 2>&1") == 0;
  return found;
}

// Skips the test unless the package file and nifti_tool are both here (tools/test installs them).
#define REQUIRE_FILE(path, package)                                                               \
  do {                                                                                            \
    if (!exists(path)) GTEST_SKIP() << (path) << " is absent (Debian package " << (package) << ")"; \
    if (!have_nifti_tool()) GTEST_SKIP() << "nifti_tool is absent (Debian package nifti-bin)";    \
  } while (0)

std::string quoted(const std::string& s) { return "'" + s + "'"; }

// Runs a shell command and returns its stdout; a failing command fails the test that asked.
std::string capture(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen((cmd + " 2>/dev/null").c_str(), "r");
  if (p == nullptr) {
    ADD_FAILURE() << "cannot run: " << cmd;
    return out;
  }
  char buf[1 << 16];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  const int status = ::pclose(p);
  EXPECT_EQ(status, 0) << cmd;
  return out;
}

// The "all fields" table of `nifti_tool -disp_nim` or `-disp_hdr`: field name -> the values text.
struct ToolFields {
  std::string file;
  std::map<std::string, std::string> values;

  bool has(const std::string& name) const { return values.count(name) != 0; }
  std::string str(const std::string& name) const {
    const auto it = values.find(name);
    if (it == values.end()) {
      ADD_FAILURE() << "nifti_tool printed no field '" << name << "' for " << file;
      return "";
    }
    return it->second;
  }
  std::vector<double> nums(const std::string& name) const {
    std::istringstream in(str(name));
    std::vector<double> v;
    for (std::string word; in >> word;) v.push_back(std::strtod(word.c_str(), nullptr));
    return v;
  }
  double num(const std::string& name) const {
    const std::vector<double> v = nums(name);
    EXPECT_EQ(v.size(), 1u) << name << " of " << file;
    return v.empty() ? NAN : v[0];
  }
  // A 4x4 matrix printed as 16 numbers, row-major.
  io::Affine mat44(const std::string& name) const {
    const std::vector<double> v = nums(name);
    io::Affine a{};
    EXPECT_EQ(v.size(), 16u) << name << " of " << file;
    for (std::size_t i = 0; i < 16 && i < v.size(); ++i) a[i / 4][i % 4] = v[i];
    return a;
  }
};

ToolFields tool_fields(const std::string& action, const std::string& file) {
  ToolFields f;
  f.file = file;
  std::istringstream in(capture("nifti_tool " + action + " -infiles " + quoted(file)));
  bool table = false;
  for (std::string line; std::getline(in, line);) {
    if (line.find("-------------------") != std::string::npos) {
      table = true;
      continue;
    }
    if (!table || line.empty()) continue;
    std::istringstream row(line);
    std::string name, offset, nvals;
    if (!(row >> name >> offset >> nvals)) continue;
    std::string rest;
    std::getline(row, rest);
    const auto first = rest.find_first_not_of(' ');
    rest = first == std::string::npos ? "" : rest.substr(first);
    while (!rest.empty() && (rest.back() == ' ' || rest.back() == '\r')) rest.pop_back();
    f.values[name] = rest;
  }
  EXPECT_FALSE(f.values.empty()) << "nifti_tool " << action << " printed no fields for " << file;
  return f;
}

// The raw (unscaled) values nifti_tool prints for `-disp_ci` with 7 indices (-1: the whole axis).
std::vector<double> tool_values(const std::string& file, const std::array<std::int64_t, 7>& at) {
  std::ostringstream cmd;
  cmd << "nifti_tool -quiet -disp_ci";
  for (const std::int64_t i : at) cmd << ' ' << i;
  cmd << " -infiles " << quoted(file);
  std::istringstream in(capture(cmd.str()));
  std::vector<double> v;
  for (std::string word; in >> word;) v.push_back(std::strtod(word.c_str(), nullptr));
  return v;
}

// Raw voxel i of `raw` (host byte order, source type) as a double.
double raw_value(const io::NiftiRaw& raw, std::int64_t i) {
  const std::byte* p = raw.data();
  auto load = [&](auto zero) {
    decltype(zero) v;
    std::memcpy(&v, p + i * static_cast<std::int64_t>(sizeof v), sizeof v);
    return static_cast<double>(v);
  };
  switch (raw.header.datatype) {
    case io::nifti_dt::kUInt8: return load(std::uint8_t{});
    case io::nifti_dt::kInt8: return load(std::int8_t{});
    case io::nifti_dt::kInt16: return load(std::int16_t{});
    case io::nifti_dt::kUInt16: return load(std::uint16_t{});
    case io::nifti_dt::kInt32: return load(std::int32_t{});
    case io::nifti_dt::kUInt32: return load(std::uint32_t{});
    case io::nifti_dt::kInt64: return load(std::int64_t{});
    case io::nifti_dt::kUInt64: return load(std::uint64_t{});
    case io::nifti_dt::kFloat32: return load(float{});
    case io::nifti_dt::kFloat64: return load(double{});
  }
  ADD_FAILURE() << "unexpected datatype " << raw.header.datatype;
  return NAN;
}

bool is_float_type(int datatype) {
  return datatype == io::nifti_dt::kFloat32 || datatype == io::nifti_dt::kFloat64;
}

std::vector<double> flat(const io::Affine& a) {
  std::vector<double> v;
  for (const auto& row : a) v.insert(v.end(), row.begin(), row.end());
  return v;
}

std::string trimmed(std::string s) {
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

// nifti_tool prints floats with six decimals; affines it computes in float.
constexpr double kPrintAtol = 1e-5, kPrintRtol = 1e-6;

// nifti_type as nifti1_io numbers it: 0 ANALYZE, 1 NIfTI-1 single file, 2 NIfTI-1 pair, 4/5 NIfTI-2.
int expected_nifti_type(const io::NiftiHeader& h) {
  switch (h.format) {
    case io::NiftiFormat::Analyze: return 0;
    case io::NiftiFormat::Nifti1: return h.pair ? 2 : 1;
    case io::NiftiFormat::Nifti2: return h.pair ? 5 : 4;
  }
  return -1;
}

// Every header field nifti_tool shows, against ours.
void expect_header_matches_tool(const io::NiftiHeader& h, const std::string& file) {
  SCOPED_TRACE(file);
  const ToolFields nim = tool_fields("-disp_nim", file);
  const int ndim = static_cast<int>(nim.num("ndim"));
  ASSERT_EQ(h.ndim(), ndim);
  const std::vector<double> dim = nim.nums("dim"), pixdim = nim.nums("pixdim");
  ASSERT_EQ(dim.size(), 8u);
  ASSERT_EQ(pixdim.size(), 8u);
  for (int i = 1; i <= ndim; ++i) {
    EXPECT_EQ(h.dim[static_cast<std::size_t>(i)], static_cast<std::int64_t>(dim[static_cast<std::size_t>(i)])) << i;
    EXPECT_NEAR(h.pixdim[static_cast<std::size_t>(i)], pixdim[static_cast<std::size_t>(i)], kPrintAtol) << i;
  }
  EXPECT_EQ(h.numel(), static_cast<std::int64_t>(nim.num("nvox")));
  EXPECT_EQ(h.datatype, static_cast<int>(nim.num("datatype")));
  EXPECT_EQ(h.bytes_per_voxel(), static_cast<std::int64_t>(nim.num("nbyper")));
  EXPECT_EQ(h.byte_order == io::ByteOrder::Big ? 2 : 1, static_cast<int>(nim.num("byteorder")));
  EXPECT_EQ(expected_nifti_type(h), static_cast<int>(nim.num("nifti_type")));
  EXPECT_NEAR(h.scl_slope, nim.num("scl_slope"), kPrintAtol);
  EXPECT_NEAR(h.scl_inter, nim.num("scl_inter"), kPrintAtol);
  EXPECT_NEAR(h.cal_min, nim.num("cal_min"), kPrintAtol);
  EXPECT_NEAR(h.cal_max, nim.num("cal_max"), kPrintAtol);
  EXPECT_NEAR(h.toffset, nim.num("toffset"), kPrintAtol);
  EXPECT_NEAR(h.slice_duration, nim.num("slice_duration"), kPrintAtol);
  EXPECT_EQ(h.intent_code, static_cast<int>(nim.num("intent_code")));
  EXPECT_EQ(h.xyzt_units & 0x07, static_cast<int>(nim.num("xyz_units")));
  EXPECT_EQ(h.xyzt_units & 0x38, static_cast<int>(nim.num("time_units")));
  EXPECT_EQ(h.qform_code, static_cast<int>(nim.num("qform_code")));
  EXPECT_EQ(h.sform_code, static_cast<int>(nim.num("sform_code")));
  // nifti1_io keeps 79 of descrip's 80 bytes and 15 of intent_name's 16 (it writes a NUL at the end).
  EXPECT_EQ(trimmed(h.descrip.substr(0, 79)), nim.str("descrip"));
  EXPECT_EQ(trimmed(h.intent_name.substr(0, 15)), nim.str("intent_name"));
  if (h.qform_code > 0) {
    EXPECT_NEAR(h.quatern_b, nim.num("quatern_b"), kPrintAtol);
    EXPECT_NEAR(h.quatern_c, nim.num("quatern_c"), kPrintAtol);
    EXPECT_NEAR(h.quatern_d, nim.num("quatern_d"), kPrintAtol);
    EXPECT_NEAR(h.qoffset_x, nim.num("qoffset_x"), kPrintAtol);
    EXPECT_NEAR(h.qoffset_y, nim.num("qoffset_y"), kPrintAtol);
    EXPECT_NEAR(h.qoffset_z, nim.num("qoffset_z"), kPrintAtol);
    EXPECT_TRUE(all_close(flat(h.qform_affine), flat(nim.mat44("qto_xyz")), kPrintAtol, kPrintRtol)) << "qform";
  }
  if (h.sform_code > 0) {
    EXPECT_TRUE(all_close(flat(h.sform_affine), flat(nim.mat44("sto_xyz")), kPrintAtol, kPrintRtol)) << "sform";
  }
  // The standard's precedence: sform, else qform, else (not NIfTI-oriented) pixdim only.
  if (h.sform_code > 0) {
    EXPECT_TRUE(all_close(flat(h.affine), flat(nim.mat44("sto_xyz")), kPrintAtol, kPrintRtol)) << "affine";
  } else if (h.qform_code > 0) {
    EXPECT_TRUE(all_close(flat(h.affine), flat(nim.mat44("qto_xyz")), kPrintAtol, kPrintRtol)) << "affine";
  }

  // -disp_hdr shows the header's bytes as stored, unswapped: compared only for little-endian files.
  if (h.format == io::NiftiFormat::Nifti1 && h.byte_order == io::ByteOrder::Little) {
    const ToolFields hdr = tool_fields("-disp_hdr", file);
    EXPECT_EQ(h.sizeof_hdr, static_cast<int>(hdr.num("sizeof_hdr")));
    EXPECT_EQ(h.bitpix, static_cast<int>(hdr.num("bitpix")));
    EXPECT_EQ(h.vox_offset, static_cast<std::int64_t>(hdr.num("vox_offset")));
    EXPECT_NEAR(h.pixdim[0], hdr.nums("pixdim").at(0), kPrintAtol) << "qfac";
    const char* rows[3] = {"srow_x", "srow_y", "srow_z"};
    for (int r = 0; r < 3; ++r) {
      const std::vector<double> want = hdr.nums(rows[r]);
      EXPECT_TRUE(all_close(std::vector<double>(h.srow[r].begin(), h.srow[r].end()), want, kPrintAtol, kPrintRtol))
          << rows[r];
    }
  }
}

// Indices of the slabs to sample: five (k, t, u, v, w) positions from the first to the last
// along every axis past y, each one whole x-y slice: cheap, and every axis's stride is exercised.
std::vector<std::array<std::int64_t, 7>> sample_slices(const io::NiftiHeader& h) {
  std::vector<std::array<std::int64_t, 7>> out;
  for (int s = 0; s < 5; ++s) {
    std::array<std::int64_t, 7> at{-1, -1, 0, 0, 0, 0, 0};
    for (int axis = 3; axis <= h.ndim(); ++axis)
      at[static_cast<std::size_t>(axis - 1)] = (s * (h.dim[static_cast<std::size_t>(axis)] - 1)) / 4;
    if (h.ndim() < 2) at[1] = 0;
    out.push_back(at);
  }
  return out;
}

// Flat index of voxel (0, 0, at[2], ..., at[6]).
std::int64_t slice_offset(const io::NiftiHeader& h, const std::array<std::int64_t, 7>& at) {
  std::int64_t offset = 0, stride = 1;
  for (int axis = 1; axis <= h.ndim(); ++axis) {
    const std::int64_t i = at[static_cast<std::size_t>(axis - 1)];
    offset += (i < 0 ? 0 : i) * stride;
    stride *= h.dim[static_cast<std::size_t>(axis)];
  }
  return offset;
}

// Our raw voxels and our scaled float32 volume on sampled slices against nifti_tool's values.
void expect_voxels_match_tool(const std::string& file) {
  SCOPED_TRACE(file);
  const io::NiftiRaw raw = io::read_nifti_raw(file);
  const io::NiftiHeader& h = raw.header;
  const Tensor scaled = io::read_nifti(file).to_float32();
  ASSERT_EQ(scaled.shape(), h.shape());
  const float* f = scaled.data<float>();
  const std::int64_t slice = h.dim[1] * (h.ndim() >= 2 ? h.dim[2] : 1);
  const bool floats = is_float_type(h.datatype);
  const double inter = std::isfinite(h.scl_inter) ? h.scl_inter : 0.0;
  for (const auto& at : sample_slices(h)) {
    const std::vector<double> want = tool_values(file, at);
    ASSERT_EQ(static_cast<std::int64_t>(want.size()), slice) << "k=" << at[2] << " t=" << at[3];
    const std::int64_t base = slice_offset(h, at);
    std::vector<double> ours(want.size()), ours_scaled(want.size()), want_scaled(want.size());
    for (std::int64_t i = 0; i < slice; ++i) {
      ours[static_cast<std::size_t>(i)] = raw_value(raw, base + i);
      ours_scaled[static_cast<std::size_t>(i)] = f[base + i];
      const double w = want[static_cast<std::size_t>(i)];
      want_scaled[static_cast<std::size_t>(i)] = h.has_scaling() ? h.scl_slope * w + inter : w;
    }
    EXPECT_TRUE(all_close(ours, want, floats ? 1e-6 : 0.0, floats ? 1e-7 : 0.0)) << "raw, k=" << at[2];
    EXPECT_TRUE(all_close(ours_scaled, want_scaled, 1e-5, 1e-6)) << "float32, k=" << at[2];
  }
}

struct RealFile {
  const char* name;  // test-name suffix
  std::string path;
  const char* package;
};

std::vector<RealFile> real_files() {
  return {
      {"ch2", kTemplates + "ch2.nii.gz", "mricron-data"},
      {"aal", kTemplates + "aal.nii.gz", "mricron-data"},
      {"inia19_t1_brain", kTemplates + "inia19-t1-brain.nii.gz", "mricron-data"},
      {"inia19_NeuroMaps", kTemplates + "inia19-NeuroMaps.nii.gz", "mricron-data"},
      {"JHU_WhiteMatter_labels_2mm", kTemplates + "JHU-WhiteMatter-labels-2mm.nii.gz", "mricron-data"},
      {"nifti_reference", kReference, "nifti-bin"},
      {"itk_T1UCharRaw", kItkData + "KmeansTest_T1UCharRaw.nii.gz", "insighttoolkit5-examples"},
      {"itk_T1KmeansSegmentation", kItkData + "KmeansTest_T1KmeansPrelimSegmentation.nii.gz",
       "insighttoolkit5-examples"},
  };
}

void PrintTo(const RealFile& f, std::ostream* os) { *os << f.path; }

class RealNifti : public ::testing::TestWithParam<RealFile> {};

TEST_P(RealNifti, HeaderMatchesNiftiTool) {
  REQUIRE_FILE(GetParam().path, GetParam().package);
  const io::NiftiHeader h = io::read_nifti_header(GetParam().path);
  EXPECT_FALSE(h.pair);
  EXPECT_TRUE(h.gzip);
  expect_header_matches_tool(h, GetParam().path);
}

TEST_P(RealNifti, VoxelsMatchNiftiTool) {
  REQUIRE_FILE(GetParam().path, GetParam().package);
  expect_voxels_match_tool(GetParam().path);
}

// The raw stats `voxgrad info` prints agree with a plain loop over the scaled float32 volume.
TEST_P(RealNifti, StatsAgreeWithTheFloatVolume) {
  REQUIRE_FILE(GetParam().path, GetParam().package);
  const io::NiftiRaw raw = io::read_nifti_raw(GetParam().path);
  const io::VoxelStats stats = io::raw_stats(raw);
  const Tensor f = io::raw_to_float32(raw);
  const float* p = f.data<float>();
  double lo = INFINITY, hi = -INFINITY, sum = 0;
  for (std::int64_t i = 0; i < f.numel(); ++i) {
    lo = std::min(lo, static_cast<double>(p[i]));
    hi = std::max(hi, static_cast<double>(p[i]));
    sum += p[i];
  }
  EXPECT_EQ(stats.nan_count, 0);
  EXPECT_EQ(stats.count, f.numel());
  EXPECT_NEAR(stats.min, lo, 1e-6 * std::fabs(lo) + 1e-6);
  EXPECT_NEAR(stats.max, hi, 1e-6 * std::fabs(hi) + 1e-6);
  EXPECT_NEAR(stats.mean, sum / static_cast<double>(f.numel()), 1e-6 * std::fabs(hi) + 1e-6);
}

INSTANTIATE_TEST_SUITE_P(DebianFiles, RealNifti, ::testing::ValuesIn(real_files()),
                         [](const ::testing::TestParamInfo<RealFile>& info) { return std::string(info.param.name); });

// nifti_tool -copy_im makes .hdr/.img and .hdr.gz/.img.gz pairs; we read them as the source, by
// either name. The smaller files: labels with extensions, the 5-D big-endian reference, a uint8 label map.
std::vector<RealFile> pair_sources() {
  return {
      {"inia19_NeuroMaps", kTemplates + "inia19-NeuroMaps.nii.gz", "mricron-data"},
      {"JHU_WhiteMatter_labels_2mm", kTemplates + "JHU-WhiteMatter-labels-2mm.nii.gz", "mricron-data"},
      {"nifti_reference", kReference, "nifti-bin"},
      {"itk_T1KmeansSegmentation", kItkData + "KmeansTest_T1KmeansPrelimSegmentation.nii.gz",
       "insighttoolkit5-examples"},
  };
}

class RealNiftiPair : public ::testing::TestWithParam<RealFile> {};

TEST_P(RealNiftiPair, MadeByNiftiToolReadsLikeTheSource) {
  REQUIRE_FILE(GetParam().path, GetParam().package);
  const std::string& src = GetParam().path;
  const io::NiftiRaw want = io::read_nifti_raw(src);
  const std::string dir = voxgrad::test::temp_dir("pair");
  for (const std::string ext : {".hdr", ".hdr.gz"}) {
    const std::string out = dir + "/copy" + ext;
    capture("nifti_tool -copy_im -prefix " + quoted(out) + " -infiles " + quoted(src));
    const std::string image = dir + (ext == ".hdr" ? "/copy.img" : "/copy.img.gz");
    for (const std::string& name : {out, image}) {
      SCOPED_TRACE(name);
      const io::NiftiRaw got = io::read_nifti_raw(name);
      const io::NiftiHeader& g = got.header;
      const io::NiftiHeader& w = want.header;
      EXPECT_TRUE(g.pair);
      EXPECT_EQ(g.gzip, ext == ".hdr.gz");
      EXPECT_EQ(g.path, out);
      EXPECT_EQ(g.image_path, image);
      EXPECT_EQ(g.format, io::NiftiFormat::Nifti1);
      // nifti_tool's copy folds axes past t into t (the 5-D reference comes back 4-D with nt*nu
      // volumes); the copy's own header is checked against nifti_tool below, the grid here.
      EXPECT_EQ(g.numel(), w.numel());
      for (std::size_t a = 1; a <= 3; ++a) {
        EXPECT_EQ(g.dim[a], w.dim[a]) << "dim " << a;
        EXPECT_EQ(g.pixdim[a], w.pixdim[a]) << "pixdim " << a;
      }
      EXPECT_EQ(g.datatype, w.datatype);
      EXPECT_EQ(g.scl_slope, w.scl_slope);
      EXPECT_EQ(g.scl_inter, w.scl_inter);
      EXPECT_EQ(g.qform_code, w.qform_code);
      EXPECT_EQ(g.sform_code, w.sform_code);
      EXPECT_EQ(g.intent_code, w.intent_code);
      EXPECT_EQ(flat(g.affine), flat(w.affine));
      ASSERT_EQ(got.nbytes, want.nbytes);
      EXPECT_EQ(std::memcmp(got.data(), want.data(), got.nbytes), 0) << "voxels differ";
      if (name == out) expect_header_matches_tool(g, out);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DebianFiles, RealNiftiPair, ::testing::ValuesIn(pair_sources()),
                         [](const ::testing::TestParamInfo<RealFile>& info) { return std::string(info.param.name); });

// nifti-bin's reference image: big-endian int32, 5-D, with a scaling, every raw voxel equal to its
// linear index. Every voxel, not a sample: the byte swap and the strides have nowhere to hide.
TEST(RealNiftiReference, EveryVoxelIsSlopeTimesItsIndexPlusInter) {
  REQUIRE_FILE(kReference, "nifti-bin");
  const ToolFields nim = tool_fields("-disp_nim", kReference);
  ASSERT_EQ(nim.num("byteorder"), 2) << "the reference image should be big-endian";
  const double slope = nim.num("scl_slope"), inter = nim.num("scl_inter");
  ASSERT_NE(slope, 0.0);

  const io::NiftiRaw raw = io::read_nifti_raw(kReference);
  ASSERT_EQ(raw.header.byte_order, io::ByteOrder::Big);
  ASSERT_EQ(raw.header.ndim(), static_cast<int>(nim.num("ndim")));
  ASSERT_EQ(raw.header.datatype, io::nifti_dt::kInt32);
  const std::int64_t n = raw.header.numel();
  std::vector<std::int32_t> values(static_cast<std::size_t>(n));
  std::memcpy(values.data(), raw.data(), raw.nbytes);
  std::int64_t wrong = 0, first_wrong = -1;
  for (std::int64_t i = 0; i < n; ++i) {
    if (values[static_cast<std::size_t>(i)] != i) {
      ++wrong;
      if (first_wrong < 0) first_wrong = i;
    }
  }
  EXPECT_EQ(wrong, 0) << "first raw voxel not equal to its index: " << first_wrong;

  const Tensor scaled = io::read_nifti(kReference).to_float32();
  ASSERT_EQ(scaled.shape(), raw.header.shape());
  const float* f = scaled.data<float>();
  wrong = 0;
  first_wrong = -1;
  for (std::int64_t i = 0; i < n; ++i) {
    if (f[i] != static_cast<float>(slope * static_cast<double>(i) + inter)) {
      ++wrong;
      if (first_wrong < 0) first_wrong = i;
    }
  }
  EXPECT_EQ(wrong, 0) << "first scaled voxel wrong: " << first_wrong;
}

// JHU-WhiteMatter-labels-2mm's qform and sform disagree; the sform must win.
TEST(RealNiftiAffine, SformWinsWhereQformDisagrees) {
  const std::string file = kTemplates + "JHU-WhiteMatter-labels-2mm.nii.gz";
  REQUIRE_FILE(file, "mricron-data");
  const ToolFields nim = tool_fields("-disp_nim", file);
  ASSERT_GT(nim.num("qform_code"), 0);
  ASSERT_GT(nim.num("sform_code"), 0);
  const io::Affine q = nim.mat44("qto_xyz"), s = nim.mat44("sto_xyz");
  ASSERT_FALSE(all_close(flat(q), flat(s), 1e-3, 0)) << "nifti_tool sees no disagreement: nothing to test";
  const io::Volume v = io::read_nifti(file);
  EXPECT_TRUE(all_close(flat(v.affine), flat(s), kPrintAtol, kPrintRtol));
  EXPECT_FALSE(all_close(flat(v.affine), flat(q), 1e-3, 0));
}

// ITK's k-means example: a T1 and its segmentation share their grid; the segmentation is a label map.
TEST(RealNiftiItk, SegmentationSharesTheT1GridAndReadsAsLabels) {
  const std::string t1 = kItkData + "KmeansTest_T1UCharRaw.nii.gz";
  const std::string seg = kItkData + "KmeansTest_T1KmeansPrelimSegmentation.nii.gz";
  REQUIRE_FILE(t1, "insighttoolkit5-examples");
  REQUIRE_FILE(seg, "insighttoolkit5-examples");
  const io::Volume image = io::read_nifti(t1);
  const io::Volume labels = io::read_nifti(seg);
  EXPECT_EQ(image.dims(), labels.dims());
  EXPECT_TRUE(all_close(flat(image.affine), flat(labels.affine), 1e-6, 0));
  const Tensor l = labels.to_labels();
  EXPECT_EQ(l.dtype(), DType::Int32);
  // The label values, against the values nifti_tool shows on one slice through the middle.
  const io::NiftiHeader h = io::read_nifti_header(seg);
  const std::vector<double> mid = tool_values(seg, {-1, -1, h.dim[3] / 2, 0, 0, 0, 0});
  const std::int32_t* p = l.data<std::int32_t>();
  const std::int64_t base = (h.dim[3] / 2) * h.dim[1] * h.dim[2];
  ASSERT_EQ(static_cast<std::int64_t>(mid.size()), h.dim[1] * h.dim[2]);
  std::set<double> seen;
  for (std::size_t i = 0; i < mid.size(); ++i) {
    EXPECT_EQ(p[base + static_cast<std::int64_t>(i)], mid[i]) << i;
    seen.insert(mid[i]);
  }
  EXPECT_GT(seen.size(), 1u) << "the middle slice should hold more than one class";
}

// ---- our writer, read by the reference library ---------------------------------------------

// An oblique affine: rotation about z and x, different voxel sizes, an offset. Left-handed (x
// flipped, as radiological storage order has it) makes qfac -1, right-handed +1.
io::Affine oblique_affine(bool left_handed) {
  const double a = 0.5236, b = -0.3;  // radians
  const double rz[3][3] = {{std::cos(a), -std::sin(a), 0}, {std::sin(a), std::cos(a), 0}, {0, 0, 1}};
  const double rx[3][3] = {{1, 0, 0}, {0, std::cos(b), -std::sin(b)}, {0, std::sin(b), std::cos(b)}};
  const double scale[3] = {left_handed ? -0.75 : 0.75, 1.25, 2.5};
  io::Affine m{};
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 3; ++c) {
      double v = 0;
      for (int k = 0; k < 3; ++k) v += rz[r][k] * rx[k][c];
      m[static_cast<std::size_t>(r)][static_cast<std::size_t>(c)] = v * scale[c];
    }
  }
  m[0][3] = -91.5;
  m[1][3] = 12.25;
  m[2][3] = 40.0;
  m[3][3] = 1;
  return m;
}

struct WriteCase {
  io::NiftiWriteType type;
  int code;  // the NIfTI datatype nifti_tool should report
  int bitpix;
};

// (T, Z, Y, X) = (2, 4, 5, 6) voxels whose values span the type, negative where it allows.
Tensor values_for(io::NiftiWriteType t, const Shape& shape) {
  const std::int64_t n = voxgrad::shape_numel(shape);
  switch (t) {
    case io::NiftiWriteType::UInt8: {
      std::vector<std::uint8_t> v(static_cast<std::size_t>(n));
      for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>((i * 37) % 256);
      return voxgrad::from_vector(v, shape);
    }
    case io::NiftiWriteType::Int16:
    case io::NiftiWriteType::Int32: {
      const std::int64_t span = t == io::NiftiWriteType::Int16 ? 65535 : 4000000000LL;
      std::vector<std::int32_t> v(static_cast<std::size_t>(n));
      for (std::int64_t i = 0; i < n; ++i)
        v[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * 7919 * (span / 241)) % span - span / 2);
      return voxgrad::from_vector(v, shape);
    }
    case io::NiftiWriteType::Float32: {
      std::vector<float> v(static_cast<std::size_t>(n));
      for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = static_cast<float>((i % 97) * 0.25 - 10.5);
      return voxgrad::from_vector(v, shape);
    }
  }
  return {};
}

void PrintTo(const WriteCase& c, std::ostream* os) { *os << io::write_type_name(c.type); }

class WriterReadByNiftiTool : public ::testing::TestWithParam<WriteCase> {};

// Writes `v` as `wc` to .nii and .nii.gz and checks what nifti_tool reads back; a left-handed
// affine must come back with qfac -1.
void expect_tool_reads_ours(const io::Volume& v, const WriteCase& wc, bool left_handed, const std::string& dir) {
  const io::Affine& affine = v.affine;
  const Shape& shape = v.data.shape();  // (T, Z, Y, X)
  const std::vector<double> written = v.data.to(DType::Float64).to_vector<double>();
  for (const std::string ext : {".nii", ".nii.gz"}) {
    const std::string file = dir + "/ours" + ext;
    SCOPED_TRACE(file);
    io::write_nifti(file, v, wc.type);

    const ToolFields hdr = tool_fields("-disp_hdr", file);
    EXPECT_EQ(hdr.num("sizeof_hdr"), 348);
    EXPECT_EQ(hdr.str("magic"), "n+1");
    EXPECT_EQ(hdr.nums("dim"), (std::vector<double>{4, 6, 5, 4, 2, 1, 1, 1}));
    EXPECT_EQ(hdr.num("datatype"), wc.code);
    EXPECT_EQ(hdr.num("bitpix"), wc.bitpix);
    EXPECT_EQ(hdr.num("qform_code"), io::nifti_xform::kAlignedAnat);
    EXPECT_EQ(hdr.num("sform_code"), io::nifti_xform::kAlignedAnat);
    EXPECT_EQ(hdr.num("scl_slope"), 0);
    EXPECT_GE(hdr.num("vox_offset"), 352);
    const char* rows[3] = {"srow_x", "srow_y", "srow_z"};
    for (std::size_t r = 0; r < 3; ++r)
      EXPECT_TRUE(all_close(hdr.nums(rows[r]), std::vector<double>(affine[r].begin(), affine[r].end()), kPrintAtol,
                            kPrintRtol))
          << rows[r];

    // What the reference library makes of it: both transforms give back our affine.
    const ToolFields nim = tool_fields("-disp_nim", file);
    EXPECT_EQ(nim.num("nifti_type"), 1);
    EXPECT_TRUE(all_close(flat(nim.mat44("sto_xyz")), flat(affine), kPrintAtol, kPrintRtol)) << "sform";
    EXPECT_TRUE(all_close(flat(nim.mat44("qto_xyz")), flat(affine), 1e-4, 1e-5)) << "qform";
    EXPECT_EQ(nim.num("qfac"), left_handed ? -1 : 1);
    const std::vector<double> pixdim = nim.nums("pixdim");
    for (std::size_t c = 0; c < 3; ++c) {
      const double norm = std::hypot(affine[0][c], affine[1][c], affine[2][c]);
      EXPECT_NEAR(pixdim.at(c + 1), norm, kPrintAtol) << "pixdim " << c + 1;
    }

    // Every voxel, one x-y slice per nifti_tool call.
    std::vector<double> seen;
    for (std::int64_t t = 0; t < shape[0]; ++t) {
      for (std::int64_t k = 0; k < shape[1]; ++k) {
        const std::vector<double> s = tool_values(file, {-1, -1, k, t, 0, 0, 0});
        seen.insert(seen.end(), s.begin(), s.end());
      }
    }
    EXPECT_TRUE(all_close(seen, written, 1e-6, 0));
  }
}

TEST_P(WriterReadByNiftiTool, HeaderAndVoxels) {
  if (!have_nifti_tool()) GTEST_SKIP() << "nifti_tool is absent (Debian package nifti-bin)";
  const std::string dir = voxgrad::test::temp_dir("write");
  for (const bool left_handed : {false, true}) {
    SCOPED_TRACE(left_handed ? "left-handed affine" : "right-handed affine");
    const Shape shape = {2, 4, 5, 6};  // (T, Z, Y, X)
    expect_tool_reads_ours(io::make_volume(values_for(GetParam().type, shape), oblique_affine(left_handed)),
                           GetParam(), left_handed, dir);
  }
}

INSTANTIATE_TEST_SUITE_P(EveryWriteType, WriterReadByNiftiTool,
                         ::testing::Values(WriteCase{io::NiftiWriteType::UInt8, io::nifti_dt::kUInt8, 8},
                                           WriteCase{io::NiftiWriteType::Int16, io::nifti_dt::kInt16, 16},
                                           WriteCase{io::NiftiWriteType::Int32, io::nifti_dt::kInt32, 32},
                                           WriteCase{io::NiftiWriteType::Float32, io::nifti_dt::kFloat32, 32}),
                         [](const ::testing::TestParamInfo<WriteCase>& info) {
                           return std::string(io::write_type_name(info.param.type));
                         });

// ---- `voxgrad bench nifti` on a real file ------------------------------------------------------

TEST(BenchNifti, PrintsOneJsonLineWithRatiosAndATable) {
  const std::string file = kTemplates + "JHU-WhiteMatter-labels-2mm.nii.gz";
  REQUIRE_FILE(file, "mricron-data");
  const auto r = voxgrad::test::run_voxgrad("bench nifti " + quoted(file) + " --reps 2 --warmup 0");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  const io::NiftiHeader h = io::read_nifti_header(file);
  EXPECT_EQ(j.at("file"), file);
  EXPECT_EQ(j.at("voxel_bytes").get<std::uint64_t>(), h.data_bytes());
  EXPECT_EQ(j.at("inflated_bytes").get<std::uint64_t>(), static_cast<std::uint64_t>(h.vox_offset) + h.data_bytes());
  EXPECT_EQ(j.at("reps"), 2);
  for (const char* path : {"inflate", "read_raw", "read_float32", "read_volume_float32"}) {
    EXPECT_GT(j.at(path).at("median_ms").get<double>(), 0.0) << path;
    EXPECT_LE(j.at(path).at("min_ms").get<double>(), j.at(path).at("max_ms").get<double>()) << path;
  }
  const double ratio = j.at("inflate_over_read_raw");
  EXPECT_NEAR(ratio, j.at("inflate").at("median_ms").get<double>() / j.at("read_raw").at("median_ms").get<double>(),
              1e-9);
  EXPECT_GT(j.at("inflate_over_read_float32").get<double>(), 0.0);
  EXPECT_NE(r.err.find("zlib inflate"), std::string::npos) << "the table goes to stderr: " << r.err;
}

// The yardstick inflates every gzip member, as the reader does: a .nii.gz whose header and voxels
// are two concatenated members (what `cat a.gz b.gz` makes) counts all its bytes.
TEST(BenchNifti, InflatesEveryGzipMember) {
  const std::string dir = voxgrad::test::temp_dir("bench-members");
  const std::string plain = dir + "/one.nii", joined = dir + "/two-members.nii.gz";
  const io::Volume v = io::make_volume(values_for(io::NiftiWriteType::Float32, {3, 4, 5}));
  io::write_nifti(plain, v, io::NiftiWriteType::Float32);
  const std::string bytes = io::read_file_bytes(plain);
  std::string members;
  for (const auto& [from, size] : {std::pair<std::size_t, std::size_t>{0, 352}, {352, bytes.size() - 352}}) {
    const std::string part = dir + "/part.gz";
    {
      io::AtomicOutputStream out(part, 6);
      out.write(bytes.data() + from, size);
      out.commit();
    }
    members += io::read_file_bytes(part);
  }
  io::write_file_bytes(joined, std::as_bytes(std::span(members)));

  const auto r = voxgrad::test::run_voxgrad("bench nifti " + quoted(joined) + " --reps 1 --warmup 0");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("gzip"), true);
  EXPECT_EQ(j.at("inflated_bytes").get<std::uint64_t>(), bytes.size());
  EXPECT_EQ(j.at("voxel_bytes").get<std::uint64_t>(), bytes.size() - 352);
}

TEST(BenchNifti, OpOptionsAndAMissingFileAreRefused) {
  const auto usage = voxgrad::test::run_voxgrad("bench nifti /no/such.nii.gz --shape 1,1,1,1,1");
  EXPECT_EQ(usage.exit_code, 2) << usage.err;
  EXPECT_EQ(usage.out, "");
  const auto before = voxgrad::test::run_voxgrad("bench --cases exp nifti /no/such.nii.gz");
  EXPECT_EQ(before.exit_code, 2) << before.err;
  const auto none = voxgrad::test::run_voxgrad("bench nifti");
  EXPECT_EQ(none.exit_code, 2) << none.err;
  const auto missing = voxgrad::test::run_voxgrad("bench nifti /no/such.nii.gz --device cpu");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_EQ(missing.out, "");
  EXPECT_EQ(missing.err.rfind("voxgrad: error: /no/such.nii.gz: ", 0), 0u) << missing.err;
}

}  // namespace
