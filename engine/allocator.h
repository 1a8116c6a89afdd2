// Memory for tensors and kernel scratch. Device memory goes through one caching allocator
// (size classes, per-stream free lists, no cudaFree on reuse); host memory is aligned memory whose
// large blocks are kept by size for reuse (host_allocate).
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "../kernels/common.h"
#include "device.h"

namespace voxgrad {

// Byte counts are of whole blocks (the size class, not the bytes asked for), so that
// bytes_reserved == bytes_in_use + bytes_cached holds at every moment.
struct AllocatorStats {
  std::size_t bytes_in_use = 0;         // handed out and not yet freed
  std::size_t peak_bytes_in_use = 0;    // high-water mark of bytes_in_use since reset_peak()
  std::size_t bytes_cached = 0;         // freed but kept: free lists, and blocks waiting for record_stream events
  std::size_t bytes_reserved = 0;       // obtained from the backend: in use + cached
  std::size_t allocations = 0;          // allocate() calls that succeeded
  std::size_t backend_allocations = 0;  // of them, served by the backend (cudaMalloc), not the cache
  std::size_t backend_frees = 0;        // blocks returned to the backend (empty_cache, OOM retry)
};

// The raw memory source under a CachingAllocator: cudaMalloc/cudaFree and CUDA events on the GPU;
// tests substitute a host-memory fake to exercise the caching logic on machines without a GPU.
class AllocatorBackend {
 public:
  virtual ~AllocatorBackend() = default;
  virtual void* raw_allocate(std::size_t bytes) = 0;  // nullptr when out of memory
  virtual void raw_free(void* p) = 0;
  // Stream-ordered reuse across streams: an event recorded on `stream` and later polled.
  virtual void* record_event(kernels::Stream stream) = 0;
  virtual bool event_done(void* event) = 0;
  virtual void destroy_event(void* event) = 0;
};

class CachingAllocator {
 public:
  explicit CachingAllocator(std::unique_ptr<AllocatorBackend> backend);
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // A block of at least `bytes` whose first use is ordered on `stream`. Reuses the smallest cached
  // block freed on the same stream (stream order makes that safe without a sync) if it is at most
  // twice the size class; blocks are never split. When the backend is out of memory: any larger
  // cached block on the stream, else empty_cache() and one more try, else an Error saying how much
  // was asked for, in use and cached. Zero bytes get a real 512-byte block (unique, non-null).
  void* allocate(std::size_t bytes, kernels::Stream stream);
  // Back to the free list of the stream it was allocated on (after events of record_stream pass).
  // nullptr is ignored; a pointer not handed out here, or freed twice, is an Error.
  void free(void* p);
  // `p` is also used on `stream`: after free(), its reuse waits for the work queued there until then.
  void record_stream(void* p, kernels::Stream stream);
  AllocatorStats stats() const;
  void reset_peak();
  // Returns every cached (unused) block to the backend; blocks still waiting for record_stream
  // events stay until those are done.
  void empty_cache();

  // Size classes: requests round up to 512 B below 1 MiB and to 2 MiB multiples above.
  static std::size_t round_size(std::size_t bytes);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The process-wide allocator for CUDA memory (throws when CUDA is unavailable).
CachingAllocator& cuda_allocator();

// Host memory for CPU tensors: 64-byte aligned, counted in the same stats shape (sizes rounded up
// to 64; zero bytes get a unique 64-byte block). host_free needs the size that was asked for.
// Blocks of 4 MiB and more are 2 MiB aligned and, once freed, kept for the next request of the
// same size; a request that misses first returns cached blocks to the system, so bytes_reserved
// never exceeds the most bytes ever in use.
void* host_allocate(std::size_t bytes);
void host_free(void* p, std::size_t bytes);
AllocatorStats host_allocator_stats();
// Returns every cached host block to the system.
void host_empty_cache();

// Memory for `bytes` on `d`, and its release.
void* device_allocate(Device d, std::size_t bytes);
void device_free(Device d, void* p, std::size_t bytes);

// kernels::Scratch on the device's caching allocator: every block is freed (stream-ordered) when
// the arena goes out of scope. On the CPU it hands out host memory.
class ScratchArena final : public kernels::Scratch {
 public:
  explicit ScratchArena(Device d);
  ~ScratchArena() override;
  ScratchArena(const ScratchArena&) = delete;
  ScratchArena& operator=(const ScratchArena&) = delete;
  void* get(std::size_t bytes) override;

 private:
  Device device_;
  struct Block {
    void* p;
    std::size_t bytes;
  };
  std::vector<Block> blocks_;
};

}  // namespace voxgrad
