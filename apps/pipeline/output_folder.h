// The folder a command writes into, named by a flag (--out): refused up front as a usage error when
// it cannot be one (empty, a file, not writable), created when missing, and removed again when the
// command fails before it wrote anything there, so a refused command leaves no trace.
#pragma once

#include <filesystem>
#include <string>

namespace voxgrad::pipeline {

class OutputFolder {
 public:
  // Throws UsageError naming `flag` and `path` when the folder cannot be used; creates it (and its
  // parents) when missing. Temporaries left there by killed voxgrad processes are removed.
  OutputFolder(std::string path, std::string flag);
  // Unless keep() was called: removes the folder, and the parents this command created, while
  // they are empty.
  ~OutputFolder();
  OutputFolder(const OutputFolder&) = delete;
  OutputFolder& operator=(const OutputFolder&) = delete;

  const std::string& path() const { return path_; }
  bool created() const { return created_; }
  // The command has written (or is about to write) its first file: the folder stays.
  void keep() { keep_ = true; }

 private:
  std::string path_;
  std::string flag_;
  bool created_ = false;
  std::filesystem::path created_root_;  // the highest folder this command created
  bool keep_ = false;
};

}  // namespace voxgrad::pipeline
