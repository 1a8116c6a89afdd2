// Eval's output places: the checks on --out, the input-identity refusal, and staged pictures that
// appear only when the whole evaluation has succeeded.
#include "apps/pipeline/eval_outputs.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "engine/error.h"

namespace voxgrad::pipeline {

namespace {

namespace fs = std::filesystem;

std::string reason(int err) {
  switch (err) {
    case EACCES: return "permission denied";
    case EROFS: return "the file system is read-only";
    default: return std::strerror(err);
  }
}

}  // namespace

EvalOutputs::EvalOutputs(const std::string& out, bool components_table) : out_flag_(out) {
  VG_USAGE_CHECK(!out.empty(), "--out is empty; give the summary file to write, e.g. --out results/summary.json");
  const fs::path path(out);
  std::error_code ec;
  const std::string name = path.filename().string();
  VG_USAGE_CHECK(!name.empty() && name != "." && name != ".." && !fs::is_directory(path, ec),
                 "--out '" << out << "' is a folder; give the summary file to write, e.g. --out '"
                           << (path / "summary.json").string() << "'");
  const fs::file_status status = fs::status(path, ec);
  VG_USAGE_CHECK(!fs::exists(status) || fs::is_regular_file(status),
                 "--out '" << out << "' exists and is not a regular file");
  out_dir_ = path.has_parent_path() ? path.parent_path().string() : std::string(".");
  summary_ = out;
  csv_ = (fs::path(out_dir_) / (path.stem().string() + ".csv")).string();
  picture_dir_ = (fs::path(out_dir_) / "png").string();
  VG_USAGE_CHECK(!fs::is_directory(csv_, ec), "--out '" << out << "': its CSV '" << csv_ << "' is a folder");
  if (components_table) {
    components_csv_ = (fs::path(out_dir_) / (path.stem().string() + "_components.csv")).string();
    VG_USAGE_CHECK(!fs::is_directory(components_csv_, ec),
                   "--out '" << out << "': its components CSV '" << components_csv_ << "' is a folder");
  }

  // The nearest folder that exists must be one this process can write in (everything below it is
  // made by prepare()); found now, before any voxel is read.
  fs::path existing(out_dir_);
  while (!fs::exists(existing, ec))
    existing = existing.has_parent_path() && existing.parent_path() != existing ? existing.parent_path() : ".";
  VG_USAGE_CHECK(fs::is_directory(existing, ec),
                 "--out '" << out << "': '" << existing.string() << "' is not a folder");
  VG_USAGE_CHECK(::access(existing.c_str(), W_OK | X_OK) == 0,
                 "--out '" << out << "': cannot write in '" << existing.string() << "' (" << reason(errno) << ")");
  if (fs::exists(picture_dir_, ec)) {
    VG_USAGE_CHECK(fs::is_directory(picture_dir_, ec),
                   "--out '" << out << "': '" << picture_dir_ << "' exists and is not a folder; the pictures go there");
    VG_USAGE_CHECK(::access(picture_dir_.c_str(), W_OK | X_OK) == 0,
                   "--out '" << out << "': cannot write in '" << picture_dir_ << "' (" << reason(errno) << ")");
  }
}

EvalOutputs::~EvalOutputs() {
  if (committed_) return;
  std::error_code ec;
  for (const auto& [temporary, target] : staged_) fs::remove(temporary, ec);
  // Only folders this run made, and only when nothing else is in them.
  for (auto it = created_folders_.rbegin(); it != created_folders_.rend(); ++it) fs::remove(*it, ec);
}

std::string EvalOutputs::picture_path(const std::string& case_name) const {
  return (fs::path(picture_dir_) / (case_name + ".png")).string();
}

void EvalOutputs::refuse_inputs(const files::InputFiles& inputs, const std::vector<std::string>& case_names) const {
  if (const auto input = inputs.overwritten_by(summary_))
    VG_INPUT_FAIL("--out '" << summary_ << "' is the input file '" << *input
                            << "'; eval never writes over its inputs: choose another --out");
  if (const auto input = inputs.overwritten_by(csv_))
    VG_INPUT_FAIL("the CSV '" << csv_ << "' that --out '" << summary_ << "' writes is the input file '" << *input
                              << "'; eval never writes over its inputs: choose another --out");
  if (!components_csv_.empty())
    if (const auto input = inputs.overwritten_by(components_csv_))
      VG_INPUT_FAIL("the components CSV '" << components_csv_ << "' that --out '" << summary_
                                           << "' writes is the input file '" << *input
                                           << "'; eval never writes over its inputs: choose another --out");
  for (const std::string& name : case_names) {
    const std::string picture = picture_path(name);
    if (const auto input = inputs.overwritten_by(picture))
      VG_INPUT_FAIL("the picture '" << picture << "' is the input file '" << *input
                                    << "'; eval never writes over its inputs: choose another --out");
    std::error_code ec;
    const fs::file_status status = fs::symlink_status(picture, ec);
    VG_INPUT_CHECK(!fs::exists(status) || fs::is_regular_file(status) || fs::is_symlink(status),
                   "the picture '" << picture << "' exists and is not a regular file");
  }
}

void EvalOutputs::prepare() {
  // Remember which folders are new, outermost first, so a failed run can take them away again.
  std::vector<std::string> missing;
  std::error_code ec;
  for (fs::path p(picture_dir_); !p.empty() && !fs::exists(p, ec); p = p.parent_path()) {
    missing.insert(missing.begin(), p.string());
    if (!p.has_parent_path() || p.parent_path() == p) break;
  }
  try {
    files::create_folder(picture_dir_, "--out");
  } catch (const InputError& e) {
    throw UsageError(e.what());  // a flag naming a place that cannot be made
  }
  created_folders_ = std::move(missing);
  files::remove_stale_temporaries(out_dir_);
  files::remove_stale_temporaries(picture_dir_);
}

std::string EvalOutputs::stage_picture(const std::string& case_name) {
  const std::string target = picture_path(case_name);
  staged_.emplace_back(files::temporary_path_for(target), target);
  return staged_.back().first;
}

void EvalOutputs::commit(const std::string& summary_text, const std::string& csv_text,
                         const std::string& components_csv_text) {
  for (const auto& [temporary, target] : staged_)
    if (std::rename(temporary.c_str(), target.c_str()) != 0) {
      const int err = errno;
      VG_INPUT_FAIL(target << ": cannot put the picture in place: " << reason(err));
    }
  files::write_file_atomically(csv_, csv_text);
  if (!components_csv_.empty()) files::write_file_atomically(components_csv_, components_csv_text);
  files::write_file_atomically(summary_, summary_text);
  committed_ = true;
}

}  // namespace voxgrad::pipeline
