// NIfTI reading and writing: round trips for every write type and both extensions, 1-D to 7-D,
// affines through sform and qform and in every spatial unit, files made by hand here (big-endian,
// NIfTI-2, pairs, ANALYZE, every datatype, scaling) so the reader is checked against bytes the
// writer did not produce; FIFOs refused, gzip bombs bounded, atomic writes.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <numeric>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "engine/error.h"
#include "io/gzip_stream.h"
#include "io/nifti.h"
#include "tests/test_support.h"

namespace voxgrad::io {
namespace {

namespace fs = std::filesystem;

// ---- helpers: bytes, files, a NIfTI-1 header builder independent of the writer ------------------

std::span<const std::byte> as_span(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

void put_file(const std::string& path, const std::string& bytes) {
  AtomicOutputStream out(path, path.ends_with(".gz") ? 6 : 0);
  out.write(bytes.data(), bytes.size());
  out.commit();
}

template <class T>
void store(std::string& b, std::size_t off, T v, bool big) {
  unsigned char raw[sizeof(T)];
  std::memcpy(raw, &v, sizeof(T));
  if (big == (std::endian::native == std::endian::little)) std::reverse(raw, raw + sizeof(T));
  std::memcpy(b.data() + off, raw, sizeof(T));
}

template <class T>
std::string value_bytes(const std::vector<T>& values, bool big = false) {
  std::string b(values.size() * sizeof(T), '\0');
  for (std::size_t i = 0; i < values.size(); ++i) store(b, i * sizeof(T), values[i], big);
  return b;
}

struct Hdr1 {
  std::vector<std::int16_t> dims;
  std::int16_t datatype = nifti_dt::kUInt8;
  std::int16_t bitpix = 8;
  float vox_offset = 352;
  float slope = 0, inter = 0;
  std::array<float, 8> pixdim{1, 1, 1, 1, 1, 1, 1, 1};
  std::int16_t qform_code = 0, sform_code = 0;
  std::array<float, 6> quatern{};  // b, c, d, qx, qy, qz
  std::array<std::array<float, 4>, 3> srow{};
  std::string magic = "n+1";  // "" for ANALYZE
  bool big = false;
  std::array<std::int16_t, 3> analyze_origin{};
  std::int32_t glmax = 0, glmin = 0;
  float cal_max = 0, cal_min = 0;
  std::uint8_t xyzt_units = 0;
};

// 348 header bytes, plus the 4 extension bytes when the voxels start at 352 or later.
std::string build_nifti1(const Hdr1& h) {
  std::string b(348, '\0');
  store<std::int32_t>(b, 0, 348, h.big);
  store<std::int16_t>(b, 40, static_cast<std::int16_t>(h.dims.size()), h.big);
  for (std::size_t i = 0; i < 7; ++i) store<std::int16_t>(b, 42 + 2 * i, i < h.dims.size() ? h.dims[i] : 1, h.big);
  store(b, 70, h.datatype, h.big);
  store(b, 72, h.bitpix, h.big);
  for (std::size_t i = 0; i < 8; ++i) store(b, 76 + 4 * i, h.pixdim[i], h.big);
  store(b, 108, h.vox_offset, h.big);
  store(b, 112, h.slope, h.big);
  store(b, 116, h.inter, h.big);
  store(b, 124, h.cal_max, h.big);
  store(b, 128, h.cal_min, h.big);
  store(b, 140, h.glmax, h.big);
  store(b, 144, h.glmin, h.big);
  b[123] = static_cast<char>(h.xyzt_units);
  if (h.magic.empty()) {
    for (std::size_t i = 0; i < 3; ++i) store(b, 253 + 2 * i, h.analyze_origin[i], h.big);
  } else {
    store(b, 252, h.qform_code, h.big);
    store(b, 254, h.sform_code, h.big);
    for (std::size_t i = 0; i < 6; ++i) store(b, 256 + 4 * i, h.quatern[i], h.big);
    for (std::size_t r = 0; r < 3; ++r)
      for (std::size_t c = 0; c < 4; ++c) store(b, 280 + 16 * r + 4 * c, h.srow[r][c], h.big);
    std::memcpy(b.data() + 344, h.magic.c_str(), 4);
  }
  if (h.vox_offset >= 352) b.append(static_cast<std::size_t>(h.vox_offset) - 348, '\0');
  return b;
}

// Reverses the byte order of every numeric NIfTI-1 header field, in place.
void swap_nifti1_header(std::string& b) {
  auto rev = [&](std::size_t off, std::size_t size, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) std::reverse(b.begin() + off + i * size, b.begin() + off + (i + 1) * size);
  };
  rev(0, 4, 1);     // sizeof_hdr
  rev(32, 4, 1);    // extents
  rev(36, 2, 1);    // session_error
  rev(40, 2, 8);    // dim
  rev(56, 4, 3);    // intent_p1..3
  rev(68, 2, 4);    // intent_code, datatype, bitpix, slice_start
  rev(76, 4, 8);    // pixdim
  rev(108, 4, 3);   // vox_offset, scl_slope, scl_inter
  rev(120, 2, 1);   // slice_end
  rev(124, 4, 4);   // cal_max, cal_min, slice_duration, toffset
  rev(140, 4, 2);   // glmax, glmin
  rev(252, 2, 2);   // qform_code, sform_code
  rev(256, 4, 6);   // quatern_b..qoffset_z
  rev(280, 4, 12);  // srow_x, srow_y, srow_z
}

Affine rotation_affine(double ax, double ay, double az, std::array<double, 3> zoom, std::array<double, 3> offset,
                       bool flip) {
  // R = Rz * Ry * Rx, columns scaled by the zooms, optionally with the first axis mirrored.
  const double cx = std::cos(ax), sx = std::sin(ax), cy = std::cos(ay), sy = std::sin(ay), cz = std::cos(az),
               sz = std::sin(az);
  const double r[3][3] = {{cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx},
                          {sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx},
                          {-sy, cy * sx, cy * cx}};
  Affine a = identity_affine();
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) a[i][j] = r[i][j] * zoom[static_cast<std::size_t>(j)] * (flip && j == 0 ? -1 : 1);
    a[i][3] = offset[static_cast<std::size_t>(i)];
  }
  return a;
}

double max_abs_diff(const Affine& a, const Affine& b) {
  double d = 0;
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) d = std::max(d, std::fabs(a[i][j] - b[i][j]));
  return d;
}

Shape reversed(const std::vector<std::int64_t>& dims) { return Shape(dims.rbegin(), dims.rend()); }

// ---- round trips -------------------------------------------------------------------------------

struct WriteCase {
  NiftiWriteType type;
  DType expect_dtype;
  int code;
};

TEST(NiftiIo, RoundTripEveryWriteTypeAndExtension) {
  const std::string dir = test::temp_dir("nifti_rt");
  const Affine affine = rotation_affine(0.1, -0.2, 0.3, {0.8, 1.25, 2.5}, {-90.5, 12.25, 40}, true);
  const Shape shape{5, 6, 7};  // (Z, Y, X)
  const std::int64_t n = shape_numel(shape);
  const WriteCase cases[] = {{NiftiWriteType::UInt8, DType::UInt8, 2},
                            {NiftiWriteType::Int16, DType::Int32, 4},
                            {NiftiWriteType::Int32, DType::Int32, 8},
                            {NiftiWriteType::Float32, DType::Float32, 16}};
  for (const auto& c : cases) {
    for (const char* ext : {".nii", ".nii.gz"}) {
      SCOPED_TRACE(std::string(write_type_name(c.type)) + ext);
      Volume v;
      if (c.type == NiftiWriteType::Float32) {
        std::vector<float> vals(static_cast<std::size_t>(n));
        for (std::int64_t i = 0; i < n; ++i) vals[static_cast<std::size_t>(i)] = std::sin(0.37f * static_cast<float>(i)) * 1e3f;
        vals[0] = std::numeric_limits<float>::quiet_NaN();
        vals[1] = -std::numeric_limits<float>::infinity();
        vals[2] = -0.0f;
        vals[3] = std::numeric_limits<float>::denorm_min();
        vals[4] = std::numeric_limits<float>::max();
        v = make_volume(from_vector(vals, shape), affine);
      } else {
        const std::int64_t lo = c.type == NiftiWriteType::UInt8 ? 0 : c.type == NiftiWriteType::Int16 ? -32768 : INT32_MIN;
        const std::int64_t hi = c.type == NiftiWriteType::UInt8 ? 255 : c.type == NiftiWriteType::Int16 ? 32767 : INT32_MAX;
        std::vector<std::int32_t> vals(static_cast<std::size_t>(n));
        for (std::int64_t i = 0; i < n; ++i) vals[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(lo + (i * 7919) % (hi - lo + 1));
        vals[0] = static_cast<std::int32_t>(lo);
        vals[1] = static_cast<std::int32_t>(hi);
        v = make_volume(from_vector(vals, shape), affine);
      }
      const std::string path = dir + "/img_" + write_type_name(c.type) + ext;
      write_nifti(path, v, c.type);
      const Volume back = read_nifti(path);
      ASSERT_EQ(back.data.shape(), shape);
      EXPECT_EQ(back.data.dtype(), c.expect_dtype);
      EXPECT_EQ(back.source_datatype, c.code);
      EXPECT_FALSE(back.scaled);
      // Bit-exact: compare the bytes of the values in the type they were written from.
      const Tensor expect = c.type == NiftiWriteType::Float32 ? v.data : v.data.to(c.expect_dtype);
      ASSERT_EQ(back.data.nbytes(), expect.nbytes());
      EXPECT_EQ(std::memcmp(back.data.raw_data(), expect.raw_data(), expect.nbytes()), 0);
      // sform holds the affine in float32.
      EXPECT_LT(max_abs_diff(back.affine, affine), 1e-4);
      EXPECT_NEAR(back.spacing[0], 0.8, 1e-6);
      EXPECT_NEAR(back.spacing[1], 1.25, 1e-6);
      EXPECT_NEAR(back.spacing[2], 2.5, 1e-6);
      const NiftiHeader h = read_nifti_header(path);
      EXPECT_EQ(h.format, NiftiFormat::Nifti1);
      EXPECT_EQ(h.gzip, std::string(ext) == ".nii.gz");
      EXPECT_FALSE(h.pair);
      EXPECT_EQ(h.byte_order, ByteOrder::Little);
      EXPECT_EQ(h.vox_offset, 352);
      EXPECT_EQ(h.qform_code, 2);
      EXPECT_EQ(h.sform_code, 2);
      EXPECT_EQ(h.pixdim[0], -1.0);  // the mirrored first axis makes the rotation improper
      EXPECT_LT(max_abs_diff(h.qform_affine, affine), 1e-4);
    }
  }
}

TEST(NiftiIo, EveryRankFromOneToSevenKeepsDimsReversed) {
  const std::string dir = test::temp_dir("nifti_rank");
  for (int rank = 1; rank <= 7; ++rank) {
    SCOPED_TRACE(rank);
    std::vector<std::int64_t> dims;  // NIfTI order, x first
    for (int i = 0; i < rank; ++i) dims.push_back(2 + (i % 3));
    const Shape shape = reversed(dims);
    const std::int64_t n = shape_numel(shape);
    std::vector<std::int32_t> vals(static_cast<std::size_t>(n));
    std::iota(vals.begin(), vals.end(), 0);
    Volume v = make_volume(from_vector(vals, shape));
    v.spacing.assign(static_cast<std::size_t>(rank), 1.0);
    for (int i = 3; i < rank; ++i) v.spacing[static_cast<std::size_t>(i)] = 0.5 * (i + 1);
    for (const char* ext : {".nii", ".nii.gz"}) {
      const std::string path = dir + "/r" + std::to_string(rank) + ext;
      write_nifti(path, v, NiftiWriteType::Int32);
      const NiftiHeader h = read_nifti_header(path);
      EXPECT_EQ(h.ndim(), rank);
      EXPECT_EQ(h.dims(), dims);
      EXPECT_EQ(h.shape(), shape);
      for (int i = 3; i < rank; ++i) EXPECT_EQ(h.pixdim[static_cast<std::size_t>(i + 1)], 0.5 * (i + 1));
      const Volume back = read_nifti(path);
      EXPECT_EQ(back.data.shape(), shape);
      EXPECT_EQ(back.dims(), dims);
      // The raw voxel at linear NIfTI index i (x fastest) is the tensor's row-major element i.
      EXPECT_EQ(back.data.to_vector<std::int32_t>(), vals);
    }
  }
}

// NIfTI voxel (i, j, k) is tensor element [k][j][i]: x is the fastest, last axis.
TEST(NiftiIo, FastestNiftiAxisIsTheLastTensorAxis) {
  const std::string dir = test::temp_dir("nifti_axis");
  Hdr1 h;
  h.dims = {3, 2};  // x = 3, y = 2
  std::string file = build_nifti1(h) + value_bytes<std::uint8_t>({10, 11, 12, 20, 21, 22});
  put_file(dir + "/a.nii", file);
  const Volume v = read_nifti(dir + "/a.nii");
  ASSERT_EQ(v.data.shape(), (Shape{2, 3}));
  const std::uint8_t* p = v.data.data<std::uint8_t>();
  EXPECT_EQ(p[0 * 3 + 2], 12);  // (i=2, j=0)
  EXPECT_EQ(p[1 * 3 + 0], 20);  // (i=0, j=1)
}

// ---- affines -----------------------------------------------------------------------------------

TEST(NiftiIo, QuaternionMatchesTheStandardsFormula) {
  Quatern q;  // 90 degrees about z: (a, b, c, d) = (cos 45, 0, 0, sin 45)
  q.d = std::sqrt(0.5);
  q.dx = 2;
  q.dy = 3;
  q.dz = 4;
  q.qx = 1;
  q.qy = 2;
  q.qz = 3;
  Affine a = quatern_to_affine(q);
  Affine expect = {{{0, -3, 0, 1}, {2, 0, 0, 2}, {0, 0, 4, 3}, {0, 0, 0, 1}}};
  EXPECT_LT(max_abs_diff(a, expect), 1e-12);
  q.qfac = -1;  // qfac mirrors the third column
  a = quatern_to_affine(q);
  expect[2][2] = -4;
  EXPECT_LT(max_abs_diff(a, expect), 1e-12);
  // Non-positive voxel sizes count as 1; (b, c, d) past the unit sphere is normalised (a = 0).
  Quatern r;
  r.b = 2;
  r.dx = 0;
  r.dy = -5;
  a = quatern_to_affine(r);
  const Affine flip_yz = {{{1, 0, 0, 0}, {0, -1, 0, 0}, {0, 0, -1, 0}, {0, 0, 0, 1}}};
  EXPECT_LT(max_abs_diff(a, flip_yz), 1e-12);
}

TEST(NiftiIo, AffineToQuaternionInvertsForRigidAffinesOfBothHandedness) {
  for (bool flip : {false, true}) {
    for (double angle : {0.0, 0.4, 1.5, 3.0}) {
      const Affine a = rotation_affine(angle, -0.5 * angle, 0.25 * angle, {1.5, 0.7, 3.0}, {4, -5, 6}, flip);
      const Quatern q = affine_to_quatern(a);
      EXPECT_EQ(q.qfac, flip ? -1.0 : 1.0);
      EXPECT_NEAR(q.dx, 1.5, 1e-12);
      EXPECT_NEAR(q.dy, 0.7, 1e-12);
      EXPECT_NEAR(q.dz, 3.0, 1e-12);
      EXPECT_LT(max_abs_diff(quatern_to_affine(q), a), 1e-9) << "angle " << angle << " flip " << flip;
    }
  }
  // A 180 degree rotation takes the "trickier case" branch (trace + 1 <= 0.5).
  const Affine half_turn = {{{-1, 0, 0, 0}, {0, -1, 0, 0}, {0, 0, 1, 0}, {0, 0, 0, 1}}};
  EXPECT_LT(max_abs_diff(quatern_to_affine(affine_to_quatern(half_turn)), half_turn), 1e-12);
}

TEST(NiftiIo, ShearedAffineGoesExactlyToSformAndItsNearestRotationToQform) {
  Affine sheared = identity_affine();
  sheared[0][1] = 0.3;  // non-orthogonal columns
  sheared[1][1] = 2.0;
  const Quatern q = affine_to_quatern(sheared);
  const Affine rigid = quatern_to_affine(q);
  // Columns of the qform are orthogonal and keep the column norms.
  double dot = 0;
  for (int i = 0; i < 3; ++i) dot += rigid[i][0] * rigid[i][1];
  EXPECT_NEAR(dot, 0.0, 1e-6);
  EXPECT_NEAR(q.dy, std::sqrt(0.09 + 4.0), 1e-12);

  const std::string dir = test::temp_dir("nifti_shear");
  write_nifti(dir + "/s.nii", make_volume(zeros({2, 2, 2}), sheared), NiftiWriteType::Float32);
  const NiftiHeader h = read_nifti_header(dir + "/s.nii");
  EXPECT_LT(max_abs_diff(h.affine, sheared), 1e-7);
  EXPECT_LT(max_abs_diff(h.qform_affine, rigid), 1e-6);
}

// The affine survives through the qform alone: the same file with sform_code set to 0.
TEST(NiftiIo, AffineRoundTripsThroughQformAlone) {
  const std::string dir = test::temp_dir("nifti_qform");
  for (bool flip : {false, true}) {
    const Affine affine = rotation_affine(0.3, 0.2, -0.7, {0.9, 0.9, 3.3}, {-100.25, 50.5, -7}, flip);
    write_nifti(dir + "/a.nii", make_volume(zeros({3, 4, 5}), affine), NiftiWriteType::Float32);
    std::string bytes = read_file_bytes(dir + "/a.nii");
    bytes[254] = 0;  // sform_code = 0 (little-endian int16 at 254)
    bytes[255] = 0;
    put_file(dir + "/q.nii", bytes);
    const NiftiHeader h = read_nifti_header(dir + "/q.nii");
    EXPECT_EQ(h.sform_code, 0);
    EXPECT_EQ(h.qform_code, 2);
    EXPECT_LT(max_abs_diff(h.affine, affine), 2e-5) << "flip " << flip;
    EXPECT_LT(max_abs_diff(read_nifti(dir + "/q.nii").affine, affine), 2e-5);
  }
}

TEST(NiftiIo, BothCodesZeroGiveNibabelsCentredBaseAffine) {
  const std::string dir = test::temp_dir("nifti_base");
  Hdr1 h;
  h.dims = {3, 5, 7};
  h.pixdim = {1, 3, 2, 1, 1, 1, 1, 1};
  put_file(dir + "/b.nii", build_nifti1(h) + std::string(105, '\0'));
  const NiftiHeader hdr = read_nifti_header(dir + "/b.nii");
  // nibabel: shape_zoom_affine((3, 5, 7), (3, 2, 1)).
  const Affine expect = {{{-3, 0, 0, 3}, {0, 2, 0, -4}, {0, 0, 1, -3}, {0, 0, 0, 1}}};
  EXPECT_LT(max_abs_diff(hdr.affine, expect), 1e-12);
  // The reference library's qto_xyz for qform_code 0: diag(pixdim), no offset.
  const Affine method1 = {{{3, 0, 0, 0}, {0, 2, 0, 0}, {0, 0, 1, 0}, {0, 0, 0, 1}}};
  EXPECT_LT(max_abs_diff(hdr.qform_affine, method1), 1e-12);
}

TEST(NiftiIo, SformWinsOverQformWhenBothAreSet) {
  const std::string dir = test::temp_dir("nifti_prec");
  Hdr1 h;
  h.dims = {2, 2, 2};
  h.qform_code = 1;
  h.quatern = {0, 0, 0, 10, 20, 30};
  h.srow = {{{2, 0, 0, -1}, {0, 3, 0, -2}, {0, 0, 4, -3}}};
  for (std::int16_t sform : {0, 1, -1}) {
    h.sform_code = sform;
    put_file(dir + "/p.nii", build_nifti1(h) + std::string(8, '\0'));
    const NiftiHeader hdr = read_nifti_header(dir + "/p.nii");
    const double offset_x = hdr.affine[0][3];
    EXPECT_EQ(offset_x, sform > 0 ? -1.0 : 10.0) << "sform_code " << sform;
  }
}

// ---- spatial units -----------------------------------------------------------------------------

// One physical grid (2 x 3 x 4 mm voxels, the first at (10, -20, 30) mm) declared in metres,
// millimetres, micrometres and with no unit: spacing and every affine come out in mm, as ITK reads
// them (no unit counts as mm), and a Volume read in metres says mm, so writing it stores mm.
TEST(NiftiIo, SpatialUnitsComeOutInMillimetres) {
  const std::string dir = test::temp_dir("nifti_units");
  struct Unit {
    std::uint8_t code;
    double per_mm;  // file units per millimetre
    const char* name;
  };
  const Affine grid = {{{2, 0, 0, 10}, {0, 3, 0, -20}, {0, 0, 4, 30}, {0, 0, 0, 1}}};
  for (const Unit& u : {Unit{nifti_units::kMeter, 1e-3, "m"}, Unit{nifti_units::kMm, 1, "mm"},
                        Unit{nifti_units::kMicron, 1e3, "um"}, Unit{0, 1, "unknown"}}) {
    SCOPED_TRACE(u.name);
    const auto f = [&](double mm) { return static_cast<float>(mm * u.per_mm); };
    Hdr1 h;
    h.dims = {4, 3, 2};
    h.xyzt_units = static_cast<std::uint8_t>(u.code | nifti_units::kSec);
    h.pixdim = {1, f(2), f(3), f(4), 1, 1, 1, 1};
    h.qform_code = 1;
    h.quatern = {0, 0, 0, f(10), f(-20), f(30)};
    h.sform_code = 1;
    h.srow = {{{f(2), 0, 0, f(10)}, {0, f(3), 0, f(-20)}, {0, 0, f(4), f(30)}}};
    const std::string path = dir + "/" + u.name + ".nii.gz";
    put_file(path, build_nifti1(h) + std::string(24, '\x07'));
    const double tol = 1e-5 * 30;  // float32 fields scaled by the unit

    const NiftiHeader hdr = read_nifti_header(path);
    EXPECT_STREQ(spatial_units_name(hdr.xyzt_units), u.name);
    EXPECT_EQ(hdr.pixdim[1], f(2)) << "the raw fields stay as stored";
    const std::vector<double> spacing = hdr.spacing();
    ASSERT_EQ(spacing.size(), 3u);
    for (std::size_t i = 0; i < 3; ++i) EXPECT_NEAR(spacing[i], 2.0 + static_cast<double>(i), 1e-5);
    EXPECT_LT(max_abs_diff(hdr.affine, grid), tol);
    EXPECT_LT(max_abs_diff(hdr.sform_affine, grid), tol);
    EXPECT_LT(max_abs_diff(hdr.qform_affine, grid), tol);

    const Volume v = read_nifti(path);
    EXPECT_LT(max_abs_diff(v.affine, grid), tol);
    for (std::size_t i = 0; i < 3; ++i) EXPECT_NEAR(v.spacing[i], 2.0 + static_cast<double>(i), 1e-5);
    EXPECT_EQ(v.xyzt_units & nifti_units::kSpaceMask, u.code == 0 ? 0 : nifti_units::kMm);
    EXPECT_EQ(v.xyzt_units & ~nifti_units::kSpaceMask, nifti_units::kSec) << "the time unit is kept";
    NiftiHeader chunked;
    (void)read_nifti_float32(path, &chunked);
    EXPECT_LT(max_abs_diff(chunked.affine, grid), tol);

    // Written back, the grid is the same in mm.
    write_nifti(dir + "/back.nii", v);
    const NiftiHeader back = read_nifti_header(dir + "/back.nii");
    EXPECT_LT(max_abs_diff(back.affine, grid), tol);
    EXPECT_STREQ(spatial_units_name(back.xyzt_units), u.code == 0 ? "unknown" : "mm");

    // With no orientation at all, the centred base affine is in mm too.
    h.qform_code = h.sform_code = 0;
    put_file(dir + "/base.nii", build_nifti1(h) + std::string(24, '\0'));
    const Affine base = {{{-2, 0, 0, 3}, {0, 3, 0, -3}, {0, 0, 4, -2}, {0, 0, 0, 1}}};
    EXPECT_LT(max_abs_diff(read_nifti_header(dir + "/base.nii").affine, base), tol);
  }
  // Codes the standard does not define read as mm and are reported as unknown.
  EXPECT_STREQ(spatial_units_name(5), "unknown");
  EXPECT_EQ(millimetres_per_unit(5), 1.0);
}

// ---- files made by hand: byte order, NIfTI-2, pairs, ANALYZE ---------------------------------------

// Every decoded field but the ones that describe the file itself.
void expect_same_fields(const NiftiHeader& a, const NiftiHeader& b) {
  EXPECT_EQ(a.dim, b.dim);
  EXPECT_EQ(a.pixdim, b.pixdim);
  EXPECT_EQ(a.datatype, b.datatype);
  EXPECT_EQ(a.bitpix, b.bitpix);
  EXPECT_EQ(a.vox_offset, b.vox_offset);
  EXPECT_EQ(a.scl_slope, b.scl_slope);
  EXPECT_EQ(a.scl_inter, b.scl_inter);
  EXPECT_EQ(a.cal_min, b.cal_min);
  EXPECT_EQ(a.cal_max, b.cal_max);
  EXPECT_EQ(a.slice_duration, b.slice_duration);
  EXPECT_EQ(a.toffset, b.toffset);
  EXPECT_EQ(a.slice_start, b.slice_start);
  EXPECT_EQ(a.slice_end, b.slice_end);
  EXPECT_EQ(a.slice_code, b.slice_code);
  EXPECT_EQ(a.dim_info, b.dim_info);
  EXPECT_EQ(a.xyzt_units, b.xyzt_units);
  EXPECT_EQ(a.intent_code, b.intent_code);
  EXPECT_EQ(a.intent_p, b.intent_p);
  EXPECT_EQ(a.qform_code, b.qform_code);
  EXPECT_EQ(a.sform_code, b.sform_code);
  EXPECT_EQ(a.quatern_b, b.quatern_b);
  EXPECT_EQ(a.quatern_c, b.quatern_c);
  EXPECT_EQ(a.quatern_d, b.quatern_d);
  EXPECT_EQ(a.qoffset_x, b.qoffset_x);
  EXPECT_EQ(a.qoffset_y, b.qoffset_y);
  EXPECT_EQ(a.qoffset_z, b.qoffset_z);
  EXPECT_EQ(a.srow, b.srow);
  EXPECT_EQ(a.descrip, b.descrip);
  EXPECT_EQ(a.affine, b.affine);
  EXPECT_EQ(a.qform_affine, b.qform_affine);
}

TEST(NiftiIo, BigEndianFileReadsLikeItsLittleEndianTwin) {
  const std::string dir = test::temp_dir("nifti_be");
  const Affine affine = rotation_affine(0.2, 0.1, 0.05, {1, 2, 3}, {5, 6, 7}, false);
  std::vector<float> fvals(60);
  for (std::size_t i = 0; i < fvals.size(); ++i) fvals[i] = 0.5f * static_cast<float>(i) - 7.25f;
  std::vector<std::int32_t> ivals(60);
  for (std::size_t i = 0; i < ivals.size(); ++i) ivals[i] = static_cast<std::int32_t>(i * 1000) - 30000;
  struct Kind {
    Volume v;
    NiftiWriteType as;
    int size;
  };
  const Kind kinds[] = {{make_volume(from_vector(fvals, {3, 4, 5}), affine), NiftiWriteType::Float32, 4},
                        {make_volume(from_vector(ivals, {3, 4, 5}), affine), NiftiWriteType::Int16, 2},
                        {make_volume(from_vector(ivals, {3, 4, 5}), affine), NiftiWriteType::Int32, 4}};
  for (const Kind& k : kinds) {
    SCOPED_TRACE(write_type_name(k.as));
    write_nifti(dir + "/le.nii", k.v, k.as);
    std::string bytes = read_file_bytes(dir + "/le.nii");
    // Give every numeric field a value whose byte-swapped form differs, so any field read without
    // its swap shows up in the comparison below.
    store<float>(bytes, 56, 1.5f, false);
    store<float>(bytes, 60, -2.5f, false);
    store<float>(bytes, 64, 3.25f, false);
    store<std::int16_t>(bytes, 74, 3, false);    // slice_start
    store<float>(bytes, 112, 0.5f, false);       // scl_slope
    store<float>(bytes, 116, -7.0f, false);      // scl_inter
    store<std::int16_t>(bytes, 120, 9, false);   // slice_end
    store<float>(bytes, 124, 900.0f, false);     // cal_max
    store<float>(bytes, 128, -90.0f, false);     // cal_min
    store<float>(bytes, 132, 0.125f, false);     // slice_duration
    store<float>(bytes, 136, 2.75f, false);      // toffset
    put_file(dir + "/le.nii", bytes);
    swap_nifti1_header(bytes);
    for (std::size_t off = 352; off < bytes.size(); off += static_cast<std::size_t>(k.size))
      std::reverse(bytes.begin() + static_cast<std::ptrdiff_t>(off), bytes.begin() + static_cast<std::ptrdiff_t>(off) + k.size);
    for (const char* name : {"/be.nii", "/be.nii.gz"}) {
      put_file(dir + name, bytes);
      const Volume le = read_nifti(dir + "/le.nii");
      const Volume be = read_nifti(dir + name);
      EXPECT_EQ(read_nifti_header(dir + name).byte_order, ByteOrder::Big);
      EXPECT_EQ(be.data.dtype(), le.data.dtype());
      EXPECT_EQ(be.data.shape(), le.data.shape());
      EXPECT_EQ(std::memcmp(be.data.raw_data(), le.data.raw_data(), le.data.nbytes()), 0);
      EXPECT_EQ(max_abs_diff(be.affine, le.affine), 0.0);
      EXPECT_EQ(be.spacing, le.spacing);
      EXPECT_TRUE(be.scaled);
      expect_same_fields(read_nifti_header(dir + name), read_nifti_header(dir + "/le.nii"));
    }
  }
}

// A NIfTI-2 header built field by field (540 bytes, 64-bit dims, double affine).
std::string build_nifti2(const std::vector<std::int64_t>& dims, std::int16_t datatype, std::int16_t bitpix, bool big,
                         const std::string& magic, double slope, double inter,
                         const std::array<std::array<double, 4>, 3>& srow) {
  std::string b(544, '\0');
  store<std::int32_t>(b, 0, 540, big);
  std::memcpy(b.data() + 4, magic.data(), 4);
  std::memcpy(b.data() + 8, "\r\n\032\n", 4);
  store(b, 12, datatype, big);
  store(b, 14, bitpix, big);
  store<std::int64_t>(b, 16, static_cast<std::int64_t>(dims.size()), big);
  for (std::size_t i = 0; i < 7; ++i) store<std::int64_t>(b, 24 + 8 * i, i < dims.size() ? dims[i] : 1, big);
  for (std::size_t i = 0; i < 8; ++i) store<double>(b, 104 + 8 * i, i == 0 ? 1.0 : 0.5 + static_cast<double>(i), big);
  store<std::int64_t>(b, 168, 544, big);
  store(b, 176, slope, big);
  store(b, 184, inter, big);
  store<std::int32_t>(b, 348, 4, big);  // sform_code: MNI
  for (std::size_t r = 0; r < 3; ++r)
    for (std::size_t c = 0; c < 4; ++c) store(b, 400 + 32 * r + 8 * c, srow[r][c], big);
  store<std::int32_t>(b, 500, 10, big);   // xyzt_units
  store<std::int32_t>(b, 504, 1002, big); // intent: label
  return b;
}

TEST(NiftiIo, Nifti2InBothByteOrdersAndCompressions) {
  const std::string dir = test::temp_dir("nifti2");
  // An srow no float32 could hold exactly: NIfTI-2 keeps doubles.
  const std::array<std::array<double, 4>, 3> srow = {{{1.0 / 3, 0, 0, -0.1}, {0, 2, 0.125, 1e-9}, {0, 0, 3, 7}}};
  std::vector<double> vals(2 * 3 * 4);
  for (std::size_t i = 0; i < vals.size(); ++i) vals[i] = std::exp(0.1 * static_cast<double>(i)) - 2.0;
  for (bool big : {false, true}) {
    for (const char* ext : {".nii", ".nii.gz"}) {
      SCOPED_TRACE(std::string(big ? "big" : "little") + ext);
      const std::string path = dir + "/n2" + (big ? "be" : "le") + ext;
      put_file(path, build_nifti2({4, 3, 2}, nifti_dt::kFloat64, 64, big, "n+2", 0, 0, srow) + value_bytes(vals, big));
      const NiftiHeader h = read_nifti_header(path);
      EXPECT_EQ(h.format, NiftiFormat::Nifti2);
      EXPECT_EQ(h.sizeof_hdr, 540);
      EXPECT_EQ(h.byte_order, big ? ByteOrder::Big : ByteOrder::Little);
      EXPECT_EQ(h.dims(), (std::vector<std::int64_t>{4, 3, 2}));
      EXPECT_EQ(h.intent_code, 1002);
      EXPECT_EQ(h.xyzt_units, 10);
      EXPECT_EQ(h.pixdim[1], 1.5);
      for (std::size_t r = 0; r < 3; ++r)
        for (std::size_t c = 0; c < 4; ++c) EXPECT_EQ(h.affine[r][c], srow[r][c]);
      const Volume v = read_nifti(path);
      EXPECT_EQ(v.data.dtype(), DType::Float64);
      EXPECT_EQ(v.data.shape(), (Shape{2, 3, 4}));
      EXPECT_EQ(v.data.to_vector<double>(), vals);
      EXPECT_EQ(v.intent_code, 1002);
    }
  }
  // Scaled int16 in NIfTI-2: slope and intercept are doubles there.
  std::vector<std::int16_t> raw = {-3, 0, 5, 100};
  put_file(dir + "/s.nii", build_nifti2({4}, nifti_dt::kInt16, 16, true, "n+2", 0.25, -1.5, srow) + value_bytes(raw, true));
  const Volume s = read_nifti(dir + "/s.nii");
  EXPECT_EQ(s.data.dtype(), DType::Float32);
  EXPECT_EQ(s.data.to_vector<float>(), (std::vector<float>{-2.25f, -1.5f, -0.25f, 23.5f}));
}

// NIfTI-2 keeps xyzt_units in 32 bits: the same conversion applies (a micrometre affine in doubles).
TEST(NiftiIo, Nifti2UnitsComeOutInMillimetres) {
  const std::string dir = test::temp_dir("nifti2_units");
  const std::array<std::array<double, 4>, 3> srow_um = {{{500, 0, 0, -1e4}, {0, 250, 0, 2e3}, {0, 0, 125, 7}}};
  std::string b = build_nifti2({2, 2, 2}, nifti_dt::kUInt8, 8, false, "n+2", 0, 0, srow_um);
  store<std::int32_t>(b, 500, nifti_units::kMicron | nifti_units::kMsec, false);
  put_file(dir + "/um.nii", b + std::string(8, '\1'));
  const Volume v = read_nifti(dir + "/um.nii");
  const Affine mm = {{{0.5, 0, 0, -10}, {0, 0.25, 0, 2}, {0, 0, 0.125, 0.007}, {0, 0, 0, 1}}};
  EXPECT_LT(max_abs_diff(v.affine, mm), 1e-12);
  // pixdim[1..3] of build_nifti2 are 1.5, 2.5, 3.5 micrometres.
  EXPECT_NEAR(v.spacing[0], 1.5e-3, 1e-15);
  EXPECT_NEAR(v.spacing[2], 3.5e-3, 1e-15);
  EXPECT_EQ(v.xyzt_units, nifti_units::kMm | nifti_units::kMsec);
}

TEST(NiftiIo, PairsInEveryCompressionMix) {
  const std::string dir = test::temp_dir("nifti_pair");
  Hdr1 h;
  h.dims = {4, 3, 2};
  h.datatype = nifti_dt::kInt16;
  h.bitpix = 16;
  h.vox_offset = 0;
  h.magic = "ni1";
  h.sform_code = 1;
  h.srow = {{{2, 0, 0, 1}, {0, 2, 0, 2}, {0, 0, 2, 3}}};
  std::vector<std::int16_t> vals(24);
  for (std::size_t i = 0; i < vals.size(); ++i) vals[i] = static_cast<std::int16_t>(1000 - 77 * static_cast<int>(i));
  const std::string header = build_nifti1(h);
  ASSERT_EQ(header.size(), 348u);
  const std::string image = value_bytes(vals);
  const std::vector<std::int32_t> expect(vals.begin(), vals.end());
  const char* mixes[][2] = {{".hdr", ".img"}, {".hdr.gz", ".img.gz"}, {".hdr", ".img.gz"}, {".hdr.gz", ".img"}};
  int i = 0;
  for (const auto& mix : mixes) {
    const std::string stem = dir + "/p" + std::to_string(i++);
    put_file(stem + mix[0], header);
    put_file(stem + mix[1], image);
    for (const std::string& open : {stem + mix[0], stem + mix[1]}) {
      SCOPED_TRACE(open);
      const NiftiHeader hdr = read_nifti_header(open);
      EXPECT_TRUE(hdr.pair);
      EXPECT_EQ(hdr.path, stem + mix[0]);
      EXPECT_EQ(hdr.image_path, stem + mix[1]);
      EXPECT_EQ(hdr.gzip, std::string(mix[0]).ends_with(".gz"));
      EXPECT_EQ(hdr.image_gzip, std::string(mix[1]).ends_with(".gz"));
      EXPECT_EQ(hdr.format, NiftiFormat::Nifti1);
      const Volume v = read_nifti(open);
      EXPECT_EQ(v.data.to_vector<std::int32_t>(), expect);
      EXPECT_EQ(v.affine[2][3], 3.0);
    }
  }
  // Upper-case names pair up too.
  put_file(dir + "/UP.HDR", header);
  put_file(dir + "/UP.IMG", image);
  EXPECT_EQ(read_nifti(dir + "/UP.HDR").data.to_vector<std::int32_t>(), expect);
  // The in-memory reader takes single files only.
  EXPECT_THROW(read_nifti_from_memory(as_span(header + image), "mem.hdr"), Error);
}

// ANALYZE 7.5: read as a pair without orientation, SPM-style (see nifti.h).
TEST(NiftiIo, AnalyzePairReadsWithPixdimAffineAndSpmScaling) {
  const std::string dir = test::temp_dir("nifti_analyze");
  Hdr1 h;
  h.magic = "";
  h.dims = {3, 5, 7};
  h.pixdim = {0, 3, 2, 1, 1, 1, 1, 1};
  h.vox_offset = 0;
  h.big = true;  // most ANALYZE files in the wild come from big-endian workstations
  std::vector<std::uint8_t> vals(105);
  for (std::size_t i = 0; i < vals.size(); ++i) vals[i] = static_cast<std::uint8_t>(i);
  put_file(dir + "/a.hdr", build_nifti1(h));
  put_file(dir + "/a.img", value_bytes(vals));
  NiftiHeader hdr = read_nifti_header(dir + "/a.hdr");
  EXPECT_EQ(hdr.format, NiftiFormat::Analyze);
  EXPECT_EQ(hdr.byte_order, ByteOrder::Big);
  EXPECT_TRUE(hdr.pair);
  EXPECT_EQ(hdr.qform_code, 0);
  EXPECT_EQ(hdr.sform_code, 0);
  const Affine centred = {{{-3, 0, 0, 3}, {0, 2, 0, -4}, {0, 0, 1, -3}, {0, 0, 0, 1}}};
  EXPECT_LT(max_abs_diff(hdr.affine, centred), 1e-12);
  Volume v = read_nifti(dir + "/a.img");
  EXPECT_EQ(v.data.dtype(), DType::UInt8);
  EXPECT_EQ(v.data.to_vector<std::uint8_t>(), vals);

  // SPM originator (1-based voxel) and funused1 as the scale factor.
  h.analyze_origin = {2, 3, 4};
  h.slope = 0.5f;
  put_file(dir + "/a.hdr", build_nifti1(h));
  hdr = read_nifti_header(dir + "/a.hdr");
  const Affine from_origin = {{{-3, 0, 0, 3}, {0, 2, 0, -4}, {0, 0, 1, -3}, {0, 0, 0, 1}}};
  EXPECT_LT(max_abs_diff(hdr.affine, from_origin), 1e-12);  // origin (2,3,4) is the centre voxel here
  h.analyze_origin = {1, 1, 1};
  put_file(dir + "/a.hdr", build_nifti1(h));
  hdr = read_nifti_header(dir + "/a.hdr");
  EXPECT_EQ(hdr.affine[0][3], 0.0);
  EXPECT_EQ(hdr.affine[1][3], 0.0);
  v = read_nifti(dir + "/a.hdr");
  EXPECT_TRUE(v.scaled);
  EXPECT_EQ(v.data.dtype(), DType::Float32);
  EXPECT_EQ(v.data.to_vector<float>()[9], 4.5f);

  // Without NIfTI magic a single .nii is not taken for ANALYZE.
  put_file(dir + "/a.nii", build_nifti1([&] {
             Hdr1 s = h;
             s.vox_offset = 352;
             return s;
           }()) + value_bytes(vals));
  try {
    read_nifti(dir + "/a.nii");
    ADD_FAILURE() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad magic"), std::string::npos) << e.what();
  }
}

// ---- datatypes and scaling ---------------------------------------------------------------------

template <class T>
Volume read_typed(const std::string& path, std::int16_t code, const std::vector<T>& vals, float slope = 0,
                  float inter = 0, const NiftiReadOptions& opt = {}) {
  Hdr1 h;
  h.dims = {static_cast<std::int16_t>(vals.size())};
  h.datatype = code;
  h.bitpix = static_cast<std::int16_t>(8 * sizeof(T));
  h.slope = slope;
  h.inter = inter;
  put_file(path, build_nifti1(h) + value_bytes(vals));
  return read_nifti(path, opt);
}

TEST(NiftiIo, EveryRealDatatypeMapsAsDocumented) {
  const std::string dir = test::temp_dir("nifti_types");
  const std::string p = dir + "/t.nii";
  Volume v = read_typed<std::int8_t>(p, nifti_dt::kInt8, {-128, -1, 0, 127});
  EXPECT_EQ(v.data.dtype(), DType::Int32);
  EXPECT_EQ(v.data.to_vector<std::int32_t>(), (std::vector<std::int32_t>{-128, -1, 0, 127}));
  v = read_typed<std::uint16_t>(p, nifti_dt::kUInt16, {0, 1, 65535});
  EXPECT_EQ(v.data.to_vector<std::int32_t>(), (std::vector<std::int32_t>{0, 1, 65535}));
  v = read_typed<std::uint32_t>(p, nifti_dt::kUInt32, {0, 7, 2147483647u});
  EXPECT_EQ(v.data.dtype(), DType::Int32);
  v = read_typed<std::uint32_t>(p, nifti_dt::kUInt32, {0, 7, 4000000000u});
  EXPECT_EQ(v.data.dtype(), DType::Float64);
  EXPECT_EQ(v.data.to_vector<double>(), (std::vector<double>{0, 7, 4000000000.0}));
  v = read_typed<std::int64_t>(p, nifti_dt::kInt64, {-5, 9});
  EXPECT_EQ(v.data.dtype(), DType::Int32);
  v = read_typed<std::int64_t>(p, nifti_dt::kInt64, {-5, -(std::int64_t{1} << 40)});
  EXPECT_EQ(v.data.dtype(), DType::Float64);
  EXPECT_EQ(v.data.to_vector<double>()[1], -1099511627776.0);
  v = read_typed<std::uint64_t>(p, nifti_dt::kUInt64, {3, 4});
  EXPECT_EQ(v.data.to_vector<std::int32_t>(), (std::vector<std::int32_t>{3, 4}));
  v = read_typed<double>(p, nifti_dt::kFloat64, {0.1, -2.5});
  EXPECT_EQ(v.data.to_vector<double>(), (std::vector<double>{0.1, -2.5}));
  EXPECT_EQ(v.source_datatype, nifti_dt::kFloat64);
  EXPECT_STREQ(nifti_datatype_name(nifti_dt::kUInt16), "uint16");
  EXPECT_STREQ(nifti_datatype_name(12345), "unknown");
}

TEST(NiftiIo, ScalingFollowsTheStandard) {
  const std::string dir = test::temp_dir("nifti_scale");
  const std::string p = dir + "/s.nii";
  const std::vector<std::int16_t> raw = {-4, 0, 3, 1000};
  // slope 0.5, inter -3: float32 of the scaled values.
  Volume v = read_typed(p, nifti_dt::kInt16, raw, 0.5f, -3.0f);
  EXPECT_TRUE(v.scaled);
  EXPECT_EQ(v.data.dtype(), DType::Float32);
  EXPECT_EQ(v.data.to_vector<float>(), (std::vector<float>{-5, -3, -1.5f, 497}));
  EXPECT_EQ(v.scl_slope, 0.5);
  // The same file unscaled on request.
  v = read_typed(p, nifti_dt::kInt16, raw, 0.5f, -3.0f, NiftiReadOptions{false});
  EXPECT_FALSE(v.scaled);
  EXPECT_EQ(v.data.to_vector<std::int32_t>(), (std::vector<std::int32_t>{-4, 0, 3, 1000}));
  // slope 0, NaN or infinite: no scaling, whatever inter says; slope 1 inter 0: identity, kept integer.
  for (float slope : {0.0f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(), 1.0f}) {
    v = read_typed(p, nifti_dt::kInt16, raw, slope, slope == 1.0f ? 0.0f : 7.0f);
    EXPECT_FALSE(v.scaled) << slope;
    EXPECT_EQ(v.data.dtype(), DType::Int32) << slope;
  }
  // Slope 1 with an intercept is a real scaling.
  v = read_typed(p, nifti_dt::kInt16, raw, 1.0f, 10.0f);
  EXPECT_EQ(v.data.to_vector<float>(), (std::vector<float>{6, 10, 13, 1010}));
  // float32 and float64 sources scale in place in their own precision.
  v = read_typed<float>(p, nifti_dt::kFloat32, {1.5f, -2}, 2.0f, 1.0f);
  EXPECT_EQ(v.data.to_vector<float>(), (std::vector<float>{4, -3}));
  v = read_typed<double>(p, nifti_dt::kFloat64, {1.5, -2}, 2.0f, 1.0f);
  EXPECT_EQ(v.data.dtype(), DType::Float64);
  EXPECT_EQ(v.data.to_vector<double>(), (std::vector<double>{4, -3}));
  v = read_typed<std::uint8_t>(p, nifti_dt::kUInt8, {0, 255}, 0.5f, 0.0f);
  EXPECT_EQ(v.data.to_vector<float>(), (std::vector<float>{0, 127.5f}));

  // Raw access and stats see the scaled values; NaN is counted apart.
  read_typed<float>(p, nifti_dt::kFloat32, {1, std::numeric_limits<float>::quiet_NaN(), 5, -1}, 2.0f, 0.0f);
  const NiftiRaw r = read_nifti_raw(p);
  EXPECT_EQ(r.nbytes, 16u);
  const VoxelStats st = raw_stats(r);
  EXPECT_EQ(st.nan_count, 1);
  EXPECT_EQ(st.count, 3);
  EXPECT_EQ(st.min, -2);
  EXPECT_EQ(st.max, 10);
  EXPECT_NEAR(st.mean, 10.0 / 3, 1e-12);
  const Tensor f64 = raw_to_float64(r);
  EXPECT_EQ(f64.to_vector<double>()[2], 10.0);
  EXPECT_EQ(raw_to_float32(r, false).to_vector<float>()[2], 5.0f);
}

// The chunked float readers agree with the one-buffer path across chunk boundaries, in both byte
// orders, scaled or not, compressed or not.
TEST(NiftiIo, ChunkedFloatReadersMatchRawConversion) {
  const std::string dir = test::temp_dir("nifti_chunk");
  const std::int16_t nx = 71, ny = 50, nz = 20;  // 71000 voxels: more than one 64 Ki-voxel chunk
  std::vector<std::int16_t> vals(static_cast<std::size_t>(nx) * ny * nz);
  for (std::size_t i = 0; i < vals.size(); ++i) vals[i] = static_cast<std::int16_t>((i * 7919) % 65536 - 32768);
  for (bool big : {false, true}) {
    for (float slope : {0.0f, 0.5f}) {
      for (const char* ext : {".nii", ".nii.gz"}) {
        SCOPED_TRACE(std::string(big ? "big " : "little ") + std::to_string(slope) + ext);
        Hdr1 h;
        h.dims = {nx, ny, nz};
        h.datatype = nifti_dt::kInt16;
        h.bitpix = 16;
        h.slope = slope;
        h.inter = 3;
        h.big = big;
        const std::string path = dir + "/c" + ext;
        put_file(path, build_nifti1(h) + value_bytes(vals, big));
        NiftiHeader hdr;
        const Tensor f32 = read_nifti_float32(path, &hdr);
        EXPECT_EQ(hdr.byte_order, big ? ByteOrder::Big : ByteOrder::Little);
        const NiftiRaw raw = read_nifti_raw(path);
        EXPECT_EQ(f32.shape(), (Shape{nz, ny, nx}));
        EXPECT_EQ(f32.to_vector<float>(), raw_to_float32(raw).to_vector<float>());
        EXPECT_EQ(read_nifti_float64(path).to_vector<double>(), raw_to_float64(raw).to_vector<double>());
        const std::vector<float> f = f32.to_vector<float>();
        const double expect_last = slope == 0 ? vals.back() : vals.back() * 0.5 + 3;
        EXPECT_EQ(f.back(), static_cast<float>(expect_last));
        // The Volume path (chunked into int32, or float32 when scaled) agrees too.
        const Volume v = read_nifti(path);
        EXPECT_EQ(v.to_float32().to_vector<float>(), f);
        EXPECT_EQ(v.data.dtype(), slope == 0 ? DType::Int32 : DType::Float32);
      }
    }
  }
}

// ---- Volume conversions ------------------------------------------------------------------------

TEST(NiftiIo, VolumeConvertsToFloatAndCheckedLabels) {
  Volume v = make_volume(from_vector<float>({0, 1, 2, 3, 4, 5}, {2, 3}));
  EXPECT_EQ(v.to_labels().to_vector<std::int32_t>(), (std::vector<std::int32_t>{0, 1, 2, 3, 4, 5}));
  v = make_volume(from_vector<float>({0, 1, 2.5f, 3, 4, 5}, {2, 3}));
  try {
    v.to_labels();
    ADD_FAILURE() << "expected an Error";
  } catch (const Error& e) {
    // Element [0][2] is NIfTI voxel (2, 0).
    EXPECT_NE(std::string(e.what()).find("voxel (2, 0) holds 2.5"), std::string::npos) << e.what();
  }
  v = make_volume(from_vector<double>({0, std::nan("")}, {2}));
  EXPECT_THROW(v.to_labels(), Error);
  v = make_volume(from_vector<std::uint8_t>({7, 255}, {2}));
  EXPECT_EQ(v.to_float32().to_vector<float>(), (std::vector<float>{7, 255}));
  EXPECT_EQ(v.to_labels().to_vector<std::int32_t>(), (std::vector<std::int32_t>{7, 255}));
  // A volume read from a file names it: the label file at fault is the user's to fix.
  const std::string path = test::temp_dir("nifti_labels") + "/not_labels.nii.gz";
  write_nifti(path, make_volume(from_vector<float>({0, 0.5f}, {2})));
  try {
    read_nifti(path).to_labels();
    ADD_FAILURE() << "expected an InputError";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()).rfind(path + ": voxel (1) holds 0.5, which is not an integer label", 0), 0u)
        << e.what();
  }
}

// ---- writer refusals and atomicity -------------------------------------------------------------

TEST(NiftiIo, WriterRefusesValuesThatWouldNotReadBack) {
  const std::string dir = test::temp_dir("nifti_wr");
  const std::string path = dir + "/w.nii";
  write_nifti(path, make_volume(from_vector<std::int32_t>({1, 2, 3}, {3})), NiftiWriteType::UInt8);
  const std::string before = read_file_bytes(path);
  struct Bad {
    Volume v;
    NiftiWriteType as;
    const char* reason;
  };
  const Bad bad[] = {
      {make_volume(from_vector<std::int32_t>({1, 300, 3}, {3})), NiftiWriteType::UInt8, "voxel 1 holds 300, outside the range of uint8"},
      {make_volume(from_vector<std::int32_t>({-1, 0, 0}, {3})), NiftiWriteType::UInt8, "outside the range of uint8"},
      {make_volume(from_vector<std::int32_t>({40000, 0, 0}, {3})), NiftiWriteType::Int16, "outside the range of int16"},
      {make_volume(from_vector<float>({1, 1.5f, 0}, {3})), NiftiWriteType::Int16, "not an integer"},
      {make_volume(from_vector<float>({std::nanf(""), 0, 0}, {3})), NiftiWriteType::Int32, "not an integer"},
      {make_volume(from_vector<double>({1e300, 0, 0}, {3})), NiftiWriteType::Float32, "outside the range of float32"},
      {make_volume(from_vector<double>({3e9, 0, 0}, {3})), NiftiWriteType::Int32, "outside the range of int32"},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.reason);
    try {
      write_nifti(path, b.v, b.as);
      ADD_FAILURE() << "expected an Error";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind(path + ": ", 0), 0u) << e.what();
      EXPECT_NE(std::string(e.what()).find(b.reason), std::string::npos) << e.what();
    }
    // The old file is untouched and no temporary file is left behind.
    EXPECT_EQ(read_file_bytes(path), before);
    EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
  }
  EXPECT_THROW(write_nifti(dir + "/w.hdr", make_volume(zeros({2}))), Error);
  EXPECT_THROW(write_nifti(dir + "/w.img.gz", make_volume(zeros({2}))), Error);
  EXPECT_THROW(write_nifti(dir + "/big.nii", make_volume(zeros({1, 40000}))), Error);
  EXPECT_THROW(write_nifti(dir + "/missing/x.nii", make_volume(zeros({2}))), Error);
  // Float64 volumes default to float32 on disk.
  write_nifti(dir + "/d.nii", make_volume(from_vector<double>({0.5, -1}, {2})));
  EXPECT_EQ(read_nifti(dir + "/d.nii").data.to_vector<float>(), (std::vector<float>{0.5f, -1}));
}

// The writer's header is what the standard asks for, byte by byte where it matters to other tools.
TEST(NiftiIo, WrittenHeaderFields) {
  const std::string dir = test::temp_dir("nifti_hdr");
  Volume v = make_volume(from_vector<std::uint8_t>(std::vector<std::uint8_t>(24, 1), {2, 3, 4}),
                         rotation_affine(0, 0, 0, {2, 3, 4}, {1, 2, 3}, false));
  v.intent_code = 1002;
  write_nifti(dir + "/h.nii", v, NiftiWriteType::UInt8);
  const std::string b = read_file_bytes(dir + "/h.nii");
  ASSERT_EQ(b.size(), 352u + 24u);
  EXPECT_EQ(std::memcmp(b.data() + 344, "n+1\0", 4), 0);
  EXPECT_EQ(std::memcmp(b.data() + 348, "\0\0\0\0", 4), 0);
  const NiftiHeader h = read_nifti_header(dir + "/h.nii");
  EXPECT_EQ(h.bitpix, 8);
  EXPECT_EQ(h.intent_code, 1002);
  EXPECT_EQ(h.scl_slope, 0.0);
  EXPECT_EQ(h.xyzt_units, 10);
  EXPECT_EQ(h.pixdim[0], 1.0);
  EXPECT_EQ(h.pixdim[1], 2.0);
  EXPECT_EQ(h.pixdim[3], 4.0);
  EXPECT_EQ(h.descrip, "voxgrad");
  // gzip output is a real gzip member that plain zlib inflates to the same bytes.
  write_nifti(dir + "/h.nii.gz", v, NiftiWriteType::UInt8);
  const std::string gz = read_file_bytes(dir + "/h.nii.gz");
  ASSERT_GE(gz.size(), 2u);
  EXPECT_EQ(static_cast<unsigned char>(gz[0]), 0x1f);
  EXPECT_EQ(static_cast<unsigned char>(gz[1]), 0x8b);
  std::string inflated(b.size() + 16, '\0');
  z_stream z{};
  ASSERT_EQ(inflateInit2(&z, 15 + 16), Z_OK);
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(gz.data()));
  z.avail_in = static_cast<uInt>(gz.size());
  z.next_out = reinterpret_cast<Bytef*>(inflated.data());
  z.avail_out = static_cast<uInt>(inflated.size());
  EXPECT_EQ(inflate(&z, Z_FINISH), Z_STREAM_END);
  inflated.resize(z.total_out);
  inflateEnd(&z);
  EXPECT_EQ(inflated, b);
}

// ---- streams -----------------------------------------------------------------------------------

TEST(NiftiIo, MemoryAndFileReadersAgree) {
  const std::string dir = test::temp_dir("nifti_mem");
  std::vector<float> vals(1000);
  for (std::size_t i = 0; i < vals.size(); ++i) vals[i] = static_cast<float>(i) * 0.25f;
  const Volume v = make_volume(from_vector(vals, {10, 10, 10}));
  for (const char* ext : {".nii", ".nii.gz"}) {
    const std::string path = dir + "/m" + ext;
    write_nifti(path, v);
    const std::string bytes = read_file_bytes(path);
    const Volume a = read_nifti_from_memory(as_span(bytes), "mem");
    EXPECT_EQ(a.data.to_vector<float>(), vals);
    const NiftiRaw r = read_nifti_raw_from_memory(as_span(bytes), "mem");
    EXPECT_EQ(r.header.path, "mem");
    EXPECT_EQ(std::memcmp(r.data(), vals.data(), r.nbytes), 0);
  }
}

// Bytes this process has read through read(2) so far (Linux's /proc/self/io "rchar"): what a
// reader pulled from its files, independent of how busy the machine is.
std::int64_t bytes_read_by_process() {
  std::ifstream io("/proc/self/io");
  std::string key;
  std::int64_t value = 0;
  while (io >> key >> value)
    if (key == "rchar:") return value;
  return -1;
}

// Every gzip member is checked, but what may follow the image is bounded: the ~4 MB of members
// that would inflate to 4 GiB after 8 voxels are refused once 256 MiB have gone by, reading only a
// small part of the file, while a header-only read never inflates past the header.
TEST(NiftiIo, AGzipBombPastTheImageIsRefusedWithoutInflatingIt) {
  const std::string dir = test::temp_dir("nifti_bomb");
  const std::string path = dir + "/bomb.nii.gz";
  Hdr1 h;
  h.dims = {8};
  const std::string head = build_nifti1(h) + std::string(8, '\x2a');
  // One deflated 8 MiB run of zeros, repeated as 512 gzip members: 4 GiB behind ~4 MB.
  std::string member;
  {
    const std::string zeros_block(8 << 20, '\0');
    z_stream z{};
    ASSERT_EQ(deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 9, Z_DEFAULT_STRATEGY), Z_OK);
    member.resize(deflateBound(&z, zeros_block.size()));
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(zeros_block.data()));
    z.avail_in = static_cast<uInt>(zeros_block.size());
    z.next_out = reinterpret_cast<Bytef*>(member.data());
    z.avail_out = static_cast<uInt>(member.size());
    ASSERT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
    member.resize(z.total_out);
    deflateEnd(&z);
  }
  {
    AtomicOutputStream out(path, 6);
    out.write(head.data(), head.size());
    out.commit();
  }
  {
    const std::string first = read_file_bytes(path);
    AtomicOutputStream out(path, 0);  // the members are already compressed: append them as they are
    out.write(first.data(), first.size());
    for (int i = 0; i < 512; ++i) out.write(member.data(), member.size());
    out.commit();
  }
  const std::int64_t file_bytes = static_cast<std::int64_t>(std::filesystem::file_size(path));
  EXPECT_EQ(read_nifti_header(path).dims(), (std::vector<std::int64_t>{8}));
  const std::int64_t before = bytes_read_by_process();
  const std::string message = test::error_of([&] { read_nifti(path); });
  const std::int64_t read = bytes_read_by_process() - before;
  EXPECT_EQ(message.rfind(path + ": the gzip data go on for more than 268435456 bytes past the image", 0), 0u)
      << message;
  if (before < 0) GTEST_SKIP() << "/proc/self/io is not readable here";
  EXPECT_LT(read, file_bytes / 4) << "read " << read << " of " << file_bytes << " bytes";
}

TEST(NiftiIo, ErrorsNameThePathFirst) {
  const std::string dir = test::temp_dir("nifti_err");
  try {
    read_nifti(dir + "/absent.nii.gz");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(dir + "/absent.nii.gz: cannot open", 0), 0u) << e.what();
  }
  try {
    read_nifti(dir);
    ADD_FAILURE();
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), dir + ": not a regular file (a folder)");
  }
}

// Unless `done` is set within two seconds, opens the write end of `fifo`, so that a reader blocked
// in open() on it (as one that does not refuse FIFOs would be) wakes up and the test fails instead
// of hanging. Non-blocking: with no reader waiting the open fails (ENXIO) and the thread just ends.
std::thread unblock_later(const std::string& fifo, const std::atomic<bool>& done) {
  return std::thread([fifo, &done] {
    for (int i = 0; i < 40 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (done) return;
    const int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0) ::close(fd);
  });
}

// A FIFO (or any non-regular file) is refused at once with the path and its kind: a single file, the
// image half of a pair, and read_file_bytes alike.
TEST(NiftiIo, FifosAreRefusedAtOnce) {
  const std::string dir = test::temp_dir("nifti_fifo");
  Hdr1 h;
  h.dims = {2};
  h.vox_offset = 0;
  h.magic = "ni1";
  put_file(dir + "/pair.hdr", build_nifti1(h));
  for (const char* name : {"x.nii", "x.nii.gz", "pair.img"}) ASSERT_EQ(::mkfifo((dir + "/" + name).c_str(), 0600), 0);
  const std::pair<std::string, std::function<void()>> reads[] = {
      {dir + "/x.nii", [&] { read_nifti(dir + "/x.nii"); }},
      {dir + "/x.nii.gz", [&] { read_nifti_header(dir + "/x.nii.gz"); }},
      {dir + "/pair.img", [&] { read_nifti(dir + "/pair.hdr"); }},
      {dir + "/x.nii", [&] { (void)read_file_bytes(dir + "/x.nii"); }},
  };
  for (const auto& [fifo, read] : reads) {
    SCOPED_TRACE(fifo);
    std::atomic<bool> done{false};
    std::thread helper = unblock_later(fifo, done);
    const auto t0 = std::chrono::steady_clock::now();
    std::string message;
    try {
      read();
      ADD_FAILURE() << "read a FIFO without error";
    } catch (const InputError& e) {
      message = e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not an InputError: " << e.what();
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    done = true;
    helper.join();
    EXPECT_EQ(message, fifo + ": not a regular file (a FIFO)");
    EXPECT_LT(seconds, 1.0) << "the read waited for a writer";
  }
}

// AtomicOutputStream writes through files::AtomicFile: its temporary is "<target>.tmp-<pid>-<n>",
// the name remove_stale_temporaries knows, it is gone after commit and after an abandoned write,
// and the target appears whole only on commit.
TEST(NiftiIo, AtomicOutputStreamUsesTheSharedTemporaryNames) {
  const std::string dir = test::temp_dir("nifti_atomic");
  const std::string target = dir + "/out.nii.gz";
  auto names = [&] {
    std::vector<std::string> all;
    for (const auto& e : fs::directory_iterator(dir)) all.push_back(e.path().filename().string());
    return all;
  };
  const std::regex temporary("out\\.nii\\.gz\\.tmp-" + std::to_string(::getpid()) + "-[0-9]+");
  {
    AtomicOutputStream out(target, 6);
    out.write("abc", 3);
    const auto during = names();
    ASSERT_EQ(during.size(), 1u);
    EXPECT_TRUE(std::regex_match(during[0], temporary)) << during[0];
  }
  EXPECT_TRUE(names().empty()) << "an abandoned write leaves nothing";
  {
    AtomicOutputStream out(target, 6);
    out.write("abc", 3);
    out.commit();
  }
  EXPECT_EQ(names(), std::vector<std::string>{"out.nii.gz"});
  // One gzip member with a good trailer.
  InputStream in = InputStream::open_file(target);
  char got[3];
  in.read_exact(got, 3, "data");
  in.verify_to_end();
  EXPECT_EQ(std::string(got, 3), "abc");
  // Writing into a folder that does not exist names the target and the reason.
  const std::string message = test::error_of([&] { AtomicOutputStream(dir + "/missing/x.nii", 0); });
  EXPECT_EQ(message.rfind(dir + "/missing/x.nii: ", 0), 0u) << message;
  EXPECT_NE(message.find("no such file or folder"), std::string::npos) << message;
}

}  // namespace
}  // namespace voxgrad::io
