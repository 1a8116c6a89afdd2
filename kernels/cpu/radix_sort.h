// A stable least-significant-digit radix sort for the CPU kernels: 64-bit items ordered by their
// high 32 bits (the key) while the low 32 bits (the payload) travel along. The threads of a call
// split the items into contiguous chunks and scatter each digit in chunk order, so the result is
// the one stable order whatever the thread count.
#pragma once

#include <cstdint>

namespace voxgrad::kernels::cpu {

// The item of a key and its payload.
inline std::uint64_t radix_item(std::uint32_t key, std::uint32_t payload) {
  return (static_cast<std::uint64_t>(key) << 32) | payload;
}
inline std::uint32_t radix_key(std::uint64_t item) { return static_cast<std::uint32_t>(item >> 32); }
inline std::uint32_t radix_payload(std::uint64_t item) { return static_cast<std::uint32_t>(item); }

// Sorts items[0, count) by key, ties in their given order, using scratch[0, count) as the other
// buffer; returns whichever of the two holds the result. A pass over a digit every key shares is
// skipped. `parallel`: use the OpenMP threads (false inside a parallel region that already splits
// the work). Buffers aligned to 64 bytes make the whole-line stores aligned. count < 2^32.
std::uint64_t* radix_sort_by_key(std::uint64_t* items, std::uint64_t* scratch, std::int64_t count, bool parallel);

}  // namespace voxgrad::kernels::cpu
