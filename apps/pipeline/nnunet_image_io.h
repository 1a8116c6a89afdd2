// A case's channels as nnU-Net's image readers hand them to its preprocessor, and results put back
// on the input's grid: SimpleITKIO and NibabelIO give the voxel grid as stored, (C, z, y, x) with
// the spacing reversed (a 2-D image gets a slice spacing 999 times its pixel spacing);
// NibabelIOWithReorient first turns the grid to the closest RAS orientation (nibabel's
// io_orientation and as_reoriented) and turns the results back before they are written.
#pragma once

#include <array>
#include <string>
#include <vector>

#include "apps/pipeline/resample.h"
#include "engine/tensor.h"
#include "io/volume.h"

namespace voxgrad::pipeline::nnunet {

// For each stored voxel axis (i, j, k), the RAS world axis it runs along most and its direction
// (+1, -1): nibabel's io_orientation (closest rotation by polar decomposition; ties resolved axis
// by axis in order).
struct AxisOrientation {
  std::array<int, 3> world_axis{0, 1, 2};
  std::array<int, 3> direction{1, 1, 1};
  bool is_identity() const;
};
AxisOrientation closest_canonical_orientation(const io::Affine& affine);

// A case as nnU-Net's reader gives it.
struct ReaderCase {
  Tensor data;                                 // (C, Z, Y, X) float32, CPU, in the reader's array order
  Spacing3 spacing{};                          // in the same order
  AxisOrientation orientation;                 // identity unless the reader reoriented
  std::array<std::int64_t, 3> stored_shape{};  // (Z, Y, X) of the file's own grid
};

// `reader` is SimpleITKIO, NibabelIO or NibabelIOWithReorient. Channels must share dims and (for
// the Nibabel readers) spacing; `names` name them in errors.
ReaderCase read_case(const std::vector<io::Volume>& channels, const std::vector<std::string>& names,
                     const std::string& reader);

// (C, Z, Y, X) in the reader's array order back to the file's own grid (identity unless
// reoriented).
Tensor to_stored_grid(const Tensor& data, const ReaderCase& c);

// (C, Z, Y, X) on the file's grid to the reader's array order: what read_case does to the data.
Tensor to_reader_grid(const Tensor& data, const AxisOrientation& orientation);

}  // namespace voxgrad::pipeline::nnunet
