// Data movement: strided 2-D block copies (the whole of concat, slice and their backwards, viewing
// a tensor as (outer, axis * inner)), and host/device transfers.
#pragma once

#include "kernels/common.h"

namespace voxgrad::kernels {

// Copy `rows` rows of `row_bytes` bytes from src (rows `src_pitch` bytes apart) to dst
// (rows `dst_pitch` bytes apart). Pointers already point at the first byte to move.
namespace cpu {
void copy_rows(const void* src, std::int64_t src_pitch, void* dst, std::int64_t dst_pitch, std::int64_t rows,
               std::int64_t row_bytes);
}  // namespace cpu

namespace cuda {
void copy_rows(const void* src, std::int64_t src_pitch, void* dst, std::int64_t dst_pitch, std::int64_t rows,
               std::int64_t row_bytes, Stream s);
// Transfers between host and device memory, ordered on `s`; to_host waits for completion so the
// caller may read the bytes at once.
void copy_to_device(const void* host, void* device, std::size_t bytes, Stream s);
void copy_to_host(const void* device, void* host, std::size_t bytes, Stream s);
void copy_device_to_device(const void* src, void* dst, std::size_t bytes, Stream s);
}  // namespace cuda

}  // namespace voxgrad::kernels
