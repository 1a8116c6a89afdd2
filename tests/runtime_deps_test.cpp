// What the built binary needs from the machine it runs on: no cuDNN and no CUDA runtime among its
// NEEDED libraries, a CPU prediction that runs, unchanged, with libcudnn.so.9 hidden from the loader,
// and (CUDA builds) the run-time cuDNN loader's table and its errors against this machine's cuDNN.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "engine/conv.h"
#include "engine/tensor.h"
#include "tests/test_support.h"

#if VOXGRAD_HAS_CUDA
#include "kernels/cuda/cudnn_library.h"
#include "kernels/cuda/nccl_library.h"
#endif

namespace {

namespace fs = std::filesystem;
using voxgrad::test::CommandResult;
using voxgrad::test::read_file;
using voxgrad::test::run_voxgrad;
using voxgrad::test::temp_dir;

// The first line of `command`'s stdout and its exit status.
struct Shell {
  int status = -1;
  std::string out;
};
Shell shell(const std::string& command) {
  const std::string file = temp_dir("shell") + "/out";
  const int status = std::system((command + " >'" + file + "' 2>/dev/null").c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), read_file(file)};
}

bool cudnn_mapped_here() { return read_file("/proc/self/maps").find("libcudnn") != std::string::npos; }

// ---- (a) NEEDED entries -------------------------------------------------------------------------

TEST(RuntimeDeps, BinaryNeedsNeitherCudnnNorTheCudaRuntime) {
  const std::string binary = voxgrad::test::voxgrad_binary();
  const std::vector<std::string> needed = voxgrad::test::elf_needed_libraries(binary);
  // A reader that found nothing would pass vacuously: the C library is always there.
  ASSERT_TRUE(std::any_of(needed.begin(), needed.end(), [](const std::string& n) {
    return n.rfind("libc.so", 0) == 0;
  })) << binary;
  EXPECT_TRUE(voxgrad::test::needs_no_cuda_libraries(binary));
}

// The ELF reader against binutils, where binutils is installed.
TEST(RuntimeDeps, NeededEntriesMatchReadelf) {
  const std::string binary = voxgrad::test::voxgrad_binary();
  if (shell("command -v readelf").status != 0) GTEST_SKIP() << "readelf is not installed";
  const Shell readelf = shell("LC_ALL=C readelf -d '" + binary + "'");
  ASSERT_EQ(readelf.status, 0);
  std::vector<std::string> expected;
  std::istringstream lines(readelf.out);
  for (std::string line; std::getline(lines, line);) {
    const std::size_t open = line.find("Shared library: [");
    if (line.find("(NEEDED)") == std::string::npos || open == std::string::npos) continue;
    const std::size_t begin = open + std::string("Shared library: [").size();
    expected.push_back(line.substr(begin, line.rfind(']') - begin));
  }
  EXPECT_FALSE(expected.empty()) << readelf.out;
  EXPECT_EQ(voxgrad::test::elf_needed_libraries(binary), expected);
}

TEST(RuntimeDeps, NeededReaderRefusesWhatIsNotElf) {
  const std::string dir = temp_dir("needed");
  std::ofstream(dir + "/text") << "not an ELF file";
  EXPECT_THROW(voxgrad::test::elf_needed_libraries(dir + "/text"), std::runtime_error);
  EXPECT_THROW(voxgrad::test::elf_needed_libraries(dir + "/missing"), std::runtime_error);
  EXPECT_FALSE(voxgrad::test::needs_no_cuda_libraries(dir + "/text"));
}

// ---- (b) a CPU prediction with libcudnn.so.9 out of the loader's reach ---------------------------

// Every libcudnn.so.9 the dynamic loader could pick: the ld.so cache, LD_LIBRARY_PATH and the usual
// system and CUDA library folders (real paths, each once).
std::vector<std::string> visible_cudnn_files() {
  std::vector<std::string> folders;
  std::istringstream cache(shell("ldconfig -p").out);
  for (std::string line; std::getline(cache, line);) {
    const std::size_t arrow = line.find("=> ");
    if (line.find("libcudnn.so.9 ") != std::string::npos && arrow != std::string::npos)
      folders.push_back(fs::path(line.substr(arrow + 3)).parent_path().string());
  }
  if (const char* paths = std::getenv("LD_LIBRARY_PATH")) {
    std::istringstream in(paths);
    for (std::string folder; std::getline(in, folder, ':');) folders.push_back(folder);
  }
  for (const char* folder :
       {"/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib/x86_64-linux-gnu",
        "/usr/local/lib", "/usr/local/cuda/lib64", "/usr/local/cuda/lib", "/usr/local/cuda/targets/x86_64-linux/lib"})
    folders.push_back(folder);
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/usr/local", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("cuda-", 0) != 0) continue;
    folders.push_back((entry.path() / "lib64").string());
    folders.push_back((entry.path() / "lib").string());
    folders.push_back((entry.path() / "targets/x86_64-linux/lib").string());
  }
  std::set<std::string> files;
  for (const std::string& folder : folders) {
    const fs::path candidate = fs::path(folder.empty() ? "." : folder) / "libcudnn.so.9";
    if (fs::exists(candidate, ec)) files.insert(fs::canonical(candidate, ec).string());
  }
  return {files.begin(), files.end()};
}

// The prefix that runs a command in a private user and mount namespace where an empty file is
// bind-mounted over each of `hidden`; exits 97 when a mount is refused, 98 when a file still shows.
std::string hidden_by_mounts(const std::vector<std::string>& hidden, const std::string& empty) {
  std::string script = "set -u;";
  for (const std::string& file : hidden) {
    script.append(" mount --bind \"" + empty + "\" \"" + file + "\" || exit 97;");
    script.append(" test ! -s \"" + file + "\" || exit 98;");
  }
  script.append(" exec \"$0\" \"$@\"");
  return "unshare --user --map-root-user --mount sh -c '" + script + "'";
}

// Every file `voxgrad predict` wrote to `folder`, name -> bytes.
std::map<std::string, std::string> predictions_in(const std::string& folder) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::directory_iterator(folder))
    files[entry.path().filename().string()] = read_file(entry.path().string());
  return files;
}

// The in-process fallback: a convolution on the CPU (the engine's, as predict runs it) leaves
// libcudnn unmapped in this process.
void expect_cpu_convolution_leaves_cudnn_unmapped() {
  ASSERT_FALSE(cudnn_mapped_here()) << "libcudnn was mapped before any convolution";
  voxgrad::Generator gen(7);
  const voxgrad::Tensor x = voxgrad::randn({1, 2, 6, 6, 6}, gen);
  const voxgrad::Tensor w = voxgrad::randn({3, 2, 3, 3, 3}, gen);
  const voxgrad::Tensor y = voxgrad::conv3d(x, w, voxgrad::randn({3}, gen), {.padding = {1, 1, 1}});
  ASSERT_EQ(y.shape(), (voxgrad::Shape{1, 3, 6, 6, 6}));
  EXPECT_FALSE(cudnn_mapped_here()) << read_file("/proc/self/maps");
}

TEST(RuntimeDeps, CpuConvolutionLeavesCudnnUnmapped) { expect_cpu_convolution_leaves_cudnn_unmapped(); }

TEST(RuntimeDeps, CpuPredictionRunsWithCudnnHidden) {
  const std::string dir = temp_dir("runtime-deps");
  const std::string data = dir + "/ds", run = dir + "/run";
  CommandResult r = run_voxgrad("synth --out " + data + " --size 16 --cases 3 --test-cases 1 --seed 2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_voxgrad(
      "train --data " + data + " --out " + run +
      " --patch 16 --base 4 --levels 3 --batch-size 1 --seed 3 --epochs 1 --iters-per-epoch 1 --device cpu");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string predict =
      "predict --model " + run + " --checkpoint latest --input " + data + "/imagesTs --device cpu";
  r = run_voxgrad(predict + " --out " + dir + "/normal");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto normal = predictions_in(dir + "/normal");
  ASSERT_FALSE(normal.empty());

  // Which of the two checks this machine allows; said on stdout and as a test property.
  const std::vector<std::string> hidden = visible_cudnn_files();
  std::string method = "in-process /proc/self/maps (mount namespace refused)";
  bool by_namespace = false;
  if (shell("unshare --user --map-root-user --mount true").status == 0) {
    const std::string empty = dir + "/empty";
    std::ofstream{empty};
    r = run_voxgrad(predict + " --out " + dir + "/hidden", hidden_by_mounts(hidden, empty));
    by_namespace = r.exit_code != 97;
  }
  if (by_namespace) {
    method = "mount namespace hiding every libcudnn.so.9 (" + std::to_string(hidden.size()) + "):";
    for (const std::string& file : hidden) method.append(" " + file);
  }
  RecordProperty("cudnn_hidden_by", method);
  std::cout << "cuDNN hidden by: " << method << std::endl;
  if (!by_namespace) {
    expect_cpu_convolution_leaves_cudnn_unmapped();
    return;
  }
  ASSERT_NE(r.exit_code, 98) << "a bind mount left libcudnn.so.9 readable";
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(predictions_in(dir + "/hidden") == normal) << "the prediction differs with cuDNN hidden";
}

// ---- the run-time loader (CUDA builds) -----------------------------------------------------------

#if VOXGRAD_HAS_CUDA

namespace cuda = voxgrad::kernels::cuda;

void expect_install_hint(const std::string& message) {
  for (const char* part : {"install cuDNN 9 for CUDA", "cudnn9-cuda-", "nvidia-cudnn-cu", "LD_LIBRARY_PATH",
                           "`--device cpu` runs without it"})
    EXPECT_NE(message.find(part), std::string::npos) << part << " missing from: " << message;
  EXPECT_FALSE(voxgrad::test::has_source_text(message)) << message;
}

TEST(CudnnLoader, MissingLibraryIsAnInputErrorSayingWhatToInstall) {
  try {
    cuda::open_cudnn_library("libvoxgrad-absent-cudnn.so.9");
    FAIL() << "a library that does not exist was opened";
  } catch (const voxgrad::InputError& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.rfind("cuDNN 9 was not found (libvoxgrad-absent-cudnn.so.9: ", 0), 0u) << message;
    expect_install_hint(message);
  }
}

TEST(CudnnLoader, LibraryWithoutCudnnFunctionsIsRefused) {
  try {
    cuda::open_cudnn_library("libz.so.1");
    FAIL() << "zlib was taken for cuDNN";
  } catch (const voxgrad::InputError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("libz.so.1 has no cudnnGetVersion"), std::string::npos) << message;
    expect_install_hint(message);
  }
}

// In a fresh process: load this machine's cuDNN through cudnn(), check that every function of the
// table was found, that it is cuDNN 9 and that only now is it mapped; exit 0 when all holds.
[[noreturn]] void load_cudnn_and_exit() {
  if (cudnn_mapped_here()) {
    std::fprintf(stderr, "libcudnn was mapped before it was opened\n");
    std::exit(2);
  }
  const cuda::CudnnLibrary& library = cuda::cudnn();
#define VOXGRAD_EXPECT_LOOKED_UP(name)                     \
  if (library.name == nullptr) {                           \
    std::fprintf(stderr, "%s was not looked up\n", #name); \
    std::exit(3);                                          \
  }
  VOXGRAD_CUDNN_FUNCTIONS(VOXGRAD_EXPECT_LOOKED_UP)
#undef VOXGRAD_EXPECT_LOOKED_UP
  const std::size_t version = library.cudnnGetVersion();
  if (version / 10000 != 9 || &cuda::cudnn() != &library || !cudnn_mapped_here()) {
    std::fprintf(stderr, "version %zu, a second table, or libcudnn not mapped\n", version);
    std::exit(4);
  }
  std::fprintf(stderr, "cuDNN %zu loaded\n", version);
  std::exit(0);
}

// This machine's libcudnn.so.9 provides the whole table. In a child process, so that no other test
// here ever runs with cuDNN mapped.
TEST(CudnnLoader, InstalledCudnnProvidesTheWholeTable) {
  if (visible_cudnn_files().empty()) GTEST_SKIP() << "no libcudnn.so.9 installed on this machine";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(load_cudnn_and_exit(), ::testing::ExitedWithCode(0), "cuDNN 9[0-9]* loaded");
}

// NCCL, loaded the same way by data-parallel training on GPUs.
void expect_nccl_install_hint(const std::string& message) {
  for (const char* part : {"install NCCL 2 for CUDA", "libnccl2", "nvidia-nccl-cu", "LD_LIBRARY_PATH"})
    EXPECT_NE(message.find(part), std::string::npos) << part << " missing from: " << message;
  EXPECT_FALSE(voxgrad::test::has_source_text(message)) << message;
}

TEST(NcclLoader, MissingLibraryIsAnInputErrorSayingWhatToInstall) {
  try {
    cuda::open_nccl_library("libvoxgrad-absent-nccl.so.2");
    FAIL() << "a library that does not exist was opened";
  } catch (const voxgrad::InputError& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.rfind("NCCL 2 was not found (libvoxgrad-absent-nccl.so.2: ", 0), 0u) << message;
    expect_nccl_install_hint(message);
  }
}

TEST(NcclLoader, LibraryWithoutNcclFunctionsIsRefused) {
  try {
    cuda::open_nccl_library("libz.so.1");
    FAIL() << "zlib was taken for NCCL";
  } catch (const voxgrad::InputError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("libz.so.1 has no ncclGetVersion"), std::string::npos) << message;
    expect_nccl_install_hint(message);
  }
}

// In a fresh process: load this machine's NCCL through nccl() (no GPU needed to open it), check the
// whole table and its major version; exit 0 when all holds.
[[noreturn]] void load_nccl_and_exit() {
  if (read_file("/proc/self/maps").find("libnccl") != std::string::npos) {
    std::fprintf(stderr, "libnccl was mapped before it was opened\n");
    std::exit(2);
  }
  const cuda::NcclLibrary& library = cuda::nccl();
#define VOXGRAD_EXPECT_LOOKED_UP(name)                     \
  if (library.name == nullptr) {                           \
    std::fprintf(stderr, "%s was not looked up\n", #name); \
    std::exit(3);                                          \
  }
  VOXGRAD_NCCL_FUNCTIONS(VOXGRAD_EXPECT_LOOKED_UP)
#undef VOXGRAD_EXPECT_LOOKED_UP
  const int major = library.version >= 10000 ? library.version / 10000 : library.version / 1000;
  if (major != 2 || &cuda::nccl() != &library) {
    std::fprintf(stderr, "version %d, or a second table\n", library.version);
    std::exit(4);
  }
  std::fprintf(stderr, "NCCL %d loaded\n", library.version);
  std::exit(0);
}

TEST(NcclLoader, InstalledNcclProvidesTheWholeTable) {
  if (shell("ldconfig -p | grep -q 'libnccl.so.2 '").status != 0) GTEST_SKIP() << "no libnccl.so.2 in the ld.so cache";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(load_nccl_and_exit(), ::testing::ExitedWithCode(0), "NCCL 2[0-9]* loaded");
}

#endif  // VOXGRAD_HAS_CUDA

}  // namespace
