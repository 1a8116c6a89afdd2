// Shared test helpers; see test_support.h.
#include "tests/test_support.h"

#include <elf.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <regex>
#include <sstream>
#include <stdexcept>

#include "engine/error.h"
#include "engine/log.h"

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

namespace {
// The file that marks a folder as voxgrad's source tree.
bool holds_the_tree(const fs::path& folder) {
  std::error_code ec;
  return !folder.empty() && fs::is_regular_file(folder / "tests" / "test_support.h", ec);
}
}  // namespace

std::string find_source_dir(const char* from_env, const std::string& executable, const std::string& built_at) {
  if (from_env != nullptr && *from_env != '\0') {
    if (holds_the_tree(from_env)) return from_env;
    throw std::runtime_error(std::string("VOXGRAD_SOURCE_DIR=") + from_env +
                             " does not hold voxgrad's source tree (no tests/test_support.h there)");
  }
  std::error_code ec;
  const fs::path exe = fs::weakly_canonical(executable, ec);
  for (fs::path folder = exe.parent_path(); !folder.empty(); folder = folder.parent_path()) {
    if (holds_the_tree(folder)) return folder.string();
    if (folder == folder.root_path()) break;
  }
  if (holds_the_tree(built_at)) return built_at;
  throw std::runtime_error("voxgrad's source tree not found: VOXGRAD_SOURCE_DIR is unset, no folder above " +
                           exe.string() + " holds it, nor does " + built_at +
                           " (where it was built); set VOXGRAD_SOURCE_DIR to the tree");
}

std::string source_dir() {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  return find_source_dir(std::getenv("VOXGRAD_SOURCE_DIR"), ec ? std::string() : self.string(), VOXGRAD_SOURCE_DIR);
}

std::string source_path(const std::string& relative) { return (fs::path(source_dir()) / relative).string(); }

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
  return run_shell(env + (env.empty() ? "" : " ") + "'" + voxgrad_binary() + "' " + args);
}

CommandResult run_shell(const std::string& command) {
  const std::string dir = temp_dir("cmd");
  const std::string out = dir + "/stdout", err = dir + "/stderr";
  const std::string cmd = command + " </dev/null >'" + out + "' 2>'" + err + "'";
  const int status = std::system(cmd.c_str());
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

::testing::AssertionResult all_close(const std::vector<double>& a, const std::vector<double>& b, double atol,
                                     double rtol) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "sizes differ: " << a.size() << " vs " << b.size();
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double tol = atol + rtol * std::fabs(b[i]);
    if (!(std::fabs(a[i] - b[i]) <= tol)) {
      return ::testing::AssertionFailure() << "element " << i << ": " << a[i] << " vs " << b[i] << " (|diff| "
                                           << std::fabs(a[i] - b[i]) << " > " << tol << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

namespace {
// Bounds-checked reads from an ELF file held in memory.
class ElfBytes {
 public:
  explicit ElfBytes(const std::string& path) : path_(path), bytes_(slurp(path)) {}

  template <class T>
  T at(std::uint64_t offset) const {
    if (offset > bytes_.size() || bytes_.size() - offset < sizeof(T)) fail("truncated");
    T value;
    std::memcpy(&value, bytes_.data() + offset, sizeof(T));
    return value;
  }
  std::string string_at(std::uint64_t offset, std::uint64_t end) const {
    if (end > bytes_.size() || offset >= end) fail("string table out of bounds");
    const char* begin = bytes_.data() + offset;
    const void* nul = std::memchr(begin, '\0', end - offset);
    if (nul == nullptr) fail("unterminated string");
    return std::string(begin, static_cast<const char*>(nul));
  }
  [[noreturn]] void fail(const std::string& why) const {
    throw std::runtime_error(path_ + " is not a readable 64-bit little-endian ELF file: " + why);
  }

 private:
  std::string path_;
  std::string bytes_;
};
}  // namespace

std::vector<std::string> elf_needed_libraries(const std::string& path) {
  const ElfBytes elf(path);
  const auto header = elf.at<Elf64_Ehdr>(0);
  if (std::memcmp(header.e_ident, ELFMAG, SELFMAG) != 0) elf.fail("no ELF magic");
  if (header.e_ident[EI_CLASS] != ELFCLASS64 || header.e_ident[EI_DATA] != ELFDATA2LSB) elf.fail("not ELF64 LSB");
  if (header.e_phentsize != sizeof(Elf64_Phdr)) elf.fail("unexpected program header size");
  std::vector<Elf64_Phdr> segments;
  for (std::uint64_t i = 0; i < header.e_phnum; ++i)
    segments.push_back(elf.at<Elf64_Phdr>(header.e_phoff + i * sizeof(Elf64_Phdr)));
  // DT_STRTAB holds an address: the loadable segment containing it gives its place in the file.
  const auto file_offset = [&](std::uint64_t address) {
    for (const Elf64_Phdr& s : segments)
      if (s.p_type == PT_LOAD && address >= s.p_vaddr && address - s.p_vaddr < s.p_filesz)
        return address - s.p_vaddr + s.p_offset;
    elf.fail("an address outside every loadable segment");
  };
  std::vector<std::string> needed;
  for (const Elf64_Phdr& s : segments) {
    if (s.p_type != PT_DYNAMIC) continue;
    std::vector<std::uint64_t> name_offsets;
    std::uint64_t strtab = 0, strsz = 0;
    for (std::uint64_t at = s.p_offset; at + sizeof(Elf64_Dyn) <= s.p_offset + s.p_filesz; at += sizeof(Elf64_Dyn)) {
      const auto entry = elf.at<Elf64_Dyn>(at);
      if (entry.d_tag == DT_NULL) break;
      if (entry.d_tag == DT_NEEDED) name_offsets.push_back(entry.d_un.d_val);
      if (entry.d_tag == DT_STRTAB) strtab = file_offset(entry.d_un.d_ptr);
      if (entry.d_tag == DT_STRSZ) strsz = entry.d_un.d_val;
    }
    if (!name_offsets.empty() && (strtab == 0 || strsz == 0)) elf.fail("NEEDED entries without a string table");
    for (std::uint64_t name : name_offsets) needed.push_back(elf.string_at(strtab + name, strtab + strsz));
  }
  return needed;
}

::testing::AssertionResult needs_no_cuda_libraries(const std::string& path) {
  std::vector<std::string> needed;
  try {
    needed = elf_needed_libraries(path);
  } catch (const std::runtime_error& e) {
    return ::testing::AssertionFailure() << e.what();
  }
  std::string all;
  for (const std::string& name : needed) all.append(all.empty() ? "" : ", ").append(name);
  for (const std::string& name : needed) {
    if (name.rfind("libcudnn", 0) == 0 || name.rfind("libcudart", 0) == 0 || name.rfind("libnccl", 0) == 0)
      return ::testing::AssertionFailure() << path << " needs " << name << " to start (NEEDED: " << all << ")";
  }
  return ::testing::AssertionSuccess() << path << " needs " << all;
}

std::vector<double> central_differences(const std::function<double(const std::vector<double>&)>& f,
                                        std::vector<double> x, double h) {
  std::vector<double> grad(x.size());
  for (std::size_t j = 0; j < x.size(); ++j) {
    const double keep = x[j];
    x[j] = keep + h;
    const double up = f(x);
    x[j] = keep - h;
    const double down = f(x);
    x[j] = keep;
    grad[j] = (up - down) / (2 * h);
  }
  return grad;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::string log_without_seconds(const std::string& run) {
  std::istringstream in(read_file(run + "/log.csv"));
  std::string out;
  for (std::string line; std::getline(in, line);) out += line.substr(0, line.rfind(',')) + "\n";
  return out;
}

std::string former_unet3d_name(const std::string& name, int levels) {
  std::vector<std::string> p;
  for (std::size_t start = 0;;) {
    const std::size_t dot = name.find('.', start);
    p.push_back(name.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  const auto level = [&](const std::string& d) { return std::to_string(levels - 2 - std::stoi(d)); };
  const auto layer = [](const std::string& kind, const std::string& k) {
    return kind + std::to_string(std::stoi(k) + 1);
  };
  if (p[0] == "encoder") return "encoder." + p[2] + "." + layer(p[6], p[5]) + "." + p[7];
  if (p[1] == "transpconvs") return "decoder." + level(p[2]) + ".up." + p[3];
  if (p[1] == "stages") return "decoder." + level(p[2]) + "." + layer(p[5], p[4]) + "." + p[6];
  if (p[1] == "seg_layers") return "heads." + level(p[2]) + "." + p[3];
  ADD_FAILURE() << "not a UNet3d name: " << name;
  return "";
}

}  // namespace voxgrad::test
