// NIfTI-1, NIfTI-2 and ANALYZE 7.5 reading (single .nii[.gz] files and .hdr/.img[.gz] pairs, either
// byte order) and NIfTI-1 writing, on our own zlib streams. Every voxgrad::Error from here starts
// with the file's path, then the reason; no file, however malformed, makes us allocate more than
// the file can back.
//
// ANALYZE 7.5 (a .hdr without NIfTI magic) is read as a pair without orientation, as nibabel's SPM2
// Analyze reader does: scale and intercept from funused1/funused2 (else from the glmax/glmin and
// cal_max/cal_min ranges), and an affine from pixdim alone with x flipped, centred on the SPM
// `originator` voxel when it is set, else on the middle voxel. A single .nii without magic is refused.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "../engine/tensor.h"
#include "volume.h"

namespace voxgrad::io {

enum class NiftiFormat { Nifti1, Nifti2, Analyze };
enum class ByteOrder { Little, Big };

const char* nifti_format_name(NiftiFormat f);  // "nifti1", "nifti2", "analyze"
const char* byte_order_name(ByteOrder b);      // "little", "big"

// NIfTI datatype codes.
namespace nifti_dt {
inline constexpr int kUInt8 = 2, kInt16 = 4, kInt32 = 8, kFloat32 = 16, kComplex64 = 32, kFloat64 = 64,
                     kRgb24 = 128, kInt8 = 256, kUInt16 = 512, kUInt32 = 768, kInt64 = 1024, kUInt64 = 1280,
                     kFloat128 = 1536, kComplex128 = 1792, kComplex256 = 2048, kRgba32 = 2304;
}
// "uint8", "int16", "int32", "float32", "complex64", "float64", "rgb24", "int8", "uint16", "uint32",
// "int64", "uint64", "float128", "complex128", "complex256", "rgba32", "binary"; "unknown" otherwise.
const char* nifti_datatype_name(int code);
// Bytes per voxel for the datatypes we read (the ten real types); 0 for the rest.
int nifti_datatype_size(int code);

// NIfTI units (xyzt_units bits: 0-2 space, 3-5 time).
namespace nifti_units {
inline constexpr int kMeter = 1, kMm = 2, kMicron = 3, kSec = 8, kMsec = 16, kUsec = 24;
inline constexpr int kSpaceMask = 0x07;
}
// The spatial unit xyzt_units declares: "m", "mm", "um", or "unknown" (0, or a code the standard
// does not define).
const char* spatial_units_name(int xyzt_units);
// Millimetres per spatial unit, as ITK's NiftiImageIO (and so SimpleITK and nnU-Net) scales them:
// 1000 for metres, 0.001 for micrometres, 1 for millimetres and for unknown units.
double millimetres_per_unit(int xyzt_units);
// NIfTI xform codes (qform_code, sform_code).
namespace nifti_xform {
inline constexpr int kUnknown = 0, kScannerAnat = 1, kAlignedAnat = 2, kTalairach = 3, kMni152 = 4;
}

// Every header field, decoded to host byte order, at NIfTI-2 widths whatever the file's format.
struct NiftiHeader {
  std::string path;        // the file the header came from (.nii, .nii.gz, .hdr, .hdr.gz)
  std::string image_path;  // where the voxels are: == path for single files, the .img[.gz] for pairs
  NiftiFormat format = NiftiFormat::Nifti1;
  bool pair = false;  // header and voxels in separate files
  bool gzip = false;        // the header file is gzip-compressed
  bool image_gzip = false;  // the image file is (== gzip for single files; pairs may mix)
  ByteOrder byte_order = ByteOrder::Little;
  int sizeof_hdr = 348;

  std::array<std::int64_t, 8> dim{};  // dim[0] = ndim (1..7), dim[1..ndim] >= 1
  std::array<double, 8> pixdim{};     // pixdim[0] is qfac; pixdim[1..ndim] the spacing
  int datatype = 0;
  int bitpix = 0;
  std::int64_t vox_offset = 0;  // where the voxels start in image_path (uncompressed bytes)
  double scl_slope = 0.0, scl_inter = 0.0;  // as stored; ANALYZE: SPM2's (funused1/2, else the gl/cal ranges)
  double cal_min = 0.0, cal_max = 0.0;
  double slice_duration = 0.0, toffset = 0.0;
  std::int64_t slice_start = 0, slice_end = 0;
  int slice_code = 0;
  int dim_info = 0;
  int xyzt_units = 0;
  int intent_code = 0;
  std::array<double, 3> intent_p{};
  std::string intent_name;  // up to 16 chars, NUL-trimmed
  std::string descrip;      // up to 80 chars, NUL-trimmed
  std::string aux_file;     // up to 24 chars, NUL-trimmed

  int qform_code = 0, sform_code = 0;
  double quatern_b = 0, quatern_c = 0, quatern_d = 0;
  double qoffset_x = 0, qoffset_y = 0, qoffset_z = 0;
  std::array<std::array<double, 4>, 3> srow{};  // srow_x, srow_y, srow_z

  std::array<std::int16_t, 3> analyze_origin{};  // SPM originator (ANALYZE only), 1-based voxel

  // Derived when read, in millimetres whatever spatial unit xyzt_units declares (the raw fields
  // above stay as stored): each affine's rows are scaled by millimetres_per_unit, translation
  // included, so the world coordinates of a file in metres or micrometres come out in mm.
  // qform_code > 0: nifti_quatern_to_mat44 of the quaternion fields (non-finite ones read as 0,
  // qfac = -1 when pixdim[0] < 0 else 1); otherwise the reference library's diag(pixdim[1..3]).
  Affine qform_affine = identity_affine();
  Affine sform_affine = identity_affine();  // srow rows + (0, 0, 0, 1)
  Affine base_affine = identity_affine();   // pixdim only, x flipped, centred (nibabel's get_base_affine;
                                            // ANALYZE: centred on the SPM originator when it is set)
  Affine affine = identity_affine();        // sform if sform_code > 0, else qform if qform_code > 0, else base

  int ndim() const { return static_cast<int>(dim[0]); }
  std::vector<std::int64_t> dims() const;     // dim[1..ndim]
  std::vector<double> spacing() const;        // pixdim[1..ndim]; the first three in mm (scaled by the unit)
  Shape shape() const;                        // dims reversed: the Volume tensor shape
  std::int64_t numel() const;                 // product of dims (checked for overflow when read)
  std::int64_t bytes_per_voxel() const;       // nifti_datatype_size(datatype)
  std::uint64_t data_bytes() const;           // numel() * bytes_per_voxel()
  // slope finite and != 0 and (slope, inter) != (1, 0); a non-finite inter counts as 0.
  bool has_scaling() const;
};

// The voxels in their source datatype, already in host byte order, in one buffer that was filled
// by inflating (or reading) straight into it.
struct NiftiRaw {
  NiftiHeader header;
  std::unique_ptr<std::byte[]> bytes;  // header.data_bytes() bytes, not zero-initialised
  std::size_t nbytes = 0;
  const std::byte* data() const { return bytes.get(); }
};

// Summary of the scaled voxel values in one pass (what `voxgrad info` prints).
struct VoxelStats {
  double min = 0, max = 0, mean = 0;  // over finite and infinite values, NaN left out; NaN when all are NaN
  std::int64_t count = 0;             // values counted (not NaN)
  std::int64_t nan_count = 0;
};

struct NiftiReadOptions {
  bool apply_scaling = true;  // off: data holds the raw values even when the file has a slope
};

// Every reader opens files through files::open_regular_for_reading (a FIFO or device named x.nii
// is "PATH: not a regular file", never a hang) and throws voxgrad::InputError for what is wrong with
// a file. Whenever voxel data are read, every gzip stream they came from (and a pair's gzip header)
// is read on to its end so that each member's CRC32 and length trailer is checked: a mismatch is
// "PATH: corrupt gzip data (CRC mismatch)", a file cut short "PATH: ... truncated ...".

// Header only (reads no voxel data, but checks that the image file can back the declared size).
NiftiHeader read_nifti_header(const std::string& path);
// Header and voxels in their source type. Pairs: `path` may name either the .hdr or the .img.
NiftiRaw read_nifti_raw(const std::string& path);
// A whole single-file image (.nii, optionally gzip) held in memory; `name` stands in for the path.
NiftiRaw read_nifti_raw_from_memory(std::span<const std::byte> bytes, const std::string& name);

// The voxels as a Volume (see volume.h for how each datatype is held).
Volume read_nifti(const std::string& path, const NiftiReadOptions& options = {});
Volume read_nifti_from_memory(std::span<const std::byte> bytes, const std::string& name,
                              const NiftiReadOptions& options = {});
Volume volume_from_raw(NiftiRaw raw, const NiftiReadOptions& options = {});

// The voxels as a float32 (or float64) tensor of shape header.shape(), scaled when the file says
// so: the fast path for training and benchmarks. Voxels are inflated in small chunks and converted
// into the tensor as they arrive, so no full-size buffer of the source type is ever made (float32
// files, and float64 ones for the float64 reader, are inflated straight into the tensor).
// `header`, when given, receives the file's header.
Tensor read_nifti_float32(const std::string& path, NiftiHeader* header = nullptr);
Tensor read_nifti_float64(const std::string& path, NiftiHeader* header = nullptr);

// Typed conversions of raw voxels: slope * v + inter (when header.has_scaling() and `scale`),
// written to a new contiguous CPU tensor of shape header.shape().
Tensor raw_to_float32(const NiftiRaw& raw, bool scale = true);
Tensor raw_to_float64(const NiftiRaw& raw, bool scale = true);
// The same conversion into caller memory of raw.header.numel() elements.
void convert_raw(const NiftiRaw& raw, float* dst, bool scale = true);
void convert_raw(const NiftiRaw& raw, double* dst, bool scale = true);
// min / max / mean / nan_count of the scaled values, without materialising them.
VoxelStats raw_stats(const NiftiRaw& raw);

// What write_nifti stores the voxels as.
enum class NiftiWriteType { UInt8, Int16, Int32, Float32 };
const char* write_type_name(NiftiWriteType t);  // "uint8", "int16", "int32", "float32"
// UInt8 -> UInt8, Int32 -> Int32, Float32/Float64 -> Float32.
NiftiWriteType default_write_type(const Volume& v);

// Writes a NIfTI-1 little-endian single file: .nii plain, .nii.gz gzip (zlib level 1, nibabel's
// default: about three times faster than level 6 for a few percent more bytes; chosen by the
// extension); atomically (temporary file in the same folder, fsync, rename). The affine goes into
// both the sform and the qform (codes 2, "aligned anat"; the qform is its nearest rigid part as
// nifti_mat44_to_quatern computes it), pixdim[1..3] are the affine's column norms and pixdim[4..]
// come from v.spacing (1 when absent). Voxel values must fit `as` exactly: a value out of range,
// non-integral for an integer type, or NaN for an integer type is an Error, never a silent wrap.
// scl_slope = scl_inter = 0 (the standard's "no scaling"); data are written as they are in v.data
// (already scaled if they were). Other extensions (.hdr, .img, ...) are refused.
void write_nifti(const std::string& path, const Volume& v, NiftiWriteType as);
void write_nifti(const std::string& path, const Volume& v);  // as default_write_type(v)

// The qform pieces of an affine, as nifti_mat44_to_quatern computes them (polar decomposition for
// a non-orthogonal 3x3): quaternion b, c, d, offsets, voxel sizes and qfac (+1 or -1).
struct Quatern {
  double b = 0, c = 0, d = 0;
  double qx = 0, qy = 0, qz = 0;
  double dx = 1, dy = 1, dz = 1;
  double qfac = 1;
};
Quatern affine_to_quatern(const Affine& a);
// nifti_quatern_to_mat44: the affine of a quaternion, offsets, voxel sizes and qfac.
Affine quatern_to_affine(const Quatern& q);

}  // namespace voxgrad::io
