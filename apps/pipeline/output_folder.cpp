// Output folders: usage checks before any work, creation, and the undo of a creation that a
// failed command never used.
#include "apps/pipeline/output_folder.h"

#include <unistd.h>

#include <filesystem>
#include <system_error>

#include "engine/error.h"
#include "engine/files.h"

namespace voxgrad::pipeline {

namespace fs = std::filesystem;

OutputFolder::OutputFolder(std::string path, std::string flag) : path_(std::move(path)), flag_(std::move(flag)) {
  VG_USAGE_CHECK(!path_.empty(), flag_ << " is empty: give a folder");
  std::error_code ec;
  const fs::file_status status = fs::status(path_, ec);
  if (fs::exists(status)) {
    VG_USAGE_CHECK(fs::is_directory(status), flag_ << " '" << path_ << "': exists and is not a folder");
  } else {
    // The nearest existing ancestor must be a folder we may write in; create_directories' own
    // message ("filesystem error: ...") is not one a user can act on.
    fs::path parent = fs::absolute(path_, ec).parent_path();
    created_root_ = fs::absolute(path_, ec);
    while (!parent.empty() && !fs::exists(parent, ec) && parent != parent.root_path()) {
      created_root_ = parent;
      parent = parent.parent_path();
    }
    VG_USAGE_CHECK(fs::is_directory(parent, ec),
                   flag_ << " '" << path_ << "': cannot be created, " << parent.string() << " is not a folder");
    VG_USAGE_CHECK(::access(parent.c_str(), W_OK | X_OK) == 0,
                   flag_ << " '" << path_ << "': cannot be created, " << parent.string() << " is not writable");
    try {
      files::create_folder(path_, flag_);
    } catch (const InputError& e) {
      throw UsageError(e.what());
    }
    created_ = true;
  }
  VG_USAGE_CHECK(::access(path_.c_str(), W_OK | X_OK) == 0, flag_ << " '" << path_ << "': the folder is not writable");
  files::remove_stale_temporaries(path_);
}

OutputFolder::~OutputFolder() {
  if (keep_ || !created_) return;
  // The folder and every parent this command created, while they are empty.
  std::error_code ec;
  fs::path p = fs::absolute(path_, ec);
  while (!ec && fs::is_empty(p, ec) && !ec && fs::remove(p, ec)) {
    if (p == created_root_) break;
    p = p.parent_path();
  }
}

}  // namespace voxgrad::pipeline
