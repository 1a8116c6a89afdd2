// libFuzzer target for the NIfTI reader: any bytes must give a Volume or a voxgrad::Error, never a
// crash, a sanitizer report or an allocation the input cannot back. Built without libFuzzer
// it is a replay program (tests/fuzz/replay_main.cpp): `nifti_fuzz_replay FILE_OR_DIR...`.
// Seeds: tests/fuzz/corpus (make_seeds.py) and tests/data/nifti_malformed.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "engine/error.h"
#include "io/gzip_stream.h"
#include "io/nifti.h"

namespace {

using namespace voxgrad;
using namespace voxgrad::io;

// Everything a caller may do with what the reader returns, so that a bad Volume shows up here.
void use(const Volume& v) {
  (void)v.to_float32();
  try {
    (void)v.to_labels();
  } catch (const Error&) {
  }
}

void read_single(std::span<const std::byte> bytes) {
  try {
    use(read_nifti_from_memory(bytes, "fuzz.nii"));
  } catch (const Error&) {
  }
  try {
    const NiftiRaw raw = read_nifti_raw_from_memory(bytes, "fuzz.nii");
    (void)raw_stats(raw);
    (void)raw_to_float32(raw);
  } catch (const Error&) {
  }
}

// Pairs and ANALYZE headers exist only as files: split the input into a .hdr (first 348 bytes)
// and a .img (the rest), compressed or not as the input's last byte says.
void read_pair(std::span<const std::byte> bytes) {
  if (bytes.size() < 348) return;
  static const std::string dir = [] {
    const std::string base = std::filesystem::exists("/dev/shm") ? "/dev/shm" : std::filesystem::temp_directory_path().string();
    const std::string d = base + "/voxgrad-fuzz-" + std::to_string(::getpid());
    std::filesystem::create_directories(d);
    return d;
  }();
  // Gone at exit: every replay (each ctest run) would otherwise leave one folder behind.
  static const bool cleanup_registered = [] {
    return std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }) == 0;
  }();
  (void)cleanup_registered;
  const bool gz = (static_cast<unsigned>(bytes.back()) & 2) != 0;
  const std::string hdr = dir + "/p.hdr", img = dir + (gz ? "/p.img.gz" : "/p.img");
  std::filesystem::remove(dir + "/p.img");
  std::filesystem::remove(dir + "/p.img.gz");
  write_file_bytes(hdr, bytes.first(348));
  write_file_bytes(img, bytes.subspan(348));
  try {
    use(read_nifti(hdr));
  } catch (const Error&) {
  }
  try {
    (void)read_nifti_header(img);
    (void)read_nifti_float32(img);
  } catch (const Error&) {
  }
}

void run_one(std::span<const std::byte> bytes) {
  read_single(bytes);
  if (!bytes.empty() && (static_cast<unsigned>(bytes.back()) & 1) != 0) read_pair(bytes);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  run_one(std::span<const std::byte>(reinterpret_cast<const std::byte*>(data), size));
  return 0;
}
