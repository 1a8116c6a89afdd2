// See python_reference.h.
#include "apps/bench/python_reference.h"

#include <cstdio>
#include <filesystem>
#include <memory>
#include <vector>

namespace voxgrad::bench {

std::string find_tools_script(const std::string& override_path, const std::string& name) {
  if (!override_path.empty()) return override_path;
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  const fs::path relative = fs::path("tools") / name;
  std::vector<fs::path> candidates;
  if (!ec) candidates = {exe.parent_path().parent_path() / relative, exe.parent_path() / relative};
  candidates.push_back(fs::current_path(ec) / relative);
  for (const fs::path& p : candidates)
    if (fs::exists(p, ec)) return p.string();
  return {};
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

Json run_python_json(const std::string& python, const std::string& script, const std::string& args) {
  return run_command_json(shell_quote(python) + " " + shell_quote(script) + " " + args, python);
}

Json run_command_json(const std::string& command, const std::string& what) {
  const std::string cmd = command + " 2>&1";
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(::popen(cmd.c_str(), "r"), ::pclose);
  if (!pipe) return {{"available", false}, {"reason", "cannot start " + what}};
  std::string out;
  char buf[4096];
  for (std::size_t got; (got = std::fread(buf, 1, sizeof buf, pipe.get())) > 0;) out.append(buf, got);
  const int status = ::pclose(pipe.release());
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  const std::size_t nl = out.find_last_of('\n');
  const std::string last = out.substr(nl == std::string::npos ? 0 : nl + 1);
  Json j = Json::parse(last, nullptr, false);
  if (status != 0 || j.is_discarded() || !j.is_object()) {
    const std::string reason = last.empty() ? what + " failed (status " + std::to_string(status) + ")" : last;
    return {{"available", false}, {"reason", reason}};
  }
  return j;
}

}  // namespace voxgrad::bench
