// Loading a dataset case into tensors ((C, Z, Y, X) float32 image, (Z, Y, X) int32 label) and
// checking cases: channel and label geometry and memory from the headers alone, then the label
// values and the image values, with every problem collected so one run reports them all.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <sstream>

#include "engine/error.h"
#include "engine/log.h"
#include "engine/memory_budget.h"
#include "io/dataset.h"
#include "io/image_health.h"
#include "io/nifti.h"

namespace voxgrad::io {

namespace dataset_detail {
// dataset.cpp: one Error with the count and the first few problems.
[[noreturn]] void throw_problems(const std::string& subject, const std::vector<std::string>& problems);
}  // namespace dataset_detail

namespace {

using Spatial = std::array<std::int64_t, 3>;  // x, y, z

// The spatial part of NIfTI dims (x, y, z; a 2-D image has z = 1) and how many 3-D volumes the
// remaining axes hold (the channels of a (X, Y, Z, C) file; 1 for a 3-D file).
struct Layout {
  Spatial spatial{1, 1, 1};
  std::int64_t volumes = 1;
};

Layout layout_of(const std::vector<std::int64_t>& dims) {
  Layout l;
  for (std::size_t i = 0; i < dims.size(); ++i) {
    if (i < 3)
      l.spatial[i] = dims[i];
    else if (__builtin_mul_overflow(l.volumes, dims[i], &l.volumes))  // a hostile header's dims must not wrap
      l.volumes = std::numeric_limits<std::int64_t>::max();
  }
  return l;
}

// NIfTI order, x first: "(4, 5, 6)".
std::string dims_str(const std::vector<std::int64_t>& d) {
  std::ostringstream os;
  os << "(";
  for (std::size_t i = 0; i < d.size(); ++i) os << (i ? ", " : "") << d[i];
  os << ")";
  return os.str();
}

std::string dims_str(const Spatial& s) { return dims_str(std::vector<std::int64_t>(s.begin(), s.end())); }

std::string affine_str(const Affine& a) {
  std::ostringstream os;
  os.precision(6);
  os << "[";
  for (int r = 0; r < 3; ++r) {
    os << (r ? ", [" : "[");
    for (int c = 0; c < 4; ++c) os << (c ? ", " : "") << a[r][c];
    os << "]";
  }
  os << "]";
  return os.str();
}

double affine_scale(const Affine& a, const Affine& b) {
  double largest = 1.0;
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 4; ++c) largest = std::max({largest, std::fabs(a[r][c]), std::fabs(b[r][c])});
  return largest;
}

// The largest entry difference; NaN when any entry is NaN (NaN never compares as close).
double affine_difference(const Affine& a, const Affine& b) {
  double worst = 0.0;
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 4; ++c) {
      const double d = std::fabs(a[r][c] - b[r][c]);
      if (std::isnan(d)) return d;
      worst = std::max(worst, d);
    }
  return worst;
}

std::array<double, 3> spatial_spacing(const std::vector<double>& spacing) {
  std::array<double, 3> s{1.0, 1.0, 1.0};
  for (std::size_t i = 0; i < 3 && i < spacing.size(); ++i) s[i] = spacing[i];
  return s;
}

// The same storage under another shape of as many elements (io may not use engine ops).
Tensor with_shape(const Tensor& t, const Shape& shape) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = t.impl()->storage;
  impl->byte_offset = t.impl()->byte_offset;
  impl->dtype = t.dtype();
  impl->shape = shape;
  return Tensor(impl);
}

std::string channel_names(const Dataset& ds) {
  std::string out;
  for (std::size_t i = 0; i < ds.channels.size(); ++i) out += (i ? ", " : "") + ds.channels[i];
  return out;
}

// What reading one file holds at once: its voxels as stored and their 32-bit copy (float32 for
// images, int32 for labels).
std::uint64_t reading_bytes(const NiftiHeader& h) {
  return memory::saturating_product({h.numel(), std::max(1, h.bitpix / 8) + 4});
}

struct Header {
  std::string path;
  Layout layout;
  std::vector<std::int64_t> dims;
  Affine affine;
  std::uint64_t read_bytes = 0;  // reading_bytes
};

Header header_of(const std::string& path) {
  const NiftiHeader h = read_nifti_header(path);
  return {path, layout_of(h.dims()), h.dims(), h.affine, reading_bytes(h)};
}

void check_label_fits(const Case& c, const Header& label) {
  memory::check_fits(label.read_bytes, "case " + c.id + ": reading its label " + c.label,
                     dims_str(label.dims) + " voxels");
}

// A case's image is sized by its headers: the (C, Z, Y, X) float32 tensor plus the largest file
// being read into it. Refused, with the case named, when this machine cannot hold it, before any
// voxel is read.
void check_image_fits(const Case& c, std::int64_t channels, const std::vector<Header>& files) {
  const Spatial& spatial = files.at(0).layout.spatial;
  std::uint64_t largest = 0;
  for (const Header& h : files) largest = std::max(largest, h.read_bytes);
  const std::uint64_t bytes = memory::saturating_add(
      memory::saturating_product({channels, spatial[0], spatial[1], spatial[2], std::int64_t{sizeof(float)}}), largest);
  memory::check_fits(bytes, "case " + c.id + ": loading its image " + c.images[0],
                     std::to_string(channels) + (channels == 1 ? " channel" : " channels") + " of " +
                         dims_str(spatial) + " voxels as float32");
}

}  // namespace

bool affines_close(const Affine& a, const Affine& b, double tolerance) {
  return affine_difference(a, b) <= tolerance * affine_scale(a, b);
}

CaseImage load_case_image(const Dataset& dataset, const Case& c) {
  const std::int64_t channels = dataset.num_channels();
  VG_CHECK(!c.images.empty(), "load_case_image: case " << c.id << " lists no image files");
  {
    std::vector<Header> headers;
    for (const std::string& path : c.images) headers.push_back(header_of(path));
    check_image_fits(c, channels, headers);
  }
  CaseImage out;
  Spatial spatial{};
  std::int64_t filled = 0;
  for (std::size_t f = 0; f < c.images.size(); ++f) {
    const std::string& path = c.images[f];
    Volume v = read_nifti(path);
    const Layout l = layout_of(v.dims());
    if (f == 0) {
      spatial = l.spatial;
      out.affine = v.affine;
      out.spacing = spatial_spacing(v.spacing);
    } else {
      VG_INPUT_CHECK(l.spatial == spatial, path << ": case " << c.id << ": dims " << dims_str(l.spatial)
                                                << " differ from " << c.images[0] << "'s " << dims_str(spatial));
    }
    VG_INPUT_CHECK(l.volumes <= channels - filled, path << ": case " << c.id << ": the image files hold more than the "
                                                        << channels << " channel(s) dataset.json declares ("
                                                        << channel_names(dataset) << "); this one has dims "
                                                        << dims_str(v.dims()));
    const Shape shape{channels, spatial[2], spatial[1], spatial[0]};  // (C, Z, Y, X)
    Tensor values = v.to_float32();
    if (c.images.size() == 1 && l.volumes == channels) {
      out.data = with_shape(values, shape);  // one file holding every channel: no copy
      return out;
    }
    if (f == 0) out.data = empty(shape, DType::Float32);
    std::memcpy(out.data.data<float>() + filled * spatial[0] * spatial[1] * spatial[2], values.data<float>(),
                values.nbytes());
    filled += l.volumes;
  }
  VG_INPUT_CHECK(filled == channels, c.images[0] << ": case " << c.id << ": the image files hold " << filled
                                                 << " channel(s) but dataset.json declares " << channels << " ("
                                                 << channel_names(dataset) << ")");
  return out;
}

CaseLabel load_case_label(const Dataset& dataset, const Case& c) {
  (void)dataset;  // labels read alike in both layouts; the parameter mirrors load_case_image
  VG_CHECK(!c.label.empty(), "load_case_label: case " << c.id << " has no label (is it a test case?)");
  check_label_fits(c, header_of(c.label));
  const Volume v = read_nifti(c.label);
  const Layout l = layout_of(v.dims());
  VG_INPUT_CHECK(l.volumes == 1, c.label << ": case " << c.id << ": a label must be one 3-D volume; this file has dims "
                                         << dims_str(v.dims()));
  CaseLabel out;
  out.data = with_shape(v.to_labels(), Shape{l.spatial[2], l.spatial[1], l.spatial[0]});  // (Z, Y, X)
  out.affine = v.affine;
  out.spacing = spatial_spacing(v.spacing);
  return out;
}

namespace {

// The declared-value check over one label tensor: counts of every value outside `allowed`.
std::map<std::int32_t, std::int64_t> unexpected_values(const Tensor& labels, const std::vector<int>& allowed) {
  const std::int32_t* p = labels.data<std::int32_t>();
  const std::int64_t n = labels.numel();
  // Labels are small non-negative numbers: a flat histogram for them, a map for the rest.
  constexpr std::int32_t kFlat = 1024;
  std::vector<std::int64_t> flat(kFlat, 0);
  std::map<std::int32_t, std::int64_t> other;
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int32_t v = p[i];
    if (v >= 0 && v < kFlat)
      ++flat[static_cast<std::size_t>(v)];
    else
      ++other[v];
  }
  for (std::int32_t v = 0; v < kFlat; ++v)
    if (flat[static_cast<std::size_t>(v)] > 0) other[v] += flat[static_cast<std::size_t>(v)];
  for (int v : allowed) other.erase(v);
  return other;
}

// A channel with no finite voxel or with one value everywhere: training cannot normalise it
// ((v - mean) / std is NaN or 0 everywhere) and a network learns nothing from it.
std::vector<std::string> image_value_problems(const std::vector<Header>& images) {
  std::vector<std::string> problems;
  std::vector<ChannelHealth> health;
  std::vector<std::string> files;
  for (const Header& h : images) {
    try {
      const Tensor values = read_nifti(h.path).to_float32();
      const std::int64_t per_volume = values.numel() / std::max<std::int64_t>(1, h.layout.volumes);
      for (std::int64_t v = 0; v < h.layout.volumes; ++v) {
        health.push_back(channel_health(values.data<float>() + v * per_volume, per_volume));
        files.push_back(h.layout.volumes == 1 ? h.path : h.path + " channel " + std::to_string(v));
      }
    } catch (const Error& e) {
      problems.push_back(std::string("image ") + e.what());
    }
  }
  if (!problems.empty()) return problems;
  return health_problems(health, files);  // one name per channel: `files` is as long as `health`
}

}  // namespace

std::vector<std::string> find_case_problems(const Dataset& dataset, const Case& c, const CheckOptions& options) {
  std::vector<std::string> problems;
  const std::string who = "case " + c.id + ": ";
  if (c.images.empty()) {
    problems.push_back(who + "no image files");
    return problems;
  }

  // Geometry from the headers: cheap, and it must hold before voxels are worth reading.
  std::vector<Header> images;
  for (const std::string& path : c.images) {
    try {
      images.push_back(header_of(path));
    } catch (const Error& e) {
      problems.push_back(who + e.what());
    }
  }
  if (images.size() != c.images.size()) return problems;

  const Header& ref = images[0];
  std::int64_t channels = 0;
  for (const Header& h : images)
    if (__builtin_add_overflow(channels, h.layout.volumes, &channels))
      channels = std::numeric_limits<std::int64_t>::max();
  if (channels != dataset.num_channels()) {
    std::string files;
    for (const Header& h : images) files += (files.empty() ? "" : ", ") + h.path + " dims " + dims_str(h.dims);
    problems.push_back(who + "the image files hold " + std::to_string(channels) +
                       " channel(s) but dataset.json declares " + std::to_string(dataset.num_channels()) + " (" +
                       channel_names(dataset) + "): " + files +
                       (c.channels_in_one_file ? " (a multi-channel file must be 4-D: (X, Y, Z, C))" : ""));
  }
  for (std::size_t i = 1; i < images.size(); ++i) {
    const Header& h = images[i];
    if (h.layout.spatial != ref.layout.spatial) {
      problems.push_back(who + "channel file " + h.path + " has dims " + dims_str(h.layout.spatial) + " but " +
                         ref.path + " has " + dims_str(ref.layout.spatial));
    } else if (!affines_close(h.affine, ref.affine, options.affine_tolerance)) {
      std::ostringstream os;
      os << who << "channel file " << h.path << " has affine " << affine_str(h.affine) << " but " << ref.path << " has "
         << affine_str(ref.affine) << " (largest difference " << affine_difference(h.affine, ref.affine)
         << ", tolerance " << options.affine_tolerance * affine_scale(h.affine, ref.affine) << ")";
      problems.push_back(os.str());
    }
  }
  if (problems.empty()) {  // the channels agree: the voxels are worth reading
    try {
      check_image_fits(c, channels, images);
      if (options.check_image_values)
        for (std::string& p : image_value_problems(images)) problems.push_back(who + p);
    } catch (const InputError& e) {
      problems.push_back(e.what());  // names the case already
    }
  }
  if (c.label.empty()) return problems;

  Header label;
  try {
    label = header_of(c.label);
  } catch (const Error& e) {
    problems.push_back(who + e.what());
    return problems;
  }
  bool geometry_ok = true;
  if (label.layout.volumes != 1) {
    problems.push_back(who + "label " + label.path + " has dims " + dims_str(label.dims) +
                       "; a label must be one 3-D volume");
    geometry_ok = false;
  }
  if (label.layout.spatial != ref.layout.spatial) {
    problems.push_back(who + "label " + label.path + " has dims " + dims_str(label.layout.spatial) + " but its image " +
                       ref.path + " has " + dims_str(ref.layout.spatial));
    geometry_ok = false;
  } else if (!affines_close(label.affine, ref.affine, options.affine_tolerance)) {
    std::ostringstream os;
    os << who << "label " << label.path << " has affine " << affine_str(label.affine) << " but its image " << ref.path
       << " has " << affine_str(ref.affine) << " (largest difference " << affine_difference(label.affine, ref.affine)
       << ", tolerance " << options.affine_tolerance * affine_scale(label.affine, ref.affine) << ")";
    problems.push_back(os.str());
  }
  if (!geometry_ok || !options.check_label_values) return problems;

  try {
    check_label_fits(c, label);
  } catch (const InputError& e) {
    problems.push_back(e.what());
    return problems;
  }
  try {
    const Tensor values = read_nifti(c.label).to_labels();
    const std::vector<int> allowed = dataset.label_values();
    const std::map<std::int32_t, std::int64_t> extra = unexpected_values(values, allowed);
    if (!extra.empty()) {
      std::ostringstream os;
      os << who << "label " << c.label << " holds values that dataset.json's \"labels\" does not declare: ";
      bool first = true;
      for (const auto& [value, count] : extra) {
        os << (first ? "" : ", ") << value << " (" << count << (count == 1 ? " voxel)" : " voxels)");
        first = false;
      }
      os << "; declared: ";
      for (std::size_t i = 0; i < allowed.size(); ++i) os << (i ? ", " : "") << allowed[i];
      problems.push_back(os.str());
    }
  } catch (const Error& e) {
    problems.push_back(who + "label " + c.label + ": " + e.what());
  }
  return problems;
}

std::vector<std::string> find_dataset_problems(const Dataset& dataset, const CheckOptions& options) {
  std::vector<std::string> problems;
  const std::int64_t total = static_cast<std::int64_t>(dataset.training.size() + dataset.test.size());
  std::optional<logging::ProgressBar> bar;
  if (options.progress) bar.emplace("check", total, "case", options.sink ? *options.sink : logging::sink());
  std::int64_t done = 0;
  for (const std::vector<Case>* cases : {&dataset.training, &dataset.test}) {
    for (const Case& c : *cases) {
      for (std::string& p : find_case_problems(dataset, c, options)) problems.push_back(std::move(p));
      if (bar) bar->update(++done, std::to_string(problems.size()) + " problem(s)");
    }
  }
  if (bar) bar->finish(std::to_string(problems.size()) + " problem(s)");
  return problems;
}

void check_case(const Dataset& dataset, const Case& c, const CheckOptions& options) {
  const std::vector<std::string> problems = find_case_problems(dataset, c, options);
  if (!problems.empty()) dataset_detail::throw_problems("dataset " + dataset.root + ", case " + c.id, problems);
}

void check_dataset(const Dataset& dataset, const CheckOptions& options) {
  const std::vector<std::string> problems = find_dataset_problems(dataset, options);
  if (!problems.empty()) dataset_detail::throw_problems("dataset " + dataset.root, problems);
}

}  // namespace voxgrad::io
