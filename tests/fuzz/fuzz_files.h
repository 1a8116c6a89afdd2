// What the fuzz targets whose parsers read files share: a scratch folder per process, in
// memory-backed storage when there is some and removed at exit, and writing an input there.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <filesystem>
#include <span>
#include <string>

namespace voxgrad::fuzz {

// /dev/shm/voxgrad-<name>-fuzz-<pid>, made on the first call; a process runs one target, so the
// first call's name is the folder's name.
inline const std::string& scratch_dir(const char* name) {
  static const std::string dir = [name] {
    namespace fs = std::filesystem;
    const std::string base = fs::exists("/dev/shm") ? "/dev/shm" : fs::temp_directory_path().string();
    const std::string d = base + "/voxgrad-" + name + "-fuzz-" + std::to_string(::getpid());
    fs::create_directories(d);
    return d;
  }();
  static const bool cleaned_at_exit = std::atexit([] {
                                        std::error_code ec;
                                        std::filesystem::remove_all(dir, ec);
                                      }) == 0;
  (void)cleaned_at_exit;
  return dir;
}

// `bytes` as the whole content of `path`. A failure is the harness's, not the input's: abort.
inline void write_file(const std::string& path, std::span<const std::byte> bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) std::abort();
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n <= 0) std::abort();
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
}

}  // namespace voxgrad::fuzz
