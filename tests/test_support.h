// Helpers every suite shares: GPU skipping, running the voxgrad binary, temporary folders,
// and closeness checks in the atol + rtol * |ref| form.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "engine/device.h"

namespace voxgrad::test {

bool has_cuda();

// Result of running the built `voxgrad` binary with arguments (stdout and stderr kept apart).
struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};
CommandResult run_voxgrad(const std::string& args, const std::string& env = "");
// A shell command line, its input empty and its output kept as run_voxgrad keeps it.
CommandResult run_shell(const std::string& command);

// The voxgrad binary run_voxgrad runs: $VOXGRAD_BINARY when set (a build copied to another
// machine), else the one this build made. For tests that start it themselves.
std::string voxgrad_binary();

// The folder holding voxgrad's source tree, for tests that read its files (corpora, scripts). A test
// build carried to another machine finds the tree elsewhere than where it was built, so this is
// $VOXGRAD_SOURCE_DIR when set, else the nearest folder above the test executable that holds the
// tree, else the path recorded at build time. Throws std::runtime_error saying what it tried when
// none of them holds the tree; a set but wrong $VOXGRAD_SOURCE_DIR is an error, never passed over.
std::string source_dir();
// `relative` (e.g. "tests/data/nifti_malformed") inside source_dir().
std::string source_path(const std::string& relative);
// The rule source_dir() applies, on explicit inputs: `from_env` is $VOXGRAD_SOURCE_DIR (nullptr when
// unset), `executable` the test executable's path, `built_at` the path recorded at build time.
std::string find_source_dir(const char* from_env, const std::string& executable, const std::string& built_at);

// The lines of a command's output, without their newlines.
std::vector<std::string> lines_of(const std::string& text);

// A whole file's bytes ("" when it cannot be read).
std::string read_file(const std::string& path);

// The message of the voxgrad::Error `f` throws; adds a test failure when it throws nothing.
std::string error_of(const std::function<void()>& f);

// Every file under `folder` (relative path -> bytes; folders as "<folder>"): equal snapshots mean a
// command changed nothing there, not a name, not a byte.
std::map<std::string, std::string> folder_snapshot(const std::string& folder);

// True when an error line carries source text, which only internal invariants may: a C++
// expression in brackets or a file.cpp:LINE place.
bool has_source_text(const std::string& line);

// A fresh empty folder under the system temp dir, removed at process exit.
std::string temp_dir(const std::string& tag);

// Index of the first element with |a - b| > atol + rtol * |b|, or -1; `what` names the check.
::testing::AssertionResult all_close(const std::vector<double>& a, const std::vector<double>& b, double atol,
                                     double rtol);

// A run folder's log.csv without its last column (seconds, the one thing allowed to differ
// between runs that compute the same numbers).
std::string log_without_seconds(const std::string& run);

// The name UNet3d gave a tensor before it was built as nnU-Net's PlainConvUNet, for an alias-free
// current parameter or buffer name of a U-Net of `levels` levels (the map in models/unet3d.h,
// spelled here independently of unet3d_migrate_names, which the tests check):
//   encoder.stages.{i}.0.convs.{k}.{conv,norm}.X  <- encoder.{i}.{conv,norm}{k+1}.X
//   decoder.transpconvs.{d}.X                     <- decoder.{L-2-d}.up.X
//   decoder.stages.{d}.convs.{k}.{conv,norm}.X    <- decoder.{L-2-d}.{conv,norm}{k+1}.X
//   decoder.seg_layers.{d}.X                      <- heads.{L-2-d}.X
std::string former_unet3d_name(const std::string& name, int levels);

// The largest |v| and the largest |a - b| (a and b of one size), for tests that report what they measured.
double max_abs(const std::vector<double>& v);
double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b);

// ∂f/∂x_j by central differences, each element moved by ±h in turn: the one finite-difference
// routine of the gradient checks (tests/op_harness.h and the kernel-level checks).
std::vector<double> central_differences(const std::function<double(const std::vector<double>&)>& f,
                                        std::vector<double> x, double h = 1e-6);

// The NEEDED entries of the ELF file at `path` (the shared libraries the loader must find before
// main), read from its dynamic section; empty for a static executable. Throws std::runtime_error when
// `path` is not a readable 64-bit little-endian ELF file. No binutils needed.
std::vector<std::string> elf_needed_libraries(const std::string& path);

// Success when no NEEDED entry of `path` names libcudnn, libnccl or libcudart: the file starts on a
// machine without cuDNN, NCCL or the CUDA runtime (voxgrad dlopens cuDNN and NCCL and links the
// CUDA runtime statically).
::testing::AssertionResult needs_no_cuda_libraries(const std::string& path);

}  // namespace voxgrad::test

// In a GPU test: skip (reported as skipped by ctest) when this machine has no usable device.
#define VG_REQUIRE_CUDA()                                                                \
  do {                                                                                   \
    if (!::voxgrad::test::has_cuda())                                                    \
      GTEST_SKIP() << "no CUDA device (" << ::voxgrad::cuda_unavailable_reason() << ")"; \
  } while (0)
