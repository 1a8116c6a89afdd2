// The caching allocator's rules (size classes, per-stream reuse, record_stream, out-of-memory retry,
// exact stats) against a host-memory fake backend, host memory and the scratch arena on the CPU,
// and the real CUDA allocator on a GPU machine.
#include "engine/allocator.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <thread>

#include "engine/error.h"
#include "tests/test_support.h"

namespace voxgrad {
namespace {

// Substring checks without gmock (the suites link gtest only).
::testing::AssertionResult contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "' does not contain '" << part << "'";
}

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * 1024;

// What the fake backend saw; shared with the test because the allocator owns the backend.
struct FakeLog {
  std::size_t limit = std::numeric_limits<std::size_t>::max();  // bytes the fake "device" holds
  std::size_t reserved = 0;
  int raw_allocations = 0;
  int raw_frees = 0;
  std::vector<std::size_t> requested;  // sizes passed to raw_allocate
  std::map<void*, std::size_t> live;

  struct Event {
    void* stream;
    bool done = false;
    bool destroyed = false;
  };
  std::vector<std::unique_ptr<Event>> events;
  int live_events() const {
    int n = 0;
    for (const auto& e : events) n += e->destroyed ? 0 : 1;
    return n;
  }
};

class FakeBackend final : public AllocatorBackend {
 public:
  explicit FakeBackend(std::shared_ptr<FakeLog> log) : log_(std::move(log)) {}
  ~FakeBackend() override {
    for (auto& [p, size] : log_->live) std::free(p);
    log_->live.clear();
  }
  void* raw_allocate(std::size_t bytes) override {
    log_->requested.push_back(bytes);
    if (bytes > log_->limit - log_->reserved) return nullptr;
    void* p = std::malloc(bytes);
    log_->live[p] = bytes;
    log_->reserved += bytes;
    ++log_->raw_allocations;
    return p;
  }
  void raw_free(void* p) override {
    const auto it = log_->live.find(p);
    if (it == log_->live.end()) throw std::logic_error("fake backend: raw_free of an unknown block");
    log_->reserved -= it->second;
    log_->live.erase(it);
    std::free(p);
    ++log_->raw_frees;
  }
  void* record_event(kernels::Stream stream) override {
    log_->events.push_back(std::make_unique<FakeLog::Event>(FakeLog::Event{stream.handle}));
    return log_->events.back().get();
  }
  bool event_done(void* event) override { return static_cast<FakeLog::Event*>(event)->done; }
  void destroy_event(void* event) override { static_cast<FakeLog::Event*>(event)->destroyed = true; }

 private:
  std::shared_ptr<FakeLog> log_;
};

const kernels::Stream kStreamA{reinterpret_cast<void*>(0xA0)};
const kernels::Stream kStreamB{reinterpret_cast<void*>(0xB0)};

struct Fixture {
  std::shared_ptr<FakeLog> log = std::make_shared<FakeLog>();
  CachingAllocator alloc{std::make_unique<FakeBackend>(log)};
};

TEST(CachingAllocator, RoundsToSizeClasses) {
  EXPECT_EQ(CachingAllocator::round_size(0), 512u);
  EXPECT_EQ(CachingAllocator::round_size(1), 512u);
  EXPECT_EQ(CachingAllocator::round_size(512), 512u);
  EXPECT_EQ(CachingAllocator::round_size(513), 1024u);
  EXPECT_EQ(CachingAllocator::round_size(1000), 1024u);
  EXPECT_EQ(CachingAllocator::round_size(MiB - 1), MiB);
  EXPECT_EQ(CachingAllocator::round_size(MiB), MiB);
  EXPECT_EQ(CachingAllocator::round_size(MiB + 1), 2 * MiB);
  EXPECT_EQ(CachingAllocator::round_size(2 * MiB), 2 * MiB);
  EXPECT_EQ(CachingAllocator::round_size(2 * MiB + 1), 4 * MiB);
  EXPECT_EQ(CachingAllocator::round_size(5 * MiB), 6 * MiB);
  EXPECT_THROW(CachingAllocator::round_size(std::numeric_limits<std::size_t>::max()), Error);
}

TEST(CachingAllocator, BackendSeesRoundedSizes) {
  Fixture f;
  void* a = f.alloc.allocate(1000, kStreamA);
  void* b = f.alloc.allocate(3 * MiB, kStreamA);
  EXPECT_EQ(f.log->requested, (std::vector<std::size_t>{1024, 4 * MiB}));
  f.alloc.free(a);
  f.alloc.free(b);
}

TEST(CachingAllocator, ReusesFreedBlockWithoutBackendAllocation) {
  Fixture f;
  void* a = f.alloc.allocate(1000, kStreamA);
  f.alloc.free(a);
  void* b = f.alloc.allocate(1000, kStreamA);
  EXPECT_EQ(b, a);
  f.alloc.free(b);
  // Same size class, different request: still the same block.
  void* c = f.alloc.allocate(600, kStreamA);
  EXPECT_EQ(c, a);
  EXPECT_EQ(f.log->raw_allocations, 1);
  EXPECT_EQ(f.alloc.stats().backend_allocations, 1u);
  EXPECT_EQ(f.alloc.stats().allocations, 3u);
  f.alloc.free(c);
}

TEST(CachingAllocator, BestFitPicksTheSmallestLargeEnoughBlock) {
  Fixture f;
  void* big = f.alloc.allocate(4 * KiB, kStreamA);
  void* mid = f.alloc.allocate(2 * KiB, kStreamA);
  void* small = f.alloc.allocate(1 * KiB, kStreamA);
  f.alloc.free(big);
  f.alloc.free(mid);
  f.alloc.free(small);
  EXPECT_EQ(f.alloc.allocate(1536, kStreamA), mid);  // 2 KiB fits best; 1 KiB is too small
  EXPECT_EQ(f.alloc.allocate(2 * KiB + 1, kStreamA), big);
  EXPECT_EQ(f.log->raw_allocations, 3);
}

TEST(CachingAllocator, DoesNotHandABigBlockToASmallRequest) {
  Fixture f;
  void* big = f.alloc.allocate(64 * MiB, kStreamA);
  f.alloc.free(big);
  void* small = f.alloc.allocate(2 * MiB, kStreamA);
  EXPECT_NE(small, big);  // more than twice the size class: the backend serves it
  EXPECT_EQ(f.log->raw_allocations, 2);
  void* fits = f.alloc.allocate(40 * MiB, kStreamA);  // 64 <= 2 * 40: reused
  EXPECT_EQ(fits, big);
  EXPECT_EQ(f.alloc.stats().bytes_in_use, 66 * MiB);  // whole blocks are counted
  f.alloc.free(small);
  f.alloc.free(fits);
}

TEST(CachingAllocator, StatsAreExact) {
  Fixture f;
  void* a = f.alloc.allocate(100, kStreamA);      // 512 B
  void* b = f.alloc.allocate(3 * MiB, kStreamA);  // 4 MiB
  void* c = f.alloc.allocate(MiB, kStreamB);      // 1 MiB
  AllocatorStats s = f.alloc.stats();
  const std::size_t all = 512 + 4 * MiB + MiB;
  EXPECT_EQ(s.bytes_in_use, all);
  EXPECT_EQ(s.peak_bytes_in_use, all);
  EXPECT_EQ(s.bytes_cached, 0u);
  EXPECT_EQ(s.bytes_reserved, all);
  EXPECT_EQ(s.allocations, 3u);
  EXPECT_EQ(s.backend_allocations, 3u);
  EXPECT_EQ(s.backend_frees, 0u);

  f.alloc.free(b);
  s = f.alloc.stats();
  EXPECT_EQ(s.bytes_in_use, 512 + MiB);
  EXPECT_EQ(s.peak_bytes_in_use, all);
  EXPECT_EQ(s.bytes_cached, 4 * MiB);
  EXPECT_EQ(s.bytes_reserved, all);

  f.alloc.reset_peak();
  EXPECT_EQ(f.alloc.stats().peak_bytes_in_use, 512 + MiB);

  void* d = f.alloc.allocate(4 * MiB, kStreamA);  // the cached 4 MiB block
  EXPECT_EQ(d, b);
  s = f.alloc.stats();
  EXPECT_EQ(s.bytes_in_use, all);
  EXPECT_EQ(s.peak_bytes_in_use, all);
  EXPECT_EQ(s.bytes_cached, 0u);
  EXPECT_EQ(s.allocations, 4u);
  EXPECT_EQ(s.backend_allocations, 3u);

  f.alloc.free(a);
  f.alloc.free(c);
  f.alloc.free(d);
  s = f.alloc.stats();
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.bytes_cached, all);
  EXPECT_EQ(s.bytes_reserved, all);
  EXPECT_EQ(s.bytes_reserved, s.bytes_in_use + s.bytes_cached);
  EXPECT_EQ(f.log->reserved, all);  // the backend agrees
}

TEST(CachingAllocator, BlocksFreedOnOneStreamAreNotHandedToAnother) {
  Fixture f;
  void* a = f.alloc.allocate(1000, kStreamA);
  f.alloc.free(a);
  void* b = f.alloc.allocate(1000, kStreamB);
  EXPECT_NE(b, a);
  EXPECT_EQ(f.log->raw_allocations, 2);
  void* c = f.alloc.allocate(1000, kStreamA);
  EXPECT_EQ(c, a);
  f.alloc.free(b);
  void* d = f.alloc.allocate(1000, kStreamA);  // A's list is empty; B's block is not A's
  EXPECT_NE(d, b);
  EXPECT_EQ(f.log->raw_allocations, 3);
  EXPECT_EQ(f.alloc.allocate(1000, kStreamB), b);
  EXPECT_EQ(f.log->raw_allocations, 3);
}

TEST(CachingAllocator, RecordStreamDelaysReuseUntilTheEventIsDone) {
  Fixture f;
  void* a = f.alloc.allocate(1000, kStreamA);
  f.alloc.record_stream(a, kStreamA);  // its own stream: nothing to wait for
  f.alloc.record_stream(a, kStreamB);
  f.alloc.record_stream(a, kStreamB);  // once per stream
  EXPECT_TRUE(f.log->events.empty());  // events are recorded at free, not before
  f.alloc.free(a);
  ASSERT_EQ(f.log->events.size(), 1u);
  EXPECT_EQ(f.log->events[0]->stream, kStreamB.handle);
  EXPECT_EQ(f.alloc.stats().bytes_cached, 1024u);

  void* b = f.alloc.allocate(1000, kStreamA);  // stream B may still be reading `a`
  EXPECT_NE(b, a);
  EXPECT_EQ(f.log->raw_allocations, 2);

  f.alloc.empty_cache();  // a pending block is not the cache's to return yet
  EXPECT_EQ(f.log->raw_frees, 0);
  EXPECT_EQ(f.alloc.stats().bytes_cached, 1024u);

  f.log->events[0]->done = true;
  void* c = f.alloc.allocate(1000, kStreamA);
  EXPECT_EQ(c, a);
  EXPECT_EQ(f.log->raw_allocations, 2);
  EXPECT_EQ(f.log->live_events(), 0);

  // A reused block starts clean: freeing it again records no event.
  f.alloc.free(c);
  EXPECT_EQ(f.log->events.size(), 1u);
  f.alloc.free(b);
}

TEST(CachingAllocator, RecordStreamOnAFreedPointerThrows) {
  Fixture f;
  void* a = f.alloc.allocate(10, kStreamA);
  f.alloc.free(a);
  EXPECT_THROW(f.alloc.record_stream(a, kStreamB), Error);
  int foreign = 0;
  EXPECT_THROW(f.alloc.record_stream(&foreign, kStreamB), Error);
}

TEST(CachingAllocator, EmptyCacheReturnsEveryCachedBlock) {
  Fixture f;
  void* a = f.alloc.allocate(1000, kStreamA);
  void* b = f.alloc.allocate(5 * MiB, kStreamA);
  void* c = f.alloc.allocate(2000, kStreamB);
  f.alloc.free(a);
  f.alloc.free(b);
  f.alloc.empty_cache();
  AllocatorStats s = f.alloc.stats();
  EXPECT_EQ(s.backend_frees, 2u);
  EXPECT_EQ(f.log->raw_frees, 2);
  EXPECT_EQ(s.bytes_cached, 0u);
  EXPECT_EQ(s.bytes_in_use, 2048u);
  EXPECT_EQ(s.bytes_reserved, 2048u);
  EXPECT_EQ(f.log->reserved, 2048u);
  f.alloc.free(c);
  f.alloc.empty_cache();
  EXPECT_EQ(f.log->raw_frees, 3);
  EXPECT_TRUE(f.log->live.empty());
  EXPECT_EQ(f.alloc.stats().bytes_reserved, 0u);
}

TEST(CachingAllocator, OutOfMemoryEmptiesTheCacheAndRetriesOnce) {
  Fixture f;
  f.log->limit = 8 * MiB;
  void* a = f.alloc.allocate(6 * MiB, kStreamA);
  f.alloc.free(a);  // 6 MiB cached on A
  // On B the cached block is unusable and the fake device is full: the cache must be emptied.
  void* b = f.alloc.allocate(4 * MiB, kStreamB);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(f.log->raw_frees, 1);
  EXPECT_EQ(f.log->raw_allocations, 2);
  EXPECT_EQ(f.log->requested, (std::vector<std::size_t>{6 * MiB, 4 * MiB, 4 * MiB}));
  AllocatorStats s = f.alloc.stats();
  EXPECT_EQ(s.backend_frees, 1u);
  EXPECT_EQ(s.bytes_cached, 0u);
  EXPECT_EQ(s.bytes_in_use, 4 * MiB);
  EXPECT_EQ(s.bytes_reserved, 4 * MiB);

  try {
    f.alloc.allocate(16 * MiB, kStreamA);
    FAIL() << "expected an out-of-memory Error";
  } catch (const Error& e) {
    EXPECT_TRUE(contains(e.what(), "CUDA out of memory: tried to allocate 16.00 MiB"));
    EXPECT_TRUE(contains(e.what(), "in use 4.00 MiB"));
    EXPECT_TRUE(contains(e.what(), "cached 0 B"));
  }
  // A failed allocation changes nothing.
  s = f.alloc.stats();
  EXPECT_EQ(s.bytes_in_use, 4 * MiB);
  EXPECT_EQ(s.allocations, 2u);
  f.alloc.free(b);
}

TEST(CachingAllocator, UnderMemoryPressureAnOversizedCachedBlockIsReused) {
  Fixture f;
  f.log->limit = 7 * MiB;
  void* a = f.alloc.allocate(6 * MiB, kStreamA);
  f.alloc.free(a);
  void* b = f.alloc.allocate(2 * MiB, kStreamA);  // 6 > 2 * 2, but the backend has only 1 MiB left
  EXPECT_EQ(b, a);
  EXPECT_EQ(f.log->raw_frees, 0);
  EXPECT_EQ(f.alloc.stats().bytes_in_use, 6 * MiB);
  f.alloc.free(b);
}

TEST(CachingAllocator, FreeOfAForeignPointerThrows) {
  Fixture f;
  int foreign = 0;
  EXPECT_THROW(f.alloc.free(&foreign), Error);
  void* a = f.alloc.allocate(10, kStreamA);
  f.alloc.free(a);
  try {
    f.alloc.free(a);
    FAIL() << "expected a double-free Error";
  } catch (const Error& e) {
    EXPECT_TRUE(contains(e.what(), "double free"));
  }
  EXPECT_NO_THROW(f.alloc.free(nullptr));
  EXPECT_EQ(f.alloc.stats().bytes_in_use, 0u);
}

TEST(CachingAllocator, ZeroBytesGetDistinctRealBlocks) {
  Fixture f;
  void* a = f.alloc.allocate(0, kStreamA);
  void* b = f.alloc.allocate(0, kStreamA);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_NE(a, b);
  EXPECT_EQ(f.alloc.stats().bytes_in_use, 1024u);
  f.alloc.free(a);
  f.alloc.free(b);
}

TEST(CachingAllocator, TrainingLikeLoopReachesASteadyState) {
  Fixture f;
  // One "step": activations allocated in the forward pass and kept, temporaries freed at once,
  // a second stream's buffers, then everything released in reverse (the backward pass).
  std::mt19937 rng(7);
  std::uniform_int_distribution<std::size_t> small(1, 900 * KiB), large(MiB, 24 * MiB);
  std::vector<std::size_t> sizes;
  for (int i = 0; i < 60; ++i) sizes.push_back(i % 3 == 0 ? large(rng) : small(rng));

  std::size_t after_first = 0;
  for (int iter = 0; iter < 100; ++iter) {
    std::vector<void*> kept;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      const kernels::Stream s = i % 7 == 0 ? kStreamB : kStreamA;
      void* p = f.alloc.allocate(sizes[i], s);
      // The block really holds the asked-for bytes (its ends are writable).
      static_cast<unsigned char*>(p)[0] = 1;
      static_cast<unsigned char*>(p)[sizes[i] - 1] = 2;
      if (i % 4 == 1) {
        f.alloc.free(p);
      } else {
        kept.push_back(p);
      }
    }
    for (auto it = kept.rbegin(); it != kept.rend(); ++it) f.alloc.free(*it);
    EXPECT_EQ(f.alloc.stats().bytes_in_use, 0u) << "iteration " << iter;
    if (iter == 0) after_first = f.alloc.stats().backend_allocations;
  }
  const AllocatorStats s = f.alloc.stats();
  EXPECT_EQ(s.backend_allocations, after_first);
  EXPECT_EQ(s.allocations, 100 * sizes.size());
  EXPECT_EQ(s.bytes_reserved, s.bytes_cached);
}

TEST(CachingAllocator, IsThreadSafe) {
  Fixture f;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&f, t] {
      const kernels::Stream s{reinterpret_cast<void*>(std::uintptr_t{0x100} * (t + 1))};
      for (int i = 0; i < 2000; ++i) {
        void* p = f.alloc.allocate(static_cast<std::size_t>(512 * (1 + (i * 7 + t) % 13)), s);
        f.alloc.free(p);
      }
    });
  }
  for (auto& th : threads) th.join();
  const AllocatorStats s = f.alloc.stats();
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.allocations, 8000u);
  EXPECT_EQ(s.bytes_reserved, s.bytes_cached);
  EXPECT_EQ(f.log->reserved, s.bytes_reserved);
}

TEST(CachingAllocator, DestructionReturnsCachedMemory) {
  auto log = std::make_shared<FakeLog>();
  {
    CachingAllocator alloc(std::make_unique<FakeBackend>(log));
    void* a = alloc.allocate(10, kStreamA);
    void* b = alloc.allocate(10, kStreamA);
    alloc.record_stream(b, kStreamB);
    alloc.free(a);
    alloc.free(b);  // pending on an event that never completes
  }
  EXPECT_EQ(log->raw_frees, 2);
  EXPECT_EQ(log->live_events(), 0);
}

// ---- host memory and the scratch arena ----------------------------------------------------------

TEST(HostAllocator, AlignsAndCounts) {
  const AllocatorStats before = host_allocator_stats();
  void* a = host_allocate(100);
  void* z = host_allocate(0);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(z, nullptr);
  EXPECT_NE(a, z);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(z) % 64, 0u);
  std::memset(a, 1, 100);
  AllocatorStats s = host_allocator_stats();
  EXPECT_EQ(s.bytes_in_use - before.bytes_in_use, 128u + 64u);
  EXPECT_EQ(s.allocations - before.allocations, 2u);
  EXPECT_GE(s.peak_bytes_in_use, s.bytes_in_use);
  host_free(a, 100);
  host_free(z, 0);
  host_free(nullptr, 5);
  s = host_allocator_stats();
  EXPECT_EQ(s.bytes_in_use, before.bytes_in_use);
  EXPECT_EQ(s.bytes_cached, before.bytes_cached);  // small blocks go straight back
}

TEST(HostAllocator, LargeBlocksAreReusedBySize) {
  host_empty_cache();
  const AllocatorStats before = host_allocator_stats();
  void* a = host_allocate(6 * MiB);
  std::memset(a, 1, 6 * MiB);
  host_free(a, 6 * MiB);
  AllocatorStats s = host_allocator_stats();
  EXPECT_EQ(s.bytes_cached - before.bytes_cached, 6 * MiB);
  EXPECT_EQ(s.bytes_reserved - before.bytes_reserved, 6 * MiB);
  void* b = host_allocate(6 * MiB - 100);  // the same 2 MiB size class
  EXPECT_EQ(b, a);
  s = host_allocator_stats();
  EXPECT_EQ(s.backend_allocations - before.backend_allocations, 1u);
  EXPECT_EQ(s.allocations - before.allocations, 2u);
  EXPECT_EQ(s.bytes_cached, before.bytes_cached);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b) % (2 * MiB), 0u);
  host_free(b, 6 * MiB - 100);
  host_empty_cache();
  s = host_allocator_stats();
  EXPECT_EQ(s.bytes_cached, 0u);
  EXPECT_EQ(s.bytes_reserved, s.bytes_in_use);
}

// A request of a size the cache lacks first returns cached blocks, largest first, until they
// cover it: reserved memory stays within the most ever in use.
TEST(HostAllocator, AMissReturnsCachedBlocksFirst) {
  host_empty_cache();
  const AllocatorStats before = host_allocator_stats();
  host_free(host_allocate(10 * MiB), 10 * MiB);
  void* small = host_allocate(4 * MiB);  // no 4 MiB block: the 10 MiB one goes back first
  AllocatorStats s = host_allocator_stats();
  EXPECT_EQ(s.bytes_cached, before.bytes_cached);
  EXPECT_EQ(s.bytes_reserved - before.bytes_reserved, 4 * MiB);
  host_free(small, 4 * MiB);
  void* big = host_allocate(12 * MiB);  // 4 MiB cached cannot cover it: all of it goes back
  s = host_allocator_stats();
  EXPECT_EQ(s.bytes_cached, before.bytes_cached);
  EXPECT_EQ(s.bytes_reserved - before.bytes_reserved, 12 * MiB);
  host_free(big, 12 * MiB);
  host_empty_cache();
}

TEST(HostAllocator, ReservedNeverExceedsThePeakInUse) {
  host_empty_cache();
  const AllocatorStats before = host_allocator_stats();
  std::mt19937 rng(5);
  std::vector<std::pair<void*, std::size_t>> live;
  std::size_t in_use = 0, peak = 0;  // this test's own blocks (sizes are whole 2 MiB classes)
  for (int step = 0; step < 400; ++step) {
    if (live.empty() || rng() % 2 == 0) {
      const std::size_t size = (4 + 2 * (rng() % 5)) * MiB;  // 4 to 12 MiB
      live.emplace_back(host_allocate(size), size);
      in_use += size;
      peak = std::max(peak, in_use);
    } else {
      const std::size_t k = rng() % live.size();
      host_free(live[k].first, live[k].second);
      in_use -= live[k].second;
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(k));
    }
    const AllocatorStats s = host_allocator_stats();
    ASSERT_EQ(s.bytes_in_use - before.bytes_in_use, in_use);
    ASSERT_LE(s.bytes_reserved - before.bytes_reserved, peak) << "step " << step;
    ASSERT_EQ(s.bytes_reserved - before.bytes_reserved, in_use + s.bytes_cached - before.bytes_cached);
  }
  for (const auto& [p, size] : live) host_free(p, size);
  host_empty_cache();
}

TEST(HostAllocator, DeviceAllocateOnTheCpuIsHostMemory) {
  const AllocatorStats before = host_allocator_stats();
  void* p = device_allocate(Device::cpu(), 1000);
  EXPECT_EQ(host_allocator_stats().bytes_in_use - before.bytes_in_use, 1024u);
  device_free(Device::cpu(), p, 1000);
  EXPECT_EQ(host_allocator_stats().bytes_in_use, before.bytes_in_use);
}

TEST(ScratchArena, HandsOutHostMemoryOnTheCpuAndFreesItAll) {
  const AllocatorStats before = host_allocator_stats();
  {
    ScratchArena arena(Device::cpu());
    kernels::Scratch& scratch = arena;  // kernels see only the interface
    void* a = scratch.get(100);
    void* b = scratch.get(0);
    void* c = scratch.get(MiB);
    for (void* p : {a, b, c}) {
      ASSERT_NE(p, nullptr);
      EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % 64, 0u);
    }
    std::memset(c, 0, MiB);
    EXPECT_EQ(host_allocator_stats().bytes_in_use - before.bytes_in_use, 128u + 64u + MiB);
  }
  EXPECT_EQ(host_allocator_stats().bytes_in_use, before.bytes_in_use);
}

TEST(CudaAllocator, FailsClearlyWithoutADevice) {
  if (test::has_cuda()) GTEST_SKIP() << "this machine has a CUDA device";
  try {
    cuda_allocator();
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    if (built_with_cuda()) {
      EXPECT_TRUE(contains(e.what(), "no CUDA device is usable"));
    } else {
      EXPECT_TRUE(contains(e.what(), "built without CUDA"));
    }
  }
  EXPECT_THROW(device_allocate(Device::cuda(0), 16), Error);
}

// ---- the real CUDA allocator (skipped without a GPU) -------------------------------------------

TEST(CudaAllocator, ReusesBlocksAndCountsExactly) {
  VG_REQUIRE_CUDA();
  CachingAllocator& a = cuda_allocator();
  a.empty_cache();
  const AllocatorStats base = a.stats();
  void* p = device_allocate(Device::cuda(0), 1000);
  ASSERT_NE(p, nullptr);
  AllocatorStats s = a.stats();
  EXPECT_EQ(s.bytes_in_use - base.bytes_in_use, 1024u);
  EXPECT_EQ(s.backend_allocations - base.backend_allocations, 1u);
  device_free(Device::cuda(0), p, 1000);
  void* q = device_allocate(Device::cuda(0), 900);
  EXPECT_EQ(q, p);
  EXPECT_EQ(a.stats().backend_allocations - base.backend_allocations, 1u);
  device_free(Device::cuda(0), q, 900);
  s = a.stats();
  EXPECT_EQ(s.bytes_in_use, base.bytes_in_use);
  EXPECT_EQ(s.bytes_reserved, s.bytes_in_use + s.bytes_cached);
  a.empty_cache();
  EXPECT_EQ(a.stats().bytes_cached, 0u);
}

TEST(CudaAllocator, TrainingLikeLoopDoesNotLeak) {
  VG_REQUIRE_CUDA();
  CachingAllocator& a = cuda_allocator();
  const AllocatorStats base = a.stats();
  const std::vector<std::size_t> sizes = {4 * KiB, 3 * MiB, 100, 17 * MiB, 640 * KiB, 0, 9 * MiB};
  std::size_t after_first = 0;
  for (int iter = 0; iter < 100; ++iter) {
    std::vector<void*> kept;
    for (std::size_t n : sizes) kept.push_back(device_allocate(Device::cuda(0), n));
    for (auto it = kept.rbegin(); it != kept.rend(); ++it) device_free(Device::cuda(0), *it, 0);
    if (iter == 0) after_first = a.stats().backend_allocations;
  }
  synchronize(Device::cuda(0));
  const AllocatorStats s = a.stats();
  EXPECT_EQ(s.bytes_in_use, base.bytes_in_use);
  EXPECT_EQ(s.backend_allocations, after_first);
}

TEST(CudaAllocator, OutOfMemoryIsAnErrorAndLeavesTheAllocatorUsable) {
  VG_REQUIRE_CUDA();
  try {
    device_allocate(Device::cuda(0), std::size_t{1} << 50);  // 1 PiB
    FAIL() << "expected an out-of-memory Error";
  } catch (const Error& e) {
    EXPECT_TRUE(contains(e.what(), "CUDA out of memory: tried to allocate"));
  }
  void* p = device_allocate(Device::cuda(0), 1000);
  device_free(Device::cuda(0), p, 1000);
  synchronize(Device::cuda(0));  // and no error was left behind for the next check
}

TEST(CudaAllocator, ScratchArenaReturnsItsBlocks) {
  VG_REQUIRE_CUDA();
  CachingAllocator& a = cuda_allocator();
  a.empty_cache();  // so that no larger cached block serves the 5 MiB request
  const std::size_t before = a.stats().bytes_in_use;
  {
    ScratchArena arena(Device::cuda(0));
    EXPECT_NE(arena.get(1000), nullptr);
    EXPECT_NE(arena.get(5 * MiB), nullptr);
    EXPECT_EQ(a.stats().bytes_in_use - before, 1024u + 6 * MiB);
  }
  EXPECT_EQ(a.stats().bytes_in_use, before);
}

}  // namespace
}  // namespace voxgrad
