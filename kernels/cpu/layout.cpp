// CPU twin of the strided row copy behind concat and slice: rows of bytes from one pitch to another.
#include "kernels/layout.h"

#include <cstring>

#include "kernels/error.h"

namespace voxgrad::kernels::cpu {

namespace {
// Below this many bytes one thread copies faster than a parallel region starts.
constexpr std::int64_t kParallelBytes = 1 << 20;
// Piece size when one long contiguous copy is split between threads.
constexpr std::int64_t kPieceBytes = 1 << 18;
}  // namespace

void copy_rows(const void* src, std::int64_t src_pitch, void* dst, std::int64_t dst_pitch, std::int64_t rows,
               std::int64_t row_bytes) {
  VG_CHECK(rows >= 0 && row_bytes >= 0, "copy_rows: negative extent (" << rows << " rows of " << row_bytes << " bytes)");
  if (rows == 0 || row_bytes == 0) return;
  const char* s = static_cast<const char*>(src);
  char* d = static_cast<char*>(dst);
  const std::int64_t total = rows * row_bytes;
  if (rows == 1 || (src_pitch == row_bytes && dst_pitch == row_bytes)) {
    // One contiguous block: split it into pieces so a large copy still uses every core.
    const std::int64_t pieces = (total + kPieceBytes - 1) / kPieceBytes;
#pragma omp parallel for schedule(static) if (total > kParallelBytes)
    for (std::int64_t k = 0; k < pieces; ++k) {
      const std::int64_t begin = k * kPieceBytes;
      const std::int64_t len = begin + kPieceBytes < total ? kPieceBytes : total - begin;
      std::memcpy(d + begin, s + begin, static_cast<std::size_t>(len));
    }
    return;
  }
#pragma omp parallel for schedule(static) if (total > kParallelBytes)
  for (std::int64_t r = 0; r < rows; ++r)
    std::memcpy(d + r * dst_pitch, s + r * src_pitch, static_cast<std::size_t>(row_bytes));
}

}  // namespace voxgrad::kernels::cpu
