// InputStream (plain or gzip, file or memory) and AtomicOutputStream on POSIX files and zlib.
// gzip data are inflated straight into the caller's buffer: the only extra memory is one input
// chunk, so reading an image costs one pass of inflate and no copy of the voxels.
#include "io/gzip_stream.h"

#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <vector>

#include "engine/error.h"
#include "engine/files.h"

namespace voxgrad::io {
namespace {

constexpr std::size_t kInputChunk = 1 << 18;  // compressed bytes per read(): big enough to amortise syscalls
constexpr std::size_t kSkipChunk = 1 << 16;
// zlib counts in uInt; keep each inflate/deflate call well inside it.
constexpr std::size_t kMaxZlibSpan = std::size_t{1} << 30;

std::string errno_text(int err) { return std::strerror(err); }

// Reads up to n bytes from fd, retrying short reads and EINTR; returns the count (< n only at EOF).
std::size_t read_fully(int fd, void* dst, std::size_t n, const std::string& path) {
  auto* out = static_cast<unsigned char*>(dst);
  std::size_t done = 0;
  while (done < n) {
    const std::size_t want = std::min<std::size_t>(n - done, kMaxZlibSpan);
    const ssize_t got = ::read(fd, out + done, want);
    if (got < 0) {
      if (errno == EINTR) continue;
      VG_INPUT_FAIL(path << ": read failed: " << errno_text(errno));
    }
    if (got == 0) break;
    done += static_cast<std::size_t>(got);
  }
  return done;
}

std::uint64_t saturating_bound(std::uint64_t compressed) {
  const std::uint64_t limit = std::numeric_limits<std::uint64_t>::max();
  if (compressed > (limit - kInflateSlackBytes) / kMaxInflateRatio) return limit;
  return compressed * kMaxInflateRatio + kInflateSlackBytes;
}

}  // namespace

struct InputStream::Impl {
  std::string path;
  int fd = -1;                          // file source; -1 for memory
  const unsigned char* mem = nullptr;   // memory source
  std::uint64_t mem_size = 0;
  std::uint64_t mem_pos = 0;
  std::uint64_t size = 0;               // bytes in the source (compressed size for gzip)
  bool gzip = false;
  std::uint64_t position = 0;           // uncompressed bytes consumed

  // gzip state
  z_stream z{};
  bool z_ready = false;
  bool z_finished = false;              // last member ended (trailer checked) and no other member follows
  bool ended_in_member = false;         // the source ran out before the current member's trailer
  std::vector<unsigned char> in_buf;    // file sources only: memory sources feed zlib in place
  bool source_done = false;

  ~Impl() {
    if (z_ready) inflateEnd(&z);
    if (fd >= 0) ::close(fd);
  }

  // Plain bytes from the source, bypassing zlib.
  std::size_t source_read(void* dst, std::size_t n) {
    if (fd >= 0) return read_fully(fd, dst, n, path);
    const std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(n, mem_size - mem_pos));
    if (take > 0) std::memcpy(dst, mem + mem_pos, take);
    mem_pos += take;
    return take;
  }

  // Gives zlib more compressed input; false when the source is exhausted.
  bool refill() {
    if (source_done) return false;
    if (fd < 0) {
      // Memory: hand zlib the rest in spans it can count.
      const std::uint64_t left = mem_size - mem_pos;
      if (left == 0) {
        source_done = true;
        return false;
      }
      const std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(left, kMaxZlibSpan));
      z.next_in = const_cast<unsigned char*>(mem + mem_pos);
      z.avail_in = static_cast<uInt>(take);
      mem_pos += take;
      return true;
    }
    const std::size_t got = read_fully(fd, in_buf.data(), in_buf.size(), path);
    if (got == 0) {
      source_done = true;
      return false;
    }
    z.next_in = in_buf.data();
    z.avail_in = static_cast<uInt>(got);
    return true;
  }

  // After one member ended: another member follows only if the next bytes are a gzip magic.
  // Anything else (zero padding, tape-archive slack) is trailing data we tolerate and ignore.
  bool next_member_follows() {
    if (z.avail_in == 0 && !refill()) return false;
    unsigned char first = z.next_in[0];
    if (first != 0x1f) return false;
    unsigned char second;
    if (z.avail_in >= 2) {
      second = z.next_in[1];
    } else {
      // The magic straddles an input chunk: keep the first byte and read on.
      if (fd < 0) {
        if (mem_pos >= mem_size) return false;
        second = mem[mem_pos];
      } else {
        in_buf[0] = first;
        const std::size_t got = read_fully(fd, in_buf.data() + 1, in_buf.size() - 1, path);
        z.next_in = in_buf.data();
        z.avail_in = static_cast<uInt>(got + 1);
        if (got == 0) {
          source_done = true;
          return false;
        }
        second = in_buf[1];
      }
    }
    return second == 0x8b;
  }

  void start_inflate() {
    if (fd >= 0) in_buf.resize(kInputChunk);
    // 15 + 32: a 32 KiB window, gzip or zlib header detected automatically.
    const int rc = inflateInit2(&z, 15 + 32);
    if (rc != Z_OK) VG_FAIL(path << ": cannot start inflate: " << zError(rc));
    z_ready = true;
  }

  // zlib's verdict on bad data in plain words: the trailer checks get fixed messages, anything
  // else says where in the uncompressed data the damage shows.
  [[noreturn]] void corrupt(int rc, std::uint64_t offset) {
    const std::string msg = z.msg != nullptr ? z.msg : zError(rc);
    if (msg == "incorrect data check") VG_INPUT_FAIL(path << ": corrupt gzip data (CRC mismatch)");
    if (msg == "incorrect length check") VG_INPUT_FAIL(path << ": corrupt gzip data (length mismatch)");
    VG_INPUT_FAIL(path << ": corrupt gzip data at uncompressed offset " << offset << ": " << msg);
  }

  std::size_t inflate_into(unsigned char* out, std::size_t n) {
    std::size_t done = 0;
    while (done < n && !z_finished) {
      if (z.avail_in == 0 && !refill()) {
        ended_in_member = true;  // the caller reports the shortfall or the missing trailer
        break;
      }
      const std::size_t span = std::min(n - done, kMaxZlibSpan);
      z.next_out = out + done;
      z.avail_out = static_cast<uInt>(span);
      const int rc = inflate(&z, Z_NO_FLUSH);
      done += span - z.avail_out;
      if (rc == Z_STREAM_END) {
        // zlib has checked this member's CRC32 and length before saying so.
        if (next_member_follows()) {
          VG_CHECK(inflateReset(&z) == Z_OK, path << ": cannot restart inflate for the next gzip member");
        } else {
          z_finished = true;
        }
      } else if (rc == Z_BUF_ERROR) {
        // No progress possible. With input exhausted the stream is truncated (the caller reports
        // it); with input and output room left zlib is stuck, which only bad data causes.
        if (z.avail_in > 0) VG_INPUT_FAIL(path << ": corrupt gzip data at uncompressed offset " << position + done);
        if (!refill()) {
          ended_in_member = true;
          break;
        }
      } else if (rc != Z_OK) {
        corrupt(rc, position + done);
      }
    }
    return done;
  }

  // Why a read of `want` bytes came back with fewer.
  std::string shortfall(std::uint64_t want, std::uint64_t got, const char* what) const {
    std::string why;
    if (!gzip) {
      why = "file truncated";
    } else if (ended_in_member) {
      why = "file truncated: it ends inside its gzip data";
    } else {
      why = "the gzip data end there: the image was truncated before it was compressed, or the header's dims or "
            "datatype are wrong";
    }
    return path + ": " + what + ": expected " + std::to_string(want) + " bytes, got " + std::to_string(got) + " (" +
           why + ")";
  }
};

InputStream::InputStream(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
InputStream::InputStream(InputStream&&) noexcept = default;
InputStream& InputStream::operator=(InputStream&&) noexcept = default;
InputStream::~InputStream() = default;

InputStream InputStream::open_file(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->fd = files::open_regular_for_reading(path);
  struct stat st {};
  if (::fstat(impl->fd, &st) != 0) VG_INPUT_FAIL(path << ": cannot read its size: " << errno_text(errno));
  impl->size = static_cast<std::uint64_t>(st.st_size);
  unsigned char magic[2] = {0, 0};
  const ssize_t got = ::pread(impl->fd, magic, 2, 0);
  impl->gzip = got == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
  if (impl->gzip) impl->start_inflate();
  return InputStream(std::move(impl));
}

InputStream InputStream::from_memory(std::span<const std::byte> bytes, const std::string& name) {
  auto impl = std::make_unique<Impl>();
  impl->path = name;
  impl->mem = reinterpret_cast<const unsigned char*>(bytes.data());
  impl->mem_size = bytes.size();
  impl->size = bytes.size();
  impl->gzip = bytes.size() >= 2 && impl->mem[0] == 0x1f && impl->mem[1] == 0x8b;
  if (impl->gzip) impl->start_inflate();
  return InputStream(std::move(impl));
}

const std::string& InputStream::path() const { return impl_->path; }
bool InputStream::is_gzip() const { return impl_->gzip; }
std::uint64_t InputStream::source_size() const { return impl_->size; }
std::uint64_t InputStream::position() const { return impl_->position; }

std::uint64_t InputStream::max_decoded_size() const {
  return impl_->gzip ? saturating_bound(impl_->size) : impl_->size;
}

std::size_t InputStream::read_some(void* dst, std::size_t n) {
  if (n == 0) return 0;
  const std::size_t got = impl_->gzip ? impl_->inflate_into(static_cast<unsigned char*>(dst), n)
                                      : impl_->source_read(dst, n);
  impl_->position += got;
  return got;
}

void InputStream::read_exact(void* dst, std::size_t n, const char* what) {
  const std::size_t got = read_some(dst, n);
  if (got < n) VG_INPUT_FAIL(impl_->shortfall(n, got, what));
}

void InputStream::skip(std::uint64_t n, const char* what) {
  if (n == 0) return;
  if (!impl_->gzip && impl_->fd >= 0) {
    // Plain files seek; a seek past the end is caught by the next read's shortfall, so check here.
    const std::uint64_t target = impl_->position + n;
    if (target > impl_->size)
      VG_INPUT_FAIL(impl_->shortfall(n, impl_->size > impl_->position ? impl_->size - impl_->position : 0, what));
    if (::lseek(impl_->fd, static_cast<off_t>(target), SEEK_SET) < 0)
      VG_INPUT_FAIL(impl_->path << ": seek failed: " << errno_text(errno));
    impl_->position = target;
    return;
  }
  if (!impl_->gzip) {
    const std::uint64_t left = impl_->mem_size - impl_->mem_pos;
    if (n > left) VG_INPUT_FAIL(impl_->shortfall(n, left, what));
    impl_->mem_pos += n;
    impl_->position += n;
    return;
  }
  std::vector<unsigned char> scratch(static_cast<std::size_t>(std::min<std::uint64_t>(n, kSkipChunk)));
  std::uint64_t left = n;
  while (left > 0) {
    const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(left, scratch.size()));
    const std::size_t got = read_some(scratch.data(), want);
    left -= got;
    if (got < want) VG_INPUT_FAIL(impl_->shortfall(n, n - left, what));
  }
}

void InputStream::check_backed(std::uint64_t offset, std::uint64_t bytes, const char* what) const {
  const std::uint64_t limit = max_decoded_size();
  if (offset > limit || bytes > limit - offset) {
    if (impl_->gzip) {
      VG_INPUT_FAIL(impl_->path << ": " << what << " needs " << bytes << " bytes after offset " << offset
                                << ", more than " << impl_->size << " compressed bytes can inflate to (at most "
                                << limit << "); the header's dims or datatype are wrong or the file is truncated");
    }
    if (offset > limit) {
      VG_INPUT_FAIL(impl_->path << ": " << what << " starts at offset " << offset << ", past the end of the file ("
                                << impl_->size << " bytes)");
    }
    VG_INPUT_FAIL(impl_->path << ": " << what << " needs " << bytes << " bytes after offset " << offset
                              << " but the file has only " << limit - offset
                              << " there (file truncated, or the header's dims or datatype are wrong)");
  }
}

void InputStream::verify_to_end() {
  if (!impl_->gzip || impl_->z_finished) return;
  // Bounded: what lies past the image is inflated only to be checked, so a small file claiming
  // gigabytes there is refused rather than inflated.
  const std::uint64_t limit = std::max(kMaxTrailingInflateBytes, impl_->position);
  std::vector<unsigned char> scratch(kSkipChunk);
  std::uint64_t past = 0;
  while (!impl_->z_finished) {
    const std::size_t got = impl_->inflate_into(scratch.data(), scratch.size());
    impl_->position += got;
    past += got;
    if (past > limit) {
      VG_INPUT_FAIL(impl_->path << ": the gzip data go on for more than " << limit
                                << " bytes past the image the header declares; refusing to inflate further (a "
                                   "gzip bomb, or a header whose dims are too small)");
    }
    if (impl_->ended_in_member) {
      VG_INPUT_FAIL(impl_->path << ": file truncated: it ends inside its gzip data, before the CRC32 and length "
                                   "trailer that would confirm them");
    }
  }
}

std::string read_file_bytes(const std::string& path) {
  const int fd = files::open_regular_for_reading(path);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    VG_INPUT_FAIL(path << ": cannot read its size: " << errno_text(err));
  }
  std::string out;
  std::size_t got = 0;
  try {
    out.resize(static_cast<std::size_t>(st.st_size));
    got = read_fully(fd, out.data(), out.size(), path);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  out.resize(got);
  return out;
}

void write_file_bytes(const std::string& path, std::span<const std::byte> bytes) {
  AtomicOutputStream out(path, 0);
  out.write(bytes.data(), bytes.size());
  out.commit();
}

// ---- AtomicOutputStream ------------------------------------------------------------------------

struct AtomicOutputStream::Impl {
  explicit Impl(const std::string& target) : path(target), file(target) {}
  ~Impl() {
    if (z_ready) deflateEnd(&z);
  }  // an uncommitted AtomicFile removes its temporary itself

  std::string path;
  files::AtomicFile file;
  bool gzip = false;
  z_stream z{};
  bool z_ready = false;
  std::vector<unsigned char> out_buf;
  bool committed = false;

  void pump(int flush) {
    do {
      z.next_out = out_buf.data();
      z.avail_out = static_cast<uInt>(out_buf.size());
      const int rc = deflate(&z, flush);
      if (rc == Z_STREAM_ERROR) VG_FAIL(path << ": deflate failed");
      file.write(out_buf.data(), out_buf.size() - z.avail_out);
      if (rc == Z_STREAM_END) break;
    } while (z.avail_out == 0 || (flush == Z_FINISH));
  }
};

AtomicOutputStream::AtomicOutputStream(const std::string& path, int gzip_level) {
  VG_CHECK(gzip_level >= 0 && gzip_level <= 9, path << ": gzip level " << gzip_level << " is not 0..9");
  impl_ = std::make_unique<Impl>(path);
  if (gzip_level > 0) {
    impl_->gzip = true;
    impl_->out_buf.resize(kInputChunk);
    // 15 + 16: a gzip wrapper (header and CRC trailer) rather than zlib's.
    const int rc = deflateInit2(&impl_->z, gzip_level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
    if (rc != Z_OK) VG_FAIL(path << ": cannot start deflate: " << zError(rc));
    impl_->z_ready = true;
  }
}

AtomicOutputStream::~AtomicOutputStream() = default;

void AtomicOutputStream::write(const void* src, std::size_t n) {
  VG_CHECK(!impl_->committed, impl_->path << ": write after commit");
  if (!impl_->gzip) {
    impl_->file.write(src, n);
    return;
  }
  const auto* in = static_cast<const unsigned char*>(src);
  while (n > 0) {
    const std::size_t span = std::min(n, kMaxZlibSpan);
    impl_->z.next_in = const_cast<unsigned char*>(in);
    impl_->z.avail_in = static_cast<uInt>(span);
    while (impl_->z.avail_in > 0) impl_->pump(Z_NO_FLUSH);
    in += span;
    n -= span;
  }
}

void AtomicOutputStream::commit() {
  VG_CHECK(!impl_->committed, impl_->path << ": committed twice");
  if (impl_->gzip) impl_->pump(Z_FINISH);
  impl_->file.commit();
  impl_->committed = true;
}

}  // namespace voxgrad::io
