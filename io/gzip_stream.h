// Byte streams over plain and gzip data (like nifti_clib's znzlib): one reader type that inflates
// straight into the caller's buffer through zlib and checks every gzip member's CRC32 and length,
// and an atomic writer (files::AtomicFile) that optionally deflates. Every Error these throw starts
// with the path they were opened on.
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
// verify_to_end() inflates at most this many bytes past what was read (or as many again as were
// read, when that is more): enough for any padding a real file carries, while a few megabytes of
// members that inflate to gigabytes past the image are refused instead of inflated.
inline constexpr std::uint64_t kMaxTrailingInflateBytes = std::uint64_t{256} << 20;

// Sequential reader. gzip is detected from the first two bytes (1f 8b), not from the file name, so
// a misnamed file still reads. Concatenated gzip members are read as one stream; bytes after the
// last member that do not start another member are ignored. zlib checks each member's trailer as
// the member ends: a mismatch throws "PATH: corrupt gzip data (CRC mismatch)" (or "(length
// mismatch)"); a read that stops before the data end leaves the rest to verify_to_end().
// All failures caused by the file (or the disk) are voxgrad::InputError.
class InputStream {
 public:
  // Opens a regular file (files::open_regular_for_reading: a FIFO or device is refused at once
  // with "PATH: not a regular file (...)"); throws "PATH: cannot open: REASON" when it cannot.
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
  // gzip: inflates the rest of the data (into scratch memory) so that every member's CRC32 and
  // length trailer is checked, as `gzip -t` does. Throws "PATH: corrupt gzip data (CRC mismatch)",
  // "(length mismatch)", "PATH: file truncated: ..." when the file ends inside a member, and refuses
  // to inflate more than max(kMaxTrailingInflateBytes, position()) bytes past the current position.
  // Plain data carry no checksum: nothing to do.
  void verify_to_end();

 private:
  struct Impl;
  explicit InputStream(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A whole regular file's bytes as stored (nothing inflated): small files, tests, fuzz corpora.
std::string read_file_bytes(const std::string& path);
// Writes bytes as they are, atomically (through AtomicOutputStream with no compression).
void write_file_bytes(const std::string& path, std::span<const std::byte> bytes);

// A files::AtomicFile that can deflate: writes to "<path>.tmp-<pid>-<n>" in the same folder;
// commit() finishes the gzip member, fsyncs and renames it onto `path`, so readers see the old file
// or the complete new one, never a partial one. Destroying an uncommitted stream removes the
// temporary file.
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
