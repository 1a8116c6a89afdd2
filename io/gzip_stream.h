// Byte streams over plain and gzip data (like nifti_clib's znzlib): one reader type that inflates
// straight into the caller's buffer through zlib, and an atomic writer (temp file, fsync, rename)
// that optionally deflates. Every Error these throw starts with the path they were opened on.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <span>
#include <string>

namespace voxgrad::io {

// deflate cannot expand data by more than about 1032:1; anything claiming more is not backed.
inline constexpr std::uint64_t kMaxInflateRatio = 1032;
// Slack on top of that bound for tiny files (gzip header and trailer, stored blocks).
inline constexpr std::uint64_t kInflateSlackBytes = 1 << 16;

// Sequential reader. gzip is detected from the first two bytes (1f 8b), not from the file name, so
// a misnamed file still reads. Concatenated gzip members are read as one stream; bytes after the
// last member that do not start another member are ignored.
class InputStream {
 public:
  // Opens a file; throws "PATH: cannot open: <strerror>" when it cannot.
  static InputStream open_file(const std::string& path);
  // Reads from caller memory that must outlive the stream; `name` stands in for the path in errors.
  static InputStream from_memory(std::span<const std::byte> bytes, const std::string& name);

  InputStream(InputStream&&) noexcept;
  InputStream& operator=(InputStream&&) noexcept;
  ~InputStream();

  const std::string& path() const;
  bool is_gzip() const;
  // Size of the underlying file or memory (compressed size for gzip).
  std::uint64_t source_size() const;
  // Most bytes this stream could ever produce: source_size() for plain data, source_size() *
  // kMaxInflateRatio + kInflateSlackBytes for compressed data.
  std::uint64_t max_decoded_size() const;
  // Uncompressed bytes consumed so far (read or skipped).
  std::uint64_t position() const;

  // Reads up to n bytes into dst (inflating directly into it); fewer only at the end of the data.
  std::size_t read_some(void* dst, std::size_t n);
  // Reads exactly n bytes or throws "PATH: <what>: expected N bytes, got M (file truncated?)".
  void read_exact(void* dst, std::size_t n, const char* what);
  // Discards n bytes (inflating through a small scratch buffer for gzip); throws like read_exact.
  void skip(std::uint64_t n, const char* what);
  // Throws "PATH: <what> needs N bytes after offset O but the file can back at most M" unless
  // `offset + bytes` <= max_decoded_size(). Call it before allocating `bytes`.
  void check_backed(std::uint64_t offset, std::uint64_t bytes, const char* what) const;

 private:
  struct Impl;
  explicit InputStream(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A whole file's bytes as stored (nothing inflated): small files, tests, fuzz corpora.
std::string read_file_bytes(const std::string& path);
// Writes bytes as they are, atomically (through AtomicOutputStream with no compression).
void write_file_bytes(const std::string& path, std::span<const std::byte> bytes);

// Writes to "<path>.tmp-XXXXXX" in the same folder; commit() flushes, fsyncs and renames it onto
// `path`, so readers see the old file or the complete new one, never a partial one. Destroying an
// uncommitted stream removes the temporary file.
class AtomicOutputStream {
 public:
  // gzip_level 0 writes plain bytes; 1..9 writes one gzip member at that zlib level.
  AtomicOutputStream(const std::string& path, int gzip_level);
  AtomicOutputStream(const AtomicOutputStream&) = delete;
  AtomicOutputStream& operator=(const AtomicOutputStream&) = delete;
  ~AtomicOutputStream();

  void write(const void* src, std::size_t n);
  void commit();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace voxgrad::io
