// Training patch sampling (nnU-Net's foreground oversampling and mirroring) and the background
// prefetcher. Every batch draws from its own generator seeded by (seed, b), so batches can be made
// in any order, on any thread, and a resumed run sees exactly the batches it would have seen.
#include "apps/pipeline/patch_sampler.h"

#include <algorithm>
#include <sstream>
#include <string>
#include <utility>

#include "engine/error.h"

namespace voxgrad::pipeline {

namespace {

// nnU-Net keeps at most this many foreground locations per class and case.
constexpr std::int64_t kMaxLocationsPerClass = 10000;

constexpr std::uint64_t kGolden = 0x9E3779B97F4A7C15ull;

std::uint64_t splitmix64_mix(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// A splitmix64 stream with its own bounded draw, so batches are the same with every standard
// library (std::uniform_int_distribution's algorithm is implementation-defined).
class BatchRng {
 public:
  BatchRng(std::uint64_t seed, std::int64_t batch)
      : state_(splitmix64_mix(seed ^ (kGolden * (static_cast<std::uint64_t>(batch) + 1)))) {}

  std::uint64_t next() {
    state_ += kGolden;
    return splitmix64_mix(state_);
  }

  // Uniform in [0, n): Lemire's multiply-and-reject, unbiased.
  std::int64_t bounded(std::int64_t n) {
    const auto range = static_cast<std::uint64_t>(n);
    unsigned __int128 m = static_cast<unsigned __int128>(next()) * range;
    auto low = static_cast<std::uint64_t>(m);
    if (low < range) {
      const std::uint64_t threshold = (0 - range) % range;
      while (low < threshold) {
        m = static_cast<unsigned __int128>(next()) * range;
        low = static_cast<std::uint64_t>(m);
      }
    }
    return static_cast<std::int64_t>(m >> 64);
  }
  std::size_t pick(std::size_t n) { return static_cast<std::size_t>(bounded(static_cast<std::int64_t>(n))); }

 private:
  std::uint64_t state_;
};

std::string shape3_str(const Shape3& s) {
  std::ostringstream os;
  os << "(" << s[0] << ", " << s[1] << ", " << s[2] << ")";
  return os.str();
}

Shape3 spatial_shape(const Tensor& label) { return {label.size(0), label.size(1), label.size(2)}; }

void check_case(const SamplerCase& c, std::size_t k, const PatchSamplerOptions& options, std::int64_t channels) {
  VG_CHECK(c.image.defined(), "PatchSampler: case " << k << " has no image");
  VG_CHECK(c.label.defined(), "PatchSampler: case " << k << " has no label");
  VG_CHECK(c.image.device().is_cpu() && c.label.device().is_cpu(),
           "PatchSampler: case " << k << " is not on the CPU (image on " << c.image.device().str() << ", label on "
                                 << c.label.device().str() << ")");
  VG_CHECK(c.image.dim() == 4 && c.image.dtype() == DType::Float32,
           "PatchSampler: case " << k << " image must be a 4-D (C, Z, Y, X) float32 tensor, got "
                                 << dtype_name(c.image.dtype()) << " " << shape_str(c.image.shape()));
  VG_CHECK(c.label.dim() == 3 && c.label.dtype() == DType::Int32,
           "PatchSampler: case " << k << " label must be a 3-D (Z, Y, X) int32 tensor, got "
                                 << dtype_name(c.label.dtype()) << " " << shape_str(c.label.shape()));
  const Shape3 spatial = spatial_shape(c.label);
  VG_CHECK(c.image.size(1) == spatial[0] && c.image.size(2) == spatial[1] && c.image.size(3) == spatial[2],
           "PatchSampler: case " << k << " label shape " << shape_str(c.label.shape())
                                 << " differs from the image's spatial shape " << shape_str(c.image.shape()));
  VG_CHECK(c.image.size(0) == channels, "PatchSampler: case " << k << " has " << c.image.size(0)
                                                              << " channels but case 0 has " << channels);
  for (int a = 0; a < 3; ++a) {
    VG_CHECK(spatial[a] >= options.patch[a],
             "PatchSampler: case " << k << " of spatial shape " << shape3_str(spatial)
                                   << " is smaller than the patch " << shape3_str(options.patch)
                                   << " along axis " << a << " (pad it to at least the patch size)");
  }
}

// Per class c > 0: every flat index holding c when there are at most kMaxLocationsPerClass, else
// that many evenly spaced ones (occurrences floor(k * n / max)). Two passes instead of collecting
// all indices first, so a large foreground class costs no more memory than the kept locations.
std::vector<std::vector<std::int64_t>> index_locations(const Tensor& label) {
  const std::int32_t* l = label.data<std::int32_t>();
  const std::int64_t n = label.numel();
  std::int32_t max_class = 0;
  for (std::int64_t i = 0; i < n; ++i) max_class = std::max(max_class, l[i]);
  // The tables below are sized by the largest value: preprocessing keeps labels below the plan's
  // classes (at most 256), so anything larger is a caller's bug that must not allocate gigabytes.
  VG_CHECK(max_class <= 255,
           "PatchSampler: label value " << max_class << " is above 255; labels must be preprocessed first");
  // Negative values (an ignore label) are not foreground and are not indexed.
  std::vector<std::int64_t> count(static_cast<std::size_t>(max_class) + 1, 0);
  for (std::int64_t i = 0; i < n; ++i)
    if (l[i] > 0) ++count[static_cast<std::size_t>(l[i])];

  std::vector<std::vector<std::int64_t>> locations(count.size());
  std::vector<std::int64_t> seen(count.size(), 0);  // occurrences of each class so far
  std::vector<std::int64_t> taken(count.size(), 0);  // locations kept so far
  for (std::size_t c = 1; c < count.size(); ++c)
    locations[c].reserve(static_cast<std::size_t>(std::min(count[c], kMaxLocationsPerClass)));
  for (std::int64_t i = 0; i < n; ++i) {
    if (l[i] <= 0) continue;
    const auto c = static_cast<std::size_t>(l[i]);
    const std::int64_t total = count[c];
    const std::int64_t occurrence = seen[c]++;
    if (total <= kMaxLocationsPerClass) {
      locations[c].push_back(i);
    } else if (taken[c] < kMaxLocationsPerClass && occurrence == taken[c] * total / kMaxLocationsPerClass) {
      // total > max, so the wanted occurrences are strictly increasing: at most one per voxel.
      locations[c].push_back(i);
      ++taken[c];
    }
  }
  return locations;
}

}  // namespace

PatchSampler::PatchSampler(std::vector<SamplerCase> cases, const PatchSamplerOptions& options) : options_(options) {
  VG_CHECK(!cases.empty(), "PatchSampler: no cases to sample from");
  VG_CHECK(options.batch_size >= 1, "PatchSampler: batch_size must be at least 1, got " << options.batch_size);
  VG_CHECK(options.ranks >= 1 && options.rank >= 0 && options.rank < options.ranks &&
               options.batch_size % options.ranks == 0,
           "PatchSampler: rank " << options.rank << " of " << options.ranks << " cannot share a batch of "
                                 << options.batch_size);
  for (int a = 0; a < 3; ++a)
    VG_CHECK(options.patch[a] >= 1, "PatchSampler: patch size " << shape3_str(options.patch) << " must be positive");
  const std::int64_t channels = cases[0].image.defined() && cases[0].image.dim() == 4 ? cases[0].image.size(0) : 0;
  for (std::size_t k = 0; k < cases.size(); ++k) check_case(cases[k], k, options, channels);

  cases_.reserve(cases.size());
  for (auto& c : cases) {
    Indexed indexed;
    indexed.locations = index_locations(c.label);
    indexed.data = std::move(c);
    cases_.push_back(std::move(indexed));
  }
}

Batch PatchSampler::batch(std::int64_t index) const {
  VG_CHECK(index >= 0, "PatchSampler::batch: batch index must be non-negative, got " << index);
  const std::int64_t n = options_.batch_size;
  const std::int64_t share = n / options_.ranks;
  const std::int64_t first = share * options_.rank;
  const std::int64_t channels = cases_[0].data.image.size(0);
  const Shape3& patch = options_.patch;
  const std::int64_t pd = patch[0], ph = patch[1], pw = patch[2];

  Batch out;
  out.index = index;
  out.image = empty({share, channels, pd, ph, pw}, DType::Float32);  // (N, C, D, H, W)
  out.label = empty({share, pd, ph, pw}, DType::Int32);              // (N, D, H, W)
  out.cases.resize(static_cast<std::size_t>(share));
  out.foreground.resize(static_cast<std::size_t>(share));
  float* image_out = out.image.data<float>();
  std::int32_t* label_out = out.label.data<std::int32_t>();

  BatchRng rng(options_.seed, index);
  for (std::int64_t i = 0; i < n; ++i) {
    // The draws come in a fixed order, and flip bits are drawn even with flips off, so the
    // options that do not change a patch's position do not shift any later draw.
    const std::int64_t p = index * n + i;
    const std::size_t case_index = rng.pick(cases_.size());
    const Indexed& c = cases_[case_index];
    const Shape3 size = spatial_shape(c.data.label);

    bool foreground = false;
    Shape3 corner{};
    if (options_.oversample_foreground && p % 3 == 2) {
      std::vector<std::size_t> present;
      for (std::size_t k = 1; k < c.locations.size(); ++k)
        if (!c.locations[k].empty()) present.push_back(k);
      if (!present.empty()) {
        const std::vector<std::int64_t>& where = c.locations[present[rng.pick(present.size())]];
        const std::int64_t flat = where[rng.pick(where.size())];
        const Shape3 loc{flat / (size[1] * size[2]), (flat / size[2]) % size[1], flat % size[2]};
        for (int a = 0; a < 3; ++a) corner[a] = std::clamp(loc[a] - patch[a] / 2, std::int64_t{0}, size[a] - patch[a]);
        foreground = true;
      }
    }
    if (!foreground)
      for (int a = 0; a < 3; ++a) corner[a] = rng.bounded(size[a] - patch[a] + 1);
    const std::uint64_t flip_bits = rng.next();
    const bool flip[3] = {options_.flips && (flip_bits & 1) != 0, options_.flips && (flip_bits & 2) != 0,
                          options_.flips && (flip_bits & 4) != 0};
    if (i < first || i >= first + share) continue;  // another rank's patch: drawn, not copied
    const std::int64_t slot = i - first;            // in this rank's share
    out.cases[static_cast<std::size_t>(slot)] = static_cast<int>(case_index);
    out.foreground[static_cast<std::size_t>(slot)] = foreground;

    // Output voxel (d, h, w) reads input (corner + d) or, flipped, (corner + patch - 1 - d).
    const float* image_in = c.data.image.data<float>();                 // (C, Z, Y, X)
    const std::int32_t* label_in = c.data.label.data<std::int32_t>();  // (Z, Y, X)
    const std::int64_t plane = size[1] * size[2];
    const std::int64_t volume = size[0] * plane;
    const std::int64_t patch_voxels = pd * ph * pw;
    for (std::int64_t d = 0; d < pd; ++d) {
      const std::int64_t z = corner[0] + (flip[0] ? pd - 1 - d : d);
      for (std::int64_t h = 0; h < ph; ++h) {
        const std::int64_t y = corner[1] + (flip[1] ? ph - 1 - h : h);
        const std::int64_t src_row = z * plane + y * size[2] + corner[2];
        const std::int64_t dst_row = (d * ph + h) * pw;
        std::int32_t* label_dst = label_out + slot * patch_voxels + dst_row;
        if (flip[2]) {
          std::reverse_copy(label_in + src_row, label_in + src_row + pw, label_dst);
        } else {
          std::copy(label_in + src_row, label_in + src_row + pw, label_dst);
        }
        for (std::int64_t ch = 0; ch < channels; ++ch) {
          const float* src = image_in + ch * volume + src_row;
          float* dst = image_out + (slot * channels + ch) * patch_voxels + dst_row;
          if (flip[2]) {
            std::reverse_copy(src, src + pw, dst);
          } else {
            std::copy(src, src + pw, dst);
          }
        }
      }
    }
  }
  return out;
}

namespace {

int checked_depth(int depth) {
  VG_CHECK(depth >= 1, "BatchPrefetcher: depth must be at least 1, got " << depth);
  return depth;
}

}  // namespace

// depth_ is checked in the initialiser list, before thread_ starts: a throw from the body would
// destroy a joinable std::thread and terminate.
BatchPrefetcher::BatchPrefetcher(const PatchSampler& sampler, std::int64_t first, int depth)
    : sampler_(sampler), next_index_(first), depth_(checked_depth(depth)), thread_(&BatchPrefetcher::run, this) {}

BatchPrefetcher::~BatchPrefetcher() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Batch BatchPrefetcher::next() {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return !ready_.empty() || error_ != nullptr; });
  // Batches made before a failure are still handed out in order; the error comes after them.
  if (ready_.empty()) std::rethrow_exception(error_);
  Batch b = std::move(ready_.front());
  ready_.pop_front();
  lock.unlock();
  changed_.notify_all();
  return b;
}

void BatchPrefetcher::run() {
  for (;;) {
    std::int64_t index = 0;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      changed_.wait(lock, [&] { return stop_ || static_cast<std::int64_t>(ready_.size()) < depth_; });
      if (stop_) return;
      index = next_index_++;
    }
    // The batch is made outside the lock so next() can hand out the ready ones meanwhile.
    Batch b;
    try {
      b = sampler_.batch(index);
    } catch (...) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        error_ = std::current_exception();
      }
      changed_.notify_all();
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stop_) return;
      ready_.push_back(std::move(b));
    }
    changed_.notify_all();
  }
}

}  // namespace voxgrad::pipeline
