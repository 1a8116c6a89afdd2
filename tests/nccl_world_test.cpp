// NCCL between GPUs, through the same Communicator as MPI: on one GPU, a 1-rank NCCL communicator
// set up over a single process sums in place (the identity) on the rank's GPU, and the gradient
// reducer on it leaves a CUDA network's gradients as a plain backward pass makes them. Without a
// GPU (or without CUDA) it says why, in one line.
#include "apps/distributed/nccl_world.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "engine/communicator.h"
#include "engine/error.h"
#include "engine/gradient_reducer.h"
#include "engine/ops.h"
#include "tests/test_support.h"

namespace {

using namespace voxgrad;

TEST(NcclWorld, WithoutADeviceItSaysWhy) {
  if (test::has_cuda()) GTEST_SKIP() << "this machine has a GPU: NcclWorld.OneRank*Gpu* run instead";
  const std::string message = test::error_of([] { distributed::nccl_world(single_process_communicator()); });
#if VOXGRAD_HAS_CUDA
  EXPECT_NE(message.find("this rank sees no usable GPU"), std::string::npos) << message;
#else
  EXPECT_NE(message.find("needs a CUDA build of voxgrad"), std::string::npos) << message;
#endif
  EXPECT_FALSE(test::has_source_text(message)) << message;
}

// A 1-rank NCCL communicator on this machine's GPU, or why there is none (no GPU, no NCCL).
std::shared_ptr<Communicator> one_rank(std::string& why_not) {
  if (!test::has_cuda()) {
    why_not = "no CUDA device";
    return nullptr;
  }
  try {
    return distributed::nccl_world(single_process_communicator());
  } catch (const InputError& e) {
    if (std::string(e.what()).find("NCCL 2 was not found") == std::string::npos) throw;
    why_not = e.what();
    return nullptr;
  }
}

TEST(NcclWorld, OneRankSumsInPlaceOnItsGpu) {
  std::string why_not;
  const auto comm = one_rank(why_not);
  if (!comm) GTEST_SKIP() << why_not;
  ASSERT_TRUE(comm->device().is_cuda());
  std::vector<float> values(1 << 20);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i % 977) * 0.25f - 7.0f;
  Tensor buffer = from_vector(values, {static_cast<std::int64_t>(values.size())}, comm->device());
  comm->start_sum(buffer.data<float>(), buffer.numel()).get();
  EXPECT_EQ(buffer.to_vector<float>(), values) << "one rank's sum is its own values";
}

TEST(NcclWorld, OneRankReducerOnTheGpuKeepsThePlainGradients) {
  std::string why_not;
  const auto comm = one_rank(why_not);
  if (!comm) GTEST_SKIP() << why_not;
  const Device gpu = comm->device();
  std::vector<Tensor> w;
  for (int k = 0; k < 3; ++k) {
    std::vector<float> v(5000);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = 0.1f * static_cast<float>(k + 1) * static_cast<float>(i % 13);
    w.push_back(from_vector(v, {5000}, gpu));
    w.back().requires_grad_();
  }
  const Tensor x = from_vector(std::vector<float>(5000, 0.5f), {5000}, gpu);
  auto loss = [&] { return sum(mul(mul(mul(x, w[0]), w[1]), w[2])); };
  loss().backward();
  std::vector<std::vector<float>> expected;
  for (Tensor& t : w) {
    expected.push_back(t.grad().to_vector<float>());
    t.zero_grad();
  }
  GradientReducer reducer(w, *comm, 8000);  // buckets of 2000 floats: one per parameter
  for (int pass = 0; pass < 2; ++pass) {
    reducer.backward(loss());
    for (std::size_t k = 0; k < w.size(); ++k) EXPECT_EQ(w[k].grad().to_vector<float>(), expected[k]) << k;
    for (Tensor& t : w) t.zero_grad();
  }
}

}  // namespace
