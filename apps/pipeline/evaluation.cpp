// Evaluation as `voxgrad eval` runs it: references paired with predictions (and probabilities) by
// file name, their grids compared from the headers (flipped or permuted axes reoriented), then every
// case scored per class and drawn. Messages name eval's flags (--pred, --ref, --images, --probabilities).
#include "apps/pipeline/evaluation.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <set>
#include <utility>

#include "apps/pipeline/connected_components.h"
#include "apps/pipeline/eval_calibration.h"
#include "apps/pipeline/eval_picture.h"
#include "engine/error.h"
#include "engine/files.h"
#include "io/nifti.h"

namespace voxgrad::pipeline {

namespace {

namespace fs = std::filesystem;

// The case name of a NIfTI file name, or "" when the name is no NIfTI file.
std::string case_name(const std::string& file) {
  for (const std::string ext : {".nii.gz", ".nii"})
    if (file.size() > ext.size() && file.compare(file.size() - ext.size(), ext.size(), ext) == 0)
      return file.substr(0, file.size() - ext.size());
  return "";
}

// File names of the NIfTI images in the folder a flag names, sorted (the cases' order in every
// output). Entries of other types keep their names here and are refused when a case reads them.
std::vector<std::string> nifti_files(const std::string& dir, const char* flag) {
  VG_USAGE_CHECK(!dir.empty(), flag << " is empty; give a folder of .nii.gz files");
  std::error_code ec;
  const fs::file_status status = fs::status(dir, ec);
  VG_USAGE_CHECK(fs::exists(status), flag << " '" << dir << "' does not exist");
  VG_USAGE_CHECK(fs::is_directory(status), flag << " '" << dir << "' is not a folder");
  std::vector<std::string> files;
  fs::directory_iterator it(dir, ec);
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!case_name(name).empty()) files.push_back(name);
  }
  VG_USAGE_CHECK(!ec, flag << " '" << dir << "': cannot list the folder (" << ec.message() << ")");
  std::sort(files.begin(), files.end());
  return files;
}

std::string join(const std::vector<std::string>& parts, std::size_t at_most) {
  std::string s;
  for (std::size_t i = 0; i < parts.size() && i < at_most; ++i) s += (i ? ", " : "") + parts[i];
  if (parts.size() > at_most) s += ", ... (" + std::to_string(parts.size()) + " in all)";
  return s;
}

std::string probabilities_file_name(const std::string& case_name) { return case_name + "_probabilities.nii.gz"; }

// The first three dims (the spatial ones) of a grid, for comparing probabilities with a reference.
std::vector<std::int64_t> spatial_part(const std::vector<std::int64_t>& dims) {
  return {dims.begin(), dims.begin() + static_cast<std::ptrdiff_t>(std::min<std::size_t>(3, dims.size()))};
}

// A probabilities file against its case's reference, from the headers: the reference's grid (up to
// flipped or permuted axes) and the classes on a 4th axis, as many as the first file held.
void match_probabilities_grid(EvalCase& c, const io::NiftiHeader& rh, std::int64_t& classes, std::string& first_file) {
  const io::NiftiHeader h = io::read_nifti_header(c.probabilities_path);
  const std::vector<std::int64_t> dims = h.dims(), ref_dims = rh.dims();
  const std::string ref_spatial = io::dims_text(spatial_part(ref_dims));
  for (std::size_t a = 3; a < ref_dims.size(); ++a)
    VG_INPUT_CHECK(ref_dims[a] == 1, "case " << c.name << ": --probabilities needs 3-D references; '" << c.ref_path
                                             << "' has dims " << io::dims_text(ref_dims));
  VG_INPUT_CHECK(dims.size() == 4 && dims[3] >= 2,
                 "case " << c.name << ": the probabilities file '" << c.probabilities_path << "' has dims "
                         << io::dims_text(dims) << "; expected " << ref_spatial
                         << "xK (the reference's grid, K >= 2 classes on the 4th axis)");
  const io::Grid stored{spatial_part(dims), h.affine}, target{spatial_part(ref_dims), rh.affine};
  const auto map = io::match_grid(stored, target);
  VG_INPUT_CHECK(map.has_value(), "case " << c.name << ": the probabilities file '" << c.probabilities_path
                                          << "' has dims " << io::dims_text(dims)
                                          << " on a grid other than the reference's: "
                                          << io::grid_difference(stored, target) << " (probabilities vs reference)");
  if (!map->identity()) c.probabilities_reorient = *map;
  if (classes == 0) {
    classes = dims[3];
    first_file = c.probabilities_path;
  }
  VG_INPUT_CHECK(dims[3] == classes, "case " << c.name << ": the probabilities file '" << c.probabilities_path
                                             << "' has dims " << io::dims_text(dims) << ", " << dims[3] << " classes; '"
                                             << first_file << "' has " << classes
                                             << ": every case needs the same classes on the 4th axis");
  c.probability_classes = classes;
}

// The (Z, Y, X) of one volume and how many such volumes a label tensor holds (axes beyond the
// third are stacked volumes).
std::pair<std::array<std::int64_t, 3>, std::int64_t> volume_shape(const Shape& shape) {
  std::array<std::int64_t, 3> zyx{1, 1, 1};
  const int rank = static_cast<int>(shape.size());
  for (int a = 0; a < 3 && a < rank; ++a) zyx[2 - a] = shape[rank - 1 - a];
  std::int64_t volumes = 1;
  for (int a = 0; a + 3 < rank; ++a) volumes *= shape[a];
  return {zyx, volumes};
}

// The probabilities of one case as (K, Z, Y, X) float32 on the reference grid, every value finite.
Tensor read_probabilities(const EvalCase& c, const std::array<std::int64_t, 3>& zyx) {
  const io::Volume v = io::read_nifti(c.probabilities_path);
  Tensor p = v.to_float32();
  const float* data = p.data<float>();
  const std::vector<std::int64_t> dims = v.dims();  // (x, y, z, K): checked from the header
  for (std::int64_t i = 0; i < p.numel(); ++i)
    if (!std::isfinite(data[i]))
      VG_INPUT_FAIL("case " << c.name << ": the probabilities file '" << c.probabilities_path << "' holds " << data[i]
                            << " at voxel (" << i % dims[0] << ", " << i / dims[0] % dims[1] << ", "
                            << i / (dims[0] * dims[1]) % dims[2] << ", " << i / (dims[0] * dims[1] * dims[2])
                            << "), not a probability");
  if (c.probabilities_reorient)
    p = io::reorient(p, dims, *c.probabilities_reorient, {c.probability_classes, zyx[0], zyx[1], zyx[2]});
  return p;
}

}  // namespace

std::vector<EvalCase> pair_eval_cases(const EvalInputs& opt, logging::Sink& sink) {
  const std::vector<std::string> ref_files = nifti_files(opt.ref, "--ref");
  const std::vector<std::string> pred_files = nifti_files(opt.pred, "--pred");
  if (!opt.images.empty()) (void)nifti_files(opt.images, "--images");
  if (!opt.probabilities.empty()) (void)nifti_files(opt.probabilities, "--probabilities");
  VG_INPUT_CHECK(!ref_files.empty(), "--ref '" << opt.ref << "' holds no .nii.gz or .nii files");

  const std::set<std::string> preds(pred_files.begin(), pred_files.end());
  const std::set<std::string> refs(ref_files.begin(), ref_files.end());
  std::vector<std::string> missing, extra;
  for (const std::string& f : ref_files)
    if (!preds.count(f)) missing.push_back(case_name(f));
  // The probabilities `voxgrad predict --save-probabilities` writes beside the labels are no extras.
  std::set<std::string> companions;
  for (const std::string& f : ref_files) companions.insert(probabilities_file_name(case_name(f)));
  for (const std::string& f : pred_files)
    if (!refs.count(f) && !companions.count(f)) extra.push_back(f);
  VG_INPUT_CHECK(missing.empty(), "no prediction in '" << opt.pred << "' for case" << (missing.size() > 1 ? "s " : " ")
                                                       << join(missing, 10));
  if (!extra.empty())
    sink.warning(std::to_string(extra.size()) +
                 " file(s) in --pred have no reference and are ignored: " + join(extra, 5));

  std::vector<EvalCase> cases;
  std::vector<std::string> missing_probabilities;
  for (const std::string& f : ref_files) {
    EvalCase c;
    c.name = case_name(f);
    c.ref_path = (fs::path(opt.ref) / f).string();
    c.pred_path = (fs::path(opt.pred) / f).string();
    files::require_regular_file(c.ref_path);
    files::require_regular_file(c.pred_path);
    if (!opt.probabilities.empty()) {
      c.probabilities_path = (fs::path(opt.probabilities) / probabilities_file_name(c.name)).string();
      if (files::identity_of(c.probabilities_path))
        files::require_regular_file(c.probabilities_path);
      else
        missing_probabilities.push_back(c.probabilities_path);
    }
    if (!opt.images.empty()) {
      const std::string image = (fs::path(opt.images) / (c.name + "_0000.nii.gz")).string();
      if (files::identity_of(image)) {
        files::require_regular_file(image);
        c.image_path = image;
      } else {
        sink.warning("case " + c.name + ": no image " + image + "; the picture shows the reference labels");
      }
    }
    cases.push_back(std::move(c));
  }
  VG_INPUT_CHECK(missing_probabilities.empty(),
                 "no probabilities file '"
                     << missing_probabilities.front() << "'"
                     << (missing_probabilities.size() > 1
                             ? " (nor " + std::to_string(missing_probabilities.size() - 1) + " more)"
                             : std::string())
                     << " for --probabilities; voxgrad predict --save-probabilities writes "
                        "<case>_probabilities.nii.gz");
  return cases;
}

void match_eval_grids(std::vector<EvalCase>& cases, bool ignore_geometry, logging::Sink& sink,
                      const std::vector<int>& labels) {
  std::vector<std::string> problems;
  std::string first;
  std::int64_t probability_classes = 0;
  std::string first_probabilities;
  for (EvalCase& c : cases) {
    const io::NiftiHeader rh = io::read_nifti_header(c.ref_path);
    if (!c.probabilities_path.empty()) {
      match_probabilities_grid(c, rh, probability_classes, first_probabilities);
      for (const int k : labels)
        VG_INPUT_CHECK(k < probability_classes, "--labels " << k << ": the probabilities file '" << c.probabilities_path
                                                            << "' holds classes 0.." << probability_classes - 1
                                                            << " on its 4th axis");
    }
    const io::NiftiHeader ph = io::read_nifti_header(c.pred_path);
    const io::Grid ref{rh.dims(), rh.affine}, pred{ph.dims(), ph.affine};
    if (const auto map = io::match_grid(pred, ref)) {
      if (!map->identity()) {
        c.reorient = *map;
        sink.info("case " + c.name + ": the prediction's voxel axes are the reference's flipped or permuted " +
                  "(reference (x, y, z) = prediction " + map->describe() +
                  "); reoriented onto the reference grid before scoring");
      }
      continue;
    }
    const std::string difference = io::grid_difference(pred, ref);
    if (ignore_geometry && ph.dims() == rh.dims()) {
      sink.warning("case " + c.name + ": the prediction's grid differs from the reference's: " + difference +
                   " (prediction vs reference); scored voxel by voxel as stored (--ignore-geometry)");
      continue;
    }
    if (problems.empty())
      first = "case " + c.name + ": the prediction's grid differs from the reference's by more than flipped or " +
              "permuted axes: " + difference + " (prediction vs reference)" +
              (ph.dims() == rh.dims() ? "; --ignore-geometry scores it voxel by voxel as stored" : "");
    problems.push_back(c.name);
  }
  if (problems.size() == 1) VG_INPUT_FAIL(first);
  if (problems.size() > 1)
    VG_INPUT_FAIL(first << " (and " << problems.size() - 1
                        << " more: " << join(std::vector<std::string>(problems.begin() + 1, problems.end()), 5) << ")");
}

std::vector<CaseScores> score_eval_cases(const std::vector<EvalCase>& cases, EvalOutputs& outputs, logging::Sink& sink,
                                         const EvalExtras& extras) {
  std::vector<CaseScores> scores;
  logging::ProgressBar bar("eval", static_cast<std::int64_t>(cases.size()), "case", sink);
  bar.update(0);  // plain logs get a start line (the first update is always drawn) and finish()'s end line
  for (const EvalCase& c : cases) {
    CaseScores cs;
    cs.name = c.name;
    cs.ref_path = c.ref_path;
    cs.pred_path = c.pred_path;
    const io::Volume rv = io::read_nifti(c.ref_path);
    const io::Volume pv = io::read_nifti(c.pred_path);
    const Tensor rl = rv.to_labels();  // a non-integer voxel is an error naming the file and the voxel
    Tensor pl = pv.to_labels();
    // Reordered voxels, or the same voxels under another rank ((x, y, z, 1) against (x, y, z)).
    if (c.reorient || pl.shape() != rl.shape())
      pl = io::reorient(pl, pv.dims(), c.reorient.value_or(io::AxisMap{}), rl.shape());
    cs.voxels = rl.numel();
    cs.counts = count_labels(rl.data<std::int32_t>(), pl.data<std::int32_t>(), rl.numel());
    const auto [zyx, volumes] = volume_shape(rl.shape());
    cs.shape = zyx;
    for (std::size_t a = 0; a < 3 && a < rv.spacing.size(); ++a) cs.voxel_mm3 *= rv.spacing[a];
    if (extras.components)
      cs.components = reference_components(rl.data<std::int32_t>(), pl.data<std::int32_t>(), zyx,
                                           Connectivity::kFacesEdgesCorners, volumes);
    if (!c.probabilities_path.empty()) {
      const std::int32_t highest = cs.counts.empty() ? 0 : cs.counts.rbegin()->first;
      VG_INPUT_CHECK(highest < c.probability_classes, "case " << c.name << ": the labels hold class " << highest
                                                              << " but the probabilities file '" << c.probabilities_path
                                                              << "' holds classes 0.." << c.probability_classes - 1
                                                              << " on its 4th axis");
      const Tensor p = read_probabilities(c, zyx);
      std::int64_t clamped = 0;
      cs.calibration = calibrate(p.data<float>(), rl.data<std::int32_t>(), rl.numel(),
                                 static_cast<int>(c.probability_classes), &clamped);
      if (clamped > 0)
        sink.warning("case " + c.name + ": " + std::to_string(clamped) + " value(s) in '" + c.probabilities_path +
                     "' lie outside [0, 1]; binned as the nearest end");
    }
    if (rv.ndim() == 3)
      write_case_picture(outputs.stage_picture(c.name), rv, rl, pl, c.image_path, sink);
    else
      sink.warning("case " + c.name + ": " + std::to_string(rv.ndim()) + "-D volume, no picture");
    scores.push_back(std::move(cs));
    bar.update(static_cast<std::int64_t>(scores.size()));
  }
  bar.finish();
  return scores;
}

}  // namespace voxgrad::pipeline
