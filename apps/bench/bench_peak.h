// `voxgrad bench peak`: this machine's roofline, measured now and cached for `--profile`; a
// nested subcommand of `bench` like `bench train`; cmd_bench.cpp adds it with one call to add_bench_peak.
#pragma once

#include "apps/bench/bench_loss.h"

namespace voxgrad::bench {

// Adds `peak` under `bench` with its options.
NestedCommand add_bench_peak(CLI::App& bench);

}  // namespace voxgrad::bench
