// Data-parallel scaling of a bench: `voxgrad bench train --ranks 1,2` runs the bench under mpirun
// once per rank count (each rank one share of the global batch, with the cores divided among the
// ranks) and prints step time, speed-up and the all-reduce's share of the step per rank count.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "apps/cli/cli.h"

namespace voxgrad::bench {

struct ScalingOptions {
  bool distributed = false;  // this process is one rank of `mpirun -np P voxgrad bench ... --distributed`
  std::string ranks;         // "1,2": run under mpirun for each rank count and print the scaling
  std::string mpirun = "mpirun";
};

void add_scaling_options(CLI::App& sub, ScalingOptions& options);

// Runs `voxgrad bench <bench> <child_args> --distributed --json` under mpirun for each of
// options.ranks and prints one row per rank count from the JSON line rank 0 prints.
int run_scaling(const ScalingOptions& options, const std::string& bench, const std::string& child_args,
                const cli::GlobalOptions& global);

}  // namespace voxgrad::bench
