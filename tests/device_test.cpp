// Device discovery and the --device choice: a machine without a GPU is CPU mode with a reason,
// never a crash; bad choices are errors that name the value; streams exist on a GPU machine.
#include "engine/device.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "engine/error.h"
#include "tests/test_support.h"

namespace voxgrad {
namespace {

::testing::AssertionResult contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "' does not contain '" << part << "'";
}

std::string error_of(const std::string& choice) {
  try {
    resolve_device(choice);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Device, CpuIsAlwaysThere) {
  EXPECT_EQ(resolve_device("cpu"), Device::cpu());
  EXPECT_EQ(Device::cpu().str(), "cpu");
  EXPECT_EQ(Device::cuda(1).str(), "cuda:1");
  EXPECT_TRUE(stream_for(Device::cpu()).handle == nullptr);
  EXPECT_NO_THROW(synchronize(Device::cpu()));
}

TEST(Device, UnknownChoiceNamesTheValueAndTheValidOnes) {
  for (const std::string bad : {"bogus", "gpu", "CUDA", ""}) {
    const std::string msg = error_of(bad);
    EXPECT_TRUE(contains(msg, "'" + bad + "'")) << bad;
    EXPECT_TRUE(contains(msg, "cpu, cuda or auto")) << bad;
  }
}

TEST(Device, CountIsStableAndAgreesWithTheReason) {
  std::vector<int> seen(8, -1);
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) threads.emplace_back([&seen, i] { seen[i] = cuda_device_count(); });
  for (auto& t : threads) t.join();
  const int n = cuda_device_count();
  for (int v : seen) EXPECT_EQ(v, n);
  EXPECT_GE(n, 0);
  EXPECT_EQ(cuda_device_count(), n);
  if (n == 0) {
    EXPECT_FALSE(cuda_unavailable_reason().empty());
  } else {
    EXPECT_TRUE(cuda_unavailable_reason().empty());
  }
  if (!built_with_cuda()) {
    EXPECT_EQ(n, 0);
    EXPECT_EQ(cuda_unavailable_reason(), "built without CUDA");
  }
}

TEST(Device, AutoWithoutAGpuIsTheCpuSaidOnceOnStderr) {
  if (test::has_cuda()) GTEST_SKIP() << "this machine has a CUDA device";
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  const Device first = resolve_device("auto");
  const Device second = resolve_device("auto");
  const std::string out = ::testing::internal::GetCapturedStdout();
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(first, Device::cpu());
  EXPECT_EQ(second, Device::cpu());
  EXPECT_TRUE(out.empty()) << out;  // stdout carries results only
  const std::string notice = "no CUDA device (" + cuda_unavailable_reason() + "), running on the CPU";
  const auto at = err.find(notice);
  EXPECT_NE(at, std::string::npos) << err;
  EXPECT_EQ(err.find(notice, at + 1), std::string::npos) << "said twice: " << err;
}

TEST(Device, CudaWithoutAGpuThrowsWithTheReason) {
  if (test::has_cuda()) GTEST_SKIP() << "this machine has a CUDA device";
  const std::string msg = error_of("cuda");
  EXPECT_TRUE(contains(msg, "--device cuda: no CUDA device is usable"));
  EXPECT_TRUE(contains(msg, cuda_unavailable_reason()));
  EXPECT_THROW(stream_for(Device::cuda(0)), Error);
  EXPECT_THROW(synchronize(Device::cuda(0)), Error);
  EXPECT_THROW(cuda_device_name(0), Error);
}

TEST(Device, CudaStreamsAreCreatedOnceAndSynchronize) {
  VG_REQUIRE_CUDA();
  EXPECT_EQ(resolve_device("cuda"), Device::cuda(0));
  EXPECT_EQ(resolve_device("auto"), Device::cuda(0));
  const kernels::Stream s = stream_for(Device::cuda(0));
  EXPECT_NE(s.handle, nullptr);
  EXPECT_EQ(stream_for(Device::cuda(0)).handle, s.handle);
  std::vector<void*> seen(4, nullptr);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) threads.emplace_back([&seen, i] { seen[i] = stream_for(Device::cuda(0)).handle; });
  for (auto& t : threads) t.join();
  for (void* h : seen) EXPECT_EQ(h, s.handle);
  EXPECT_NO_THROW(synchronize(Device::cuda(0)));
  EXPECT_TRUE(contains(cuda_device_name(0), "(sm_"));
  EXPECT_THROW(stream_for(Device::cuda(cuda_device_count())), Error);
}

}  // namespace
}  // namespace voxgrad
