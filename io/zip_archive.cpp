// Reads the central directory of a zip archive held in memory and hands out its stored entries,
// each checked against its CRC-32. Every count, size and offset a file declares is checked against
// the file's own length before it is used, so a malformed archive fails with a plain message.
#include "io/zip_archive.h"

#include <zlib.h>

#include <algorithm>
#include <limits>
#include <utility>

#include "engine/error.h"
#include "io/gzip_stream.h"

namespace voxgrad::io {
namespace {

constexpr std::uint32_t kEndOfCentralDirectory = 0x06054b50;
constexpr std::uint32_t kZip64EndLocator = 0x07064b50;
constexpr std::uint32_t kZip64End = 0x06064b50;
constexpr std::uint32_t kCentralHeader = 0x02014b50;
constexpr std::uint32_t kLocalHeader = 0x04034b50;
constexpr std::size_t kEndSize = 22;
constexpr std::size_t kCentralHeaderSize = 46;
constexpr std::size_t kLocalHeaderSize = 30;

std::uint64_t le(const std::string& b, std::uint64_t at, int bytes) {
  std::uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[at + static_cast<std::uint64_t>(i)]);
  return v;
}

std::uint32_t crc_of(const std::byte* data, std::uint64_t size) {
  uLong crc = ::crc32(0L, Z_NULL, 0);
  const auto* p = reinterpret_cast<const Bytef*>(data);
  while (size > 0) {
    const uInt n = static_cast<uInt>(std::min<std::uint64_t>(size, std::numeric_limits<uInt>::max()));
    crc = ::crc32(crc, p, n);
    p += n;
    size -= n;
  }
  return static_cast<std::uint32_t>(crc);
}

}  // namespace

ZipArchive::ZipArchive(std::string bytes, std::string name) : bytes_(std::move(bytes)), name_(std::move(name)) {
  read_central_directory();
}

ZipArchive ZipArchive::open_file(const std::string& path) { return ZipArchive(read_file_bytes(path), path); }

ZipArchive ZipArchive::from_bytes(std::string bytes, const std::string& name) {
  return ZipArchive(std::move(bytes), name);
}

void ZipArchive::read_central_directory() {
  const std::uint64_t size = bytes_.size();
  VG_INPUT_CHECK(size >= kEndSize, name_ << ": not a zip archive (" << size << " bytes, too short)");
  // The end record sits in the last 22 bytes plus at most a 65535-byte comment.
  const std::uint64_t lowest = size >= kEndSize + 0xffff ? size - kEndSize - 0xffff : 0;
  std::uint64_t end = size - kEndSize + 1;
  bool found = false;
  while (end-- > lowest) {
    if (le(bytes_, end, 4) == kEndOfCentralDirectory && end + kEndSize + le(bytes_, end + 20, 2) <= size) {
      found = true;
      break;
    }
  }
  VG_INPUT_CHECK(found, name_ << ": not a zip archive (no end of central directory record)");
  std::uint64_t count = le(bytes_, end + 10, 2);
  std::uint64_t directory_size = le(bytes_, end + 12, 4);
  std::uint64_t directory_offset = le(bytes_, end + 16, 4);
  VG_INPUT_CHECK(le(bytes_, end + 4, 2) == 0 && le(bytes_, end + 6, 2) == 0,
                 name_ << ": multi-part zip archives are not supported");
  if (end >= 20 && le(bytes_, end - 20, 4) == kZip64EndLocator) {
    const std::uint64_t at = le(bytes_, end - 20 + 8, 8);
    VG_INPUT_CHECK(at <= end - 20 && end - 20 - at >= 56 && le(bytes_, at, 4) == kZip64End,
                   name_ << ": bad central directory (zip64 end record missing or out of place)");
    // The zip64 record holds the true values; a field the classic record does not saturate must agree.
    const std::uint64_t count64 = le(bytes_, at + 32, 8), size64 = le(bytes_, at + 40, 8),
                        offset64 = le(bytes_, at + 48, 8);
    VG_INPUT_CHECK((count == 0xffff || count == count64) &&
                       (directory_size == 0xffffffffu || directory_size == size64) &&
                       (directory_offset == 0xffffffffu || directory_offset == offset64),
                   name_ << ": bad central directory (its zip64 and classic end records disagree)");
    count = count64;
    directory_size = size64;
    directory_offset = offset64;
  }
  VG_INPUT_CHECK(directory_offset <= end && directory_size <= end - directory_offset,
                 name_ << ": bad central directory (it claims " << directory_size << " bytes at offset "
                       << directory_offset << ", past the file's " << size << " bytes)");
  VG_INPUT_CHECK(count <= directory_size / kCentralHeaderSize, name_ << ": bad central directory (" << count
                                                                     << " entries cannot fit in " << directory_size
                                                                     << " bytes)");
  entries_.reserve(count);
  std::uint64_t at = directory_offset;
  const std::uint64_t directory_end = directory_offset + directory_size;
  for (std::uint64_t i = 0; i < count; ++i) {
    VG_INPUT_CHECK(directory_end - at >= kCentralHeaderSize && le(bytes_, at, 4) == kCentralHeader,
                   name_ << ": bad central directory (entry " << i << " has no valid header)");
    const std::uint64_t flags = le(bytes_, at + 8, 2);
    const std::uint64_t method = le(bytes_, at + 10, 2);
    ZipEntry e;
    e.crc32 = static_cast<std::uint32_t>(le(bytes_, at + 16, 4));
    std::uint64_t compressed = le(bytes_, at + 20, 4);
    std::uint64_t uncompressed = le(bytes_, at + 24, 4);
    const std::uint64_t name_length = le(bytes_, at + 28, 2);
    const std::uint64_t extra_length = le(bytes_, at + 30, 2);
    const std::uint64_t comment_length = le(bytes_, at + 32, 2);
    std::uint64_t local = le(bytes_, at + 42, 4);
    const std::uint64_t variable = name_length + extra_length + comment_length;
    VG_INPUT_CHECK(directory_end - at - kCentralHeaderSize >= variable,
                   name_ << ": bad central directory (entry " << i << " runs past the directory)");
    e.name = bytes_.substr(at + kCentralHeaderSize, name_length);
    // zip64 sizes and offset, in this order, for each field the fixed header saturates.
    for (std::uint64_t x = at + kCentralHeaderSize + name_length, x_end = x + extra_length; x_end - x >= 4;) {
      const std::uint64_t id = le(bytes_, x, 2), length = le(bytes_, x + 2, 2);
      VG_INPUT_CHECK(x_end - x - 4 >= length,
                     name_ << ": bad central directory (entry " << e.name << " has a malformed extra field)");
      if (id == 1) {
        std::uint64_t f = x + 4;
        for (std::uint64_t* field : {&uncompressed, &compressed, &local}) {
          if (*field != 0xffffffffu) continue;
          VG_INPUT_CHECK(x + 4 + length - f >= 8,
                         name_ << ": bad central directory (entry " << e.name << " has a short zip64 field)");
          *field = le(bytes_, f, 8);
          f += 8;
        }
      }
      x += 4 + length;
    }
    VG_INPUT_CHECK((flags & 1) == 0, name_ << ": entry " << e.name << " is encrypted");
    VG_INPUT_CHECK(method == 0, name_ << ": entry " << e.name << " is compressed (method " << method
                                      << "); only stored entries are read, as torch.save writes them");
    VG_INPUT_CHECK(compressed == uncompressed,
                   name_ << ": bad central directory (stored entry " << e.name << " has two different sizes)");
    VG_INPUT_CHECK(index_.try_emplace(e.name, entries_.size()).second,
                   name_ << ": bad central directory (entry " << e.name << " twice)");
    VG_INPUT_CHECK(
        local <= size && size - local >= kLocalHeaderSize && le(bytes_, local, 4) == kLocalHeader,
        name_ << ": bad central directory (entry " << e.name << " has no local header at offset " << local << ")");
    const std::uint64_t data = local + kLocalHeaderSize + le(bytes_, local + 26, 2) + le(bytes_, local + 28, 2);
    VG_INPUT_CHECK(data <= size && uncompressed <= size - data,
                   name_ << ": entry " << e.name << " claims " << uncompressed << " bytes at offset " << data
                         << ", past the end of the file (" << size << " bytes; file truncated?)");
    e.data_offset = data;
    e.size = uncompressed;
    entries_.push_back(std::move(e));
    at += kCentralHeaderSize + variable;
  }
}

const ZipEntry* ZipArchive::find(const std::string& entry_name) const {
  const auto it = index_.find(entry_name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

std::span<const std::byte> ZipArchive::read(const ZipEntry& entry) const {
  const auto* data = reinterpret_cast<const std::byte*>(bytes_.data()) + entry.data_offset;
  const std::uint32_t crc = crc_of(data, entry.size);
  VG_INPUT_CHECK(crc == entry.crc32, name_ << ": entry " << entry.name << " is corrupt (CRC-32 mismatch)");
  return {data, static_cast<std::size_t>(entry.size)};
}

}  // namespace voxgrad::io
