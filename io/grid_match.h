// Whether two voxel grids put their voxels at the same points in the world up to a reordering of
// the voxel axes (flips and permutations: the same image stored LPS instead of RAS, or z first),
// the reordering that carries a volume from one onto the other, and, when there is none, what
// differs, in plain words.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "io/volume.h"

namespace voxgrad::io {

// Two affine entries agree when |a - b| <= atol + rtol * |b| (mm): float32 header round trips.
struct AffineTolerance {
  double atol = 1e-3;
  double rtol = 1e-4;
};

// The largest |a - b| over the entries of the 3x4 parts that are beyond the tolerance (b is the
// reference); 0 when every entry agrees.
double affine_excess(const Affine& a, const Affine& b, AffineTolerance tol = {});

// A voxel grid: NIfTI dims (x first, at any rank) and the voxel -> world affine.
struct Grid {
  std::vector<std::int64_t> dims;
  Affine affine = identity_affine();
};

// How a stored grid's voxel axes carry onto a target grid's (NIfTI order, x first): the target's
// axis k is the stored axis axis[k], run backwards when flip[k].
struct AxisMap {
  std::array<int, 3> axis{0, 1, 2};
  std::array<bool, 3> flip{false, false, false};

  bool identity() const;
  // The target's axes in terms of the stored ones, e.g. "(-x, y, z)" for x flipped, "(x, z, y)"
  // for y and z swapped.
  std::string describe() const;
};

// The affine the stored grid has once its voxels are reordered by `map`.
Affine reoriented_affine(const Grid& stored, const AxisMap& map);

// The map under which `stored` becomes `target` (same dims, affines equal within `tol`), the
// identity first; nothing when no flip or permutation of axes explains the difference. Axes past
// the third (time, components) must agree as they are.
std::optional<AxisMap> match_grid(const Grid& stored, const Grid& target, AffineTolerance tol = {});

// What separates two grids that match_grid cannot map onto each other, from the stored grid's
// side, e.g. "dims 5x3x2 vs 4x3x2", "spacing 2x1x1 mm vs 1x1x1 mm", "origin shifted by 5 mm
// (5, 0, 0)", "axis directions differ by up to 0.5 mm per voxel (not a flip or a permutation)".
std::string grid_difference(const Grid& stored, const Grid& target, AffineTolerance tol = {});

// The volume `stored` (its tensor: `stored_dims` reversed) with its voxels reordered by `map`: the
// result has shape `target_shape`, and its voxel r holds the stored voxel that `map` sends to r.
Tensor reorient(const Tensor& stored, const std::vector<std::int64_t>& stored_dims, const AxisMap& map,
                const Shape& target_shape);

// NIfTI dims as "5x3x2" (x first), for messages about grids.
std::string dims_text(const std::vector<std::int64_t>& dims);

}  // namespace voxgrad::io
