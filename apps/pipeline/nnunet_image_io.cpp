// nnU-Net's three NIfTI readers as voxgrad reproduces them: the array order and spacing they give
// the preprocessor, and the closest-RAS reorientation of NibabelIOWithReorient and its inverse.
#include "apps/pipeline/nnunet_image_io.h"

#include <algorithm>
#include <cmath>

#include "engine/error.h"
#include "engine/ops.h"

namespace voxgrad::pipeline::nnunet {

namespace {

using Matrix3 = std::array<std::array<double, 3>, 3>;

double determinant(const Matrix3& m) {
  return m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
         m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
}

// The inverse transpose, by cofactors.
Matrix3 inverse_transpose(const Matrix3& m) {
  const double d = determinant(m);
  Matrix3 c{};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      const int i1 = (i + 1) % 3, i2 = (i + 2) % 3, j1 = (j + 1) % 3, j2 = (j + 2) % 3;
      c[i][j] = (m[i1][j1] * m[i2][j2] - m[i1][j2] * m[i2][j1]) / d;
    }
  return c;
}

// The orthogonal factor of the polar decomposition (the rotation closest to `m`), by Newton's
// iteration R <- (R + R^-T) / 2, which converges quadratically for a non-singular matrix; it is the
// P Q^T of the SVD that nibabel's io_orientation computes.
Matrix3 closest_rotation(Matrix3 r) {
  for (int iteration = 0; iteration < 100; ++iteration) {
    const Matrix3 inv_t = inverse_transpose(r);
    double change = 0;
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) {
        const double next = 0.5 * (r[i][j] + inv_t[i][j]);
        change = std::max(change, std::abs(next - r[i][j]));
        r[i][j] = next;
      }
    if (change < 1e-15) break;
  }
  return r;
}

// out[(c, a0, a1, a2)] = in[...] where output array axis t takes input array axis from[t], read
// backwards when reverse[t]. Host code for float32 and int32 tensors.
template <class T>
Tensor permute_flip(const Tensor& in, const std::array<int, 3>& from, const std::array<bool, 3>& reverse) {
  const std::int64_t channels = in.size(0);
  const std::array<std::int64_t, 3> in_shape{in.size(1), in.size(2), in.size(3)};
  std::array<std::int64_t, 3> in_stride{in_shape[1] * in_shape[2], in_shape[2], 1};
  const std::array<std::int64_t, 3> out_shape{in_shape[from[0]], in_shape[from[1]], in_shape[from[2]]};
  Tensor out = empty({channels, out_shape[0], out_shape[1], out_shape[2]}, in.dtype());
  const Tensor& src = in;
  const T* s = src.data<T>();
  T* d = out.data<T>();
  const std::int64_t volume = out_shape[0] * out_shape[1] * out_shape[2];
  for (std::int64_t c = 0; c < channels; ++c) {
    const T* sc = s + c * volume;
    T* dc = d + c * volume;
    std::int64_t o = 0;
    for (std::int64_t a = 0; a < out_shape[0]; ++a)
      for (std::int64_t b = 0; b < out_shape[1]; ++b)
        for (std::int64_t e = 0; e < out_shape[2]; ++e, ++o) {
          const std::array<std::int64_t, 3> idx{a, b, e};
          std::int64_t offset = 0;
          for (int t = 0; t < 3; ++t) {
            const std::int64_t i = reverse[t] ? out_shape[t] - 1 - idx[t] : idx[t];
            offset += i * in_stride[from[t]];
          }
          dc[o] = sc[offset];
        }
  }
  return out;
}

Tensor permute_flip_any(const Tensor& in, const std::array<int, 3>& from, const std::array<bool, 3>& reverse) {
  VG_CHECK(in.dim() == 4 && in.device().is_cpu(), "reorientation takes (C, Z, Y, X) CPU tensors");
  if (in.dtype() == DType::Float32) return permute_flip<float>(in, from, reverse);
  VG_CHECK(in.dtype() == DType::Int32, "reorientation takes float32 or int32 tensors");
  return permute_flip<std::int32_t>(in, from, reverse);
}

// Array axis t of a (C, Z, Y, X) tensor is NIfTI voxel axis 2 - t.
constexpr int voxel_axis(int array_axis) { return 2 - array_axis; }

}  // namespace

bool AxisOrientation::is_identity() const {
  return world_axis == std::array<int, 3>{0, 1, 2} && direction == std::array<int, 3>{1, 1, 1};
}

AxisOrientation closest_canonical_orientation(const io::Affine& affine) {
  Matrix3 rs{};
  for (int j = 0; j < 3; ++j) {
    double norm = 0;
    for (int i = 0; i < 3; ++i) norm += affine[i][j] * affine[i][j];
    norm = norm == 0 ? 1 : std::sqrt(norm);
    for (int i = 0; i < 3; ++i) rs[i][j] = affine[i][j] / norm;
  }
  VG_INPUT_CHECK(std::abs(determinant(rs)) > 1e-12,
                 "the image's affine is singular: its voxel axes do not span "
                 "3-D space, so it has no orientation");
  Matrix3 r = closest_rotation(rs);
  AxisOrientation o;
  for (int voxel = 0; voxel < 3; ++voxel) {
    int best = 0;
    for (int world = 1; world < 3; ++world)
      if (std::abs(r[world][voxel]) > std::abs(r[best][voxel])) best = world;
    o.world_axis[voxel] = best;
    o.direction[voxel] = r[best][voxel] < 0 ? -1 : 1;
    for (int j = 0; j < 3; ++j) r[best][j] = 0;  // each world axis is taken once
  }
  return o;
}

Tensor to_reader_grid(const Tensor& data, const AxisOrientation& o) {
  if (o.is_identity()) return data;
  // The reoriented grid's voxel axis w is the stored voxel axis v with world_axis[v] == w.
  std::array<int, 3> from{};
  std::array<bool, 3> reverse{};
  for (int t = 0; t < 3; ++t) {
    const int w = voxel_axis(t);
    for (int v = 0; v < 3; ++v)
      if (o.world_axis[v] == w) {
        from[t] = 2 - v;
        reverse[t] = o.direction[v] < 0;
      }
  }
  return permute_flip_any(data, from, reverse);
}

Tensor to_stored_grid(const Tensor& data, const ReaderCase& c) {
  const AxisOrientation& o = c.orientation;
  if (o.is_identity()) return data;
  std::array<int, 3> from{};
  std::array<bool, 3> reverse{};
  for (int t = 0; t < 3; ++t) {
    const int v = voxel_axis(t);
    from[t] = 2 - o.world_axis[v];
    reverse[t] = o.direction[v] < 0;
  }
  return permute_flip_any(data, from, reverse);
}

ReaderCase read_case(const std::vector<io::Volume>& channels, const std::vector<std::string>& names,
                     const std::string& reader) {
  VG_CHECK(!channels.empty() && channels.size() == names.size(), "read_case: one name per channel");
  ReaderCase c;
  std::vector<Tensor> data;
  const io::Volume& first = channels[0];
  for (std::size_t ch = 0; ch < channels.size(); ++ch) {
    const io::Volume& v = channels[ch];
    const bool one_volume_4d = v.ndim() == 4 && v.data.size(0) == 1;
    VG_INPUT_CHECK(v.ndim() == 3 || one_volume_4d || (v.ndim() == 2 && reader == "SimpleITKIO"),
                   names[ch] << ": a " << v.ndim() << "-D image; " << reader
                             << (reader == "SimpleITKIO" ? " reads 2-D and 3-D images" : " reads 3-D images only"));
    Tensor d = v.to_float32();
    d = v.ndim() == 2 ? reshape(d, {1, d.size(0), d.size(1)}) : reshape(d, {d.size(-3), d.size(-2), d.size(-1)});
    if (ch > 0) {
      VG_INPUT_CHECK(d.shape() == data[0].shape(), names[ch] << ": dims " << shape_str(d.shape()) << " differ from "
                                                             << names[0] << "'s " << shape_str(data[0].shape()));
      VG_INPUT_CHECK(v.spacing == first.spacing,
                     names[ch] << ": its spacing differs from " << names[0] << "'s; the channels must share one grid");
    }
    data.push_back(d);
  }
  const Shape spatial = data[0].shape();
  Tensor stacked = empty({static_cast<std::int64_t>(data.size()), spatial[0], spatial[1], spatial[2]});
  const std::int64_t n = data[0].numel();
  for (std::size_t ch = 0; ch < data.size(); ++ch)
    std::copy_n(data[ch].data<float>(), n, stacked.data<float>() + static_cast<std::int64_t>(ch) * n);
  c.stored_shape = {spatial[0], spatial[1], spatial[2]};
  // pixdim in (x, y, z) reversed; SimpleITKIO gives a 2-D image a slice spacing 999 times its
  // largest pixel spacing.
  const double slice = first.ndim() == 2 ? 999.0 * std::max(first.spacing[0], first.spacing[1]) : first.spacing[2];
  c.spacing = {std::abs(slice), std::abs(first.spacing[1]), std::abs(first.spacing[0])};
  if (reader == "NibabelIOWithReorient") {
    c.orientation = closest_canonical_orientation(first.affine);
    if (!c.orientation.is_identity()) {
      // nibabel recomputes the zooms from the reoriented affine: its column norms, permuted.
      std::array<double, 3> norms{};
      for (int j = 0; j < 3; ++j)
        norms[j] = std::sqrt(first.affine[0][j] * first.affine[0][j] + first.affine[1][j] * first.affine[1][j] +
                             first.affine[2][j] * first.affine[2][j]);
      for (int v = 0; v < 3; ++v) c.spacing[2 - c.orientation.world_axis[v]] = norms[v];
    }
  }
  c.data = to_reader_grid(stacked, c.orientation);
  return c;
}

}  // namespace voxgrad::pipeline::nnunet
