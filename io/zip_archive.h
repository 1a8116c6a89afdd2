// A read-only zip archive of stored (uncompressed) entries, as torch.save writes them: the
// central directory (zip64 included) is read, every size and offset is bounded by the file, and
// each entry's CRC-32 is checked when it is read. Compressed or encrypted entries are refused.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace voxgrad::io {

struct ZipEntry {
  std::string name;
  std::uint64_t data_offset = 0;  // of the entry's bytes, past its local header
  std::uint64_t size = 0;
  std::uint32_t crc32 = 0;
};

class ZipArchive {
 public:
  // Errors are InputErrors that start with "`name`: ".
  static ZipArchive open_file(const std::string& path);
  static ZipArchive from_bytes(std::string bytes, const std::string& name);

  const std::string& name() const { return name_; }
  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(const std::string& entry_name) const;  // nullptr when absent
  // The entry's bytes, after its CRC-32 is checked; valid as long as the archive.
  std::span<const std::byte> read(const ZipEntry& entry) const;

 private:
  ZipArchive(std::string bytes, std::string name);
  void read_central_directory();

  std::string bytes_;
  std::string name_;
  std::vector<ZipEntry> entries_;
  std::map<std::string, std::size_t> index_;  // name -> position in entries_
};

}  // namespace voxgrad::io
