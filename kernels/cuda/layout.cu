// CUDA data movement: strided row copies through the copy engines (cudaMemcpy2DAsync) and
// host/device transfers, all ordered on the caller's stream.
#include <climits>

#include "kernels/cuda/check.h"
#include "kernels/layout.h"

namespace voxgrad::kernels::cuda {

void copy_rows(const void* src, std::int64_t src_pitch, void* dst, std::int64_t dst_pitch, std::int64_t rows,
               std::int64_t row_bytes, Stream s) {
  VG_CHECK(rows >= 0 && row_bytes >= 0, "copy_rows: negative extent (" << rows << " rows of " << row_bytes << " bytes)");
  if (rows == 0 || row_bytes == 0) return;
  if (rows == 1 || (src_pitch == row_bytes && dst_pitch == row_bytes)) {
    VG_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<std::size_t>(rows * row_bytes), cudaMemcpyDeviceToDevice,
                                  native(s)));
    return;
  }
  if (src_pitch <= INT_MAX && dst_pitch <= INT_MAX) {
    VG_CUDA_CHECK(cudaMemcpy2DAsync(dst, static_cast<std::size_t>(dst_pitch), src, static_cast<std::size_t>(src_pitch),
                                    static_cast<std::size_t>(row_bytes), static_cast<std::size_t>(rows),
                                    cudaMemcpyDeviceToDevice, native(s)));
    return;
  }
  // Pitches beyond the 2-D copy's limit (cudaDevAttrMaxPitch, 2^31 - 1 on current GPUs): row by row.
  const char* from = static_cast<const char*>(src);
  char* to = static_cast<char*>(dst);
  for (std::int64_t r = 0; r < rows; ++r)
    VG_CUDA_CHECK(cudaMemcpyAsync(to + r * dst_pitch, from + r * src_pitch, static_cast<std::size_t>(row_bytes),
                                  cudaMemcpyDeviceToDevice, native(s)));
}

void copy_to_device(const void* host, void* device, std::size_t bytes, Stream s) {
  if (bytes == 0) return;
  VG_CUDA_CHECK(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, native(s)));
}

void copy_to_host(const void* device, void* host, std::size_t bytes, Stream s) {
  if (bytes == 0) return;
  VG_CUDA_CHECK(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, native(s)));
  VG_CUDA_CHECK(cudaStreamSynchronize(native(s)));
}

void copy_device_to_device(const void* src, void* dst, std::size_t bytes, Stream s) {
  if (bytes == 0) return;
  VG_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, native(s)));
}

}  // namespace voxgrad::kernels::cuda
