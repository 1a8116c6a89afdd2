// `voxgrad info FILE...`: one JSON line per image on stdout with its header fields (spacing and
// affine in mm, and the unit the file declared) and the min, max, mean and NaN count of its scaled
// voxels. A file that cannot be read gives one "voxgrad: error: PATH: reason" line on stderr and
// status 1; the others still print. Needs no GPU, so it never touches CUDA.
#include <CLI/CLI.hpp>
#include <cmath>
#include <exception>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "apps/cli/cli.h"
#include "engine/json.h"
#include "engine/log.h"
#include "io/nifti.h"

namespace voxgrad::cli {

namespace {

struct InfoOptions {
  std::vector<std::string> files;
};

// JSON null for NaN and Inf: a slope of "Inf" is no number a script could use.
Json finite_or_null(double v) { return std::isfinite(v) ? Json(v) : Json(nullptr); }

Json info_json(const std::string& path) {
  // The voxels once, in their source type: raw_stats scales on the fly, so no float copy is made.
  const io::NiftiRaw raw = io::read_nifti_raw(path);
  const io::NiftiHeader& h = raw.header;
  const io::VoxelStats stats = io::raw_stats(raw);
  Json affine = Json::array();
  for (const auto& row : h.affine) affine.push_back(Json(row));
  return {{"path", path},
          {"format", io::nifti_format_name(h.format)},
          {"pair", h.pair},
          {"gzip", h.gzip},
          {"dims", h.dims()},
          {"datatype", io::nifti_datatype_name(h.datatype)},
          {"byte_order", io::byte_order_name(h.byte_order)},
          {"spacing", h.spacing()},
          {"units", io::spatial_units_name(h.xyzt_units)},
          {"affine", affine},
          {"scl_slope", finite_or_null(h.scl_slope)},
          {"scl_inter", finite_or_null(h.scl_inter)},
          {"min", finite_or_null(stats.min)},
          {"max", finite_or_null(stats.max)},
          {"mean", finite_or_null(stats.mean)},
          {"nan_count", stats.nan_count}};
}

std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

// The reader's messages already start with the path; anything else (bad_alloc, ...) gets it here.
std::string error_message(const std::string& path, const std::string& what) {
  const std::string msg = one_line(what);
  if (msg.rfind(path + ": ", 0) == 0) return msg;
  return path + ": " + msg;
}

int run_info(const InfoOptions& opt) {
  int status = kExitOk;
  for (const std::string& path : opt.files) {
    try {
      write_json_line(std::cout, info_json(path));
    } catch (const std::exception& e) {
      logging::error(error_message(path, e.what()));
      status = kExitFailure;
    }
  }
  return status;
}

}  // namespace

Command info_command() {
  return {"info",
          "Print each NIfTI/ANALYZE file's header and voxel statistics (one JSON line per file)",
          [](CLI::App& sub) -> RunFn {
            auto opt = std::make_shared<InfoOptions>();
            sub.add_option("FILE", opt->files,
                           ".nii, .nii.gz, .hdr/.img or .hdr.gz/.img.gz files (ANALYZE 7.5 prints format "
                           "\"analyze\")")
                ->type_name("")
                ->required();
            // --device is accepted like everywhere and ignored: reading a header needs no device.
            return [opt](const GlobalOptions&) { return run_info(*opt); };
          }};
}

}  // namespace voxgrad::cli
