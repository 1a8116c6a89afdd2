// The voxgrad command line: one CLI11 parser for every subcommand. Each subcommand lives in its own
// apps/cli/cmd_<name>.cpp, exposes one function returning its Command, and is listed once in commands().
// Exit status: 0 success, 1 a failure while running, 2 a usage error (bad flag, value or subcommand).
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace voxgrad::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// Options every subcommand accepts (after its name: `voxgrad toy --device cpu`).
struct GlobalOptions {
  std::string device = "auto";  // cpu | cuda | auto; only commands that compute resolve it
  bool profile = false;         // per-op table on stderr at exit
  std::string trace;            // Chrome trace JSON written at exit when non-empty
};

// What a parsed subcommand does; returns the exit status. Errors are thrown and become one
// "voxgrad: error: ..." line: status 2 for a voxgrad::UsageError, 1 for anything else.
using RunFn = std::function<int(const GlobalOptions&)>;

struct Command {
  std::string name;
  std::string description;  // one line, shown in `voxgrad --help`
  // Adds the subcommand's own options to `sub`, bound to state that the returned RunFn owns.
  std::function<RunFn(CLI::App& sub)> setup;
};

// Every subcommand, in the order `voxgrad --help` lists them.
std::vector<Command> commands();

Command bench_command();
Command convert_command();
Command devices_command();
Command eval_command();
Command grad_command();
Command info_command();
Command predict_command();
Command synth_command();
Command theory_command();
Command study_command();
Command toy_command();
Command train_command();

// The whole program: parse, run the chosen subcommand, report errors; returns the exit status.
int run_cli(int argc, char** argv);

}  // namespace voxgrad::cli
