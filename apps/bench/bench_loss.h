// `voxgrad bench loss`: a nested subcommand of `bench`, kept in its own file so the op and NIfTI
// benchmarks stay as they are; cmd_bench.cpp adds it with one call and runs it when it was parsed.
#pragma once

#include "apps/cli/cli.h"

namespace voxgrad::bench {

// The benchmarks are nested subcommands of `voxgrad bench`: they speak the command line's types.
using cli::GlobalOptions;
using cli::RunFn;

struct NestedCommand {
  CLI::App* app = nullptr;  // parsed() says whether the user chose it
  RunFn run;
};

// Adds `loss` under `bench` with its options.
NestedCommand add_bench_loss(CLI::App& bench);

}  // namespace voxgrad::bench
