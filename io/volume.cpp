// Volume helpers: NIfTI-order dims, conversion to float32 and to checked int32 labels.
// The reader and writer live in nifti.cpp; this file only knows tensors and affines.
#include "io/volume.h"

#include <cmath>
#include <limits>
#include <sstream>

#include "engine/error.h"

namespace voxgrad::io {

Affine identity_affine() {
  Affine a{};
  for (int i = 0; i < 4; ++i) a[i][i] = 1.0;
  return a;
}

std::vector<std::int64_t> Volume::dims() const {
  const Shape& s = data.shape();
  return std::vector<std::int64_t>(s.rbegin(), s.rend());
}

Tensor Volume::to_float32() const {
  VG_CHECK(data.defined(), "Volume::to_float32: the volume holds no data");
  return data.cpu().to(DType::Float32);
}

namespace {

// Voxel `flat` (row-major over the tensor shape) as NIfTI indices "(i, j, k, ...)", x first.
std::string nifti_index(const Shape& shape, std::int64_t flat) {
  std::vector<std::int64_t> idx(shape.size());
  for (std::size_t a = shape.size(); a-- > 0;) {
    idx[a] = flat % shape[a];
    flat /= shape[a];
  }
  std::ostringstream os;
  os << "(";
  for (std::size_t a = idx.size(); a-- > 0;) os << idx[a] << (a > 0 ? ", " : "");
  os << ")";
  return os.str();
}

template <class T>
void float_to_labels(const T* src, std::int32_t* dst, std::int64_t n, const Shape& shape, const std::string& path) {
  constexpr double lo = std::numeric_limits<std::int32_t>::min();
  constexpr double hi = std::numeric_limits<std::int32_t>::max();
  for (std::int64_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(src[i]);
    // One comparison chain also rejects NaN (every comparison with NaN is false).
    if (!(v >= lo && v <= hi && v == std::floor(v))) {
      VG_INPUT_FAIL((path.empty() ? std::string() : path + ": ")
                    << "voxel " << nifti_index(shape, i) << " holds " << v
                    << ", which is not an integer label (labels must be whole numbers in int32 range; is this an "
                       "intensity image?)");
    }
    dst[i] = static_cast<std::int32_t>(v);
  }
}

}  // namespace

Tensor Volume::to_labels() const {
  VG_CHECK(data.defined(), "Volume::to_labels: the volume holds no data");
  const Tensor src = data.cpu();
  switch (src.dtype()) {
    case DType::UInt8:
    case DType::Int32:
      return src.to(DType::Int32);
    case DType::Float32: {
      Tensor out = empty(src.shape(), DType::Int32);
      float_to_labels(src.data<float>(), out.data<std::int32_t>(), src.numel(), src.shape(), path);
      return out;
    }
    case DType::Float64: {
      Tensor out = empty(src.shape(), DType::Int32);
      float_to_labels(src.data<double>(), out.data<std::int32_t>(), src.numel(), src.shape(), path);
      return out;
    }
  }
  VG_FAIL("Volume::to_labels: unsupported dtype " << dtype_name(src.dtype()));
}

Volume make_volume(Tensor data, const Affine& affine) {
  Volume v;
  v.data = std::move(data);
  v.affine = affine;
  const int n = v.data.defined() ? v.data.dim() : 0;
  v.spacing.assign(static_cast<std::size_t>(n), 1.0);
  for (int axis = 0; axis < n && axis < 3; ++axis) {
    v.spacing[static_cast<std::size_t>(axis)] =
        std::sqrt(affine[0][axis] * affine[0][axis] + affine[1][axis] * affine[1][axis] +
                  affine[2][axis] * affine[2][axis]);
  }
  switch (v.data.defined() ? v.data.dtype() : DType::Float32) {
    case DType::UInt8: v.source_datatype = 2; break;
    case DType::Int32: v.source_datatype = 8; break;
    case DType::Float32: v.source_datatype = 16; break;
    case DType::Float64: v.source_datatype = 64; break;
  }
  return v;
}

}  // namespace voxgrad::io
