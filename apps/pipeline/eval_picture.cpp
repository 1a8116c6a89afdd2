// Eval's per-case picture: a slice chosen by the affine (not the array order), a percentile grey
// window, 4-neighbourhood contours, and the PNG writer.
#include "apps/pipeline/eval_picture.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "engine/log.h"
#include "io/grid_match.h"
#include "io/nifti.h"
#include "io/png.h"

namespace voxgrad::pipeline {

namespace {

// A 2-D view of one slice of a (Z, Y, X) volume: pixel (row, col) -> flat voxel index.
struct SliceView {
  int width = 0, height = 0;
  std::vector<std::int64_t> index;  // height * width voxel offsets
};

// The middle slice across the voxel axis closest to world z (superior), shown in the radiological
// convention: the patient's right on the image's left (columns run from +x to -x in RAS world
// coordinates) and anterior at the top (rows run from +y to -y). Following the affine, not the
// array order, keeps that true for volumes stored in any axis order or direction.
SliceView axial_view(const std::vector<std::int64_t>& dims, const io::Affine& affine) {
  auto share = [&](int axis, int world) {
    const double n = std::hypot(affine[0][axis], affine[1][axis], affine[2][axis]);
    return n > 0 ? std::abs(affine[world][axis]) / n : 0.0;
  };
  int through = 2;
  for (int a = 0; a < 3; ++a)
    if (share(a, 2) > share(through, 2)) through = a;
  std::vector<int> in_plane;
  for (int a = 0; a < 3; ++a)
    if (a != through) in_plane.push_back(a);
  int horizontal = in_plane[0], vertical = in_plane[1];
  if (share(vertical, 0) > share(horizontal, 0)) std::swap(horizontal, vertical);
  const bool flip_cols = affine[0][horizontal] > 0;  // index grows to the right: show it leftwards
  const bool flip_rows = affine[1][vertical] > 0;    // index grows anterior: show it upwards

  const std::int64_t stride[3] = {1, dims[0], dims[0] * dims[1]};  // NIfTI order, x fastest
  SliceView v;
  v.width = static_cast<int>(dims[horizontal]);
  v.height = static_cast<int>(dims[vertical]);
  v.index.resize(static_cast<std::size_t>(v.width) * v.height);
  const std::int64_t base = (dims[through] / 2) * stride[through];
  for (int r = 0; r < v.height; ++r)
    for (int c = 0; c < v.width; ++c) {
      const std::int64_t i = flip_cols ? v.width - 1 - c : c;
      const std::int64_t j = flip_rows ? v.height - 1 - r : r;
      v.index[static_cast<std::size_t>(r) * v.width + c] = base + i * stride[horizontal] + j * stride[vertical];
    }
  return v;
}

// Grey levels of a slice: the 0.5..99.5 percentile window, as viewers' auto contrast does, so a few
// bright voxels do not darken the rest.
std::vector<std::uint8_t> grey_levels(const std::vector<double>& values) {
  std::vector<double> finite;
  for (double v : values)
    if (std::isfinite(v)) finite.push_back(v);
  std::vector<std::uint8_t> grey(values.size(), 0);
  if (finite.empty()) return grey;
  std::sort(finite.begin(), finite.end());
  const double lo = finite[static_cast<std::size_t>(0.005 * (finite.size() - 1))];
  const double hi = finite[static_cast<std::size_t>(0.995 * (finite.size() - 1))];
  if (!(hi > lo)) return grey;
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) continue;
    const double t = std::clamp((values[i] - lo) / (hi - lo), 0.0, 1.0);
    grey[i] = static_cast<std::uint8_t>(std::lround(t * 255.0));
  }
  return grey;
}

// True where a foreground pixel touches (4-neighbourhood, or the border) a pixel of another label.
std::vector<bool> contour(const std::vector<std::int32_t>& lab, int w, int h) {
  std::vector<bool> on(lab.size(), false);
  for (int r = 0; r < h; ++r)
    for (int c = 0; c < w; ++c) {
      const std::int32_t v = lab[static_cast<std::size_t>(r) * w + c];
      if (v <= 0) continue;
      auto differs = [&](int rr, int cc) {
        return rr < 0 || cc < 0 || rr >= h || cc >= w || lab[static_cast<std::size_t>(rr) * w + cc] != v;
      };
      on[static_cast<std::size_t>(r) * w + c] = differs(r - 1, c) || differs(r + 1, c) || differs(r, c - 1) ||
                                                differs(r, c + 1);
    }
  return on;
}

// The picture of one case: grey background (the image, else the reference labels), reference
// contours green, prediction contours red, yellow where they coincide.
}  // namespace

void write_case_picture(const std::string& path, const io::Volume& ref_volume, const Tensor& ref,
                        const Tensor& pred, const std::string& image_path, logging::Sink& sink) {
  const std::vector<std::int64_t> dims = ref_volume.dims();
  const SliceView view = axial_view(dims, ref_volume.affine);
  const std::size_t n = view.index.size();
  const std::int32_t* r = ref.data<std::int32_t>();
  const std::int32_t* p = pred.data<std::int32_t>();
  std::vector<std::int32_t> ref_slice(n), pred_slice(n);
  std::vector<double> background(n);
  for (std::size_t k = 0; k < n; ++k) {
    ref_slice[k] = r[view.index[k]];
    pred_slice[k] = p[view.index[k]];
    background[k] = ref_slice[k];
  }
  if (!image_path.empty()) {
    io::NiftiHeader header;
    const Tensor image = io::read_nifti_float32(image_path, &header);
    if (header.numel() == ref.numel()) {
      const float* im = image.data<float>();
      for (std::size_t k = 0; k < n; ++k) background[k] = im[view.index[k]];
    } else {
      sink.warning(image_path + ": dims " + io::dims_text(header.dims()) + " differ from the reference's " +
                   io::dims_text(dims) + "; the picture shows the reference labels instead");
    }
  }
  const std::vector<std::uint8_t> grey = grey_levels(background);
  const std::vector<bool> ref_edge = contour(ref_slice, view.width, view.height);
  const std::vector<bool> pred_edge = contour(pred_slice, view.width, view.height);
  std::vector<std::uint8_t> rgb(3 * n);
  for (std::size_t k = 0; k < n; ++k) {
    std::uint8_t* px = &rgb[3 * k];
    px[0] = px[1] = px[2] = grey[k];
    if (ref_edge[k] || pred_edge[k]) {
      px[0] = pred_edge[k] ? 255 : 0;
      px[1] = ref_edge[k] ? 255 : 0;
      px[2] = 0;
    }
  }
  io::write_png_rgb(path, view.width, view.height, rgb);
}

}  // namespace voxgrad::pipeline
