// Training patches as nnU-Net samples them: random patches, a third of them centred on a voxel of
// a foreground class chosen at random among those the case holds, random flips along the three
// axes. Batch number b is a pure function of (seed, b): the sampler keeps no RNG state between
// batches, so a resumed run that knows its step draws exactly the batches an uninterrupted run
// would, whatever thread prepared them. BatchPrefetcher prepares the next batches on a background
// thread while the training step runs.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/tensor.h"
#include "apps/pipeline/resample.h"

namespace voxgrad::pipeline {

// One preprocessed training case, each spatial axis at least the patch size (pad_to_at_least).
struct SamplerCase {
  Tensor image;  // (C, Z, Y, X) float32, CPU
  Tensor label;  // (Z, Y, X) int32, CPU, values in [0, classes)
};

struct Batch {
  std::int64_t index = 0;          // the batch number b
  Tensor image;                    // (N, C, D, H, W) float32, CPU; N: this rank's share
  Tensor label;                    // (N, D, H, W) int32, CPU
  std::vector<int> cases;          // which case each patch came from
  std::vector<bool> foreground;    // whether the patch was centred on a foreground voxel
};

struct PatchSamplerOptions {
  Shape3 patch{64, 64, 64};  // D, H, W
  std::int64_t batch_size = 2;
  // Patch p = b * batch_size + i of the stream is a foreground patch when p % 3 == 2: exactly a
  // third of them (nnU-Net's oversample_foreground_percent 0.33), whatever the batch size.
  bool oversample_foreground = true;
  bool flips = true;  // each axis flipped with probability 1/2, image and label alike
  std::uint64_t seed = 0;
  // Data-parallel training: this rank draws batch b as every rank does but keeps only its share,
  // patches [rank * n / ranks, (rank + 1) * n / ranks) of it (n = batch_size, which ranks divides).
  int ranks = 1;
  int rank = 0;
};

class PatchSampler {
 public:
  // Throws when there are no cases or a case is smaller than the patch or inconsistent (channel
  // counts, image/label shapes). Indexes every case's foreground voxels per class (at most 10000
  // evenly spaced locations per class, as nnU-Net keeps).
  PatchSampler(std::vector<SamplerCase> cases, const PatchSamplerOptions& options);

  Batch batch(std::int64_t index) const;  // thread-safe: reads only

  const PatchSamplerOptions& options() const { return options_; }
  std::size_t num_cases() const { return cases_.size(); }

 private:
  struct Indexed {
    SamplerCase data;
    std::vector<std::vector<std::int64_t>> locations;  // [class] flat voxel indices; [0] unused
  };
  std::vector<Indexed> cases_;
  PatchSamplerOptions options_;
};

// Calls sampler.batch(first), batch(first + 1), ... on one background thread, keeping up to
// `depth` batches ready. next() returns them in order (waiting when none is ready yet) and
// rethrows an exception the thread hit. The destructor stops and joins the thread.
class BatchPrefetcher {
 public:
  BatchPrefetcher(const PatchSampler& sampler, std::int64_t first, int depth = 2);
  ~BatchPrefetcher();
  BatchPrefetcher(const BatchPrefetcher&) = delete;
  BatchPrefetcher& operator=(const BatchPrefetcher&) = delete;

  Batch next();

 private:
  void run();

  const PatchSampler& sampler_;
  std::int64_t next_index_;
  int depth_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Batch> ready_;
  std::exception_ptr error_;
  bool stop_ = false;
  std::thread thread_;  // last: started once everything above is initialised
};

}  // namespace voxgrad::pipeline
