// `voxgrad bench conv`: forward and backward time of one conv3d or conv_transpose3d shape, a nested
// subcommand of `bench` like `bench loss`; cmd_bench.cpp adds it with one call to add_bench_conv.
#pragma once

#include "apps/bench/bench_loss.h"

namespace voxgrad::bench {

// Adds `conv` under `bench` with its options.
NestedCommand add_bench_conv(CLI::App& bench);

}  // namespace voxgrad::bench
