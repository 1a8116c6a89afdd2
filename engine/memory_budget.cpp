// Available memory from the kernel's own estimate (MemAvailable counts reclaimable page cache,
// which free memory does not) and the cgroup limit a container imposes, and the check that turns
// an oversized request into an error naming its cause.
#include "engine/memory_budget.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <string>

#include "engine/error.h"

namespace voxgrad::memory {

namespace {

constexpr std::uint64_t kUnlimited = std::numeric_limits<std::uint64_t>::max();

std::optional<std::uint64_t> mem_available_from_proc() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  std::uint64_t kib = 0;
  while (in >> key >> kib) {
    std::getline(in, unit);
    if (key == "MemAvailable:") return kib > kUnlimited / 1024 ? kUnlimited : kib * 1024;
  }
  return std::nullopt;
}

std::uint64_t free_pages_bytes() {
  const long pages = ::sysconf(_SC_AVPHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return kUnlimited;  // unknown: no limit rather than a false refusal
  return saturating_product({pages, page});
}

// One unsigned number from a cgroup file; nothing for "max", a missing file or anything else.
std::optional<std::uint64_t> read_number(const char* path) {
  std::ifstream in(path);
  std::string text;
  if (!(in >> text) || text.empty() || text.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  try {
    return std::stoull(text);
  } catch (const std::exception&) {
    return std::nullopt;  // more digits than 64 bits hold: no usable limit
  }
}

// What the cgroup limit leaves (v2, then v1); v1 reports "no limit" as a number near 2^63.
std::uint64_t cgroup_headroom() {
  struct Files {
    const char* limit;
    const char* usage;
  };
  for (const Files f :
       {Files{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"},
        Files{"/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"}}) {
    const std::optional<std::uint64_t> limit = read_number(f.limit), usage = read_number(f.usage);
    if (!limit || *limit >= (std::uint64_t{1} << 62)) continue;
    return usage && *usage < *limit ? *limit - *usage : 0;
  }
  return kUnlimited;
}

}  // namespace

std::uint64_t available_bytes() {
  const std::uint64_t machine = mem_available_from_proc().value_or(free_pages_bytes());
  return std::min(machine, cgroup_headroom());
}

std::uint64_t saturating_product(std::initializer_list<std::int64_t> factors) {
  std::uint64_t product = 1;
  bool saturated = false;
  for (const std::int64_t f : factors) {
    if (f <= 0) return 0;
    if (saturated || __builtin_mul_overflow(product, static_cast<std::uint64_t>(f), &product)) saturated = true;
  }
  return saturated ? kUnlimited : product;
}

std::uint64_t saturating_add(std::uint64_t a, std::uint64_t b) {
  std::uint64_t sum = 0;
  return __builtin_add_overflow(a, b, &sum) ? kUnlimited : sum;
}

std::string format_bytes(std::uint64_t bytes) {
  if (bytes == kUnlimited) return "more than 16 EiB";
  if (bytes < 1024) return std::to_string(bytes) + " B";
  static const char* const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double value = static_cast<double>(bytes) / 1024.0;
  int unit = 0;
  while (value >= 1024.0 && unit < 5) {
    value /= 1024.0;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof text, "%.1f %s", value, units[unit]);
  return text;
}

void check_fits(std::uint64_t bytes, const std::string& what, const std::string& detail) {
  const std::uint64_t available = available_bytes();
  if (bytes <= available) return;
  VG_INPUT_FAIL(what << " would need " << format_bytes(bytes) << (detail.empty() ? "" : " (" + detail + ")")
                     << ", more than the " << format_bytes(available) << " this machine has available");
}

}  // namespace voxgrad::memory
