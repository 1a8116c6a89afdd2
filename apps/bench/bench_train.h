// `voxgrad bench train`: the time of one full U-Net training step (forward, loss, backward, SGD),
// a nested subcommand of `bench` like `bench conv`; cmd_bench.cpp adds it with one call to add_bench_train.
#pragma once

#include "apps/bench/bench_loss.h"

namespace voxgrad::bench {

// Adds `train` under `bench` with its options.
NestedCommand add_bench_train(CLI::App& bench);

}  // namespace voxgrad::bench
