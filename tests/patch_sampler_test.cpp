// PatchSampler and BatchPrefetcher: batches as pure functions of (seed, b) whichever thread or order
// makes them, the exact foreground share with patches centred on the chosen voxel, crops and flips
// recovered voxel by voxel from images whose values encode their coordinates, prefetcher errors
// and shutdown, and every constructor check.
#include "apps/pipeline/patch_sampler.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "engine/ops.h"
#include "tests/test_support.h"

namespace {

using namespace voxgrad;
using namespace voxgrad::pipeline;

constexpr std::int64_t kSize = 20;  // every test volume is kSize^3 unless said otherwise
constexpr std::int64_t kPatch = 8;

// Image value of channel c, case k at voxel (z, y, x): every voxel of every case and channel is
// distinct and exactly representable in float32 (below 2^24 for axes under 100 voxels, up to 4
// cases and 2 channels), so a patch value says where it was read from.
float coordinate_value(std::int64_t c, std::int64_t k, std::int64_t z, std::int64_t y, std::int64_t x) {
  return static_cast<float>(c * 4000000 + k * 1000000 + z * 10000 + y * 100 + x);
}

struct Voxel {
  std::int64_t k, z, y, x;
};
Voxel decode(float value, std::int64_t channel) {
  const auto v = static_cast<std::int64_t>(value) - channel * 4000000;
  return {v / 1000000, (v % 1000000) / 10000, (v % 10000) / 100, v % 100};
}

// Case k: a coordinate-encoded image of `channels` channels and the labels `label(z, y, x)`.
SamplerCase coordinate_case(std::int64_t k, std::int64_t channels,
                            const std::function<std::int32_t(std::int64_t, std::int64_t, std::int64_t)>& label,
                            const Shape3& size = {kSize, kSize, kSize}) {
  std::vector<float> image;
  std::vector<std::int32_t> labels;
  for (std::int64_t c = 0; c < channels; ++c)
    for (std::int64_t z = 0; z < size[0]; ++z)
      for (std::int64_t y = 0; y < size[1]; ++y)
        for (std::int64_t x = 0; x < size[2]; ++x) image.push_back(coordinate_value(c, k, z, y, x));
  for (std::int64_t z = 0; z < size[0]; ++z)
    for (std::int64_t y = 0; y < size[1]; ++y)
      for (std::int64_t x = 0; x < size[2]; ++x) labels.push_back(label(z, y, x));
  return {from_vector(image, {channels, size[0], size[1], size[2]}), from_vector(labels, {size[0], size[1], size[2]})};
}

// A label whose value depends on the voxel, so a misplaced label crop is seen.
std::int32_t striped(std::int64_t z, std::int64_t y, std::int64_t x) {
  // Odd steps along every axis: a flip or shift along any axis changes most labels.
  return static_cast<std::int32_t>((z + 3 * y + 7 * x) % 4);
}

// Case 0 striped (classes 1 to 3 everywhere), case 1 all background, case 2 one voxel of class 1
// at (10, 10, 10) and one of class 3 near a corner, at (1, 18, 5).
std::vector<SamplerCase> mixed_cases(std::int64_t channels = 2) {
  std::vector<SamplerCase> cases;
  cases.push_back(coordinate_case(0, channels, striped));
  cases.push_back(coordinate_case(1, channels, [](std::int64_t, std::int64_t, std::int64_t) { return 0; }));
  cases.push_back(coordinate_case(2, channels, [](std::int64_t z, std::int64_t y, std::int64_t x) {
    if (z == 10 && y == 10 && x == 10) return 1;
    if (z == 1 && y == 18 && x == 5) return 3;
    return 0;
  }));
  return cases;
}

PatchSamplerOptions small_options(std::uint64_t seed = 7, std::int64_t batch_size = 4) {
  PatchSamplerOptions o;
  o.patch = {kPatch, kPatch, kPatch};
  o.batch_size = batch_size;
  o.seed = seed;
  return o;
}

bool same_batch(const Batch& a, const Batch& b) {
  return a.index == b.index && a.cases == b.cases && a.foreground == b.foreground &&
         a.image.shape() == b.image.shape() && a.label.shape() == b.label.shape() &&
         a.image.to_vector<float>() == b.image.to_vector<float>() &&
         a.label.to_vector<std::int32_t>() == b.label.to_vector<std::int32_t>();
}

// Where patch n of a batch of coordinate-encoded cases was read from: its corner and flips,
// found from its first and last voxel along each axis.
struct Placement {
  std::int64_t k = 0;
  Shape3 corner{};
  bool flip[3] = {false, false, false};
};

// Recovers patch n's placement and checks every voxel of every channel and the label against it.
::testing::AssertionResult check_patch(const Batch& batch, std::int64_t n, const std::vector<SamplerCase>& cases,
                                       Placement* placement) {
  const Shape& s = batch.image.shape();  // (N, C, D, H, W)
  const std::int64_t channels = s[1];
  const Shape3 patch{s[2], s[3], s[4]};
  const std::int64_t voxels = patch[0] * patch[1] * patch[2];
  const std::vector<float> image = batch.image.to_vector<float>();
  const std::vector<std::int32_t> label = batch.label.to_vector<std::int32_t>();
  const float* p = image.data() + n * channels * voxels;

  const Voxel first = decode(p[0], 0);
  const Voxel last = decode(p[voxels - 1], 0);
  Placement pl;
  pl.k = first.k;
  const std::int64_t lo[3] = {first.z, first.y, first.x}, hi[3] = {last.z, last.y, last.x};
  for (int a = 0; a < 3; ++a) {
    pl.flip[a] = lo[a] > hi[a];
    pl.corner[a] = std::min(lo[a], hi[a]);
  }
  if (pl.k != batch.cases[static_cast<std::size_t>(n)])
    return ::testing::AssertionFailure() << "patch " << n << " read case " << pl.k << " but the batch says "
                                         << batch.cases[static_cast<std::size_t>(n)];
  const SamplerCase& c = cases[static_cast<std::size_t>(pl.k)];
  const std::vector<std::int32_t> case_label = c.label.to_vector<std::int32_t>();
  const std::int64_t sy = c.label.size(1), sx = c.label.size(2);
  for (std::int64_t d = 0; d < patch[0]; ++d)
    for (std::int64_t h = 0; h < patch[1]; ++h)
      for (std::int64_t w = 0; w < patch[2]; ++w) {
        const std::int64_t z = pl.corner[0] + (pl.flip[0] ? patch[0] - 1 - d : d);
        const std::int64_t y = pl.corner[1] + (pl.flip[1] ? patch[1] - 1 - h : h);
        const std::int64_t x = pl.corner[2] + (pl.flip[2] ? patch[2] - 1 - w : w);
        const std::int64_t at = (d * patch[1] + h) * patch[2] + w;
        for (std::int64_t ch = 0; ch < channels; ++ch) {
          const float want = coordinate_value(ch, pl.k, z, y, x);
          if (p[ch * voxels + at] != want)
            return ::testing::AssertionFailure() << "patch " << n << " channel " << ch << " voxel (" << d << ", " << h
                                                 << ", " << w << ") holds " << p[ch * voxels + at] << ", expected "
                                                 << want;
        }
        const std::int32_t want_label = case_label[static_cast<std::size_t>((z * sy + y) * sx + x)];
        if (label[static_cast<std::size_t>(n * voxels + at)] != want_label)
          return ::testing::AssertionFailure() << "patch " << n << " label at (" << d << ", " << h << ", " << w
                                               << ") does not match the case's label at (" << z << ", " << y << ", "
                                               << x << ")";
      }
  if (placement) *placement = pl;
  return ::testing::AssertionSuccess();
}

using voxgrad::test::error_of;

TEST(PatchSampler, BatchIsAPureFunctionOfSeedAndIndex) {
  const PatchSampler a(mixed_cases(), small_options(7));
  const PatchSampler b(mixed_cases(), small_options(7));
  for (std::int64_t i = 0; i < 6; ++i) {
    const Batch x = a.batch(i);
    EXPECT_EQ(x.index, i);
    EXPECT_EQ(x.image.shape(), (Shape{4, 2, kPatch, kPatch, kPatch}));
    EXPECT_EQ(x.label.shape(), (Shape{4, kPatch, kPatch, kPatch}));
    EXPECT_EQ(x.image.dtype(), DType::Float32);
    EXPECT_EQ(x.label.dtype(), DType::Int32);
    EXPECT_TRUE(same_batch(x, a.batch(i))) << "batch " << i << " drawn twice";
    EXPECT_TRUE(same_batch(x, b.batch(i))) << "batch " << i << " from a second sampler";
  }
  const PatchSampler other_seed(mixed_cases(), small_options(8));
  for (std::int64_t i = 0; i < 6; ++i) {
    Batch next = a.batch(i + 1);
    next.index = i;  // compare contents only
    EXPECT_FALSE(same_batch(a.batch(i), next)) << "batches " << i << " and " << i + 1 << " are equal";
    EXPECT_FALSE(same_batch(a.batch(i), other_seed.batch(i))) << "seeds 7 and 8 give the same batch " << i;
  }
}

TEST(PatchSampler, BatchesDoNotDependOnOrderOrThread) {
  const PatchSampler sampler(mixed_cases(), small_options(3, 3));
  std::vector<Batch> direct;
  for (std::int64_t i = 0; i < 12; ++i) direct.push_back(sampler.batch(i));

  // Reverse order, then four threads each making every fourth batch.
  for (std::int64_t i = 11; i >= 0; --i) EXPECT_TRUE(same_batch(sampler.batch(i), direct[i])) << "batch " << i;
  std::vector<Batch> threaded(12);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (std::int64_t i = t; i < 12; i += 4) threaded[i] = sampler.batch(i);
    });
  for (auto& t : threads) t.join();
  for (std::int64_t i = 0; i < 12; ++i) EXPECT_TRUE(same_batch(threaded[i], direct[i])) << "batch " << i;

  // The prefetcher from the start and from the middle (a resumed run) hands out the same batches.
  {
    BatchPrefetcher prefetcher(sampler, 0, 3);
    for (std::int64_t i = 0; i < 12; ++i) EXPECT_TRUE(same_batch(prefetcher.next(), direct[i])) << "batch " << i;
  }
  BatchPrefetcher resumed(sampler, 5, 1);
  for (std::int64_t i = 5; i < 12; ++i) EXPECT_TRUE(same_batch(resumed.next(), direct[i])) << "batch " << i;
}

TEST(PatchSampler, RanksShareEachBatchInOrder) {
  // Four ranks of a batch of 4: rank r's share is patch r of the batch one process draws.
  const PatchSampler whole(mixed_cases(), small_options(3, 4));
  for (std::int64_t i = 0; i < 6; ++i) {
    const Batch all = whole.batch(i);
    for (int ranks : {2, 4}) {
      for (int rank = 0; rank < ranks; ++rank) {
        PatchSamplerOptions o = small_options(3, 4);
        o.ranks = ranks;
        o.rank = rank;
        const std::int64_t share = 4 / ranks;
        const Batch mine = PatchSampler(mixed_cases(), o).batch(i);
        Batch expected;
        expected.index = i;
        expected.image = slice(all.image, 0, rank * share, (rank + 1) * share).clone();
        expected.label = slice(all.label, 0, rank * share, (rank + 1) * share).clone();
        expected.cases.assign(all.cases.begin() + rank * share, all.cases.begin() + (rank + 1) * share);
        expected.foreground.assign(all.foreground.begin() + rank * share, all.foreground.begin() + (rank + 1) * share);
        EXPECT_TRUE(same_batch(mine, expected)) << "batch " << i << ", rank " << rank << " of " << ranks;
      }
    }
  }
  PatchSamplerOptions uneven = small_options(3, 4);
  uneven.ranks = 3;
  EXPECT_NE(error_of([&] { PatchSampler(mixed_cases(), uneven); }).find("cannot share a batch of 4"),
            std::string::npos);
}

TEST(PatchSampler, ExactlyAThirdOfPatchesAreCentredOnForeground) {
  // Batch size 5 is not a multiple of 3: the share is over the stream of patches, not per batch.
  const std::vector<SamplerCase> cases = mixed_cases(1);
  const PatchSampler sampler(cases, small_options(11, 5));
  std::int64_t foreground = 0, candidates = 0;
  std::set<std::int64_t> classes_seen;  // case 2's classes reached by its foreground patches
  for (std::int64_t b = 0; b < 60; ++b) {
    const Batch batch = sampler.batch(b);
    for (std::int64_t i = 0; i < 5; ++i) {
      const std::int64_t p = b * 5 + i;
      const int k = batch.cases[static_cast<std::size_t>(i)];
      const bool fg = batch.foreground[static_cast<std::size_t>(i)];
      Placement pl;
      ASSERT_TRUE(check_patch(batch, i, cases, &pl));
      // Case 1 has no foreground: its foreground turns fall back to random patches.
      const bool should = p % 3 == 2 && k != 1;
      EXPECT_EQ(fg, should) << "patch " << p << " of case " << k;
      candidates += p % 3 == 2;
      if (!fg) continue;
      ++foreground;
      // Case 2's single voxels: class 1 at (10, 10, 10) gives the corner 10 - 8/2 = 6; class 3 at
      // (1, 18, 5) gives corner (1 - 4, 18 - 4, 5 - 4) clamped to [0, 12], i.e. (0, 12, 1).
      if (k == 2) {
        if (pl.corner == Shape3{6, 6, 6}) {
          classes_seen.insert(1);
        } else if (pl.corner == Shape3{0, 12, 1}) {
          classes_seen.insert(3);
        } else {
          ADD_FAILURE() << "patch " << p << " of case 2 is not centred on a foreground voxel: corner ("
                        << pl.corner[0] << ", " << pl.corner[1] << ", " << pl.corner[2] << ")";
        }
      }
      const std::vector<std::int32_t> label = batch.label.to_vector<std::int32_t>();
      const auto begin = label.begin() + i * kPatch * kPatch * kPatch;
      EXPECT_TRUE(std::any_of(begin, begin + kPatch * kPatch * kPatch, [](std::int32_t v) { return v > 0; }))
          << "foreground patch " << p << " holds no foreground";
    }
  }
  EXPECT_EQ(candidates, 100);
  EXPECT_GT(foreground, 40);  // about two thirds of the 100 turns land on a case with foreground
  EXPECT_EQ(classes_seen, (std::set<std::int64_t>{1, 3}));

  // Without oversampling no patch is a foreground patch.
  PatchSamplerOptions off = small_options(11, 5);
  off.oversample_foreground = false;
  const PatchSampler plain(cases, off);
  for (std::int64_t b = 0; b < 20; ++b)
    for (bool fg : plain.batch(b).foreground) EXPECT_FALSE(fg);
}

TEST(PatchSampler, WithoutFlipsAPatchIsADirectCrop) {
  // Values with no structure: the corner is found by searching every position of the case.
  std::vector<float> image(2 * kSize * kSize * kSize);
  std::vector<std::int32_t> labels(kSize * kSize * kSize);
  std::uint32_t state = 12345;
  for (auto& v : image) v = static_cast<float>((state = state * 1664525u + 1013904223u) >> 8);
  for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<std::int32_t>(image[i]) % 3;
  const Tensor image_t = from_vector(image, {2, kSize, kSize, kSize});
  const Tensor label_t = from_vector(labels, {kSize, kSize, kSize});
  PatchSamplerOptions o = small_options(5, 2);
  o.flips = false;
  const PatchSampler sampler({{image_t, label_t}}, o);

  const std::int64_t pv = kPatch * kPatch * kPatch;
  auto matches = [&](const std::vector<float>& pimg, const std::vector<std::int32_t>& plab, std::int64_t n,
                     std::int64_t z0, std::int64_t y0, std::int64_t x0) {
    for (std::int64_t c = 0; c < 2; ++c)
      for (std::int64_t d = 0; d < kPatch; ++d)
        for (std::int64_t h = 0; h < kPatch; ++h)
          for (std::int64_t w = 0; w < kPatch; ++w) {
            const std::int64_t src = ((z0 + d) * kSize + y0 + h) * kSize + x0 + w;
            const std::int64_t dst = (d * kPatch + h) * kPatch + w;
            if (pimg[(n * 2 + c) * pv + dst] != image[c * kSize * kSize * kSize + src]) return false;
            if (c == 0 && plab[n * pv + dst] != labels[src]) return false;
          }
    return true;
  };
  for (std::int64_t b = 0; b < 4; ++b) {
    const Batch batch = sampler.batch(b);
    const std::vector<float> pimg = batch.image.to_vector<float>();
    const std::vector<std::int32_t> plab = batch.label.to_vector<std::int32_t>();
    for (std::int64_t n = 0; n < 2; ++n) {
      int found = 0;
      for (std::int64_t z = 0; z + kPatch <= kSize; ++z)
        for (std::int64_t y = 0; y + kPatch <= kSize; ++y)
          for (std::int64_t x = 0; x + kPatch <= kSize; ++x) found += matches(pimg, plab, n, z, y, x);
      EXPECT_EQ(found, 1) << "batch " << b << " patch " << n << " is not a crop of the case";
    }
  }

  // Turning flips off moves no patch: the same corners as with flips on, only unflipped.
  const std::vector<SamplerCase> cases = mixed_cases(1);
  PatchSamplerOptions with = small_options(9, 3), without = with;
  without.flips = false;
  const PatchSampler flipping(cases, with), straight(cases, without);
  for (std::int64_t b = 0; b < 10; ++b) {
    const Batch f = flipping.batch(b), s = straight.batch(b);
    for (std::int64_t n = 0; n < 3; ++n) {
      Placement pf, ps;
      ASSERT_TRUE(check_patch(f, n, cases, &pf));
      ASSERT_TRUE(check_patch(s, n, cases, &ps));
      EXPECT_EQ(pf.corner, ps.corner);
      EXPECT_FALSE(ps.flip[0] || ps.flip[1] || ps.flip[2]) << "batch " << b << " patch " << n << " is flipped";
    }
  }
}

TEST(PatchSampler, FlipsEachAxisAboutHalfTheTimeAndCoversEveryCorner) {
  // A non-cubic volume and patch, so axes that were mixed up would read outside or misplace voxels.
  std::vector<SamplerCase> cases;
  const Shape3 size{12, 16, 20};
  cases.push_back(coordinate_case(0, 2, striped, size));
  cases.push_back(coordinate_case(1, 2, striped, size));
  PatchSamplerOptions o = small_options(21, 6);
  o.patch = {5, 8, 6};
  o.oversample_foreground = false;  // random corners only: centred ones clamp to the last corner
  const PatchSampler sampler(cases, o);
  int flipped[3] = {0, 0, 0};
  std::set<std::int64_t> corners[3];
  const int batches = 60, patches = batches * 6;
  for (std::int64_t b = 0; b < batches; ++b) {
    const Batch batch = sampler.batch(b);
    for (std::int64_t n = 0; n < 6; ++n) {
      Placement pl;
      ASSERT_TRUE(check_patch(batch, n, cases, &pl)) << "batch " << b;
      for (int a = 0; a < 3; ++a) {
        flipped[a] += pl.flip[a];
        corners[a].insert(pl.corner[a]);
      }
    }
  }
  for (int a = 0; a < 3; ++a) {
    EXPECT_GT(flipped[a], patches * 35 / 100) << "axis " << a;
    EXPECT_LT(flipped[a], patches * 65 / 100) << "axis " << a;
    // Every corner in [0, size - patch] is drawn, the last one included.
    EXPECT_EQ(static_cast<std::int64_t>(corners[a].size()), size[a] - o.patch[a] + 1) << "axis " << a;
    EXPECT_EQ(*corners[a].rbegin(), size[a] - o.patch[a]) << "axis " << a;
  }
}

TEST(PatchSampler, LargeClassesKeepEvenlySpacedLocations) {
  // 24^3 = 13824 voxels of class 1, more than the 10000 kept: foreground patches still centre on
  // class-1 voxels spread over the whole volume, both ends included.
  const std::vector<SamplerCase> cases{
      coordinate_case(0, 1, [](std::int64_t, std::int64_t, std::int64_t) { return 1; }, {24, 24, 24})};
  PatchSamplerOptions o = small_options(4, 3);
  o.flips = false;
  const PatchSampler sampler(cases, o);
  std::set<std::int64_t> z_corners;
  for (std::int64_t b = 0; b < 100; ++b) {
    const Batch batch = sampler.batch(b);
    Placement pl;
    ASSERT_TRUE(check_patch(batch, 2, cases, &pl));
    EXPECT_TRUE(batch.foreground[2]);
    z_corners.insert(pl.corner[0]);
  }
  EXPECT_EQ(*z_corners.begin(), 0);
  EXPECT_EQ(*z_corners.rbegin(), 24 - kPatch);
}

TEST(BatchPrefetcher, RethrowsTheSamplersError) {
  const PatchSampler sampler(mixed_cases(), small_options());
  BatchPrefetcher prefetcher(sampler, -1);  // batch -1 does not exist
  const std::string message = error_of([&] { prefetcher.next(); });
  EXPECT_NE(message.find("batch index must be non-negative, got -1"), std::string::npos) << message;
  // Later calls keep reporting it instead of waiting for a batch that never comes.
  EXPECT_NE(error_of([&] { prefetcher.next(); }).find("non-negative"), std::string::npos);
  EXPECT_NE(error_of([&] { BatchPrefetcher(sampler, 0, 0); }).find("depth must be at least 1"), std::string::npos);
}

TEST(BatchPrefetcher, StopsWhileTheQueueIsFull) {
  const PatchSampler sampler(mixed_cases(), small_options());
  for (int depth : {1, 3}) {
    BatchPrefetcher prefetcher(sampler, 0, depth);
    EXPECT_TRUE(same_batch(prefetcher.next(), sampler.batch(0)));
    // Give the thread time to fill the queue and block on it; the destructor must still return.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  {
    BatchPrefetcher never_read(sampler, 0, 2);  // destroyed while its first batch may be in the making
  }
  SUCCEED();
}

TEST(PatchSampler, ConstructorChecksNameTheProblem) {
  const PatchSamplerOptions o = small_options();
  auto sampler_error = [&](std::vector<SamplerCase> cases, const PatchSamplerOptions& options) {
    return error_of([&] { PatchSampler(std::move(cases), options); });
  };
  auto expect_has = [](const std::string& message, const std::string& part) {
    EXPECT_NE(message.find(part), std::string::npos) << "\"" << message << "\" lacks \"" << part << "\"";
  };
  const SamplerCase good = mixed_cases(1)[0];
  const Tensor label = good.label;

  expect_has(sampler_error({}, o), "no cases");
  expect_has(sampler_error({good, {zeros({kSize, kSize, kSize}), label}}, o),
             "case 1 image must be a 4-D (C, Z, Y, X) float32 tensor, got float32 (20, 20, 20)");
  expect_has(sampler_error({{zeros({1, kSize, kSize, kSize}, DType::Float64), label}}, o),
             "case 0 image must be a 4-D (C, Z, Y, X) float32 tensor, got float64");
  expect_has(sampler_error({{good.image, label.to(DType::Float32)}}, o),
             "case 0 label must be a 3-D (Z, Y, X) int32 tensor, got float32");
  expect_has(sampler_error({{good.image, zeros({1, kSize, kSize, kSize}, DType::Int32)}}, o),
             "case 0 label must be a 3-D (Z, Y, X) int32 tensor, got int32 (1, 20, 20, 20)");
  expect_has(sampler_error({{good.image, zeros({kSize, kSize, kSize - 1}, DType::Int32)}}, o),
             "case 0 label shape (20, 20, 19) differs from the image's spatial shape (1, 20, 20, 20)");
  expect_has(sampler_error({good, mixed_cases(2)[1]}, o), "case 1 has 2 channels but case 0 has 1");
  expect_has(sampler_error({good, {zeros({1, kSize, 6, kSize}), zeros({kSize, 6, kSize}, DType::Int32)}}, o),
             "case 1 of spatial shape (20, 6, 20) is smaller than the patch (8, 8, 8) along axis 1");
  PatchSamplerOptions bad = o;
  bad.batch_size = 0;
  expect_has(sampler_error({good}, bad), "batch_size must be at least 1, got 0");
  bad = o;
  bad.patch = {8, 0, 8};
  expect_has(sampler_error({good}, bad), "patch size (8, 0, 8) must be positive");
  // A case exactly the patch size is fine.
  EXPECT_NO_THROW(PatchSampler({{zeros({1, 8, 8, 8}), zeros({8, 8, 8}, DType::Int32)}}, o).batch(0));
}

TEST(PatchSampler, LabelValuesBeyondAnyClassAreRefusedBeforeTablesAreSized) {
  // The per-class tables are sized by the largest label value: 2^31 - 1 asked for 16 GiB.
  std::vector<std::int32_t> l(static_cast<std::size_t>(8 * 8 * 8), 0);
  l[100] = 300;
  const std::string msg = error_of([&] {
    PatchSampler({{zeros({1, 8, 8, 8}), from_vector(l, {8, 8, 8})}}, small_options());
  });
  EXPECT_NE(msg.find("label value 300 is above 255"), std::string::npos) << msg;
  l[100] = 255;
  EXPECT_NO_THROW(PatchSampler({{zeros({1, 8, 8, 8}), from_vector(l, {8, 8, 8})}}, small_options()));
}

}  // namespace
