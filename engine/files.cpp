// Safe file-system access: regular-file opens, identities, atomic writes, stale temporaries and
// folder locks. POSIX calls only; every failure names the path and the reason in plain words.
#include "engine/files.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/error.h"
#include "engine/log.h"

namespace voxgrad::files {

namespace {

std::string reason(int err) {
  switch (err) {
    case ENOENT: return "no such file or folder";
    case EACCES: return "permission denied";
    case ENOTDIR: return "a part of the path is not a folder";
    case ENOSPC: return "no space left on the device";
    case EROFS: return "the file system is read-only";
    case EDQUOT: return "disk quota exceeded";
    default: return std::strerror(err);
  }
}

std::string folder_of(const std::string& path) {
  const std::string parent = std::filesystem::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

const char* kind_of(mode_t mode) {
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
  return "not a plain file";
}

// "<name>.tmp-<pid>-<n>": the pid of the writer, or -1 when `name` is not a temporary's name.
long temporary_owner(const std::string& name) {
  const auto at = name.rfind(".tmp-");
  if (at == std::string::npos) return -1;
  const char* p = name.c_str() + at + 5;
  char* end = nullptr;
  errno = 0;
  const long pid = std::strtol(p, &end, 10);
  if (errno != 0 || end == p || *end != '-' || pid <= 0) return -1;
  return pid;
}

bool process_alive(long pid) { return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM; }

}  // namespace

int open_regular_for_reading(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) {
    const int err = errno;
    VG_INPUT_FAIL(path << ": cannot open: " << reason(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    VG_INPUT_FAIL(path << ": cannot read its type: " << reason(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    VG_INPUT_FAIL(path << ": not a regular file (" << kind_of(st.st_mode) << ")");
  }
  // Reads of a regular file never block anyway; clearing the flag keeps the descriptor ordinary.
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) (void)::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  return fd;
}

void require_regular_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    VG_INPUT_FAIL(path << ": " << reason(err));
  }
  if (!S_ISREG(st.st_mode)) VG_INPUT_FAIL(path << ": not a regular file (" << kind_of(st.st_mode) << ")");
}

std::optional<FileIdentity> identity_of(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  return FileIdentity{static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino)};
}

void InputFiles::add(const std::string& path) {
  if (const auto id = identity_of(path)) files_.emplace_back(*id, path);
}

std::optional<std::string> InputFiles::overwritten_by(const std::string& output) const {
  const auto id = identity_of(output);
  if (!id) return std::nullopt;
  for (const auto& [input_id, input_path] : files_)
    if (input_id == *id) return input_path;
  return std::nullopt;
}

std::string temporary_path_for(const std::string& target) {
  static std::atomic<unsigned long> counter{0};
  return target + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

int remove_stale_temporaries(const std::string& folder) {
  DIR* dir = ::opendir(folder.empty() ? "." : folder.c_str());
  if (dir == nullptr) return 0;
  int removed = 0;
  while (const dirent* entry = ::readdir(dir)) {
    const std::string name = entry->d_name;
    const long pid = temporary_owner(name);
    if (pid < 0 || process_alive(pid)) continue;
    const std::string path = (folder.empty() ? std::string(".") : folder) + "/" + name;
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::unlink(path.c_str()) == 0) ++removed;
  }
  ::closedir(dir);
  return removed;
}

AtomicFile::AtomicFile(std::string target, unsigned mode) : target_(std::move(target)) {
  // O_EXCL: a name that exists (a live writer's) is never shared; the counter makes a new one.
  for (int attempt = 0; attempt < 16 && fd_ < 0; ++attempt) {
    temporary_ = temporary_path_for(target_);
    fd_ = ::open(temporary_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, static_cast<mode_t>(mode));
    if (fd_ < 0 && errno != EEXIST) {
      const int err = errno;
      temporary_.clear();
      VG_INPUT_FAIL(target_ << ": cannot create a file in " << folder_of(target_) << ": " << reason(err));
    }
  }
  if (fd_ < 0) {
    temporary_.clear();
    VG_INPUT_FAIL(target_ << ": cannot create a unique temporary file next to it");
  }
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!temporary_.empty()) ::unlink(temporary_.c_str());
}

void AtomicFile::write(const void* data, std::size_t bytes) {
  VG_CHECK(fd_ >= 0, target_ << ": write after commit");
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd_, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : ENOSPC;
      VG_INPUT_FAIL(target_ << ": writing failed: " << reason(err));
    }
    p += n;
    bytes -= static_cast<std::size_t>(n);
  }
}

void AtomicFile::commit() {
  VG_CHECK(fd_ >= 0, target_ << ": committed twice");
  // Durable data before the name: after a crash the name holds the old file or the whole new one.
  if (::fsync(fd_) != 0) {
    const int err = errno;
    VG_INPUT_FAIL(target_ << ": writing failed: " << reason(err));
  }
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    const int err = errno;
    VG_INPUT_FAIL(target_ << ": writing failed: " << reason(err));
  }
  if (::rename(temporary_.c_str(), target_.c_str()) != 0) {
    const int err = errno;
    VG_INPUT_FAIL(target_ << ": cannot put the new file in place: " << reason(err));
  }
  temporary_.clear();
  // The rename itself is durable once the folder's entry is on disk (best effort: some file
  // systems refuse to fsync a folder).
  const int dir = ::open(folder_of(target_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    (void)::fsync(dir);
    ::close(dir);
  }
}

void write_file_atomically(const std::string& path, std::string_view bytes) {
  AtomicFile out(path);
  out.write(bytes.data(), bytes.size());
  out.commit();
}

void create_folder(const std::string& path, const std::string& what) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) VG_INPUT_FAIL(what << " '" << path << "': cannot create the folder: " << reason(ec.value()));
  if (!std::filesystem::is_directory(path, ec))
    VG_INPUT_FAIL(what << " '" << path << "': exists and is not a folder");
}

std::optional<long> flock_holder(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  // /proc/locks lines: "1: FLOCK  ADVISORY  WRITE 1234 fe:00:10952947 0 EOF" (major:minor in hex).
  std::ifstream locks("/proc/locks");
  std::string line;
  char wanted[64];
  std::snprintf(wanted, sizeof wanted, "%02x:%02x:%llu", major(st.st_dev), minor(st.st_dev),
                static_cast<unsigned long long>(st.st_ino));
  while (std::getline(locks, line)) {
    std::istringstream fields(line);
    std::string id, kind, mode, access, pid, where;
    if (!(fields >> id >> kind)) continue;
    if (kind == "->") continue;  // a waiter, not a holder
    if (!(fields >> mode >> access >> pid >> where)) continue;
    if (kind != "FLOCK" || where != wanted) continue;
    try {
      const long holder = std::stol(pid);
      if (holder > 0) return holder;
    } catch (const std::exception&) {
    }
  }
  return std::nullopt;
}

FolderLock::FolderLock(const std::string& folder, const std::string& what) {
  fd_ = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd_ < 0) {
    const int err = errno;
    VG_INPUT_FAIL(folder << ": cannot open the folder: " << reason(err));
  }
  if (::flock(fd_, LOCK_EX | LOCK_NB) == 0) return;
  const int err = errno;
  ::close(fd_);
  fd_ = -1;
  if (err != EWOULDBLOCK) {
    // Some network file systems cannot lock a folder (NFS emulates flock with fcntl locks, which a
    // read-only descriptor cannot take): work on unprotected rather than refuse to work there.
    logging::warning(folder + ": cannot lock " + what + " on this file system (" + reason(err) +
                     "); make sure no other process writes into it");
    return;
  }
  const auto holder = flock_holder(folder);
  VG_INPUT_FAIL(folder << ": " << what << " is in use by "
                       << (holder ? "process " + std::to_string(*holder) : "another process")
                       << "; wait for it to end or stop it");
}

FolderLock::~FolderLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the last descriptor releases the lock
}

FolderLock::FolderLock(FolderLock&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }

FolderLock& FolderLock::operator=(FolderLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

}  // namespace voxgrad::files
