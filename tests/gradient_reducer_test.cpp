// The gradient reducer and the start-up agreement against a scripted communicator (no MPI): the
// mean over ranks lands in every gradient, a bucket starts while the backward pass still runs,
// parameters no rank reached keep no gradient and move to the last bucket, and the agreement throws the failed
// rank's error or names the fingerprint that differs. LeafReadyHook reports a leaf once, after its
// last contribution.
#include "engine/gradient_reducer.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/communicator.h"
#include "engine/error.h"
#include "engine/ops.h"
#include "tests/test_support.h"

namespace {

using namespace voxgrad;

// Rank `rank` of `size` ranks whose peers hold this rank's values: a sum multiplies by size. It
// records every reduction started, and what `probe` said at that moment.
class ScriptedRanks : public Communicator {
 public:
  ScriptedRanks(int rank, int size) : rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return 0; }
  std::future<void> start_sum(float* data, std::int64_t count) override {
    started.push_back(count);
    if (probe) probed.push_back(probe());
    for (std::int64_t i = 0; i < count; ++i) data[i] = peers_add ? data[i] + 1.0f : data[i] * static_cast<float>(size_);
    std::promise<void> done;
    done.set_value();
    return done.get_future();
  }
  void sum(double* data, std::int64_t count) override {
    for (std::int64_t i = 0; i < count; ++i) data[i] *= size_;
  }
  void sum(std::int64_t* data, std::int64_t count) override {
    for (std::int64_t i = 0; i < count; ++i) data[i] = peers_add ? data[i] + 1 : data[i] * size_;
  }
  // Every rank's string: the peers' from `peers` where given, else this rank's own.
  std::vector<std::string> all_gather(const std::string& mine) override {
    std::vector<std::string> out(size_, mine);
    for (const auto& [rank, text] : peers) out[rank] = text;
    out[rank_] = mine;
    return out;
  }

  std::vector<std::int64_t> started;
  std::function<bool()> probe;
  bool peers_add = false;  // two ranks, the other adding 1 to every value (and reaching every parameter)
  std::vector<bool> probed;
  std::vector<std::pair<int, std::string>> peers;

 protected:
  void end_job(int) override { throw std::logic_error("end_job is not expected here"); }

 private:
  int rank_, size_;
};

Tensor parameter(std::int64_t n, float scale) {
  std::vector<float> v(n);
  for (std::int64_t i = 0; i < n; ++i) v[i] = scale * static_cast<float>((i % 7) - 3) + 0.25f;
  Tensor t = from_vector(v, {n});
  t.requires_grad_();
  return t;
}

// y = x * w1 * w2 * w3, loss = sum(y): backward finishes w3, then w2, then w1.
Tensor chain_loss(const std::vector<Tensor>& w) {
  const Tensor x = from_vector(std::vector<float>(1000, 0.5f), {1000});
  return sum(mul(mul(mul(x, w[0]), w[1]), w[2]));
}

std::vector<std::vector<float>> grads_of(const std::vector<Tensor>& w) {
  std::vector<std::vector<float>> out;
  for (const Tensor& t : w) out.push_back(t.grad().defined() ? t.grad().to_vector<float>() : std::vector<float>{});
  return out;
}

TEST(GradientReducer, EveryGradientBecomesTheMeanAndBucketsStartDuringTheBackwardPass) {
  std::vector<Tensor> w = {parameter(1000, 0.1f), parameter(1000, 0.2f), parameter(1000, 0.3f)};
  chain_loss(w).backward();
  const auto expected = grads_of(w);
  for (Tensor& t : w) t.zero_grad();

  ScriptedRanks ranks(0, 4);
  // One parameter per bucket (4000 bytes each).
  GradientReducer reducer(w, ranks, 4000);
  ASSERT_EQ(reducer.buckets().size(), 3u);
  // Whether w1's gradient exists yet: it is the last one the backward pass finishes.
  ranks.probe = [&] { return w[0].grad().defined(); };
  reducer.backward(chain_loss(w));
  // The scripted peers hold the same gradients, so the mean is this rank's own, exactly.
  EXPECT_EQ(grads_of(w), expected);
  EXPECT_EQ(ranks.started, (std::vector<std::int64_t>{1000, 1000, 1000}));
  EXPECT_EQ(ranks.probed, (std::vector<bool>{false, false, true}))
      << "the buckets of w3 and w2 must start before the backward pass reaches w1";
  EXPECT_EQ(reducer.last_timing().bytes, 3 * 1000 * 4);
}

TEST(GradientReducer, OneProcessAloneGetsThePlainBackwardsGradients) {
  std::vector<Tensor> w = {parameter(1000, 0.1f), parameter(1000, 0.2f), parameter(1000, 0.3f), parameter(10, 1.0f)};
  chain_loss(w).backward();
  const auto expected = grads_of(w);
  for (Tensor& t : w) t.zero_grad();
  const auto alone = single_process_communicator();
  GradientReducer reducer(w, *alone, 4000);
  for (int pass = 0; pass < 2; ++pass) {  // the first pass's buckets, then the rebuilt ones
    reducer.backward(chain_loss(w));
    EXPECT_EQ(grads_of(w), expected) << "pass " << pass;
    EXPECT_FALSE(w[3].grad().defined());
    for (Tensor& t : w) t.zero_grad();
  }
}

TEST(GradientReducer, UnusedParametersKeepNoGradientAndMoveToTheLastBucket) {
  // w[3] is registered last, so the first pass buckets it first, where it holds back every bucket.
  std::vector<Tensor> w = {parameter(1000, 0.1f), parameter(1000, 0.2f), parameter(1000, 0.3f), parameter(10, 1.0f)};
  ScriptedRanks ranks(1, 2);
  GradientReducer reducer(w, ranks, 4000);
  ASSERT_EQ(reducer.buckets().front().params, std::vector<std::size_t>{3});
  ranks.probe = [&] { return w[0].grad().defined(); };
  reducer.backward(chain_loss(w));
  EXPECT_EQ(ranks.probed, (std::vector<bool>{true, true, true, true})) << "nothing could start before the end";
  EXPECT_FALSE(w[3].grad().defined()) << "no rank reached it: the optimizer must leave it alone";
  // Rebuilt in the order the pass finished the gradients, the unused one last.
  std::vector<std::vector<std::size_t>> order;
  for (const GradientBucket& b : reducer.buckets()) order.push_back(b.params);
  EXPECT_EQ(order, (std::vector<std::vector<std::size_t>>{{2}, {1}, {0}, {3}}));
  for (Tensor& t : w) t.zero_grad();
  ranks.probed.clear();
  reducer.backward(chain_loss(w));
  EXPECT_EQ(ranks.probed, (std::vector<bool>{false, false, true, true}));
}

TEST(GradientReducer, AParameterAnotherRankReachedGetsTheMeanWithThisRanksZeros) {
  std::vector<Tensor> w = {parameter(1000, 0.1f), parameter(1000, 0.2f), parameter(1000, 0.3f), parameter(10, 1.0f)};
  chain_loss(w).backward();
  const auto own = grads_of(w);
  for (Tensor& t : w) t.zero_grad();
  ScriptedRanks ranks(0, 2);
  ranks.peers_add = true;
  GradientReducer reducer(w, ranks, 4000);
  reducer.backward(chain_loss(w));
  for (std::size_t k = 0; k < 3; ++k) {
    std::vector<float> mean = own[k];
    for (float& g : mean) g = (g + 1.0f) * 0.5f;
    EXPECT_EQ(w[k].grad().to_vector<float>(), mean) << "parameter " << k;
  }
  EXPECT_EQ(w[3].grad().to_vector<float>(), std::vector<float>(10, 0.5f)) << "the other rank's 1, this rank's 0";
}

TEST(GradientReducer, RanksThatFinishedTheirGradientsInAnotherOrderAreAnError) {
  std::vector<Tensor> w = {parameter(1000, 0.1f), parameter(1000, 0.2f), parameter(1000, 0.3f)};
  ScriptedRanks ranks(0, 2);
  ranks.peers = {{1, "0,1,2,"}};  // rank 0 finishes them as 2, 1, 0
  GradientReducer reducer(w, ranks, 4000);
  const std::string message = test::error_of([&] { reducer.backward(chain_loss(w)); });
  EXPECT_NE(message.find("rank 1 finished its gradients in another order than rank 0"), std::string::npos) << message;
}

TEST(CommunicatorAgree, AFailedRankIsEveryRanksErrorOfItsKind) {
  ScriptedRanks rank0(0, 3);
  rank0.peers = {{1, "-abc\n"}, {2, "U--patch: 7 is not divisible by 4"}};
  try {
    rank0.agree(nullptr, {{"options", "abc"}});
    FAIL() << "agree() threw nothing";
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()), "rank 2: --patch: 7 is not divisible by 4");
  }
  EXPECT_TRUE(rank0.failure_agreed());

  // The failed rank itself rethrows its own exception, as it was.
  ScriptedRanks rank1(1, 2);
  rank1.peers = {{0, "-x\n"}};
  EXPECT_THROW(rank1.agree(std::make_exception_ptr(InputError("disk full"))), InputError);
}

TEST(CommunicatorAgree, TheFirstFingerprintThatDiffersIsNamed) {
  ScriptedRanks ranks(0, 3);
  ranks.peers = {{1, "-a\nb\n"}, {2, "-a\nc\n"}};
  const Communicator::Fingerprints mine = {{"options", "a"}, {"dataset", "b"}};
  try {
    ranks.agree(nullptr, mine);
    FAIL() << "agree() threw nothing";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 2 differs from rank 0 in its dataset"), std::string::npos) << e.what();
  }
  ScriptedRanks agreeing(0, 3);
  agreeing.peers = {{1, "-a\nb\n"}, {2, "-a\nb\n"}};
  EXPECT_NO_THROW(agreeing.agree(nullptr, mine));
  EXPECT_FALSE(agreeing.failure_agreed());
}

TEST(LeafReadyHook, ALeafIsReportedOnceAfterItsLastContribution) {
  Tensor a = parameter(4, 1.0f), b = parameter(4, 2.0f);
  // a feeds two nodes; b one. The report for a must come after both contributions arrived.
  const Tensor loss = sum(add(mul(a, b), mul(a, a)));
  std::vector<std::pair<const void*, std::vector<float>>> reports;
  {
    LeafReadyHook hook([&](TensorImpl& leaf) {
      reports.emplace_back(&leaf,
                           Tensor(std::shared_ptr<TensorImpl>(&leaf, [](TensorImpl*) {})).grad().to_vector<float>());
    });
    loss.backward();
  }
  ASSERT_EQ(reports.size(), 2u);
  for (const auto& [leaf, grad] : reports) {
    const Tensor& t = leaf == a.impl_ptr().get() ? a : b;
    EXPECT_EQ(grad, t.grad().to_vector<float>()) << "reported before its gradient was final";
  }
}

}  // namespace
