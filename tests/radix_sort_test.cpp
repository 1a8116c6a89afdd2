// The CPU's stable radix sort and the Lovász gradient built on it: the sort against
// std::stable_sort on keys with many ties and digits that every key shares, at sizes around the
// cache-line buffers' edges and with 1 to 3 threads; the float Lovász gradient against the
// comparison sort's, bit for bit, on tied errors, ignored voxels, per-image and batch segments,
// segments sorted by all threads together and many small ones sorted one per thread.
#include "kernels/cpu/radix_sort.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/lovasz.h"

namespace voxgrad::kernels::cpu {
namespace {

// Restores the OpenMP thread count when a test ends, however it ends.
struct ThreadCount {
  int saved = omp_get_max_threads();
  explicit ThreadCount(int n) { omp_set_num_threads(n); }
  ~ThreadCount() { omp_set_num_threads(saved); }
};

enum class Keys { Random, FewValues, SharedHighDigits, Sorted, Reversed };

std::vector<std::uint64_t> make_items(std::int64_t count, Keys keys, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::uint64_t> items(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) {
    std::uint32_t key = rng();
    switch (keys) {
      case Keys::Random:
        break;
      case Keys::FewValues:
        key = (key % 5u) * 0x01010101u;
        break;  // long runs of ties
      case Keys::SharedHighDigits:
        key = 0xabc00000u | (key & 0x3ffu);
        break;  // two passes skipped
      case Keys::Sorted:
        key = static_cast<std::uint32_t>(i / 3);
        break;
      case Keys::Reversed:
        key = static_cast<std::uint32_t>(count - i / 7);
        break;
    }
    items[static_cast<std::size_t>(i)] = radix_item(key, static_cast<std::uint32_t>(i));  // payload: the input place
  }
  return items;
}

std::vector<std::uint64_t> radix_sorted(std::vector<std::uint64_t> items, bool parallel) {
  const std::int64_t count = static_cast<std::int64_t>(items.size());
  std::vector<std::uint64_t> scratch(items.size());
  const std::uint64_t* sorted = radix_sort_by_key(items.data(), scratch.data(), count, parallel);
  return {sorted, sorted + count};
}

TEST(RadixSort, MatchesStableSortOnKeysAndTieOrder) {
  for (const Keys keys : {Keys::Random, Keys::FewValues, Keys::SharedHighDigits, Keys::Sorted, Keys::Reversed}) {
    for (const std::int64_t count : {0, 1, 2, 7, 8, 9, 63, 1000, 4099, 70001}) {
      std::vector<std::uint64_t> expected = make_items(count, keys, static_cast<std::uint32_t>(count) + 3);
      const std::vector<std::uint64_t> input = expected;
      std::stable_sort(expected.begin(), expected.end(),
                       [](std::uint64_t a, std::uint64_t b) { return radix_key(a) < radix_key(b); });
      for (const int threads : {1, 2, 3}) {
        SCOPED_TRACE("keys " + std::to_string(static_cast<int>(keys)) + ", " + std::to_string(count) + " items, " +
                     std::to_string(threads) + " threads");
        const ThreadCount use(threads);
        EXPECT_EQ(radix_sorted(input, true), expected);
      }
      EXPECT_EQ(radix_sorted(input, false), expected);
    }
  }
}

// A Lovász problem whose probabilities take few distinct values, so most errors tie.
struct Problem {
  std::int64_t N, K, S;
  std::vector<float> x;
  std::vector<std::int32_t> labels;
  LovaszProblem<float> view(std::vector<float>& grad, bool per_image, bool hinge, bool ignore) {
    grad.assign(x.size(), -7.0f);  // every element must be written
    LovaszProblem<float> pb;
    pb.x = x.data();
    pb.labels = labels.data();
    pb.grad = grad.data();
    pb.images = N;
    pb.classes = K;
    pb.voxels = S;
    pb.per_image = per_image;
    pb.hinge = hinge;
    pb.has_ignore_label = ignore;
    pb.ignore_label = 255;
    return pb;
  }
};

Problem make_problem(std::int64_t N, std::int64_t K, std::int64_t S, bool hinge, std::uint32_t seed) {
  std::mt19937 rng(seed);
  Problem p{N, K, S, std::vector<float>(static_cast<std::size_t>(N * K * S)),
            std::vector<std::int32_t>(static_cast<std::size_t>(N * S))};
  const float levels[] = {0.0f, -0.0f, 0.125f, 0.25f, 0.5f, 0.75f, 1.0f, 0.3f, 1.5f, -2.0f};
  for (float& v : p.x) v = hinge ? levels[rng() % 10] : levels[rng() % 7] * 0.9f + (rng() % 4 == 0 ? 0.01f : 0.0f);
  for (std::int32_t& y : p.labels) {
    y = static_cast<std::int32_t>(rng() % (hinge ? 2 : K));
    if (rng() % 9 == 0) y = 255;  // ignored where the problem says so, else a label outside the classes
  }
  return p;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(LovaszRadix, GradientIsTheComparisonSortsBitForBit) {
  struct Shape {
    std::int64_t N, K, S;
  };
  // 300 voxels: many small segments, one per thread; 40000: whole segments across all threads.
  for (const Shape sh : {Shape{3, 4, 300}, Shape{2, 3, 40000}, Shape{1, 2, 70001}}) {
    for (const bool hinge : {false, true}) {
      Problem p = make_problem(sh.N, hinge ? 1 : sh.K, sh.S, hinge, static_cast<std::uint32_t>(sh.S));
      for (const bool per_image : {true, false}) {
        std::vector<float> expected, got;
        // Without an ignore label, 255 would be an invalid label: use only the valid ones.
        Problem valid = p;
        for (std::int32_t& y : valid.labels) y = y == 255 ? 0 : y;
        for (const bool ignore : {false, true}) {
          Problem& q = ignore ? p : valid;
          lovasz_gradient_by_comparison(q.view(expected, per_image, hinge, ignore));
          for (const int threads : {1, 2, 3}) {
            SCOPED_TRACE(std::to_string(sh.N) + "x" + std::to_string(sh.K) + "x" + std::to_string(sh.S) +
                         (hinge ? " hinge" : " softmax") + (per_image ? " per image" : " batch") +
                         (ignore ? " ignore" : "") + ", " + std::to_string(threads) + " threads");
            const ThreadCount use(threads);
            lovasz_gradient(q.view(got, per_image, hinge, ignore));
            EXPECT_TRUE(same_bits(got, expected));
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace voxgrad::kernels::cpu
