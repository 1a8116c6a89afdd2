// NIfTI-1/NIfTI-2/ANALYZE header decoding and validation, voxel reading (straight into the final
// tensor when the stored type is one the engine holds), datatype conversion and scaling, and the
// NIfTI-1 writer with the quaternion <-> matrix conversions of the reference library (nifti1_io.c).
#include "io/nifti.h"

#include <sys/stat.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <optional>

#include "engine/error.h"
#include "io/gzip_stream.h"

namespace voxgrad::io {

// ---- names and sizes ---------------------------------------------------------------------------

const char* nifti_format_name(NiftiFormat f) {
  switch (f) {
    case NiftiFormat::Nifti1: return "nifti1";
    case NiftiFormat::Nifti2: return "nifti2";
    case NiftiFormat::Analyze: return "analyze";
  }
  return "unknown";
}

const char* byte_order_name(ByteOrder b) { return b == ByteOrder::Little ? "little" : "big"; }

const char* nifti_datatype_name(int code) {
  switch (code) {
    case 1: return "binary";
    case nifti_dt::kUInt8: return "uint8";
    case nifti_dt::kInt16: return "int16";
    case nifti_dt::kInt32: return "int32";
    case nifti_dt::kFloat32: return "float32";
    case nifti_dt::kComplex64: return "complex64";
    case nifti_dt::kFloat64: return "float64";
    case nifti_dt::kRgb24: return "rgb24";
    case nifti_dt::kInt8: return "int8";
    case nifti_dt::kUInt16: return "uint16";
    case nifti_dt::kUInt32: return "uint32";
    case nifti_dt::kInt64: return "int64";
    case nifti_dt::kUInt64: return "uint64";
    case nifti_dt::kFloat128: return "float128";
    case nifti_dt::kComplex128: return "complex128";
    case nifti_dt::kComplex256: return "complex256";
    case nifti_dt::kRgba32: return "rgba32";
    default: return "unknown";
  }
}

int nifti_datatype_size(int code) {
  switch (code) {
    case nifti_dt::kUInt8:
    case nifti_dt::kInt8: return 1;
    case nifti_dt::kInt16:
    case nifti_dt::kUInt16: return 2;
    case nifti_dt::kInt32:
    case nifti_dt::kUInt32:
    case nifti_dt::kFloat32: return 4;
    case nifti_dt::kInt64:
    case nifti_dt::kUInt64:
    case nifti_dt::kFloat64: return 8;
    default: return 0;
  }
}

const char* spatial_units_name(int xyzt_units) {
  switch (xyzt_units & nifti_units::kSpaceMask) {
    case nifti_units::kMeter: return "m";
    case nifti_units::kMm: return "mm";
    case nifti_units::kMicron: return "um";
    default: return "unknown";
  }
}

double millimetres_per_unit(int xyzt_units) {
  switch (xyzt_units & nifti_units::kSpaceMask) {
    case nifti_units::kMeter: return 1e3;
    case nifti_units::kMicron: return 1e-3;
    default: return 1.0;  // mm, and unknown: the de facto unit of medical images (ITK's default too)
  }
}

const char* write_type_name(NiftiWriteType t) {
  switch (t) {
    case NiftiWriteType::UInt8: return "uint8";
    case NiftiWriteType::Int16: return "int16";
    case NiftiWriteType::Int32: return "int32";
    case NiftiWriteType::Float32: return "float32";
  }
  return "unknown";
}

// ---- header accessors --------------------------------------------------------------------------

std::vector<std::int64_t> NiftiHeader::dims() const {
  return std::vector<std::int64_t>(dim.begin() + 1, dim.begin() + 1 + ndim());
}

std::vector<double> NiftiHeader::spacing() const {
  std::vector<double> s(pixdim.begin() + 1, pixdim.begin() + 1 + ndim());
  const double mm = millimetres_per_unit(xyzt_units);
  for (std::size_t i = 0; i < s.size() && i < 3; ++i) s[i] *= mm;
  return s;
}

Shape NiftiHeader::shape() const {
  Shape s;
  for (int i = ndim(); i >= 1; --i) s.push_back(dim[static_cast<std::size_t>(i)]);
  return s;
}

std::int64_t NiftiHeader::numel() const {
  std::int64_t n = 1;
  for (int i = 1; i <= ndim(); ++i) n *= dim[static_cast<std::size_t>(i)];
  return n;
}

std::int64_t NiftiHeader::bytes_per_voxel() const { return nifti_datatype_size(datatype); }

std::uint64_t NiftiHeader::data_bytes() const {
  return static_cast<std::uint64_t>(numel()) * static_cast<std::uint64_t>(bytes_per_voxel());
}

bool NiftiHeader::has_scaling() const {
  if (!std::isfinite(scl_slope) || scl_slope == 0.0) return false;
  const double inter = std::isfinite(scl_inter) ? scl_inter : 0.0;
  return !(scl_slope == 1.0 && inter == 0.0);
}

// ---- quaternions (nifti1_io.c: nifti_quatern_to_mat44, nifti_mat44_to_quatern) -----------------

Affine quatern_to_affine(const Quatern& q) {
  double b = q.b, c = q.c, d = q.d;
  double a = 1.0 - (b * b + c * c + d * d);
  if (a < 1.e-7) {
    // Not a unit quaternion's (b, c, d): normalise it and take a 180 degree rotation.
    const double norm = std::sqrt(b * b + c * c + d * d);
    if (norm > 0) {
      b /= norm;
      c /= norm;
      d /= norm;
    }
    a = 0.0;
  } else {
    a = std::sqrt(a);
  }
  const double xd = q.dx > 0.0 ? q.dx : 1.0;
  const double yd = q.dy > 0.0 ? q.dy : 1.0;
  double zd = q.dz > 0.0 ? q.dz : 1.0;
  if (q.qfac < 0.0) zd = -zd;

  Affine r{};
  r[0][0] = (a * a + b * b - c * c - d * d) * xd;
  r[0][1] = 2.0 * (b * c - a * d) * yd;
  r[0][2] = 2.0 * (b * d + a * c) * zd;
  r[1][0] = 2.0 * (b * c + a * d) * xd;
  r[1][1] = (a * a + c * c - b * b - d * d) * yd;
  r[1][2] = 2.0 * (c * d - a * b) * zd;
  r[2][0] = 2.0 * (b * d - a * c) * xd;
  r[2][1] = 2.0 * (c * d + a * b) * yd;
  r[2][2] = (a * a + d * d - c * c - b * b) * zd;
  r[0][3] = q.qx;
  r[1][3] = q.qy;
  r[2][3] = q.qz;
  r[3][3] = 1.0;
  return r;
}

namespace {

using Mat33 = std::array<std::array<double, 3>, 3>;

double det33(const Mat33& r) {
  return r[0][0] * r[1][1] * r[2][2] - r[0][0] * r[2][1] * r[1][2] - r[1][0] * r[0][1] * r[2][2] +
         r[1][0] * r[2][1] * r[0][2] + r[2][0] * r[0][1] * r[1][2] - r[2][0] * r[1][1] * r[0][2];
}

Mat33 inverse33(const Mat33& r) {
  double deti = det33(r);
  if (deti != 0.0) deti = 1.0 / deti;
  Mat33 q{};
  q[0][0] = deti * (r[1][1] * r[2][2] - r[2][1] * r[1][2]);
  q[0][1] = deti * (-r[0][1] * r[2][2] + r[2][1] * r[0][2]);
  q[0][2] = deti * (r[0][1] * r[1][2] - r[1][1] * r[0][2]);
  q[1][0] = deti * (-r[1][0] * r[2][2] + r[2][0] * r[1][2]);
  q[1][1] = deti * (r[0][0] * r[2][2] - r[2][0] * r[0][2]);
  q[1][2] = deti * (-r[0][0] * r[1][2] + r[1][0] * r[0][2]);
  q[2][0] = deti * (r[1][0] * r[2][1] - r[2][0] * r[1][1]);
  q[2][1] = deti * (-r[0][0] * r[2][1] + r[2][0] * r[0][1]);
  q[2][2] = deti * (r[0][0] * r[1][1] - r[1][0] * r[0][1]);
  return q;
}

double rownorm33(const Mat33& a) {
  double best = 0;
  for (int i = 0; i < 3; ++i) best = std::max(best, std::fabs(a[i][0]) + std::fabs(a[i][1]) + std::fabs(a[i][2]));
  return best;
}

double colnorm33(const Mat33& a) {
  double best = 0;
  for (int j = 0; j < 3; ++j) best = std::max(best, std::fabs(a[0][j]) + std::fabs(a[1][j]) + std::fabs(a[2][j]));
  return best;
}

// The orthogonal matrix nearest to `a` (Higham's iteration, as nifti_mat33_polar).
Mat33 polar33(const Mat33& a) {
  Mat33 x = a;
  double gam = det33(x);
  for (int guard = 0; gam == 0.0 && guard < 100; ++guard) {
    gam = 0.00001 * (0.001 + rownorm33(x));
    x[0][0] += gam;
    x[1][1] += gam;
    x[2][2] += gam;
    gam = det33(x);
  }
  double dif = 1.0;
  Mat33 z{};
  for (int k = 0;; ++k) {
    const Mat33 y = inverse33(x);
    double g = 1.0, gi = 1.0;
    if (dif > 0.3) {
      const double alp = std::sqrt(rownorm33(x) * colnorm33(x));
      const double bet = std::sqrt(rownorm33(y) * colnorm33(y));
      g = std::sqrt(bet / alp);
      gi = 1.0 / g;
    }
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) z[i][j] = 0.5 * (g * x[i][j] + gi * y[j][i]);
    dif = 0;
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) dif += std::fabs(z[i][j] - x[i][j]);
    if (k + 1 > 100 || dif < 3.e-6 || !std::isfinite(dif)) break;
    x = z;
  }
  return z;
}

}  // namespace

Quatern affine_to_quatern(const Affine& m) {
  Quatern q;
  q.qx = m[0][3];
  q.qy = m[1][3];
  q.qz = m[2][3];
  double r11 = m[0][0], r12 = m[0][1], r13 = m[0][2];
  double r21 = m[1][0], r22 = m[1][1], r23 = m[1][2];
  double r31 = m[2][0], r32 = m[2][1], r33 = m[2][2];
  double xd = std::sqrt(r11 * r11 + r21 * r21 + r31 * r31);
  double yd = std::sqrt(r12 * r12 + r22 * r22 + r32 * r32);
  double zd = std::sqrt(r13 * r13 + r23 * r23 + r33 * r33);
  // A zero column has no direction: patch it to the matching axis, as the reference does.
  if (xd == 0.0) { r11 = 1.0; r21 = r31 = 0.0; xd = 1.0; }
  if (yd == 0.0) { r22 = 1.0; r12 = r32 = 0.0; yd = 1.0; }
  if (zd == 0.0) { r33 = 1.0; r13 = r23 = 0.0; zd = 1.0; }
  q.dx = xd;
  q.dy = yd;
  q.dz = zd;
  r11 /= xd; r21 /= xd; r31 /= xd;
  r12 /= yd; r22 /= yd; r32 /= yd;
  r13 /= zd; r23 /= zd; r33 /= zd;

  // Polar decomposition rather than Gram-Schmidt, so that the inverse matrix maps to the
  // inverse rotation (the reference library's reason, kept for identical output).
  const Mat33 p = polar33({{{r11, r12, r13}, {r21, r22, r23}, {r31, r32, r33}}});
  r11 = p[0][0]; r12 = p[0][1]; r13 = p[0][2];
  r21 = p[1][0]; r22 = p[1][1]; r23 = p[1][2];
  r31 = p[2][0]; r32 = p[2][1]; r33 = p[2][2];

  const double det = r11 * r22 * r33 - r11 * r32 * r23 - r21 * r12 * r33 + r21 * r32 * r13 + r31 * r12 * r23 -
                     r31 * r22 * r13;
  if (det > 0) {
    q.qfac = 1.0;
  } else {
    // Improper rotation: qfac carries the reflection, the third column is flipped.
    q.qfac = -1.0;
    r13 = -r13;
    r23 = -r23;
    r33 = -r33;
  }

  double a = r11 + r22 + r33 + 1.0, b, c, d;
  if (a > 0.5) {
    a = 0.5 * std::sqrt(a);
    b = 0.25 * (r32 - r23) / a;
    c = 0.25 * (r13 - r31) / a;
    d = 0.25 * (r21 - r12) / a;
  } else {
    const double xx = 1.0 + r11 - (r22 + r33);
    const double yy = 1.0 + r22 - (r11 + r33);
    const double zz = 1.0 + r33 - (r11 + r22);
    if (xx > 1.0) {
      b = 0.5 * std::sqrt(xx);
      c = 0.25 * (r12 + r21) / b;
      d = 0.25 * (r13 + r31) / b;
      a = 0.25 * (r32 - r23) / b;
    } else if (yy > 1.0) {
      c = 0.5 * std::sqrt(yy);
      b = 0.25 * (r12 + r21) / c;
      d = 0.25 * (r23 + r32) / c;
      a = 0.25 * (r13 - r31) / c;
    } else {
      d = 0.5 * std::sqrt(zz);
      b = 0.25 * (r13 + r31) / d;
      c = 0.25 * (r23 + r32) / d;
      a = 0.25 * (r21 - r12) / d;
    }
    if (a < 0.0) {
      b = -b;
      c = -c;
      d = -d;
    }
  }
  q.b = b;
  q.c = c;
  q.d = d;
  return q;
}

// ---- decoding ----------------------------------------------------------------------------------

namespace {

constexpr bool kHostLittle = std::endian::native == std::endian::little;

template <class T>
T byteswapped(T v) {
  static_assert(sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8);
  if constexpr (sizeof(T) == 1) {
    return v;
  } else {
    using U = std::conditional_t<sizeof(T) == 2, std::uint16_t,
                                 std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>>;
    U u;
    std::memcpy(&u, &v, sizeof u);
    if constexpr (sizeof(T) == 2) u = static_cast<U>(__builtin_bswap16(u));
    if constexpr (sizeof(T) == 4) u = __builtin_bswap32(u);
    if constexpr (sizeof(T) == 8) u = __builtin_bswap64(u);
    std::memcpy(&v, &u, sizeof v);
    return v;
  }
}

// Field access into a raw header block in the file's byte order.
struct Fields {
  const unsigned char* p;
  bool swap;
  template <class T>
  T get(std::size_t offset) const {
    T v;
    std::memcpy(&v, p + offset, sizeof v);
    return swap ? byteswapped(v) : v;
  }
  std::string text(std::size_t offset, std::size_t n) const {
    const char* s = reinterpret_cast<const char*>(p + offset);
    return std::string(s, strnlen(s, n));
  }
};

// Non-finite header floats mean "unset" to the reference library (FIXED_FLOAT); same here.
double fixed(double v) { return std::isfinite(v) ? v : 0.0; }

enum class Magic { Single, Pair, None };

bool ends_with_ci(const std::string& s, const std::string& suffix) {
  if (s.size() < suffix.size()) return false;
  for (std::size_t i = 0; i < suffix.size(); ++i) {
    const char a = s[s.size() - suffix.size() + i];
    if (std::tolower(static_cast<unsigned char>(a)) != suffix[i]) return false;
  }
  return true;
}

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && !S_ISDIR(st.st_mode);
}

// "x.hdr" -> "x.img" keeping the letter case of the extension ("X.HDR" -> "X.IMG").
std::string swap_pair_extension(const std::string& path, bool gz_in, bool gz_out, bool to_image) {
  const std::size_t cut = path.size() - (gz_in ? 7 : 4);  // ".hdr.gz" / ".hdr"
  std::string base = path.substr(0, cut + 1);              // keeps the dot
  const std::string ext = path.substr(cut + 1, 3);
  const char* to = to_image ? "img" : "hdr";
  std::string out = base;
  for (int i = 0; i < 3; ++i) {
    const bool upper = std::isupper(static_cast<unsigned char>(ext[static_cast<std::size_t>(i)])) != 0;
    out += upper ? static_cast<char>(std::toupper(to[i])) : to[i];
  }
  if (gz_out) out += gz_in ? path.substr(path.size() - 3) : ".gz";
  return out;
}

bool is_header_name(const std::string& p) { return ends_with_ci(p, ".hdr") || ends_with_ci(p, ".hdr.gz"); }
bool is_image_name(const std::string& p) { return ends_with_ci(p, ".img") || ends_with_ci(p, ".img.gz"); }

// The partner of a pair file: the same compression first, then the other (tools disagree on
// whether both halves are compressed).
std::string find_partner(const std::string& path, bool to_image) {
  const bool gz = ends_with_ci(path, ".gz");
  const std::string same = swap_pair_extension(path, gz, gz, to_image);
  const std::string other = swap_pair_extension(path, gz, !gz, to_image);
  if (file_exists(same)) return same;
  if (file_exists(other)) return other;
  VG_INPUT_FAIL(path << ": the " << (to_image ? "image" : "header")
                     << " file of this .hdr/.img pair is missing (looked for " << same << " and " << other << ")");
}

void check_dims_and_type(NiftiHeader& h) {
  const std::string& path = h.path;
  if (h.dim[0] < 1 || h.dim[0] > 7) {
    VG_INPUT_FAIL(path << ": dim[0] is " << h.dim[0] << " (the number of dimensions must be 1 to 7)");
  }
  std::int64_t n = 1;
  for (int i = 1; i <= h.ndim(); ++i) {
    const std::int64_t d = h.dim[static_cast<std::size_t>(i)];
    if (d < 1) VG_INPUT_FAIL(path << ": dim[" << i << "] is " << d << " (every dimension must be at least 1)");
    if (__builtin_mul_overflow(n, d, &n)) {
      VG_INPUT_FAIL(path << ": the product of the dims overflows 64 bits (dim[" << i << "] = " << d << ")");
    }
  }
  const int size = nifti_datatype_size(h.datatype);
  if (size == 0) {
    const char* name = nifti_datatype_name(h.datatype);
    if (std::strcmp(name, "unknown") == 0) {
      VG_INPUT_FAIL(path << ": unknown datatype code " << h.datatype
                         << " (voxgrad reads uint8, int8, int16, uint16, int32, uint32, int64, uint64, float32, "
                            "float64)");
    }
    VG_INPUT_FAIL(path << ": datatype " << name << " (code " << h.datatype
                       << ") is not supported (voxgrad reads uint8, int8, int16, uint16, int32, uint32, int64, uint64, "
                          "float32, float64)");
  }
  std::int64_t bytes = 0;
  if (__builtin_mul_overflow(n, static_cast<std::int64_t>(size), &bytes)) {
    VG_INPUT_FAIL(path << ": the image size overflows 64 bits (" << n << " voxels of " << size << " bytes)");
  }
}

// vox_offset as stored (a float in NIfTI-1/ANALYZE) -> a byte offset, refusing what is not one.
std::int64_t checked_offset(const std::string& path, double v) {
  if (!std::isfinite(v) || v < 0 || v > 9.0e18)
    VG_INPUT_FAIL(path << ": vox_offset " << v << " is not a valid byte offset");
  return static_cast<std::int64_t>(v);  // truncated like the reference library and nibabel
}

void decode_nifti1(NiftiHeader& h, const Fields& f, bool analyze) {
  for (int i = 0; i < 8; ++i) h.dim[static_cast<std::size_t>(i)] = f.get<std::int16_t>(40 + 2 * i);
  for (int i = 0; i < 8; ++i) h.pixdim[static_cast<std::size_t>(i)] = f.get<float>(76 + 4 * i);
  h.datatype = f.get<std::int16_t>(70);
  h.bitpix = f.get<std::int16_t>(72);
  h.vox_offset = checked_offset(h.path, f.get<float>(108));
  h.scl_slope = f.get<float>(112);
  h.scl_inter = f.get<float>(116);
  h.cal_max = f.get<float>(124);
  h.cal_min = f.get<float>(128);
  h.descrip = f.text(148, 80);
  h.aux_file = f.text(228, 24);
  if (analyze) {
    // The NIfTI fields past this point overlay ANALYZE's history block; only SPM's use of it
    // (originator, funused1/2 as scale and intercept) carries meaning here.
    for (int i = 0; i < 3; ++i) h.analyze_origin[static_cast<std::size_t>(i)] = f.get<std::int16_t>(253 + 2 * i);
    const double glmax = f.get<std::int32_t>(140), glmin = f.get<std::int32_t>(144);
    if (!(std::isfinite(h.scl_slope) && h.scl_slope != 0.0)) {
      // SPM2 (spm_vol_ana.m), as nibabel: scaling from the gl/cal ranges when funused1 is unset.
      const double unscaled = glmax - glmin, scaled = h.cal_max - h.cal_min;
      if (unscaled != 0.0 && scaled != 0.0 && std::isfinite(scaled)) {
        h.scl_slope = scaled / unscaled;
        h.scl_inter = h.cal_min - h.scl_slope * glmin;
      }
    }
    if (!std::isfinite(h.scl_inter)) h.scl_inter = 0.0;
    return;
  }
  h.dim_info = f.get<std::uint8_t>(39);
  for (int i = 0; i < 3; ++i) h.intent_p[static_cast<std::size_t>(i)] = f.get<float>(56 + 4 * i);
  h.intent_code = f.get<std::int16_t>(68);
  h.slice_start = f.get<std::int16_t>(74);
  h.slice_end = f.get<std::int16_t>(120);
  h.slice_code = f.get<std::uint8_t>(122);
  h.xyzt_units = f.get<std::uint8_t>(123);
  h.slice_duration = f.get<float>(132);
  h.toffset = f.get<float>(136);
  h.qform_code = f.get<std::int16_t>(252);
  h.sform_code = f.get<std::int16_t>(254);
  h.quatern_b = f.get<float>(256);
  h.quatern_c = f.get<float>(260);
  h.quatern_d = f.get<float>(264);
  h.qoffset_x = f.get<float>(268);
  h.qoffset_y = f.get<float>(272);
  h.qoffset_z = f.get<float>(276);
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 4; ++c) h.srow[static_cast<std::size_t>(r)][static_cast<std::size_t>(c)] = f.get<float>(280 + 16 * r + 4 * c);
  h.intent_name = f.text(328, 16);
}

void decode_nifti2(NiftiHeader& h, const Fields& f) {
  h.datatype = f.get<std::int16_t>(12);
  h.bitpix = f.get<std::int16_t>(14);
  for (int i = 0; i < 8; ++i) h.dim[static_cast<std::size_t>(i)] = f.get<std::int64_t>(16 + 8 * i);
  for (int i = 0; i < 3; ++i) h.intent_p[static_cast<std::size_t>(i)] = f.get<double>(80 + 8 * i);
  for (int i = 0; i < 8; ++i) h.pixdim[static_cast<std::size_t>(i)] = f.get<double>(104 + 8 * i);
  const std::int64_t off = f.get<std::int64_t>(168);
  if (off < 0) VG_INPUT_FAIL(h.path << ": vox_offset " << off << " is not a valid byte offset");
  h.vox_offset = off;
  h.scl_slope = f.get<double>(176);
  h.scl_inter = f.get<double>(184);
  h.cal_max = f.get<double>(192);
  h.cal_min = f.get<double>(200);
  h.slice_duration = f.get<double>(208);
  h.toffset = f.get<double>(216);
  h.slice_start = f.get<std::int64_t>(224);
  h.slice_end = f.get<std::int64_t>(232);
  h.descrip = f.text(240, 80);
  h.aux_file = f.text(320, 24);
  h.qform_code = f.get<std::int32_t>(344);
  h.sform_code = f.get<std::int32_t>(348);
  h.quatern_b = f.get<double>(352);
  h.quatern_c = f.get<double>(360);
  h.quatern_d = f.get<double>(368);
  h.qoffset_x = f.get<double>(376);
  h.qoffset_y = f.get<double>(384);
  h.qoffset_z = f.get<double>(392);
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 4; ++c) h.srow[static_cast<std::size_t>(r)][static_cast<std::size_t>(c)] = f.get<double>(400 + 32 * r + 8 * c);
  h.slice_code = f.get<std::int32_t>(496);
  h.xyzt_units = f.get<std::int32_t>(500);
  h.intent_code = f.get<std::int32_t>(504);
  h.intent_name = f.text(508, 16);
  h.dim_info = f.get<std::uint8_t>(524);
}

void compute_affines(NiftiHeader& h) {
  const auto& pd = h.pixdim;
  // qform: the quaternion when qform_code > 0, else the reference library's default diag(pixdim).
  if (h.qform_code > 0) {
    Quatern q;
    q.b = fixed(h.quatern_b);
    q.c = fixed(h.quatern_c);
    q.d = fixed(h.quatern_d);
    q.qx = fixed(h.qoffset_x);
    q.qy = fixed(h.qoffset_y);
    q.qz = fixed(h.qoffset_z);
    q.dx = pd[1];
    q.dy = pd[2];
    q.dz = pd[3];
    q.qfac = pd[0] < 0.0 ? -1.0 : 1.0;
    h.qform_affine = quatern_to_affine(q);
  } else {
    h.qform_affine = identity_affine();
    for (int i = 0; i < 3; ++i) h.qform_affine[static_cast<std::size_t>(i)][static_cast<std::size_t>(i)] = pd[static_cast<std::size_t>(i + 1)];
  }
  h.sform_affine = identity_affine();
  for (std::size_t r = 0; r < 3; ++r)
    for (std::size_t c = 0; c < 4; ++c) h.sform_affine[r][c] = h.srow[r][c];

  // pixdim only, x flipped, as nibabel's get_base_affine (NIfTI with both codes 0) and the SPM
  // origin affine (ANALYZE): axes past ndim count as one voxel of size 1.
  std::array<double, 3> zoom{1, 1, 1}, size{1, 1, 1}, origin{};
  for (int i = 0; i < 3 && i < h.ndim(); ++i) {
    zoom[static_cast<std::size_t>(i)] = std::fabs(fixed(pd[static_cast<std::size_t>(i + 1)]));
    size[static_cast<std::size_t>(i)] = static_cast<double>(h.dim[static_cast<std::size_t>(i + 1)]);
  }
  zoom[0] = -zoom[0];
  for (std::size_t i = 0; i < 3; ++i) origin[i] = (size[i] - 1.0) / 2.0;
  if (h.format == NiftiFormat::Analyze) {
    const auto& o = h.analyze_origin;
    bool any = false, inside = true;
    for (std::size_t i = 0; i < 3; ++i) {
      any = any || o[i] != 0;
      inside = inside && o[i] > -size[i] && o[i] < 2.0 * size[i];
    }
    if (any && inside)
      for (std::size_t i = 0; i < 3; ++i) origin[i] = o[i] - 1.0;  // SPM's originator is 1-based
  }
  h.base_affine = identity_affine();
  for (std::size_t i = 0; i < 3; ++i) {
    h.base_affine[i][i] = zoom[i];
    h.base_affine[i][3] = -origin[i] * zoom[i];
  }

  // World coordinates in mm: the file's unit scales every row, rotation-zoom and translation alike.
  const double mm = millimetres_per_unit(h.xyzt_units);
  if (mm != 1.0) {
    for (Affine* a : {&h.qform_affine, &h.sform_affine, &h.base_affine})
      for (std::size_t r = 0; r < 3; ++r)
        for (std::size_t c = 0; c < 4; ++c) (*a)[r][c] *= mm;
  }

  if (h.sform_code > 0) {
    h.affine = h.sform_affine;
  } else if (h.qform_code > 0) {
    h.affine = h.qform_affine;
  } else {
    h.affine = h.base_affine;
  }
}

// Reads and decodes the header at the start of `s`. `pair_name`: the file is named like the
// header of a pair (.hdr), the only case where a header without NIfTI magic is taken as ANALYZE.
NiftiHeader read_header_block(InputStream& s, bool pair_name) {
  NiftiHeader h;
  h.path = s.path();
  h.gzip = s.is_gzip();
  unsigned char block[540];
  s.read_exact(block, 4, "NIfTI header");
  std::int32_t sizeof_hdr;
  std::memcpy(&sizeof_hdr, block, 4);
  const std::int32_t swapped = byteswapped(sizeof_hdr);
  bool swap = false;
  if (sizeof_hdr == 348 || sizeof_hdr == 540) {
    swap = false;
  } else if (swapped == 348 || swapped == 540) {
    swap = true;
    sizeof_hdr = swapped;
  } else {
    VG_INPUT_FAIL(h.path << ": not a NIfTI or ANALYZE file: sizeof_hdr is " << sizeof_hdr << " (byte-swapped "
                         << swapped << "); it must be 348 (NIfTI-1, ANALYZE) or 540 (NIfTI-2)");
  }
  h.sizeof_hdr = sizeof_hdr;
  h.byte_order = (swap != kHostLittle) ? ByteOrder::Little : ByteOrder::Big;
  s.read_exact(block + 4, static_cast<std::size_t>(sizeof_hdr - 4), "NIfTI header");
  const Fields f{block, swap};

  Magic magic = Magic::None;
  if (sizeof_hdr == 540) {
    h.format = NiftiFormat::Nifti2;
    const unsigned char* m = block + 4;
    if (m[0] == 'n' && (m[1] == '+' || m[1] == 'i') && m[2] == '2' && m[3] == 0) {
      magic = m[1] == '+' ? Magic::Single : Magic::Pair;
    } else {
      VG_INPUT_FAIL(h.path << ": bad magic in a 540-byte header: expected \"n+2\" or \"ni2\" (NIfTI-2)");
    }
    // The 4 bytes after the magic catch text-mode transfers that rewrote line endings.
    if (!(m[4] == '\r' && m[5] == '\n' && m[6] == 032 && m[7] == '\n')) {
      VG_INPUT_FAIL(h.path << ": bad magic: the NIfTI-2 signature bytes after \"n+2\" are not \\r\\n\\032\\n "
                              "(was the file transferred in text mode?)");
    }
    decode_nifti2(h, f);
  } else {
    const unsigned char* m = block + 344;
    const bool nifti_like = m[0] == 'n' && (m[1] == '+' || m[1] == 'i') && m[3] == 0;
    if (nifti_like && m[2] == '1') {
      magic = m[1] == '+' ? Magic::Single : Magic::Pair;
      h.format = NiftiFormat::Nifti1;
    } else if (nifti_like && m[2] >= '2' && m[2] <= '9') {
      VG_INPUT_FAIL(h.path << ": bad magic: \"n" << m[1] << m[2] << "\" says NIfTI-" << m[2]
                           << " but sizeof_hdr is 348 (NIfTI-1)");
    } else if (pair_name) {
      h.format = NiftiFormat::Analyze;
    } else {
      VG_INPUT_FAIL(h.path << ": bad magic: expected \"n+1\" (a single-file NIfTI-1 image); a header without NIfTI "
                              "magic is read only as the .hdr of an ANALYZE 7.5 pair");
    }
    decode_nifti1(h, f, h.format == NiftiFormat::Analyze);
  }
  h.pair = magic != Magic::Single;
  if (h.pair && !pair_name) {
    VG_INPUT_FAIL(h.path << ": the magic marks the header of a .hdr/.img pair (\"ni" << (h.sizeof_hdr == 540 ? 2 : 1)
                         << "\") but the file is not named .hdr or .img");
  }
  check_dims_and_type(h);
  if (!h.pair && h.vox_offset < h.sizeof_hdr) {
    VG_INPUT_FAIL(h.path << ": vox_offset " << h.vox_offset << " lies inside the " << h.sizeof_hdr
                         << "-byte header (a single-file image keeps its voxels after the header)");
  }
  compute_affines(h);
  return h;
}

// The header and a stream positioned at the first voxel, with the declared size checked against
// what the stream can back (before anyone allocates it). A pair keeps its gzip header stream too,
// so that its trailer is checked when the voxels are read.
struct Opened {
  NiftiHeader header;
  InputStream image;
  std::optional<InputStream> pair_header;
};

Opened open_positioned(InputStream header_stream, bool pair_name) {
  NiftiHeader h = read_header_block(header_stream, pair_name);
  if (!h.pair) {
    h.image_path = h.path;
    h.image_gzip = h.gzip;
    header_stream.check_backed(static_cast<std::uint64_t>(h.vox_offset), h.data_bytes(), "the voxel data");
    header_stream.skip(static_cast<std::uint64_t>(h.vox_offset) - header_stream.position(),
                       "extensions before vox_offset");
    return {std::move(h), std::move(header_stream), std::nullopt};
  }
  h.image_path = find_partner(h.path, /*to_image=*/true);
  InputStream img = InputStream::open_file(h.image_path);
  h.image_gzip = img.is_gzip();
  img.check_backed(static_cast<std::uint64_t>(h.vox_offset), h.data_bytes(), "the voxel data");
  img.skip(static_cast<std::uint64_t>(h.vox_offset), "bytes before vox_offset");
  std::optional<InputStream> header_gz;
  if (header_stream.is_gzip()) header_gz.emplace(std::move(header_stream));
  return {std::move(h), std::move(img), std::move(header_gz)};
}

// Once the voxels are in: reads every gzip stream they came from on to its end, so no voxel is
// handed out from a file whose CRC32 or length trailer disagrees (or that was cut short).
void verify_streams(Opened& o) {
  o.image.verify_to_end();
  if (o.pair_header) o.pair_header->verify_to_end();
}

Opened open_path(const std::string& path) {
  std::string header_path = path;
  if (is_image_name(path)) header_path = find_partner(path, /*to_image=*/false);
  return open_positioned(InputStream::open_file(header_path), is_header_name(header_path));
}

Opened open_memory(std::span<const std::byte> bytes, const std::string& name) {
  return open_positioned(InputStream::from_memory(bytes, name), /*pair_name=*/false);
}

void swap_in_place(void* data, std::uint64_t count, int size) {
  auto* p = static_cast<unsigned char*>(data);
  switch (size) {
    case 2:
      for (std::uint64_t i = 0; i < count; ++i) {
        std::uint16_t v;
        std::memcpy(&v, p + 2 * i, 2);
        v = __builtin_bswap16(v);
        std::memcpy(p + 2 * i, &v, 2);
      }
      break;
    case 4:
      for (std::uint64_t i = 0; i < count; ++i) {
        std::uint32_t v;
        std::memcpy(&v, p + 4 * i, 4);
        v = __builtin_bswap32(v);
        std::memcpy(p + 4 * i, &v, 4);
      }
      break;
    case 8:
      for (std::uint64_t i = 0; i < count; ++i) {
        std::uint64_t v;
        std::memcpy(&v, p + 8 * i, 8);
        v = __builtin_bswap64(v);
        std::memcpy(p + 8 * i, &v, 8);
      }
      break;
    default: break;
  }
}

bool needs_swap(const NiftiHeader& h) { return (h.byte_order == ByteOrder::Little) != kHostLittle; }

// Reads the declared voxels into dst (data_bytes() bytes) and brings them to host order.
void read_voxels(Opened& o, void* dst) {
  const NiftiHeader& h = o.header;
  const std::uint64_t n = h.data_bytes();
  o.image.read_exact(dst, static_cast<std::size_t>(n), "voxel data");
  verify_streams(o);
  if (needs_swap(h)) swap_in_place(dst, static_cast<std::uint64_t>(h.numel()), static_cast<int>(h.bytes_per_voxel()));
}

Tensor allocate_tensor(const NiftiHeader& h, DType t) {
  try {
    return empty(h.shape(), t);
  } catch (const std::bad_alloc&) {
    VG_INPUT_FAIL(h.path << ": cannot allocate " << h.numel() << " " << dtype_name(t) << " voxels");
  } catch (const Error& e) {
    // The allocator's own message ("out of host memory ...") still needs the path in front.
    VG_INPUT_FAIL(h.path << ": cannot allocate " << h.numel() << " " << dtype_name(t) << " voxels: " << e.what());
  }
}

NiftiRaw read_raw(Opened o) {
  NiftiRaw raw;
  raw.nbytes = static_cast<std::size_t>(o.header.data_bytes());
  try {
    raw.bytes = std::make_unique_for_overwrite<std::byte[]>(raw.nbytes);
  } catch (const std::bad_alloc&) {
    VG_INPUT_FAIL(o.header.path << ": cannot allocate " << raw.nbytes << " bytes for the voxel data");
  }
  read_voxels(o, raw.bytes.get());
  raw.header = std::move(o.header);
  return raw;
}

// ---- conversion --------------------------------------------------------------------------------

template <class S>
S load(const std::byte* p, std::int64_t i) {
  S v;
  std::memcpy(&v, p + i * static_cast<std::int64_t>(sizeof(S)), sizeof(S));
  return v;
}

// Calls f(tag) with a value of the C type of the datatype (a typed null pointer as the tag).
template <class F>
decltype(auto) dispatch_datatype(int datatype, const std::string& path, F&& f) {
  switch (datatype) {
    case nifti_dt::kUInt8: return f(static_cast<std::uint8_t*>(nullptr));
    case nifti_dt::kInt8: return f(static_cast<std::int8_t*>(nullptr));
    case nifti_dt::kInt16: return f(static_cast<std::int16_t*>(nullptr));
    case nifti_dt::kUInt16: return f(static_cast<std::uint16_t*>(nullptr));
    case nifti_dt::kInt32: return f(static_cast<std::int32_t*>(nullptr));
    case nifti_dt::kUInt32: return f(static_cast<std::uint32_t*>(nullptr));
    case nifti_dt::kInt64: return f(static_cast<std::int64_t*>(nullptr));
    case nifti_dt::kUInt64: return f(static_cast<std::uint64_t*>(nullptr));
    case nifti_dt::kFloat32: return f(static_cast<float*>(nullptr));
    case nifti_dt::kFloat64: return f(static_cast<double*>(nullptr));
    default: VG_FAIL(path << ": datatype " << nifti_datatype_name(datatype) << " (code " << datatype << ") is not supported");
  }
}

template <class S, class D>
void convert_loop(const std::byte* src, D* dst, std::int64_t n, bool scale, double slope, double inter) {
  if (scale) {
    for (std::int64_t i = 0; i < n; ++i) dst[i] = static_cast<D>(static_cast<double>(load<S>(src, i)) * slope + inter);
  } else {
    for (std::int64_t i = 0; i < n; ++i) dst[i] = static_cast<D>(load<S>(src, i));
  }
}

double effective_inter(const NiftiHeader& h) { return std::isfinite(h.scl_inter) ? h.scl_inter : 0.0; }

template <class D>
void convert_raw_to(const NiftiRaw& raw, D* dst, bool scale) {
  const NiftiHeader& h = raw.header;
  const bool s = scale && h.has_scaling();
  dispatch_datatype(h.datatype, h.path, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    convert_loop<S, D>(raw.data(), dst, h.numel(), s, h.scl_slope, effective_inter(h));
  });
}

Volume make_result(const NiftiHeader& h, Tensor data, bool scaled) {
  Volume v;
  v.data = std::move(data);
  v.affine = h.affine;
  v.spacing = h.spacing();
  v.source_datatype = static_cast<std::int16_t>(h.datatype);
  v.intent_code = h.intent_code;
  // The affine and spacing are in mm now; a unit left at metres would scale them twice on writing.
  v.xyzt_units = millimetres_per_unit(h.xyzt_units) != 1.0
                     ? (h.xyzt_units & ~nifti_units::kSpaceMask) | nifti_units::kMm
                     : h.xyzt_units;
  v.path = h.path;
  v.scl_slope = h.scl_slope;
  v.scl_inter = h.scl_inter;
  v.scaled = scaled;
  return v;
}

// Unscaled wide integers: int32 when every value fits, else float64.
template <class S>
Tensor wide_integers(const NiftiRaw& raw) {
  const NiftiHeader& h = raw.header;
  const std::int64_t n = h.numel();
  bool fits = true;
  for (std::int64_t i = 0; i < n && fits; ++i) {
    const S v = load<S>(raw.data(), i);
    if constexpr (std::is_signed_v<S>) {
      fits = v >= std::numeric_limits<std::int32_t>::min() && v <= std::numeric_limits<std::int32_t>::max();
    } else {
      fits = v <= static_cast<S>(std::numeric_limits<std::int32_t>::max());
    }
  }
  if (fits) {
    Tensor t = allocate_tensor(h, DType::Int32);
    convert_loop<S, std::int32_t>(raw.data(), t.data<std::int32_t>(), n, false, 1, 0);
    return t;
  }
  Tensor t = allocate_tensor(h, DType::Float64);
  convert_loop<S, double>(raw.data(), t.data<double>(), n, false, 1, 0);
  return t;
}

// The dtype a source datatype is held as, unscaled, when the bytes are already that dtype's (so the
// voxels can be read straight into the tensor); false for the types that need converting.
bool direct_dtype(int datatype, DType* out) {
  switch (datatype) {
    case nifti_dt::kUInt8: *out = DType::UInt8; return true;
    case nifti_dt::kInt32: *out = DType::Int32; return true;
    case nifti_dt::kFloat32: *out = DType::Float32; return true;
    case nifti_dt::kFloat64: *out = DType::Float64; return true;
    default: return false;
  }
}

template <class T>
void scale_in_place(T* p, std::int64_t n, double slope, double inter) {
  for (std::int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(static_cast<double>(p[i]) * slope + inter);
}

template <class D>
Tensor read_converted(Opened o, bool scale);

Volume volume_from_opened(Opened o, const NiftiReadOptions& options) {
  const NiftiHeader& h = o.header;
  const bool scale = options.apply_scaling && h.has_scaling();
  DType direct;
  // Stored types the engine holds as they are are read straight into the tensor: no second copy.
  if (direct_dtype(h.datatype, &direct) && (!scale || direct == DType::Float32 || direct == DType::Float64)) {
    Tensor t = allocate_tensor(h, direct);
    read_voxels(o, t.raw_data());
    if (scale) {
      if (direct == DType::Float32) scale_in_place(t.data<float>(), t.numel(), h.scl_slope, effective_inter(h));
      else scale_in_place(t.data<double>(), t.numel(), h.scl_slope, effective_inter(h));
    }
    NiftiHeader header = std::move(o.header);
    return make_result(header, std::move(t), scale);
  }
  // Converted chunk by chunk as they inflate: no full-size buffer of the stored type.
  const NiftiHeader header = o.header;
  if (scale) return make_result(header, read_converted<float>(std::move(o), true), true);
  const int dt = header.datatype;
  if (dt == nifti_dt::kInt8 || dt == nifti_dt::kInt16 || dt == nifti_dt::kUInt16) {
    return make_result(header, read_converted<std::int32_t>(std::move(o), false), false);
  }
  // Wide integers need a look at every value before the dtype is known.
  return volume_from_raw(read_raw(std::move(o)), options);
}

// Inflates and converts chunk by chunk into a D tensor (float, double, or int32 for unscaled
// narrow integers), scaling when `scale`.
template <class D>
Tensor read_converted(Opened o, bool scale) {
  const NiftiHeader& h = o.header;
  const DType dtype = std::is_same_v<D, float> ? DType::Float32 : std::is_same_v<D, double> ? DType::Float64 : DType::Int32;
  const int source_code = std::is_same_v<D, float>    ? nifti_dt::kFloat32
                          : std::is_same_v<D, double> ? nifti_dt::kFloat64
                                                      : nifti_dt::kInt32;
  Tensor t = allocate_tensor(h, dtype);
  D* dst = t.data<D>();
  const std::int64_t n = h.numel();
  const double slope = h.scl_slope, inter = effective_inter(h);
  if (h.datatype == source_code) {
    read_voxels(o, dst);
    if (scale) scale_in_place(dst, n, slope, inter);
    return t;
  }
  const std::int64_t bpv = h.bytes_per_voxel();
  // Small enough to stay in cache between inflate and conversion.
  const std::int64_t chunk_voxels = std::min<std::int64_t>(n, (std::int64_t{1} << 17) / bpv);
  std::vector<std::byte> chunk(static_cast<std::size_t>(chunk_voxels * bpv));
  const bool swap = needs_swap(h);
  dispatch_datatype(h.datatype, h.path, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    for (std::int64_t start = 0; start < n; start += chunk_voxels) {
      const std::int64_t m = std::min(chunk_voxels, n - start);
      o.image.read_exact(chunk.data(), static_cast<std::size_t>(m * bpv), "voxel data");
      if (swap) swap_in_place(chunk.data(), static_cast<std::uint64_t>(m), static_cast<int>(bpv));
      convert_loop<S, D>(chunk.data(), dst + start, m, scale, slope, inter);
    }
  });
  verify_streams(o);
  return t;
}

}  // namespace

// ---- public reading API ------------------------------------------------------------------------

NiftiHeader read_nifti_header(const std::string& path) { return open_path(path).header; }

NiftiRaw read_nifti_raw(const std::string& path) { return read_raw(open_path(path)); }

NiftiRaw read_nifti_raw_from_memory(std::span<const std::byte> bytes, const std::string& name) {
  return read_raw(open_memory(bytes, name));
}

Volume read_nifti(const std::string& path, const NiftiReadOptions& options) {
  return volume_from_opened(open_path(path), options);
}

Volume read_nifti_from_memory(std::span<const std::byte> bytes, const std::string& name,
                              const NiftiReadOptions& options) {
  return volume_from_opened(open_memory(bytes, name), options);
}

Tensor read_nifti_float32(const std::string& path, NiftiHeader* header) {
  Opened o = open_path(path);
  if (header != nullptr) *header = o.header;
  const bool scale = o.header.has_scaling();
  return read_converted<float>(std::move(o), scale);
}

Tensor read_nifti_float64(const std::string& path, NiftiHeader* header) {
  Opened o = open_path(path);
  if (header != nullptr) *header = o.header;
  const bool scale = o.header.has_scaling();
  return read_converted<double>(std::move(o), scale);
}

Volume volume_from_raw(NiftiRaw raw, const NiftiReadOptions& options) {
  const NiftiHeader& h = raw.header;
  const bool scale = options.apply_scaling && h.has_scaling();
  if (scale) {
    if (h.datatype == nifti_dt::kFloat64) return make_result(h, raw_to_float64(raw, true), true);
    return make_result(h, raw_to_float32(raw, true), true);
  }
  Tensor t;
  switch (h.datatype) {
    case nifti_dt::kUInt8: {
      t = allocate_tensor(h, DType::UInt8);
      std::memcpy(t.raw_data(), raw.data(), raw.nbytes);
      break;
    }
    case nifti_dt::kInt8:
      t = allocate_tensor(h, DType::Int32);
      convert_loop<std::int8_t, std::int32_t>(raw.data(), t.data<std::int32_t>(), h.numel(), false, 1, 0);
      break;
    case nifti_dt::kInt16:
      t = allocate_tensor(h, DType::Int32);
      convert_loop<std::int16_t, std::int32_t>(raw.data(), t.data<std::int32_t>(), h.numel(), false, 1, 0);
      break;
    case nifti_dt::kUInt16:
      t = allocate_tensor(h, DType::Int32);
      convert_loop<std::uint16_t, std::int32_t>(raw.data(), t.data<std::int32_t>(), h.numel(), false, 1, 0);
      break;
    case nifti_dt::kInt32:
      t = allocate_tensor(h, DType::Int32);
      std::memcpy(t.raw_data(), raw.data(), raw.nbytes);
      break;
    case nifti_dt::kUInt32: t = wide_integers<std::uint32_t>(raw); break;
    case nifti_dt::kInt64: t = wide_integers<std::int64_t>(raw); break;
    case nifti_dt::kUInt64: t = wide_integers<std::uint64_t>(raw); break;
    case nifti_dt::kFloat32:
      t = allocate_tensor(h, DType::Float32);
      std::memcpy(t.raw_data(), raw.data(), raw.nbytes);
      break;
    case nifti_dt::kFloat64:
      t = allocate_tensor(h, DType::Float64);
      std::memcpy(t.raw_data(), raw.data(), raw.nbytes);
      break;
    default:
      VG_FAIL(h.path << ": datatype " << nifti_datatype_name(h.datatype) << " (code " << h.datatype << ") is not supported");
  }
  return make_result(h, std::move(t), false);
}

void convert_raw(const NiftiRaw& raw, float* dst, bool scale) { convert_raw_to(raw, dst, scale); }
void convert_raw(const NiftiRaw& raw, double* dst, bool scale) { convert_raw_to(raw, dst, scale); }

Tensor raw_to_float32(const NiftiRaw& raw, bool scale) {
  Tensor t = allocate_tensor(raw.header, DType::Float32);
  convert_raw_to(raw, t.data<float>(), scale);
  return t;
}

Tensor raw_to_float64(const NiftiRaw& raw, bool scale) {
  Tensor t = allocate_tensor(raw.header, DType::Float64);
  convert_raw_to(raw, t.data<double>(), scale);
  return t;
}

VoxelStats raw_stats(const NiftiRaw& raw) {
  const NiftiHeader& h = raw.header;
  const bool scale = h.has_scaling();
  const double slope = h.scl_slope, inter = effective_inter(h);
  VoxelStats st;
  double lo = std::numeric_limits<double>::infinity(), hi = -lo, sum = 0;
  std::int64_t count = 0, nans = 0;
  dispatch_datatype(h.datatype, h.path, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    const std::int64_t n = h.numel();
    for (std::int64_t i = 0; i < n; ++i) {
      double v = static_cast<double>(load<S>(raw.data(), i));
      if (scale) v = v * slope + inter;
      if (std::isnan(v)) {
        ++nans;
        continue;
      }
      lo = std::min(lo, v);
      hi = std::max(hi, v);
      sum += v;
      ++count;
    }
  });
  st.count = count;
  st.nan_count = nans;
  if (count == 0) {
    st.min = st.max = st.mean = std::numeric_limits<double>::quiet_NaN();
  } else {
    st.min = lo;
    st.max = hi;
    st.mean = sum / static_cast<double>(count);
  }
  return st;
}

// ---- writing -----------------------------------------------------------------------------------

NiftiWriteType default_write_type(const Volume& v) {
  VG_CHECK(v.data.defined(), "default_write_type: the volume holds no data");
  switch (v.data.dtype()) {
    case DType::UInt8: return NiftiWriteType::UInt8;
    case DType::Int32: return NiftiWriteType::Int32;
    case DType::Float32:
    case DType::Float64: return NiftiWriteType::Float32;
  }
  return NiftiWriteType::Float32;
}

namespace {

template <class T>
void put(unsigned char* block, std::size_t offset, T v) {
  if constexpr (!kHostLittle) v = byteswapped(v);
  std::memcpy(block + offset, &v, sizeof v);
}

int write_datatype_code(NiftiWriteType t) {
  switch (t) {
    case NiftiWriteType::UInt8: return nifti_dt::kUInt8;
    case NiftiWriteType::Int16: return nifti_dt::kInt16;
    case NiftiWriteType::Int32: return nifti_dt::kInt32;
    case NiftiWriteType::Float32: return nifti_dt::kFloat32;
  }
  return 0;
}

// One voxel value into the target type, refusing anything that would not read back as itself.
template <class D>
D checked_cast(double v, std::int64_t index, const std::string& path, const char* type_name) {
  if constexpr (std::is_floating_point_v<D>) {
    if (std::isfinite(v) && std::fabs(v) > static_cast<double>(std::numeric_limits<D>::max())) {
      VG_INPUT_FAIL(path << ": voxel " << index << " holds " << v << ", outside the range of " << type_name);
    }
    return static_cast<D>(v);
  } else {
    constexpr double lo = static_cast<double>(std::numeric_limits<D>::min());
    constexpr double hi = static_cast<double>(std::numeric_limits<D>::max());
    if (!std::isfinite(v) || v != std::floor(v)) {
      VG_INPUT_FAIL(path << ": voxel " << index << " holds " << v
                         << ", which is not an integer and cannot be stored as " << type_name
                         << " (write float32, or round the data first)");
    }
    if (v < lo || v > hi) {
      VG_INPUT_FAIL(path << ": voxel " << index << " holds " << v << ", outside the range of " << type_name << " ("
                         << lo << " to " << hi << ")");
    }
    return static_cast<D>(v);
  }
}

template <class S, class D>
void write_voxels(AtomicOutputStream& out, const S* src, std::int64_t n, const std::string& path,
                  const char* type_name) {
  constexpr std::int64_t kChunk = 1 << 16;
  std::vector<unsigned char> buf(static_cast<std::size_t>(std::min<std::int64_t>(n, kChunk)) * sizeof(D));
  for (std::int64_t start = 0; start < n; start += kChunk) {
    const std::int64_t m = std::min(kChunk, n - start);
    for (std::int64_t i = 0; i < m; ++i) {
      D v;
      if constexpr (std::is_same_v<S, D>) {
        v = src[start + i];  // same type: bit-exact, NaN payloads included
      } else {
        v = checked_cast<D>(static_cast<double>(src[start + i]), start + i, path, type_name);
      }
      if constexpr (!kHostLittle) v = byteswapped(v);
      std::memcpy(buf.data() + static_cast<std::size_t>(i) * sizeof(D), &v, sizeof(D));
    }
    out.write(buf.data(), static_cast<std::size_t>(m) * sizeof(D));
  }
}

template <class D>
void write_as(AtomicOutputStream& out, const Tensor& data, const std::string& path, const char* type_name) {
  const std::int64_t n = data.numel();
  switch (data.dtype()) {
    case DType::UInt8: write_voxels<std::uint8_t, D>(out, data.data<std::uint8_t>(), n, path, type_name); break;
    case DType::Int32: write_voxels<std::int32_t, D>(out, data.data<std::int32_t>(), n, path, type_name); break;
    case DType::Float32: write_voxels<float, D>(out, data.data<float>(), n, path, type_name); break;
    case DType::Float64: write_voxels<double, D>(out, data.data<double>(), n, path, type_name); break;
  }
}

}  // namespace

void write_nifti(const std::string& path, const Volume& v) { write_nifti(path, v, default_write_type(v)); }

void write_nifti(const std::string& path, const Volume& v, NiftiWriteType as) {
  const bool gz = ends_with_ci(path, ".nii.gz");
  if (!gz && !ends_with_ci(path, ".nii")) {
    VG_INPUT_FAIL(path << ": cannot write here: voxgrad writes single-file NIfTI-1 images named .nii or .nii.gz");
  }
  VG_CHECK(v.data.defined(), path << ": cannot write a volume that holds no data");
  const Tensor data = v.data.cpu();
  const int ndim = data.dim();
  if (ndim < 1 || ndim > 7)
    VG_INPUT_FAIL(path << ": cannot write a " << ndim << "-D tensor (NIfTI holds 1 to 7 dimensions)");
  const Shape& shape = data.shape();
  for (const auto& row : v.affine)
    for (double x : row)
      if (!std::isfinite(x)) VG_INPUT_FAIL(path << ": the affine has a non-finite entry (" << x << ")");
  if (v.intent_code < std::numeric_limits<std::int16_t>::min() || v.intent_code > std::numeric_limits<std::int16_t>::max())
    VG_INPUT_FAIL(path << ": intent_code " << v.intent_code << " does not fit NIfTI-1's 16 bits");

  unsigned char hdr[352] = {};
  put<std::int32_t>(hdr, 0, 348);
  hdr[38] = 'r';  // "regular", as the reference library writes
  put<std::int16_t>(hdr, 40, static_cast<std::int16_t>(ndim));
  for (int i = 1; i <= 7; ++i) {
    std::int64_t d = 1;
    if (i <= ndim) d = shape[static_cast<std::size_t>(ndim - i)];
    if (d < 1 || d > std::numeric_limits<std::int16_t>::max()) {
      VG_INPUT_FAIL(path << ": dimension " << i << " has size " << d << "; NIfTI-1 holds 1 to 32767 voxels per axis");
    }
    put<std::int16_t>(hdr, 40 + 2 * static_cast<std::size_t>(i), static_cast<std::int16_t>(d));
  }
  put<std::int16_t>(hdr, 68, static_cast<std::int16_t>(v.intent_code));
  const int code = write_datatype_code(as);
  put<std::int16_t>(hdr, 70, static_cast<std::int16_t>(code));
  put<std::int16_t>(hdr, 72, static_cast<std::int16_t>(8 * nifti_datatype_size(code)));

  const Quatern q = affine_to_quatern(v.affine);
  std::array<double, 8> pixdim{};
  pixdim.fill(1.0);
  pixdim[0] = q.qfac;
  pixdim[1] = q.dx;
  pixdim[2] = q.dy;
  pixdim[3] = q.dz;
  for (int i = 4; i <= ndim; ++i)
    if (static_cast<std::size_t>(i) <= v.spacing.size()) pixdim[static_cast<std::size_t>(i)] = v.spacing[static_cast<std::size_t>(i - 1)];
  for (int i = 0; i < 8; ++i) put<float>(hdr, 76 + 4 * static_cast<std::size_t>(i), static_cast<float>(pixdim[static_cast<std::size_t>(i)]));
  put<float>(hdr, 108, 352.0f);  // vox_offset: header + the 4-byte "no extensions" flag
  put<float>(hdr, 112, 0.0f);    // scl_slope 0: no scaling
  put<float>(hdr, 116, 0.0f);
  hdr[123] = static_cast<unsigned char>(v.xyzt_units);
  const char descrip[] = "voxgrad";
  std::memcpy(hdr + 148, descrip, sizeof descrip - 1);
  put<std::int16_t>(hdr, 252, static_cast<std::int16_t>(nifti_xform::kAlignedAnat));
  put<std::int16_t>(hdr, 254, static_cast<std::int16_t>(nifti_xform::kAlignedAnat));
  put<float>(hdr, 256, static_cast<float>(q.b));
  put<float>(hdr, 260, static_cast<float>(q.c));
  put<float>(hdr, 264, static_cast<float>(q.d));
  put<float>(hdr, 268, static_cast<float>(q.qx));
  put<float>(hdr, 272, static_cast<float>(q.qy));
  put<float>(hdr, 276, static_cast<float>(q.qz));
  for (std::size_t r = 0; r < 3; ++r)
    for (std::size_t c = 0; c < 4; ++c) put<float>(hdr, 280 + 16 * r + 4 * c, static_cast<float>(v.affine[r][c]));
  std::memcpy(hdr + 344, "n+1\0", 4);
  // Bytes 348..351 stay zero: the extension flag saying no extensions follow.

  AtomicOutputStream out(path, gz ? 1 : 0);
  out.write(hdr, sizeof hdr);
  switch (as) {
    case NiftiWriteType::UInt8: write_as<std::uint8_t>(out, data, path, "uint8"); break;
    case NiftiWriteType::Int16: write_as<std::int16_t>(out, data, path, "int16"); break;
    case NiftiWriteType::Int32: write_as<std::int32_t>(out, data, path, "int32"); break;
    case NiftiWriteType::Float32: write_as<float>(out, data, path, "float32"); break;
  }
  out.commit();
}

}  // namespace voxgrad::io
