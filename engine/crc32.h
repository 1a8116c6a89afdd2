// zlib's CRC-32 over buffers of any size: the checksum of voxgrad's files, and the fingerprint
// data-parallel ranks compare.
#pragma once

#include <cstddef>
#include <cstdint>

namespace voxgrad {

// The CRC-32 of `bytes` bytes at `data` continuing `crc` (start with 0); zlib's crc32, taken in
// pieces of at most 2^30 bytes since zlib's lengths are 32-bit.
std::uint32_t crc32_update(std::uint32_t crc, const void* data, std::size_t bytes);

}  // namespace voxgrad
