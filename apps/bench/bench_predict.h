// `voxgrad bench predict`: the time of whole-volume inference (no autograd) by sliding windows, a
// nested subcommand of `bench` like `bench train`; cmd_bench.cpp adds it with one call to add_bench_predict.
#pragma once

#include "apps/bench/bench_loss.h"

namespace voxgrad::bench {

// Adds `predict` under `bench` with its options.
NestedCommand add_bench_predict(CLI::App& bench);

}  // namespace voxgrad::bench
