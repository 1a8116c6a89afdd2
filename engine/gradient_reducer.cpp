// Buckets filled by copying each final gradient into the bucket's flat buffer, on the parameters'
// device and in order on its stream; after the sum, each gradient becomes the bucket's slice times
// 1/P. Whether a rank's pass reached a parameter travels apart, as counts summed once per step.
#include "engine/gradient_reducer.h"

#include <algorithm>
#include <chrono>
#include <string>

#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/ops.h"
#include "engine/profiler.h"

namespace voxgrad {

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// `shape` floats of `flat` from float `offset` on: a view sharing its storage.
Tensor view_of(const Tensor& flat, std::int64_t offset, const Shape& shape) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = flat.impl()->storage;
  impl->byte_offset = flat.impl()->byte_offset + static_cast<std::size_t>(offset) * sizeof(float);
  impl->shape = shape;
  impl->dtype = DType::Float32;
  return Tensor(std::move(impl));
}

}  // namespace

GradientReducer::GradientReducer(std::vector<Tensor> params, Communicator& comm, std::int64_t bucket_bytes)
    : params_(std::move(params)), comm_(comm) {
  VG_CHECK(bucket_bytes > 0, "GradientReducer: bucket size must be positive, got " << bucket_bytes);
  bucket_floats_ = std::max<std::int64_t>(1, bucket_bytes / static_cast<std::int64_t>(sizeof(float)));
  for (std::size_t k = 0; k < params_.size(); ++k) {
    const Tensor& p = params_[k];
    VG_CHECK(p.dtype() == DType::Float32 && p.device() == comm.device() && p.requires_grad(),
             "GradientReducer: parameter " << k << " is " << p.str() << "; these ranks reduce float32 parameters on "
                                           << comm.device().str());
    VG_CHECK(index_of_.emplace(p.impl_ptr().get(), k).second, "GradientReducer: parameter " << k << " is listed twice");
  }
  std::vector<std::size_t> reverse(params_.size());
  for (std::size_t k = 0; k < params_.size(); ++k) reverse[k] = params_.size() - 1 - k;
  assign_buckets(reverse);
}

GradientReducer::~GradientReducer() {
  // A backward pass that threw may have left reductions running into the buckets' buffers. The
  // other ranks complete them (they run the same pass); should one not, the buffers are left to the
  // process's end rather than freed under a running reduction. NCCL's futures are deferred (their
  // wait is the host's wait for the GPU), so on a GPU the buffers of a failed pass are always left.
  for (std::future<void>& f : pending_) {
    if (!f.valid() || f.wait_for(std::chrono::seconds(30)) == std::future_status::ready) continue;
    new std::vector<Tensor>(std::move(flat_));  // deliberately never freed
    return;
  }
}

void GradientReducer::assign_buckets(const std::vector<std::size_t>& order) {
  buckets_.clear();
  bucket_of_.assign(params_.size(), 0);
  slot_of_.assign(params_.size(), 0);
  for (std::size_t k : order) {
    const std::int64_t n = params_[k].numel();
    if (buckets_.empty() || (buckets_.back().floats > 0 && buckets_.back().floats + n > bucket_floats_))
      buckets_.emplace_back();
    GradientBucket& b = buckets_.back();
    bucket_of_[k] = buckets_.size() - 1;
    slot_of_[k] = b.params.size();
    b.params.push_back(k);
    b.offsets.push_back(b.floats);
    b.floats += n;
  }
  flat_.clear();
  views_.assign(params_.size(), Tensor());
  for (const GradientBucket& b : buckets_) {
    flat_.push_back(empty({b.floats}, DType::Float32, comm_.device()));
    for (std::size_t slot = 0; slot < b.params.size(); ++slot)
      views_[b.params[slot]] = view_of(flat_.back(), b.offsets[slot], params_[b.params[slot]].shape());
  }
}

void GradientReducer::rebuild_buckets_in_observed_order() {
  std::vector<std::size_t> order = observed_;
  std::vector<bool> seen(params_.size(), false);
  for (std::size_t k : order) seen[k] = true;
  for (std::size_t k = 0; k < params_.size(); ++k)
    if (!seen[k]) order.push_back(k);
  // The ranks ran the same graph, so they finished the gradients in the same order; were it not
  // so, their buckets would differ and the sums would mix different parameters.
  std::string text;
  for (std::size_t k : order) text += std::to_string(k) + ",";
  const std::vector<std::string> all = comm_.all_gather(text);
  for (std::size_t r = 1; r < all.size(); ++r)
    if (all[r] != all[0]) {
      comm_.fail_together();  // every rank sees the same lists, so every rank stops here
      VG_FAIL("GradientReducer: rank " << r << " finished its gradients in another order than rank 0");
    }
  assign_buckets(order);
  rebuilt_ = true;
}

void GradientReducer::on_ready(std::size_t param) {
  if (ready_[param]) return;
  ready_[param] = true;
  if (!rebuilt_) observed_.push_back(param);
  const Tensor& g = params_[param].grad();
  reached_[param] = g.defined() ? 1 : 0;
  // No gradient reached it on this rank: zeros, which add nothing to the other ranks'.
  views_[param].copy_(g.defined() ? g : zeros(params_[param].shape(), DType::Float32, comm_.device()));
  if (--missing_[bucket_of_[param]] == 0) start_ready_buckets();
}

void GradientReducer::start_ready_buckets() {
  while (next_bucket_ < buckets_.size() && missing_[next_bucket_] == 0) {
    Tensor& flat = flat_[next_bucket_];
    pending_.push_back(comm_.start_sum(flat.data<float>(), flat.numel()));
    timing_.bytes += buckets_[next_bucket_].floats * static_cast<std::int64_t>(sizeof(float));
    ++next_bucket_;
  }
}

void GradientReducer::backward(const Tensor& loss) {
  timing_ = {};
  ready_.assign(params_.size(), false);
  reached_.assign(params_.size(), 0);
  missing_.clear();
  for (const GradientBucket& b : buckets_) missing_.push_back(b.params.size());
  next_bucket_ = 0;
  for (const std::future<void>& f : pending_)
    VG_CHECK(!f.valid(),
             "GradientReducer: an earlier backward pass failed with reductions still running into its "
             "buckets; this reducer cannot be used again");
  pending_.clear();
  {
    LeafReadyHook hook([this](TensorImpl& leaf) {
      const auto it = index_of_.find(&leaf);
      if (it != index_of_.end()) on_ready(it->second);
    });
    loss.backward();
  }
  // Parameters the pass never reached (unused by this loss) go in as zeros, in order.
  const bool first_pass = !rebuilt_;
  const std::size_t reached = observed_.size();
  for (std::size_t k = 0; k < params_.size(); ++k) on_ready(k);
  if (first_pass) observed_.resize(reached);  // the unreached ones go last, in registration order

  const auto wait_start = std::chrono::steady_clock::now();
  {
    VG_PROFILE("allreduce_wait", Device::cpu());
    for (std::future<void>& f : pending_) f.get();
  }
  // How many ranks reached each parameter (exact: integers).
  comm_.sum(reached_.data(), static_cast<std::int64_t>(reached_.size()));
  timing_.wait_seconds = seconds_since(wait_start);

  // The mean, written back: the same bits on every rank, since every rank summed the same bits
  // (divided, so that it is correctly rounded for any rank count).
  const double ranks = static_cast<double>(comm_.size());
  for (std::size_t k = 0; k < params_.size(); ++k) {
    // A parameter no rank reached keeps no gradient, as in one process: the optimizer then leaves
    // it alone (no weight decay, no momentum state).
    params_[k].set_grad(reached_[k] > 0 ? div(views_[k], ranks) : Tensor());
  }
  if (first_pass) rebuild_buckets_in_observed_order();
}

}  // namespace voxgrad
