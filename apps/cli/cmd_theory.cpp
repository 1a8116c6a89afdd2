// `voxgrad theory`: checks the statements of Bertels, Eelbode et al. on Dice, Jaccard and their
// surrogates by computation with the engine's own losses and metrics (apps/pipeline/theory_checks.h),
// and prints a Markdown table, or one JSON object with --json. Exit 0 only if every check holds.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <limits>
#include <memory>
#include <string>

#include "apps/cli/cli.h"
#include "apps/cli/cli_checks.h"
#include "apps/pipeline/theory_checks.h"
#include "engine/json.h"
#include "engine/log.h"

namespace voxgrad::cli {

namespace {

struct TheoryOptions {
  std::uint64_t seed = pipeline::kDefaultTheorySeed;
  bool json = false;
};

int run_theory(const TheoryOptions& opt, const GlobalOptions& global) {
  // The identities are checked to 1e-12, which needs float64: the CPU's.
  if (global.device == "cuda") logging::warning("theory computes in float64 on the CPU; --device cuda is ignored");
  const auto start = std::chrono::steady_clock::now();
  const std::vector<pipeline::TheoryCheck> checks = pipeline::run_theory_checks(opt.seed);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  if (opt.json)
    write_json_line(std::cout, pipeline::theory_json(checks));
  else
    std::cout << pipeline::theory_markdown(checks) << std::flush;

  std::string failed;
  for (const pipeline::TheoryCheck& c : checks)
    if (!c.pass) failed += (failed.empty() ? "" : ", ") + c.name;
  char timing[64];
  std::snprintf(timing, sizeof timing, "%.2f s", seconds);
  if (!failed.empty()) {
    logging::error("these checks do not hold: " + failed);
    return kExitFailure;
  }
  logging::info("all " + std::to_string(checks.size()) + " checks hold (seed " + std::to_string(opt.seed) + ", " +
                timing + ")");
  return kExitOk;
}

}  // namespace

Command theory_command() {
  return {"theory",
          "Check the Dice/Jaccard theory of Bertels et al. (MICCAI 2019) by computation with the engine's losses "
          "and metrics: a Markdown table, or one JSON object with --json; exit 0 only if every check holds",
          [](CLI::App& sub) -> RunFn {
            auto opt = std::make_shared<TheoryOptions>();
            sub.add_option("--seed", opt->seed, "Seed of the random label maps, predictions and probabilities")
                ->check(whole_number(0, std::numeric_limits<std::uint64_t>::max()))
                ->capture_default_str();
            sub.add_flag("--json", opt->json,
                         "Print one JSON object on one line: {\"checks\": [{name, statement, measured, bound, pass}], "
                         "\"all_pass\"}");
            // --device is accepted like everywhere; the checks run in float64 on the CPU.
            return [opt](const GlobalOptions& global) { return run_theory(*opt, global); };
          }};
}

}  // namespace voxgrad::cli
