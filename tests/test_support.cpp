// Shared test helpers; see test_support.h.
#include "tests/test_support.h"

#include "engine/error.h"
#include "engine/log.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <regex>
#include <sstream>

namespace voxgrad::test {

namespace fs = std::filesystem;

bool has_cuda() { return cuda_device_count() > 0; }

namespace {

// The suites see on stderr what the command line shows there (the library alone is silent).
const bool stderr_messages = (logging::set_sink(logging::stderr_sink()), true);
std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<fs::path>& dirs_to_remove() {
  static std::vector<fs::path> dirs;
  static const bool registered = [] {
    std::atexit([] {
      std::error_code ec;
      for (const auto& d : dirs_to_remove()) fs::remove_all(d, ec);
    });
    return true;
  }();
  (void)registered;
  return dirs;
}
}  // namespace

std::string temp_dir(const std::string& tag) {
  static std::mutex m;
  std::lock_guard<std::mutex> lock(m);
  std::string templ = (fs::temp_directory_path() / ("voxgrad-" + tag + "-XXXXXX")).string();
  char* made = mkdtemp(templ.data());
  if (made == nullptr) throw std::runtime_error("mkdtemp failed for " + templ);
  dirs_to_remove().emplace_back(made);
  return made;
}

std::string voxgrad_binary() {
  // VOXGRAD_BINARY in the environment wins: a build copied to another machine (tools/gpu-check)
  // no longer has the binary at the path compiled in here.
  const char* from_env = std::getenv("VOXGRAD_BINARY");
  return from_env != nullptr && *from_env != '\0' ? from_env : VOXGRAD_BINARY;
}

std::string read_file(const std::string& path) { return slurp(path); }

std::map<std::string, std::string> folder_snapshot(const std::string& folder) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(folder)) {
    const std::string name = fs::relative(e.path(), folder).string();
    files[name] = e.is_directory() ? "<folder>" : slurp(e.path());
  }
  return files;
}

bool has_source_text(const std::string& line) {
  static const std::regex place(R"(\.(cpp|h|cu|hpp):\d+)");
  static const std::regex expression(R"(\[[^\]]*(\(|::|==|!=|&&|\|\|)[^\]]*\])");
  return std::regex_search(line, place) || std::regex_search(line, expression) ||
         line.find("static_cast") != std::string::npos || line.find("filesystem error") != std::string::npos;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a voxgrad::Error";
  return "";
}

CommandResult run_voxgrad(const std::string& args, const std::string& env) {
  const std::string dir = temp_dir("cmd");
  const std::string out = dir + "/stdout", err = dir + "/stderr";
  const std::string binary = voxgrad_binary();
  const std::string cmd = env + (env.empty() ? "" : " ") + "'" + binary + "' " + args + " </dev/null >'" + out +
                          "' 2>'" + err + "'";
  const int status = std::system(cmd.c_str());
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

::testing::AssertionResult all_close(const std::vector<double>& a, const std::vector<double>& b, double atol,
                                     double rtol) {
  if (a.size() != b.size())
    return ::testing::AssertionFailure() << "sizes differ: " << a.size() << " vs " << b.size();
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double tol = atol + rtol * std::fabs(b[i]);
    if (!(std::fabs(a[i] - b[i]) <= tol)) {
      return ::testing::AssertionFailure() << "element " << i << ": " << a[i] << " vs " << b[i] << " (|diff| "
                                           << std::fabs(a[i] - b[i]) << " > " << tol << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

}  // namespace voxgrad::test
