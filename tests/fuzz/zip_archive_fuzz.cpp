// libFuzzer target for the zip reader and the PyTorch checkpoint loader over it: any bytes must
// give entries and a value or a voxgrad::Error, never a crash, a sanitizer report or an allocation
// the input cannot back. Built without libFuzzer it is a replay program (tests/fuzz/replay_main.cpp):
// `zip_archive_fuzz_replay FILE_OR_DIR...`. Seeds: tests/data/pth and tests/data/pth_malformed.
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/error.h"
#include "io/torch_checkpoint.h"
#include "io/zip_archive.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace voxgrad;
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    const io::ZipArchive zip = io::ZipArchive::from_bytes(bytes, "fuzz.zip");
    for (const io::ZipEntry& e : zip.entries()) {
      try {
        (void)zip.read(e);
      } catch (const Error&) {
      }
    }
  } catch (const Error&) {
  }
  try {
    (void)io::load_torch_checkpoint_from_bytes(bytes, "fuzz.pth");
  } catch (const Error&) {
  }
  return 0;
}
