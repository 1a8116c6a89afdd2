// The command-line runner: builds the one CLI11 parser from the subcommand list, turns every parse
// problem into one "voxgrad: error: ..." line with exit status 2 and every run failure into one
// such line with status 1, and wraps the run in the profiler when --profile or --trace asks for it.
#include "apps/cli/cli.h"

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cctype>
#include <exception>
#include <filesystem>
#include <iostream>
#include <regex>
#include <utility>
#include <vector>

#include "apps/cli/cli_checks.h"
#include "apps/distributed/mpi_world.h"
#include "apps/pipeline/build_info.h"
#include "engine/device.h"
#include "engine/error.h"
#include "engine/log.h"
#include "engine/profiler.h"

namespace voxgrad::cli {

std::vector<Command> commands() {
  return {
      toy_command(),
      bench_command(),
      devices_command(),
      info_command(),
      grad_command(),
      synth_command(),
      train_command(),
      predict_command(),
      convert_command(),
      eval_command(),
      theory_command(),
      study_command(),
  };
}

namespace {

// This process is rank K > 0 of an MPI job asked for with --distributed: every rank runs the same
// command line, so rank 0 alone says what is wrong with it, and K writes its own trace.
int g_distributed_rank = -1;

int distributed_rank(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--distributed") return distributed::launcher_rank();
  return -1;
}

// One error line, unless rank 0 of the same command says it.
void report_error(const std::string& line) {
  if (g_distributed_rank <= 0) logging::error(line);
}

// Error text as one line: CLI11 and nested errors may span several.
std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

// CLI11 starts its messages with a capital ("The following arguments were not expected");
// after "error:" a lowercase start reads as one sentence. Acronyms ("CUDA") keep their case.
std::string lower_first(std::string s) {
  if (s.size() >= 2 && std::isupper(static_cast<unsigned char>(s[0])) &&
      !std::isupper(static_cast<unsigned char>(s[1])))
    s[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(s[0])));
  return s;
}

// CLI11's own phrasing in plain words ("--epochs: At Most 1 required but received 2" becomes
// "--epochs is given 2 times; give it once"); messages it does not match pass unchanged.
std::string plain_parse_message(const std::string& text) {
  static const std::vector<std::pair<std::regex, std::string>> rules = {
      {std::regex(R"(^(\S+): At Most 1 required but received (\d+)$)"), "$1 is given $2 times; give it once"},
      {std::regex(R"(^(\S+): At Most (\d+) required but received (\d+)$)"), "$1 takes at most $2 values, got $3"},
      {std::regex(R"(^(\S+): At least (\d+) required but received (\d+)$)"), "$1 needs at least $2 values, got $3"},
      {std::regex(R"(^(\S+): \d+ required (\S+) missing$)"), "$1 needs a value ($2)"},
      {std::regex(R"(^Could not convert: (\S+) = (.*)$)"), "$1: '$2' is not a valid value"},
      {std::regex(R"(^(\S+): too many inputs for a flag$)"), "$1 is a flag and takes no value"},
      {std::regex(R"(^(\S+): Should be true/false or a number$)"), "$1 takes true or false"},
  };
  for (const auto& [pattern, replacement] : rules)
    if (std::regex_match(text, pattern)) return std::regex_replace(text, pattern, replacement);
  return text;
}

int usage_error(const std::string& reason, const std::string& subcommand) {
  const std::string help = subcommand.empty() ? "voxgrad --help" : "voxgrad " + subcommand + " --help";
  report_error(lower_first(one_line(reason)) + " (see '" + help + "')");
  return kExitUsage;
}

void add_global_options(CLI::App& sub, GlobalOptions& global) {
  const std::string group = "Global options";
  sub.add_option("--device", global.device, "Where to compute: cpu, cuda, or auto (CUDA when available)")
      ->check(one_of({"cpu", "cuda", "auto"}))
      ->capture_default_str()
      ->group(group);
  sub.add_flag("--profile", global.profile, "Print a per-op time table on stderr at exit")->group(group);
  sub.add_option("--trace", global.trace, "Write a Chrome trace JSON (opens in Perfetto) at exit")
      ->type_name("FILE")
      ->group(group);
}

std::string version_text() {
  return std::string("voxgrad ") + pipeline::version() + " (" + pipeline::build_summary() + ")";
}

// Runs `run`, then the profiler's report; any exception becomes one error line and status 1.
int run_command(const RunFn& run, GlobalOptions global) {
  // In an MPI job, rank K > 0 writes its trace beside rank 0's as NAME.rankK.json and leaves the
  // table to rank 0, so the ranks' traces open side by side and stderr holds one table.
  const int rank = g_distributed_rank;
  if (rank > 0 && !global.trace.empty()) {
    std::filesystem::path trace(global.trace);
    const std::string extension = trace.extension().string();
    trace.replace_extension(".rank" + std::to_string(rank) + extension);
    global.trace = trace.string();
  }
  const bool print_table = global.profile && rank <= 0;
  const bool profiling = global.profile || !global.trace.empty();
  if (!global.trace.empty()) {
    // Fail before the work, not after it, when the trace cannot be written; probing creates
    // nothing, so a refused command leaves no empty trace file behind.
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::path parent = fs::absolute(global.trace, ec).parent_path();
    const bool usable = !fs::is_directory(global.trace, ec) && fs::is_directory(parent, ec) &&
                        ::access(parent.c_str(), W_OK | X_OK) == 0;
    if (!usable) {
      report_error("--trace " + global.trace +
                   ": cannot be written (its folder is missing or not writable, or it "
                   "is a folder) (see 'voxgrad --help')");
      return kExitUsage;
    }
  }
  if (profiling) profiler::enable(global.trace);
  int status = kExitFailure;
  // A data-parallel command's rank K > 0 gets here only with what every rank failed alike (before
  // the ranks connected); the failures of a running job are reported where the ranks agree on them.
  try {
    status = run(global);
  } catch (const UsageError& e) {
    report_error(one_line(e.what()));
    status = kExitUsage;
  } catch (const std::exception& e) {
    report_error(one_line(e.what()));
    status = kExitFailure;
  } catch (...) {
    report_error("unknown failure");
    status = kExitFailure;
  }
  if (profiling) {
    try {
      profiler::finish(print_table ? &std::cerr : nullptr);
    } catch (const std::exception& e) {
      logging::error(one_line(e.what()));
      if (status == kExitOk) status = kExitFailure;
    }
  }
  return status;
}

int parse_and_run(int argc, char** argv) {
  CLI::App app{"voxgrad: a from-scratch CUDA deep-learning engine for 3D medical image segmentation.", "voxgrad"};
  app.set_version_flag("--version", version_text(), "Print the version and exit");
  app.require_subcommand(0, 1);

  g_distributed_rank = distributed_rank(argc, argv);
  GlobalOptions global;
  std::vector<Command> cmds = commands();
  std::vector<RunFn> runs;
  std::vector<CLI::App*> subs;
  for (Command& cmd : cmds) {
    CLI::App* sub = app.add_subcommand(cmd.name, cmd.description);
    runs.push_back(cmd.setup(*sub));
    add_global_options(*sub, global);
    // Nested subcommands (`bench nifti`) take the global options after their own name too.
    for (CLI::App* nested : sub->get_subcommands(std::function<bool(CLI::App*)>{})) add_global_options(*nested, global);
    subs.push_back(sub);
  }
  // Set after the subcommands exist: they would inherit it.
  app.footer("Run 'voxgrad <subcommand> --help' for the options of one subcommand.");

  // The root takes no option with a value, so the first word that is not an option names the
  // subcommand; knowing it early gives unknown names and per-subcommand hints a clear message.
  std::string sub_name;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") break;
    if (!arg.empty() && arg[0] != '-') {
      sub_name = arg;
      break;
    }
  }
  if (!sub_name.empty()) {
    bool known = false;
    for (const Command& cmd : cmds) known = known || cmd.name == sub_name;
    if (!known) return usage_error("unknown subcommand '" + sub_name + "'", "");
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help() << std::flush;  // the chosen subcommand's help when there is one
    return kExitOk;
  } catch (const CLI::CallForAllHelp&) {
    std::cout << app.help("", CLI::AppFormatMode::All) << std::flush;
    return kExitOk;
  } catch (const CLI::CallForVersion& e) {
    std::cout << e.what() << std::endl;
    return kExitOk;
  } catch (const CLI::ParseError& e) {
    return usage_error(plain_parse_message(one_line(e.what())), sub_name);
  }

  for (std::size_t i = 0; i < subs.size(); ++i)
    if (subs[i]->parsed()) return run_command(runs[i], global);

  // No subcommand: like git, the usage and a non-zero status.
  std::cout << app.help() << std::flush;
  return kExitUsage;
}

}  // namespace

int run_cli(int argc, char** argv) {
  // The library is silent by default; the command line's messages and bars go to stderr.
  logging::set_sink(logging::stderr_sink());
  try {
    return parse_and_run(argc, argv);
  } catch (const std::exception& e) {
    logging::error(one_line(e.what()));
  } catch (...) {
    logging::error("unknown failure");
  }
  return kExitFailure;
}

}  // namespace voxgrad::cli
