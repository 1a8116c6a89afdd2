// Volume: one image as read from (or to be written to) a NIfTI file: the voxels as an engine Tensor
// whose shape is the NIfTI dims reversed ((X,Y,Z,T) is (T,Z,Y,X), at any rank 1..7), plus the
// voxel-to-world affine, spacing, the datatype the file stored and its intent.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "../engine/tensor.h"

namespace voxgrad::io {

// Row-major 4x4: world = affine * (i, j, k, 1) with i the fastest (x) voxel index.
using Affine = std::array<std::array<double, 4>, 4>;
Affine identity_affine();

// How `data` holds each source datatype (the reader's choice, so integer images stay exact):
//   no scaling (slope 0 or not finite, or slope 1 and inter 0; or apply_scaling off):
//     uint8                         -> UInt8
//     int8, int16, uint16, int32    -> Int32
//     uint32, int64, uint64         -> Int32 when every value fits in int32, else Float64
//                                      (exact up to 2^53; beyond that, rounded)
//     float32                       -> Float32
//     float64                       -> Float64
//   scaling applies (slope finite and != 0, and (slope, inter) != (1, 0)):
//     float64 source                -> Float64 (slope * v + inter in double)
//     any other source              -> Float32 (slope * v + inter computed in double, then rounded)
// `scaled` says whether slope/inter have already been applied to `data`.
struct Volume {
  Tensor data;                          // (dim[n], ..., dim[2], dim[1]) on the CPU
  Affine affine = identity_affine();    // voxel (i, j, k) -> world (mm, RAS+ as NIfTI defines it)
  std::vector<double> spacing;          // pixdim[1..ndim], one per NIfTI axis in NIfTI order (x first);
                                        // the spatial ones in mm, whatever unit the file used
  std::int16_t source_datatype = 16;    // NIfTI datatype code the file stored (16 = float32)
  int intent_code = 0;                  // NIfTI intent (0 none, 1002 label, ...)
  int xyzt_units = 2 | 8;               // NIfTI units bits (2 = mm, 8 = seconds); a file read in metres or
                                        // micrometres says mm here, as its affine and spacing now are
  std::string path;                     // the file it was read from; "" when made in memory
  double scl_slope = 0.0;               // as in the file (0: none); NaN when the file said NaN
  double scl_inter = 0.0;
  bool scaled = false;                  // data already holds slope * raw + inter

  int ndim() const { return data.dim(); }
  // dim[1..ndim] in NIfTI order (x first): the tensor shape reversed.
  std::vector<std::int64_t> dims() const;

  // The voxel values as float32 (already scaled when the file had a scaling); shares `data`'s
  // storage when it is float32 already.
  Tensor to_float32() const;
  // The voxels as an Int32 label tensor. Throws voxgrad::InputError when a value is not integral,
  // not finite or outside int32, naming the file (`path`, when known), the first offending voxel
  // (NIfTI index order) and its value.
  Tensor to_labels() const;
};

// A Volume around `data` with spacing taken from the affine's column norms (identity by default).
Volume make_volume(Tensor data, const Affine& affine = identity_affine());

}  // namespace voxgrad::io
