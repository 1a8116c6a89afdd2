// A minimal PNG writer for pictures the commands produce (eval's per-case slices): 8-bit RGB,
// no interlace, every row with filter 0, one IDAT deflated by zlib. Written atomically.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace voxgrad::io {

// Writes `rgb` (height rows of width pixels, 3 bytes each, top row first) as a PNG file at `path`
// through a temporary file and a rename. Throws voxgrad::Error starting with the path when the
// sizes disagree or the file cannot be written.
void write_png_rgb(const std::string& path, int width, int height, std::span<const std::uint8_t> rgb);

}  // namespace voxgrad::io
