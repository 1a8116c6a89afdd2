// The caching allocator (device-agnostic: the backend supplies raw memory and events), host memory
// for CPU tensors, the per-device dispatch, and the scratch arena kernels draw temporary memory from.
// The CUDA backend and cuda_allocator() live in allocator_cuda.cpp (allocator_nocuda.cpp without CUDA).
#include "engine/allocator.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "engine/error.h"
#include "engine/log.h"

namespace voxgrad {

namespace {

constexpr std::size_t kSmallLimit = std::size_t{1} << 20;  // requests up to 1 MiB are "small"
constexpr std::size_t kSmallGranule = 512;
constexpr std::size_t kLargeGranule = std::size_t{2} << 20;
constexpr std::size_t kHostAlignment = 64;  // a cache line, and what AVX-512 loads like
// Large host blocks (volumes, activations) are 2 MiB aligned and advised as huge pages: their first
// touch then costs one page fault per 2 MiB instead of one per 4 KiB, which otherwise dominates
// filling a fresh buffer (inflating a NIfTI volume into a new tensor ran 1.5x slower than into
// memory already touched).
constexpr std::size_t kHugePage = std::size_t{2} << 20;
constexpr std::size_t kHugeHostBlock = std::size_t{4} << 20;

std::size_t round_up(std::size_t n, std::size_t m) { return (n + m - 1) / m * m; }

// "512 B", "1.5 KiB", "16.00 MiB", "1.25 GiB": what a person reads in an out-of-memory message.
std::string format_bytes(std::size_t bytes) {
  char buf[32];
  const double b = static_cast<double>(bytes);
  if (bytes < 1024) {
    std::snprintf(buf, sizeof buf, "%zu B", bytes);
  } else if (bytes < (std::size_t{1} << 20)) {
    std::snprintf(buf, sizeof buf, "%.1f KiB", b / 1024.0);
  } else if (bytes < (std::size_t{1} << 30)) {
    std::snprintf(buf, sizeof buf, "%.2f MiB", b / (1024.0 * 1024.0));
  } else {
    std::snprintf(buf, sizeof buf, "%.2f GiB", b / (1024.0 * 1024.0 * 1024.0));
  }
  return buf;
}

std::uintptr_t address(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }

}  // namespace

// ---- CachingAllocator ---------------------------------------------------------------------------

struct CachingAllocator::Impl {
  struct Block {
    std::size_t size = 0;    // the size class, as obtained from the backend
    void* stream = nullptr;  // the stream it was allocated on; it is only ever reused there
    bool in_use = false;
    std::vector<void*> extra_streams;  // record_stream(): other streams that used it
    std::vector<void*> events;         // after free(): one per extra stream; reusable once all are done
  };
  // Free blocks ordered by (stream, size, address): lower_bound finds the best fit on a stream.
  using FreeKey = std::tuple<std::uintptr_t, std::size_t, std::uintptr_t>;

  std::unique_ptr<AllocatorBackend> backend;
  mutable std::mutex mutex;
  std::unordered_map<void*, Block> blocks;  // every block obtained from the backend and not returned
  std::set<FreeKey> free_blocks;
  std::vector<void*> pending;  // freed, waiting for events of other streams
  AllocatorStats stats;

  static FreeKey key(void* p, const Block& b) { return {address(b.stream), b.size, address(p)}; }

  // The smallest free block on `stream` holding `size` bytes. `bounded`: only if it wastes at
  // most half of itself, so that a 64 MiB block is not pinned by a 2 MiB request while the
  // next 64 MiB request goes to the backend. Blocks are never split (simple, and training
  // loops repeat the same sizes, so exact size classes are the common hit).
  void* take_cached(std::size_t size, void* stream, bool bounded) {
    auto it = free_blocks.lower_bound(FreeKey{address(stream), size, 0});
    if (it == free_blocks.end() || std::get<0>(*it) != address(stream)) return nullptr;
    const std::size_t found = std::get<1>(*it);
    if (bounded && found - size > size) return nullptr;  // found > 2 * size, without overflow
    void* p = reinterpret_cast<void*>(std::get<2>(*it));
    free_blocks.erase(it);
    stats.bytes_cached -= found;
    return p;
  }

  // Blocks whose cross-stream events have all completed join their stream's free list.
  void process_pending() {
    auto ready = [&](void* p) {
      Block& b = blocks.at(p);
      for (void* e : b.events)
        if (!backend->event_done(e)) return false;
      for (void* e : b.events) backend->destroy_event(e);
      b.events.clear();
      free_blocks.insert(key(p, b));
      return true;
    };
    pending.erase(std::remove_if(pending.begin(), pending.end(), ready), pending.end());
  }

  void release_cached() {
    while (!free_blocks.empty()) {
      const auto it = free_blocks.begin();
      void* p = reinterpret_cast<void*>(std::get<2>(*it));
      const std::size_t size = std::get<1>(*it);
      backend->raw_free(p);
      free_blocks.erase(it);
      blocks.erase(p);
      stats.bytes_cached -= size;
      stats.bytes_reserved -= size;
      ++stats.backend_frees;
    }
  }

  Block& find(void* p, const char* what) {
    const auto it = blocks.find(p);
    if (it == blocks.end()) VG_FAIL(what << " of pointer " << p << ", which this allocator did not hand out");
    return it->second;
  }
};

CachingAllocator::CachingAllocator(std::unique_ptr<AllocatorBackend> backend) : impl_(std::make_unique<Impl>()) {
  VG_CHECK(backend != nullptr, "CachingAllocator needs a backend");
  impl_->backend = std::move(backend);
}

// Returns what is cached; blocks still in use belong to their owners, who must not outlive the
// allocator (the process-wide CUDA allocator is never destroyed, see allocator_cuda.cpp).
CachingAllocator::~CachingAllocator() {
  try {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    for (void* p : impl_->pending) {
      Impl::Block& b = impl_->blocks.at(p);
      for (void* e : b.events) impl_->backend->destroy_event(e);
      impl_->backend->raw_free(p);
      impl_->blocks.erase(p);
    }
    impl_->pending.clear();
    impl_->release_cached();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "voxgrad: warning: releasing cached memory failed: %s\n", e.what());
  }
}

std::size_t CachingAllocator::round_size(std::size_t bytes) {
  if (bytes <= kSmallLimit) return std::max(kSmallGranule, round_up(bytes, kSmallGranule));
  VG_CHECK(bytes <= std::numeric_limits<std::size_t>::max() - kLargeGranule,
           "cannot allocate " << bytes << " bytes: larger than any device");
  return round_up(bytes, kLargeGranule);
}

void* CachingAllocator::allocate(std::size_t bytes, kernels::Stream stream) {
  const std::size_t size = round_size(bytes);
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mutex);
  m.process_pending();

  void* p = m.take_cached(size, stream.handle, /*bounded=*/true);
  if (p == nullptr) {
    void* fresh = m.backend->raw_allocate(size);
    if (fresh == nullptr) {
      // Under memory pressure an oversized cached block on this stream beats failing.
      p = m.take_cached(size, stream.handle, /*bounded=*/false);
      if (p == nullptr) {
        // Blocks cached on other streams, or too small, are what is left: hand them all back
        // (defragmenting the backend's view) and try once more.
        m.release_cached();
        fresh = m.backend->raw_allocate(size);
        if (fresh == nullptr) {
          VG_FAIL("CUDA out of memory: tried to allocate "
                  << format_bytes(bytes) << "; in use " << format_bytes(m.stats.bytes_in_use) << ", cached "
                  << format_bytes(m.stats.bytes_cached) << ", reserved " << format_bytes(m.stats.bytes_reserved)
                  << " (a smaller batch or patch size may fit)");
        }
      }
    }
    if (fresh != nullptr) {
      Impl::Block b;
      b.size = size;
      b.stream = stream.handle;
      m.blocks.emplace(fresh, std::move(b));
      ++m.stats.backend_allocations;
      m.stats.bytes_reserved += size;
      p = fresh;
    }
  }

  Impl::Block& b = m.blocks.at(p);
  b.in_use = true;
  ++m.stats.allocations;
  m.stats.bytes_in_use += b.size;
  m.stats.peak_bytes_in_use = std::max(m.stats.peak_bytes_in_use, m.stats.bytes_in_use);
  return p;
}

void CachingAllocator::free(void* p) {
  if (p == nullptr) return;
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mutex);
  Impl::Block& b = m.find(p, "free");
  VG_CHECK(b.in_use, "double free of pointer " << p);

  // Record the events first: if the backend throws, the block simply stays in use.
  std::vector<void*> events;
  try {
    for (void* s : b.extra_streams) events.push_back(m.backend->record_event(kernels::Stream{s}));
  } catch (...) {
    for (void* e : events) m.backend->destroy_event(e);
    throw;
  }

  b.in_use = false;
  b.extra_streams.clear();
  m.stats.bytes_in_use -= b.size;
  m.stats.bytes_cached += b.size;
  if (events.empty()) {
    m.free_blocks.insert(Impl::key(p, b));
  } else {
    b.events = std::move(events);
    m.pending.push_back(p);
  }
}

void CachingAllocator::record_stream(void* p, kernels::Stream stream) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mutex);
  Impl::Block& b = m.find(p, "record_stream");
  VG_CHECK(b.in_use, "record_stream on pointer " << p << ", which is not in use");
  if (stream.handle == b.stream) return;  // its own stream orders every reuse already
  if (std::find(b.extra_streams.begin(), b.extra_streams.end(), stream.handle) == b.extra_streams.end())
    b.extra_streams.push_back(stream.handle);
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->stats;
}

void CachingAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->stats.peak_bytes_in_use = impl_->stats.bytes_in_use;
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->process_pending();
  impl_->release_cached();
}

// ---- host memory --------------------------------------------------------------------------------

namespace {
// Constant-initialised (std::mutex has a constexpr constructor), so a tensor freed during static
// destruction still finds them.
std::mutex g_host_mutex;
AllocatorStats g_host_stats;

std::size_t host_block_size(std::size_t bytes) {
  VG_CHECK(bytes <= std::numeric_limits<std::size_t>::max() - kHostAlignment,
           "cannot allocate " << bytes << " bytes of host memory");
  // Zero bytes still get a real, unique 64-byte block, so every tensor has a data pointer.
  if (bytes < kHugeHostBlock) return std::max(kHostAlignment, round_up(bytes, kHostAlignment));
  return round_up(bytes, kHugePage);
}

// Large blocks a freed tensor leaves are kept, by size, for the next request of the same size: a
// training step or a sliding window allocates the same shapes over and over, and a fresh block's
// first touch (the kernel zeroing its pages) cost more than the pass of the op that wrote it
// (LeakyReLU ran at 6 % of the copy bandwidth). A request that finds no block of its size first
// returns cached blocks to the system until they cover it, so reserved memory (in use plus cached)
// only grows when a fresh block is unavoidable: it never exceeds the peak a cacheless allocator
// would reach. Leaked on purpose, like the mutex's stats: tensors may be freed during exit.
std::map<std::size_t, std::vector<void*>>& host_cache() {
  static auto* cache = new std::map<std::size_t, std::vector<void*>>;
  return *cache;
}

// Takes cached blocks, largest first, until they add up to `needed` bytes or none are left;
// the caller frees them outside the lock. Caller holds g_host_mutex.
std::vector<std::pair<void*, std::size_t>> take_cached(std::size_t needed) {
  std::vector<std::pair<void*, std::size_t>> taken;
  std::size_t bytes = 0;
  auto& cache = host_cache();
  while (bytes < needed && !cache.empty()) {
    auto it = std::prev(cache.end());
    taken.emplace_back(it->second.back(), it->first);
    bytes += it->first;
    it->second.pop_back();
    if (it->second.empty()) cache.erase(it);
  }
  for (const auto& [block, size] : taken) {
    g_host_stats.bytes_cached -= size;
    g_host_stats.bytes_reserved -= size;
    ++g_host_stats.backend_frees;
  }
  return taken;
}
}  // namespace

void* host_allocate(std::size_t bytes) {
  const std::size_t size = host_block_size(bytes);
  const bool huge = size >= kHugeHostBlock;
  if (huge) {
    std::vector<std::pair<void*, std::size_t>> released;
    {
      std::lock_guard<std::mutex> lock(g_host_mutex);
      auto& cache = host_cache();
      auto it = cache.find(size);
      if (it != cache.end()) {
        void* block = it->second.back();
        it->second.pop_back();
        if (it->second.empty()) cache.erase(it);
        ++g_host_stats.allocations;
        g_host_stats.bytes_cached -= size;
        g_host_stats.bytes_in_use += size;
        g_host_stats.peak_bytes_in_use = std::max(g_host_stats.peak_bytes_in_use, g_host_stats.bytes_in_use);
        return block;
      }
      released = take_cached(size);
    }
    for (const auto& [block, unused] : released) std::free(block);
  }
  void* p = std::aligned_alloc(huge ? kHugePage : kHostAlignment, size);
  // Advice only: a kernel without transparent huge pages refuses it and nothing changes.
  if (p != nullptr && huge) (void)madvise(p, size, MADV_HUGEPAGE);
  if (p == nullptr) {
    std::size_t in_use = 0;
    {
      std::lock_guard<std::mutex> lock(g_host_mutex);
      in_use = g_host_stats.bytes_in_use;
    }
    VG_FAIL("out of host memory: tried to allocate " << format_bytes(bytes) << "; voxgrad holds "
                                                     << format_bytes(in_use));
  }
  std::lock_guard<std::mutex> lock(g_host_mutex);
  ++g_host_stats.allocations;
  ++g_host_stats.backend_allocations;
  g_host_stats.bytes_in_use += size;
  g_host_stats.bytes_reserved += size;
  g_host_stats.peak_bytes_in_use = std::max(g_host_stats.peak_bytes_in_use, g_host_stats.bytes_in_use);
  return p;
}

void host_free(void* p, std::size_t bytes) {
  if (p == nullptr) return;
  const std::size_t size = host_block_size(bytes);
  std::lock_guard<std::mutex> lock(g_host_mutex);
  g_host_stats.bytes_in_use -= size;
  if (size >= kHugeHostBlock) {
    host_cache()[size].push_back(p);
    g_host_stats.bytes_cached += size;
    return;
  }
  std::free(p);
  ++g_host_stats.backend_frees;
  g_host_stats.bytes_reserved -= size;
}

void host_empty_cache() {
  std::vector<std::pair<void*, std::size_t>> released;
  {
    std::lock_guard<std::mutex> lock(g_host_mutex);
    released = take_cached(std::numeric_limits<std::size_t>::max());
  }
  for (const auto& [block, unused] : released) std::free(block);
}

AllocatorStats host_allocator_stats() {
  std::lock_guard<std::mutex> lock(g_host_mutex);
  return g_host_stats;
}

// ---- per-device dispatch ------------------------------------------------------------------------

void* device_allocate(Device d, std::size_t bytes) {
  if (d.is_cpu()) return host_allocate(bytes);
  // The block's first use is ordered on the device's engine stream, where every op runs.
  return cuda_allocator().allocate(bytes, stream_for(d));
}

void device_free(Device d, void* p, std::size_t bytes) {
  if (d.is_cpu()) {
    host_free(p, bytes);
    return;
  }
  cuda_allocator().free(p);
}

// ---- scratch arena ------------------------------------------------------------------------------

ScratchArena::ScratchArena(Device d) : device_(d) {}

// On the GPU, freeing here is safe without a synchronize: the arena's users queued their kernels
// on the device's engine stream before this point, the blocks return to that stream's free list,
// and any later reuse is queued on the same stream, so it runs after those kernels finish.
// (A user that ran a kernel on another stream must call record_stream first.)
ScratchArena::~ScratchArena() {
  for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) {
    try {
      device_free(device_, it->p, it->bytes);
    } catch (const std::exception& e) {
      logging::warning(std::string("scratch memory could not be released: ") + e.what());
    }
  }
}

void* ScratchArena::get(std::size_t bytes) {
  blocks_.reserve(blocks_.size() + 1);  // so recording the block below cannot throw and leak it
  void* p = device_allocate(device_, bytes);
  blocks_.push_back(Block{p, bytes});
  return p;
}

}  // namespace voxgrad
