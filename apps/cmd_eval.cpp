// `voxgrad eval --pred DIR --ref DIR --out summary.json`: scores label volumes against references,
// per case and class (Dice, Jaccard, TP/FP/FN), in the shape of nnU-Net's summary.json, with a CSV
// beside it and one PNG per case (middle axial slice, contours). Reads files only: never touches CUDA.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "apps/cli.h"
#include "apps/cli_checks.h"
#include "engine/error.h"
#include "engine/json.h"
#include "engine/log.h"
#include "io/gzip_stream.h"
#include "io/nifti.h"
#include "io/png.h"

namespace voxgrad::apps {

namespace {

namespace fs = std::filesystem;

struct EvalOptions {
  std::string pred, ref, out, images;
  std::vector<int> labels;
};

// Voxel counts of one label value in one case; FP = n_pred - TP and FN = n_ref - TP.
struct Counts {
  std::int64_t tp = 0, n_ref = 0, n_pred = 0;
};

struct CaseResult {
  std::string name, ref_path, pred_path;
  std::int64_t voxels = 0;
  std::map<std::int32_t, Counts> counts;  // every value present in the reference or the prediction
};

// Affine entries may differ by this much (mm) before a warning: float32 header round trips.
constexpr double kAffineAtol = 1e-3;
constexpr double kAffineRtol = 1e-4;

const double kNaN = std::numeric_limits<double>::quiet_NaN();

// The case name of a NIfTI file name, or "" when the name is no NIfTI file.
std::string case_name(const std::string& file) {
  for (const std::string ext : {".nii.gz", ".nii"})
    if (file.size() > ext.size() && file.compare(file.size() - ext.size(), ext.size(), ext) == 0)
      return file.substr(0, file.size() - ext.size());
  return "";
}

// File names of the NIfTI images in a folder, sorted (the cases' order in every output).
std::vector<std::string> nifti_files(const std::string& dir, const char* flag) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error(std::string(flag) + " '" + dir + "' is not a folder");
  std::vector<std::string> files;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() && !case_name(name).empty()) files.push_back(name);
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::string join(const std::vector<std::string>& parts, std::size_t at_most) {
  std::string s;
  for (std::size_t i = 0; i < parts.size() && i < at_most; ++i) s += (i ? ", " : "") + parts[i];
  if (parts.size() > at_most) s += ", ... (" + std::to_string(parts.size()) + " in all)";
  return s;
}

std::string dims_text(const std::vector<std::int64_t>& d) {
  std::string s;
  for (std::size_t i = 0; i < d.size(); ++i) s += (i ? "x" : "") + std::to_string(d[i]);
  return s;
}

double affine_difference(const io::Affine& a, const io::Affine& b) {
  double worst = 0;  // the largest excess over the tolerance, 0 when within it
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 4; ++c) {
      const double d = std::abs(a[r][c] - b[r][c]);
      if (d > kAffineAtol + kAffineRtol * std::abs(b[r][c])) worst = std::max(worst, d);
    }
  return worst;
}

// One pass over the voxels: per value, |ref|, |pred| and the voxels where both hold it. Labels are
// small non-negative numbers in practice, so those go to a flat table and the rest to a map.
std::map<std::int32_t, Counts> count_labels(const std::int32_t* ref, const std::int32_t* pred, std::int64_t n) {
  constexpr std::int32_t kFlat = 4096;
  std::vector<Counts> flat(kFlat);
  std::unordered_map<std::int32_t, Counts> other;
  auto at = [&](std::int32_t v) -> Counts& { return v >= 0 && v < kFlat ? flat[v] : other[v]; };
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int32_t r = ref[i], p = pred[i];
    at(r).n_ref += 1;
    Counts& cp = at(p);
    cp.n_pred += 1;
    cp.tp += r == p;
  }
  std::map<std::int32_t, Counts> out(other.begin(), other.end());
  for (std::int32_t v = 0; v < kFlat; ++v)
    if (flat[v].n_ref > 0 || flat[v].n_pred > 0) out[v] = flat[v];
  return out;
}

double dice_of(const Counts& c) {
  const std::int64_t denom = c.n_ref + c.n_pred;
  return denom == 0 ? kNaN : 2.0 * static_cast<double>(c.tp) / static_cast<double>(denom);
}
double jaccard_of(const Counts& c) {
  const std::int64_t uni = c.n_ref + c.n_pred - c.tp;
  return uni == 0 ? kNaN : static_cast<double>(c.tp) / static_cast<double>(uni);
}

Json number_or_null(double v) { return std::isfinite(v) ? Json(v) : Json(nullptr); }

// ---- pictures ---------------------------------------------------------------------------------

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
void write_case_png(const std::string& path, const io::Volume& ref_volume, const Tensor& ref, const Tensor& pred,
                    const std::string& image_path) {
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
      logging::warning(image_path + ": dims " + dims_text(header.dims()) + " differ from the reference's " +
                       dims_text(dims) + "; the picture shows the reference labels instead");
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

// ---- the command --------------------------------------------------------------------------------

void write_text_atomically(const std::string& path, const std::string& text) {
  io::AtomicOutputStream out(path, 0);
  out.write(text.data(), text.size());
  out.commit();
}

std::string csv_number(double v) {
  if (!std::isfinite(v)) return "nan";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

int run_eval(const EvalOptions& opt) {
  const std::vector<std::string> ref_files = nifti_files(opt.ref, "--ref");
  const std::vector<std::string> pred_files = nifti_files(opt.pred, "--pred");
  if (ref_files.empty()) throw Error("--ref '" + opt.ref + "' holds no .nii.gz or .nii files");
  if (!opt.images.empty()) (void)nifti_files(opt.images, "--images");

  // Matching by file name, checked before any voxel is read so a bad pairing fails at once.
  const std::set<std::string> preds(pred_files.begin(), pred_files.end());
  const std::set<std::string> refs(ref_files.begin(), ref_files.end());
  std::vector<std::string> missing, extra;
  for (const std::string& f : ref_files)
    if (!preds.count(f)) missing.push_back(case_name(f));
  for (const std::string& f : pred_files)
    if (!refs.count(f)) extra.push_back(f);
  if (!missing.empty())
    throw Error("no prediction in '" + opt.pred + "' for case" + (missing.size() > 1 ? "s " : " ") +
                join(missing, 10));
  if (!extra.empty())
    logging::warning(std::to_string(extra.size()) + " file(s) in --pred have no reference and are ignored: " +
                     join(extra, 5));
  for (const std::string& f : ref_files) {
    const io::NiftiHeader rh = io::read_nifti_header((fs::path(opt.ref) / f).string());
    const io::NiftiHeader ph = io::read_nifti_header((fs::path(opt.pred) / f).string());
    if (rh.dims() != ph.dims())
      throw Error("case " + case_name(f) + ": prediction dims " + dims_text(ph.dims()) + " differ from reference dims " +
                  dims_text(rh.dims()));
  }

  const fs::path out_path(opt.out);
  const fs::path out_dir = out_path.has_parent_path() ? out_path.parent_path() : fs::path(".");
  fs::create_directories(out_dir);
  const fs::path png_dir = out_dir / "png";
  fs::create_directories(png_dir);

  std::vector<CaseResult> cases;
  logging::ProgressBar bar("eval", static_cast<std::int64_t>(ref_files.size()), "case");
  bar.update(0);  // plain logs get a start line (the first update is always drawn) and finish()'s end line
  for (const std::string& f : ref_files) {
    CaseResult cr;
    cr.name = case_name(f);
    cr.ref_path = (fs::path(opt.ref) / f).string();
    cr.pred_path = (fs::path(opt.pred) / f).string();
    const io::Volume rv = io::read_nifti(cr.ref_path);
    const io::Volume pv = io::read_nifti(cr.pred_path);
    const double off = affine_difference(pv.affine, rv.affine);
    if (off > 0)
      logging::warning("case " + cr.name + ": the prediction's affine differs from the reference's by up to " +
                       std::to_string(off) + " mm");
    // to_labels names the voxel but not the file: say which one held the non-integer value.
    auto labels_of = [&](const io::Volume& v, const std::string& path) {
      try {
        return v.to_labels();
      } catch (const std::exception& e) {
        throw Error(path + ": " + e.what());
      }
    };
    const Tensor rl = labels_of(rv, cr.ref_path);
    const Tensor pl = labels_of(pv, cr.pred_path);
    cr.voxels = rl.numel();
    cr.counts = count_labels(rl.data<std::int32_t>(), pl.data<std::int32_t>(), rl.numel());

    if (rv.ndim() == 3) {
      std::string image;
      if (!opt.images.empty()) {
        image = (fs::path(opt.images) / (cr.name + "_0000.nii.gz")).string();
        std::error_code ec;
        if (!fs::exists(image, ec)) {
          logging::warning("case " + cr.name + ": no image " + image + "; the picture shows the reference labels");
          image.clear();
        }
      }
      write_case_png((png_dir / (cr.name + ".png")).string(), rv, rl, pl, image);
    } else {
      logging::warning("case " + cr.name + ": " + std::to_string(rv.ndim()) + "-D volume, no picture");
    }
    cases.push_back(std::move(cr));
    bar.update(static_cast<std::int64_t>(cases.size()));
  }
  bar.finish();

  // Classes: as asked, else every positive value some reference holds.
  std::set<std::int32_t> class_set(opt.labels.begin(), opt.labels.end());
  if (opt.labels.empty())
    for (const CaseResult& cr : cases)
      for (const auto& [v, c] : cr.counts)
        if (v > 0 && c.n_ref > 0) class_set.insert(v);
  const std::vector<std::int32_t> classes(class_set.begin(), class_set.end());

  Json per_case = Json::array();
  std::string csv = "case,class,dice,jaccard,tp,fp,fn\n";
  std::map<std::int32_t, std::vector<double>> dices, jaccards;
  std::map<std::int32_t, std::map<std::string, double>> count_sums;
  std::map<std::int32_t, std::int64_t> class_left_out;
  std::int64_t left_out = 0;
  for (const CaseResult& cr : cases) {
    Json metrics = Json::object();
    for (std::int32_t k : classes) {
      const auto it = cr.counts.find(k);
      const Counts c = it == cr.counts.end() ? Counts{} : it->second;
      const std::int64_t fp = c.n_pred - c.tp, fn = c.n_ref - c.tp;
      const std::int64_t tn = cr.voxels - c.tp - fp - fn;
      const double d = dice_of(c), j = jaccard_of(c);
      // IoU is nnU-Net's name; Jaccard the paper's. Both carry the same number.
      metrics[std::to_string(k)] = {{"Dice", number_or_null(d)}, {"IoU", number_or_null(j)},
                                    {"Jaccard", number_or_null(j)}, {"TP", c.tp},
                                    {"FP", fp}, {"FN", fn}, {"TN", tn}, {"n_ref", c.n_ref}, {"n_pred", c.n_pred}};
      csv += cr.name + "," + std::to_string(k) + "," + csv_number(d) + "," + csv_number(j) + "," +
             std::to_string(c.tp) + "," + std::to_string(fp) + "," + std::to_string(fn) + "\n";
      if (std::isnan(d)) {
        ++class_left_out[k];
        if (k > 0) ++left_out;
      } else {
        dices[k].push_back(d);
        jaccards[k].push_back(j);
      }
      auto& sums = count_sums[k];
      sums["TP"] += static_cast<double>(c.tp);
      sums["FP"] += static_cast<double>(fp);
      sums["FN"] += static_cast<double>(fn);
      sums["TN"] += static_cast<double>(tn);
      sums["n_ref"] += static_cast<double>(c.n_ref);
      sums["n_pred"] += static_cast<double>(c.n_pred);
    }
    per_case.push_back({{"reference_file", cr.ref_path}, {"prediction_file", cr.pred_path}, {"metrics", metrics}});
  }

  auto mean_of = [](const std::vector<double>& v) {
    if (v.empty()) return kNaN;
    double s = 0;
    for (double x : v) s += x;
    return s / static_cast<double>(v.size());
  };
  Json mean = Json::object();
  std::vector<double> fg_dice, fg_jaccard;
  for (std::int32_t k : classes) {
    const double d = mean_of(dices[k]), j = mean_of(jaccards[k]);
    Json m = {{"Dice", number_or_null(d)}, {"IoU", number_or_null(j)}, {"Jaccard", number_or_null(j)},
              {"cases_left_out", class_left_out[k]}};
    // Counts are averaged over every case, as nnU-Net does (a count is defined even where Dice is not).
    for (const auto& [name, sum] : count_sums[k]) m[name] = sum / static_cast<double>(cases.size());
    mean[std::to_string(k)] = m;
    if (k > 0 && !std::isnan(d)) {
      fg_dice.push_back(d);
      fg_jaccard.push_back(j);
    }
  }
  const double fg_d = mean_of(fg_dice), fg_j = mean_of(fg_jaccard);
  const Json foreground = {{"Dice", number_or_null(fg_d)}, {"IoU", number_or_null(fg_j)},
                           {"Jaccard", number_or_null(fg_j)}};

  std::int64_t foreground_classes = 0;
  for (std::int32_t k : classes) foreground_classes += k > 0;
  const Json summary = {{"metric_per_case", per_case},
                        {"mean", mean},
                        {"foreground_mean", foreground},
                        {"classes", classes},
                        {"cases", cases.size()},
                        // (case, foreground class) pairs where the class is absent from both volumes:
                        // NaN (null) and left out of every mean, nnU-Net's convention.
                        {"left_out", left_out},
                        {"left_out_of", static_cast<std::int64_t>(cases.size()) * foreground_classes}};
  const std::string csv_path = (out_dir / (out_path.stem().string() + ".csv")).string();
  write_text_atomically(opt.out, summary.dump(2) + "\n");
  write_text_atomically(csv_path, csv);
  if (left_out > 0)
    logging::info(std::to_string(left_out) + " (case, class) pair(s) had the class in neither volume: null, left out of the means");

  write_json_line(std::cout, {{"foreground_mean", foreground},
                              {"cases", cases.size()},
                              {"classes", classes},
                              {"left_out", left_out},
                              {"summary", opt.out},
                              {"csv", csv_path},
                              {"png_dir", png_dir.string()}});
  return kExitOk;
}

}  // namespace

Command eval_command() {
  return {"eval",
          "Score predicted label volumes against references: Dice and Jaccard per case and class (nnU-Net's "
          "summary.json), a CSV and a PNG per case",
          [](CLI::App& sub) -> RunFn {
            auto opt = std::make_shared<EvalOptions>();
            sub.add_option("--pred", opt->pred, "Folder of predicted label volumes (<case>.nii.gz)")
                ->type_name("DIR")
                ->required();
            sub.add_option("--ref", opt->ref, "Folder of reference label volumes, matched to --pred by file name")
                ->type_name("DIR")
                ->required();
            sub.add_option("--out", opt->out,
                           "summary.json to write; <stem>.csv and png/<case>.png go beside it")
                ->type_name("FILE")
                ->required();
            sub.add_option("--labels", opt->labels,
                           "Classes to score, e.g. 1,2 (default: every value > 0 found in the references)")
                ->delimiter(',')
                ->check(number_above_zero(false))
                ->type_name("L,...");
            sub.add_option("--images", opt->images,
                           "Folder of images (<case>_0000.nii.gz, nnU-Net v2 naming) shown behind the contours")
                ->type_name("DIR");
            // --device is accepted like everywhere and ignored: counting voxels needs no device.
            return [opt](const GlobalOptions&) { return run_eval(*opt); };
          }};
}

}  // namespace voxgrad::apps
