// See bench_scaling.h. Each rank count is its own MPI job: the ranks of one job share the machine's
// cores (OMP_NUM_THREADS = cores / P, no binding), so the rows compare the same cores split
// differently, which is what data parallelism on one machine can offer.
#include "apps/bench/bench_scaling.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <vector>

#include "apps/bench/python_reference.h"
#include "engine/error.h"
#include "engine/json.h"
#include "engine/log.h"

namespace voxgrad::bench {

namespace {

std::vector<int> parse_ranks(const std::string& text) {
  std::vector<int> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    char* end = nullptr;
    const long p = std::strtol(item.c_str(), &end, 10);
    VG_USAGE_CHECK(!item.empty() && *end == '\0' && p >= 1 && p <= 1024,
                   "--ranks " << text << ": '" << item << "' is not a rank count from 1 to 1024");
    out.push_back(static_cast<int>(p));
  }
  VG_USAGE_CHECK(!out.empty(), "--ranks: give the rank counts to run, e.g. 1,2");
  return out;
}

std::string self_path() {
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  VG_CHECK(!ec, "cannot find this program's path (/proc/self/exe): " << ec.message());
  return exe.string();
}

}  // namespace

void add_scaling_options(CLI::App& sub, ScalingOptions& options) {
  sub.add_flag("--distributed", options.distributed,
               "Be one rank of an MPI job (mpirun -np P voxgrad bench ... --distributed): the ranks share the "
               "global batch and average their gradients as train --distributed does");
  sub.add_option("--ranks", options.ranks,
                 "Run the bench under mpirun for each rank count, e.g. 1,2 (the cores divided among the ranks), "
                 "and print the scaling");
  sub.add_option("--mpirun", options.mpirun, "The MPI launcher --ranks runs")->capture_default_str();
}

int run_scaling(const ScalingOptions& options, const std::string& bench, const std::string& child_args,
                const cli::GlobalOptions& global) {
  VG_USAGE_CHECK(!options.distributed, "--ranks starts the MPI jobs itself; leave out --distributed");
  VG_USAGE_CHECK(global.device != "cuda", "--ranks runs on the CPU (--device cpu)");
  const std::vector<int> rank_counts = parse_ranks(options.ranks);
  const int cores = std::max(1, omp_get_max_threads());
  const std::string self = self_path();
  // The ranks' stderr (progress bars, errors) goes to a file: stdout must end with rank 0's JSON line.
  std::string err_file = (std::filesystem::temp_directory_path() / "voxgrad-bench-XXXXXX").string();
  const int fd = ::mkstemp(err_file.data());
  VG_CHECK(fd >= 0, "cannot create a temporary file in " << std::filesystem::temp_directory_path().string());
  ::close(fd);
  // Open MPI refuses root unless told twice; a container's root asked for this run.
  const std::string root_env = ::geteuid() == 0 ? "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " : "";
  std::vector<Json> rows;
  for (int p : rank_counts) {
    const int threads = std::max(1, cores / p);
    logging::info("bench " + bench + ": " + std::to_string(p) + " rank(s) of " + std::to_string(threads) +
                  " thread(s)");
    const std::string command = "{ " + root_env + shell_quote(options.mpirun) + " -np " + std::to_string(p) +
                                " --oversubscribe --bind-to none -x OMP_NUM_THREADS=" + std::to_string(threads) + " " +
                                shell_quote(self) + " bench " + bench + " " + child_args +
                                " --distributed --json --device cpu 2>" + shell_quote(err_file) + "; }";
    Json row = run_command_json(command, options.mpirun);
    if (!row.value("available", true)) {
      std::string reason = row.value("reason", std::string());
      std::ifstream err(err_file);
      for (std::string line; std::getline(err, line);)
        if (line.find("error") != std::string::npos) reason = line;
      std::filesystem::remove(err_file);
      VG_INPUT_FAIL("--ranks: the " << p << "-rank run failed: " << reason);
    }
    row["threads_per_rank"] = threads;
    rows.push_back(row);
  }
  std::filesystem::remove(err_file);

  std::printf("bench %s, data-parallel on %d cores: each row one MPI job, the global batch split across its ranks\n",
              bench.c_str(), cores);
  std::printf("%6s %8s %10s %14s %9s %12s %8s %11s %10s %9s %8s\n", "ranks", "threads", "batch/rank", "step median s",
              "speed-up", "all-reduce MB", "buckets", "alone s", "paid s", "of step", "hidden");
  const double base = rows.front().value("step_median_s", 0.0);
  for (const Json& r : rows) {
    const double step = r.value("step_median_s", 0.0), paid = r.value("allreduce_exposed_s", 0.0);
    std::printf("%6d %8d %10lld %14.3f %9.2f %12.1f %8lld %11.4f %10.4f %8.1f%% %7.0f%%\n", r.value("ranks", 0),
                r.value("threads_per_rank", 0), static_cast<long long>(r.value("batch_per_rank", std::int64_t{0})),
                step, step > 0 ? base / step : 0.0,
                static_cast<double>(r.value("allreduce_bytes", std::int64_t{0})) / 1e6,
                static_cast<long long>(r.value("buckets", std::int64_t{0})), r.value("allreduce_alone_s", 0.0), paid,
                step > 0 ? 100.0 * paid / step : 0.0, 100.0 * r.value("overlap", 0.0));
  }
  return cli::kExitOk;
}

}  // namespace voxgrad::bench
