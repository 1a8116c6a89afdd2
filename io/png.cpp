// PNG encoding on zlib alone: signature, IHDR, one IDAT (the filter-0 scanlines through compress2),
// IEND, each chunk closed by zlib's CRC-32 of its type and data (PNG spec, sections 5 and 11).
#include "io/png.h"

#include <zlib.h>

#include <algorithm>
#include <vector>

#include "engine/error.h"
#include "io/gzip_stream.h"

namespace voxgrad::io {

namespace {

void put_u32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  // PNG integers are big-endian whatever the host.
  out.push_back(static_cast<std::uint8_t>(v >> 24));
  out.push_back(static_cast<std::uint8_t>(v >> 16));
  out.push_back(static_cast<std::uint8_t>(v >> 8));
  out.push_back(static_cast<std::uint8_t>(v));
}

void put_chunk(std::vector<std::uint8_t>& out, const char type[4], const std::uint8_t* data, std::size_t n) {
  put_u32(out, static_cast<std::uint32_t>(n));
  const std::size_t type_at = out.size();
  out.insert(out.end(), type, type + 4);
  if (n > 0) out.insert(out.end(), data, data + n);
  // The CRC covers the type and the data, not the length.
  const uLong crc = crc32(crc32(0L, Z_NULL, 0), out.data() + type_at, static_cast<uInt>(4 + n));
  put_u32(out, static_cast<std::uint32_t>(crc));
}

}  // namespace

void write_png_rgb(const std::string& path, int width, int height, std::span<const std::uint8_t> rgb) {
  // The spec allows up to 2^31 - 1; a bound far below keeps the scanline buffer within uInt.
  if (width <= 0 || height <= 0 || width > (1 << 16) || height > (1 << 16))
    throw Error(path + ": PNG size " + std::to_string(width) + "x" + std::to_string(height) + " is out of range");
  const std::size_t row = 3 * static_cast<std::size_t>(width);
  if (rgb.size() != row * static_cast<std::size_t>(height))
    throw Error(path + ": PNG of " + std::to_string(width) + "x" + std::to_string(height) + " needs " +
                std::to_string(row * height) + " bytes, got " + std::to_string(rgb.size()));

  // Scanlines, each after its filter-type byte (0: none; the pictures are small and mostly flat).
  std::vector<std::uint8_t> raw((row + 1) * height);
  for (int y = 0; y < height; ++y) {
    raw[y * (row + 1)] = 0;
    std::copy_n(rgb.data() + y * row, row, raw.data() + y * (row + 1) + 1);
  }
  uLongf packed_size = compressBound(static_cast<uLong>(raw.size()));
  std::vector<std::uint8_t> packed(packed_size);
  if (compress2(packed.data(), &packed_size, raw.data(), static_cast<uLong>(raw.size()), 6) != Z_OK)
    throw Error(path + ": zlib could not compress the PNG data");

  std::vector<std::uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  std::vector<std::uint8_t> ihdr;
  put_u32(ihdr, static_cast<std::uint32_t>(width));
  put_u32(ihdr, static_cast<std::uint32_t>(height));
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // bit depth 8, colour type 2 (RGB), deflate, filter 0, no interlace
  put_chunk(png, "IHDR", ihdr.data(), ihdr.size());
  put_chunk(png, "IDAT", packed.data(), packed_size);
  put_chunk(png, "IEND", nullptr, 0);
  write_file_bytes(path, std::as_bytes(std::span<const std::uint8_t>(png)));
}

}  // namespace voxgrad::io
