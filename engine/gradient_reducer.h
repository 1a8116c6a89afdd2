// Data-parallel gradient averaging as PyTorch's DistributedDataParallel does it: the parameters
// are grouped into buckets of a few megabytes, and a bucket's sum over the ranks starts as soon as
// its last gradient is final, while the backward pass goes on with the layers before it. The first
// pass buckets the parameters in reverse order of registration (roughly the order backward
// finishes them); after it, the buckets are rebuilt in the order that pass actually finished them,
// parameters it never reached (a head the loss does not use) last, so that they hold no bucket
// back. Buckets start strictly in order, so every rank issues the same collectives in the same
// order (the ranks check that they observed the same order).
#pragma once

#include <cstdint>
#include <future>
#include <unordered_map>
#include <vector>

#include "communicator.h"
#include "tensor.h"

namespace voxgrad {

struct GradientBucket {
  std::vector<std::size_t> params;    // indices into the reducer's parameters, in bucket order
  std::vector<std::int64_t> offsets;  // of each parameter in the bucket, in floats
  std::int64_t floats = 0;
};

// What the last backward() cost, for `bench train --distributed`.
struct ReductionTiming {
  double wait_seconds = 0;  // after the backward pass: waiting for the sums still running
  std::int64_t bytes = 0;   // of gradients, summed over the ranks per step
};

class GradientReducer {
 public:
  static constexpr std::int64_t kDefaultBucketBytes = 4 << 20;

  // `params`: float32 tensors that require a gradient, on comm.device(), in registration order.
  GradientReducer(std::vector<Tensor> params, Communicator& comm, std::int64_t bucket_bytes = kDefaultBucketBytes);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // loss.backward(), after which every parameter's grad() is the mean of the ranks' gradients
  // (a rank whose pass did not reach it adds zeros; one no rank reached keeps no gradient), the
  // same bits on every rank.
  void backward(const Tensor& loss);

  const std::vector<GradientBucket>& buckets() const { return buckets_; }
  const ReductionTiming& last_timing() const { return timing_; }

 private:
  void on_ready(std::size_t param);  // the parameter's gradient is final for this pass
  void start_ready_buckets();        // every bucket from next_bucket_ on whose gradients are all in

  // Groups the parameters, in `order`, into buckets and allocates their buffers.
  void assign_buckets(const std::vector<std::size_t>& order);
  // After the first pass: the buckets in the order it finished the gradients.
  void rebuild_buckets_in_observed_order();

  std::vector<Tensor> params_;
  Communicator& comm_;
  std::int64_t bucket_floats_;
  bool rebuilt_ = false;
  std::vector<std::size_t> observed_;  // parameters in the order the first pass finished them
  std::vector<GradientBucket> buckets_;
  std::vector<Tensor> flat_;                               // one buffer per bucket on comm.device(), allocated once
  std::vector<Tensor> views_;                              // per parameter: its slice of its bucket's buffer
  std::vector<std::size_t> bucket_of_;                     // per parameter
  std::vector<std::size_t> slot_of_;                       // per parameter: its place in its bucket
  std::unordered_map<const void*, std::size_t> index_of_;  // TensorImpl* to parameter index
  // Per pass:
  std::vector<bool> ready_;
  std::vector<std::int64_t> reached_;  // per parameter: 1 when this rank's pass reached it
  std::vector<std::size_t> missing_;   // per bucket: gradients not yet in
  std::size_t next_bucket_ = 0;
  std::vector<std::future<void>> pending_;
  ReductionTiming timing_;
};

}  // namespace voxgrad
