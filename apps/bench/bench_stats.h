// What every bench reports about its runs: the median of the timed repetitions and the process's
// peak resident memory.
#pragma once

#include <chrono>
#include <cstdint>
#include <vector>

namespace voxgrad::bench {

// The middle value (the mean of the two middle ones for an even count); v must not be empty.
double median(std::vector<double> v);

// Seconds from t0 to now on the steady clock.
double seconds_since(std::chrono::steady_clock::time_point t0);

// The process's peak resident memory in bytes (getrusage; Linux reports kilobytes), the measure
// the PyTorch twins report of themselves.
std::int64_t peak_rss_bytes();

}  // namespace voxgrad::bench
