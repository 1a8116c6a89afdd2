#include "kernels/cpu/radix_sort.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "kernels/error.h"

namespace voxgrad::kernels::cpu {

namespace {

// Three passes of 11, 11 and 10 bits: one pass fewer than bytes would take, and 2048 buckets of
// one cache line each still fit a thread's L2.
constexpr int kDigitBits = 11;
constexpr int kBuckets = 1 << kDigitBits;
constexpr int kPasses = (32 + kDigitBits - 1) / kDigitBits;
constexpr int kLine = 64 / sizeof(std::uint64_t);  // items per cache line

int digit(std::uint64_t item, int pass) {
  return static_cast<int>((item >> (32 + pass * kDigitBits)) & (kBuckets - 1));
}

// Eight items, a whole 64-byte line of `target`, written around the caches: the scatter touches
// 2048 places at once, and reading each line before overwriting it would double its traffic.
void stream_line(std::uint64_t* target, const std::uint64_t* line) {
#if defined(__SSE2__)
  for (int q = 0; q < kLine / 2; ++q)
    _mm_stream_si128(reinterpret_cast<__m128i*>(target) + q,
                     _mm_load_si128(reinterpret_cast<const __m128i*>(line) + q));
#else
  std::memcpy(target, line, 64);
#endif
}

void stores_done() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// One thread's scatter of its chunk into `target`: items gather in a line-sized buffer per bucket
// (aligned like their place in `target`), and each line leaves whole once it is full. The first
// and last lines of a bucket may be shared with another thread's places, so those are written
// item by item.
class LineScatter {
 public:
  LineScatter() : lines_(new (std::align_val_t{64}) std::uint64_t[kBuckets * kLine]) {}
  ~LineScatter() { ::operator delete[](lines_, std::align_val_t{64}); }
  LineScatter(const LineScatter&) = delete;
  LineScatter& operator=(const LineScatter&) = delete;

  void run(const std::uint64_t* source, std::int64_t first, std::int64_t last, std::uint64_t* target, int pass,
           const std::int64_t* starts) {
    std::copy(starts, starts + kBuckets, next_);
    for (std::int64_t i = first; i < last; ++i) {
      const std::uint64_t item = source[i];
      const int b = digit(item, pass);
      const std::int64_t place = next_[b]++;
      std::uint64_t* line = lines_ + b * kLine;
      line[place & (kLine - 1)] = item;
      if ((place & (kLine - 1)) == kLine - 1) {
        const std::int64_t line_start = place - (kLine - 1);
        if (line_start >= starts[b])
          stream_line(target + line_start, line);
        else
          for (std::int64_t p = starts[b]; p <= place; ++p) target[p] = line[p & (kLine - 1)];
      }
    }
    for (int b = 0; b < kBuckets; ++b) {  // the partly filled last lines
      const std::int64_t end = next_[b], from = std::max(starts[b], end & ~std::int64_t{kLine - 1});
      for (std::int64_t p = from; p < end; ++p) target[p] = lines_[b * kLine + (p & (kLine - 1))];
    }
    stores_done();
  }

 private:
  std::uint64_t* lines_;
  std::int64_t next_[kBuckets];
};

// counts[b] = how many of source[first, last) have digit b. Four tables in turn: when runs of
// items share a bucket (the high digits of similar keys do), one table would make every
// increment wait for the previous one.
void count_digits(const std::uint64_t* source, std::int64_t first, std::int64_t last, int pass, std::int64_t* counts) {
  constexpr int kTables = 4;
  std::vector<std::uint32_t> tables(kTables * kBuckets, 0u);  // a chunk never reaches 2^32 items (< 2^31)
  std::int64_t i = first;
  for (; i + kTables <= last; i += kTables)
    for (int k = 0; k < kTables; ++k) ++tables[k * kBuckets + digit(source[i + k], pass)];
  for (; i < last; ++i) ++tables[digit(source[i], pass)];
  for (int b = 0; b < kBuckets; ++b) {
    std::int64_t total = 0;
    for (int k = 0; k < kTables; ++k) total += tables[k * kBuckets + b];
    counts[b] = total;
  }
}

// Where thread t's items of each bucket start in the pass's output: places in (bucket, thread)
// order keep the sort stable. Every thread sums for its own row from everyone's counts
// (counts[u * kBuckets + b]), so none waits for another to do it. Returns whether one bucket
// holds every item (a digit all keys share).
bool bucket_starts(const std::int64_t* counts, int threads, int t, std::int64_t count, std::int64_t* starts) {
  std::int64_t place = 0;
  bool shared_digit = false;
  for (int b = 0; b < kBuckets; ++b) {
    std::int64_t bucket_total = 0;
    for (int u = 0; u < threads; ++u) {
      if (u == t) starts[b] = place + bucket_total;
      bucket_total += counts[u * kBuckets + b];
    }
    shared_digit = shared_digit || bucket_total == count;
    place += bucket_total;
  }
  return shared_digit;
}

// The sort's passes. Returns the buffer that holds the sorted items.
std::uint64_t* sort(std::uint64_t* items, std::uint64_t* scratch, std::int64_t count, bool parallel) {
  std::uint64_t* result = items;
  const int max_threads = parallel ? omp_get_max_threads() : 1;
  // counts[t * kBuckets + b]: how many of thread t's items fall in bucket b.
  std::vector<std::int64_t> counts(static_cast<std::size_t>(max_threads) * kBuckets);
#pragma omp parallel num_threads(max_threads) if (max_threads > 1)
  {
    const int threads = omp_get_num_threads(), t = omp_get_thread_num();
    const std::int64_t first = count * t / threads, last = count * (t + 1) / threads;
    std::int64_t* mine = counts.data() + static_cast<std::size_t>(t) * kBuckets;
    std::vector<std::int64_t> starts(kBuckets);
    LineScatter scatter;
    // Every thread swaps its own copies of the two pointers after each pass it makes.
    std::uint64_t* source = items;
    std::uint64_t* target = scratch;
    for (int pass = 0; pass < kPasses; ++pass) {
      std::fill(mine, mine + kBuckets, 0);
      count_digits(source, first, last, pass, mine);
#pragma omp barrier
      const bool shared_digit = bucket_starts(counts.data(), threads, t, count, starts.data());
#pragma omp barrier
      if (shared_digit) continue;
      scatter.run(source, first, last, target, pass, starts.data());
#pragma omp barrier
      std::swap(source, target);
    }
    if (t == 0) result = source;
  }
  return result;
}

}  // namespace

std::uint64_t* radix_sort_by_key(std::uint64_t* items, std::uint64_t* scratch, std::int64_t count, bool parallel) {
  VG_CHECK(count < (std::int64_t{1} << 32), "radix_sort_by_key: " << count << " items; it counts them in 32 bits");
  if (count < 2) return items;
  return sort(items, scratch, count, parallel);
}

}  // namespace voxgrad::kernels::cpu
