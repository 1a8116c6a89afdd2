// The memory budget: the machine's available bytes as /proc/meminfo states them, products that
// saturate instead of wrapping, sizes people read, and the refusal that names what asked for them.
#include "engine/memory_budget.h"

#include <cstdint>
#include <fstream>
#include <limits>
#include <string>

#include "engine/error.h"
#include "tests/test_support.h"

namespace {

using namespace voxgrad;
using voxgrad::test::error_of;

constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();

std::uint64_t meminfo_bytes(const std::string& key) {
  std::ifstream in("/proc/meminfo");
  std::string k, unit;
  std::uint64_t kib = 0;
  while (in >> k >> kib >> unit)
    if (k == key + ":") return kib * 1024;
  return 0;
}

TEST(MemoryBudget, AvailableIsWhatTheKernelCanGiveNow) {
  const std::uint64_t available = memory::available_bytes();
  EXPECT_GT(available, 0u);
  const std::uint64_t total = meminfo_bytes("MemTotal");
  if (total == 0) GTEST_SKIP() << "no /proc/meminfo";
  EXPECT_LE(available, total);
  // MemAvailable moves while the test runs; the budget never exceeds it by more than noise.
  EXPECT_LE(available, meminfo_bytes("MemAvailable") + (std::uint64_t{256} << 20));
}

TEST(MemoryBudget, ProductsSaturateInsteadOfWrapping) {
  EXPECT_EQ(memory::saturating_product({2, 3, 4}), 24u);
  EXPECT_EQ(memory::saturating_product({}), 1u);
  EXPECT_EQ(memory::saturating_product({5, 0, 7}), 0u);
  EXPECT_EQ(memory::saturating_product({5, -1, 7}), 0u);
  // 2^21 cubed times 4 bytes is 2^65: wrapped, it was 0 and "fitted".
  EXPECT_EQ(memory::saturating_product({1 << 21, 1 << 21, 1 << 21, 4}), kMax);
  EXPECT_EQ(memory::saturating_product({std::numeric_limits<std::int64_t>::max(), 2, 0}), 0u);
  EXPECT_EQ(memory::saturating_add(kMax - 1, 2), kMax);
  EXPECT_EQ(memory::saturating_add(40, 2), 42u);
}

TEST(MemoryBudget, SizesReadAsPeopleWriteThem) {
  EXPECT_EQ(memory::format_bytes(0), "0 B");
  EXPECT_EQ(memory::format_bytes(1023), "1023 B");
  EXPECT_EQ(memory::format_bytes(1536), "1.5 KiB");
  EXPECT_EQ(memory::format_bytes(std::uint64_t{23} << 30), "23.0 GiB");
  EXPECT_EQ(memory::format_bytes(std::uint64_t{15} << 40), "15.0 TiB");
  EXPECT_EQ(memory::format_bytes(kMax), "more than 16 EiB");
}

TEST(MemoryBudget, CheckFitsNamesTheCauseAndTheMachine) {
  EXPECT_NO_THROW(memory::check_fits(1024, "a small buffer"));
  const std::string msg =
      error_of([] { memory::check_fits(kMax, "CASE.nii.gz: resampling", "a grid of 1e20 voxels"); });
  EXPECT_EQ(msg.rfind("CASE.nii.gz: resampling would need more than 16 EiB (a grid of 1e20 voxels), more than the ", 0),
            0u)
      << msg;
  EXPECT_NE(msg.find(" this machine has available"), std::string::npos) << msg;
  EXPECT_EQ(msg.find(".cpp:"), std::string::npos) << msg;  // the user's problem: no source text
  EXPECT_THROW(memory::check_fits(kMax, "x"), InputError);
}

}  // namespace
