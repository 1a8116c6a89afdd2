// The file system, used safely: every file voxgrad reads from a user is opened through here (only
// regular files, so a FIFO cannot hang a command), every file it writes goes through an atomic
// temporary next to its target, and a run folder is owned by one process at a time.
// Failures caused by the user's files or environment throw voxgrad::InputError naming the path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace voxgrad::files {

// Opens `path` read-only (close-on-exec) and returns the descriptor. Refuses anything that is not
// a regular file ("PATH: not a regular file") before it could block: a FIFO's open() waits for a
// writer, so the open is non-blocking and the type is checked on the open descriptor.
int open_regular_for_reading(const std::string& path);

// Throws "PATH: not a regular file" (or "no such file", ...) unless `path` names a regular file.
void require_regular_file(const std::string& path);

// A file's identity (device and inode): two paths name the same file, whatever their spelling,
// links or mounts, exactly when their identities are equal.
struct FileIdentity {
  std::uint64_t device = 0;
  std::uint64_t inode = 0;
  bool operator==(const FileIdentity&) const = default;
};
// The identity of the file `path` names (links followed); nothing when it does not exist.
std::optional<FileIdentity> identity_of(const std::string& path);

// The files a command reads, so that no output ever lands on one of them.
class InputFiles {
 public:
  void add(const std::string& path);  // ignored when `path` does not exist
  // The input that `output` would overwrite, if any (compared by identity, not by name).
  std::optional<std::string> overwritten_by(const std::string& output) const;

 private:
  std::vector<std::pair<FileIdentity, std::string>> files_;
};

// The name every atomic write uses for its temporary: "<target>.tmp-<pid>-<n>", so a later command
// can tell whose it was and whether that process still runs.
std::string temporary_path_for(const std::string& target);

// Removes, in `folder`, the temporaries ("*.tmp-<pid>-*") of processes that no longer run (a
// killed command leaves its temporary behind). Returns how many were removed. Best effort: a file
// that cannot be removed stays.
int remove_stale_temporaries(const std::string& folder);

// A file being written under a temporary name next to its target; commit() makes it the target in
// one rename after an fsync, so a reader sees the old file or the whole new one, never a part.
// Destroyed without commit(), it removes the temporary and leaves the target untouched.
class AtomicFile {
 public:
  // `mode` is given to open() (the umask still applies).
  explicit AtomicFile(std::string target, unsigned mode = 0666);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, std::size_t bytes);
  void commit();
  const std::string& target() const { return target_; }

 private:
  std::string target_;
  std::string temporary_;
  int fd_ = -1;
};

// The whole of `bytes` as the new content of `path`, atomically.
void write_file_atomically(const std::string& path, std::string_view bytes);

// create_directories with plain errors: "FLAG 'PATH': cannot create the folder: REASON" where
// `what` names the flag or the role of the folder (e.g. "--out").
void create_folder(const std::string& path, const std::string& what);

// Exclusive ownership of a folder for this process's life: an advisory lock on the folder itself
// (flock on its descriptor), so nothing is written to take it and the kernel releases it when the
// holder exits, however it exits. A second owner is refused with the holder's process id.
class FolderLock {
 public:
  FolderLock() = default;
  // Throws InputError "FOLDER: WHAT is in use by process PID; ..." when another process holds it
  // (`what` says what the folder is: "the run folder"). Where the file system cannot lock folders
  // at all, warns and holds nothing rather than refuse to work there.
  FolderLock(const std::string& folder, const std::string& what);
  ~FolderLock();
  FolderLock(FolderLock&& other) noexcept;
  FolderLock& operator=(FolderLock&& other) noexcept;
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;
  bool held() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// The process holding a flock on `path` (from /proc/locks); nothing when unknown.
std::optional<long> flock_holder(const std::string& path);

}  // namespace voxgrad::files
