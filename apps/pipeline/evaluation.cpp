// Evaluation as `voxgrad eval` runs it: references paired with predictions by file name, their grids
// compared from the headers (flipped or permuted axes reoriented), then every case scored per class
// and drawn. Messages name eval's flags (--pred, --ref, --images).
#include "apps/pipeline/evaluation.h"

#include <algorithm>
#include <filesystem>
#include <set>

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

}  // namespace

std::vector<EvalCase> pair_eval_cases(const EvalInputs& opt, logging::Sink& sink) {
  const std::vector<std::string> ref_files = nifti_files(opt.ref, "--ref");
  const std::vector<std::string> pred_files = nifti_files(opt.pred, "--pred");
  if (!opt.images.empty()) (void)nifti_files(opt.images, "--images");
  VG_INPUT_CHECK(!ref_files.empty(), "--ref '" << opt.ref << "' holds no .nii.gz or .nii files");

  const std::set<std::string> preds(pred_files.begin(), pred_files.end());
  const std::set<std::string> refs(ref_files.begin(), ref_files.end());
  std::vector<std::string> missing, extra;
  for (const std::string& f : ref_files)
    if (!preds.count(f)) missing.push_back(case_name(f));
  for (const std::string& f : pred_files)
    if (!refs.count(f)) extra.push_back(f);
  VG_INPUT_CHECK(missing.empty(), "no prediction in '" << opt.pred << "' for case" << (missing.size() > 1 ? "s " : " ")
                                                       << join(missing, 10));
  if (!extra.empty())
    sink.warning(std::to_string(extra.size()) +
                 " file(s) in --pred have no reference and are ignored: " + join(extra, 5));

  std::vector<EvalCase> cases;
  for (const std::string& f : ref_files) {
    EvalCase c;
    c.name = case_name(f);
    c.ref_path = (fs::path(opt.ref) / f).string();
    c.pred_path = (fs::path(opt.pred) / f).string();
    files::require_regular_file(c.ref_path);
    files::require_regular_file(c.pred_path);
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
  return cases;
}

void match_eval_grids(std::vector<EvalCase>& cases, bool ignore_geometry, logging::Sink& sink) {
  std::vector<std::string> problems;
  std::string first;
  for (EvalCase& c : cases) {
    const io::NiftiHeader rh = io::read_nifti_header(c.ref_path);
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

std::vector<CaseScores> score_eval_cases(const std::vector<EvalCase>& cases, EvalOutputs& outputs,
                                         logging::Sink& sink) {
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
