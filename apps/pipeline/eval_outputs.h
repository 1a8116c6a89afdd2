// The places eval writes: summary.json (--out), <stem>.csv beside it, with --components
// <stem>_components.csv, and png/<case>.png. Each is
// checked before any voxel is read (a usable --out; no output that is one of eval's inputs), and
// the pictures are written under temporary names and put in place with the summary only once every
// case is scored, so an eval that fails leaves the output folder as it found it.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "engine/files.h"

namespace voxgrad::pipeline {

class EvalOutputs {
 public:
  // Checks --out as a place to write (voxgrad::UsageError, exit 2): not empty, not a folder, in a
  // folder that exists or can be made, and that this process may write in. `components_table`:
  // the per-component CSV is written too.
  explicit EvalOutputs(const std::string& out, bool components_table = false);
  // Without commit(): removes the staged pictures and the folders prepare() made (when empty).
  ~EvalOutputs();
  EvalOutputs(const EvalOutputs&) = delete;
  EvalOutputs& operator=(const EvalOutputs&) = delete;

  const std::string& summary_path() const { return summary_; }
  const std::string& csv_path() const { return csv_; }
  const std::string& components_csv_path() const { return components_csv_; }  // "" when not written
  const std::string& picture_dir() const { return picture_dir_; }
  std::string picture_path(const std::string& case_name) const;

  // Refuses (voxgrad::InputError, exit 1, naming both paths) an output that is one of `inputs`,
  // compared by file identity, and a picture path that exists and is no regular file.
  void refuse_inputs(const files::InputFiles& inputs, const std::vector<std::string>& case_names) const;

  // Makes the output folders and clears the temporaries killed runs left there.
  void prepare();
  // Where to write the picture of `case_name` now; commit() moves it to picture_path(case_name).
  std::string stage_picture(const std::string& case_name);
  // The pictures put in place, then the CSVs and the summary written atomically.
  void commit(const std::string& summary_text, const std::string& csv_text,
              const std::string& components_csv_text = "");

 private:
  std::string out_flag_;  // --out as given, for messages
  std::string out_dir_, summary_, csv_, components_csv_, picture_dir_;
  std::vector<std::string> created_folders_;                    // outermost first
  std::vector<std::pair<std::string, std::string>> staged_;    // (temporary, target)
  bool committed_ = false;
};

}  // namespace voxgrad::pipeline
