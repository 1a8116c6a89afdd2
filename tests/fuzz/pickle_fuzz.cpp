// libFuzzer target for the pickle reader: any bytes must give a value or a voxgrad::Error, never a
// crash, a sanitizer report, unbounded recursion or an allocation the input cannot back. A zip
// input has each of its entries read as a pickle, so that checkpoints seed the pickle grammar.
// Built without libFuzzer it is a replay program (tests/fuzz/replay_main.cpp):
// `pickle_fuzz_replay FILE_OR_DIR...`. Seeds: tests/data/pth_pickles, tests/data/pth, tests/data/pth_malformed.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "engine/error.h"
#include "io/pickle.h"
#include "io/zip_archive.h"

namespace {

using namespace voxgrad;
using namespace voxgrad::io;

// Every storage a pickle names is one fixed 256-byte buffer, as long as it says it holds.
PickleValue fake_storage(const PickleValue& pid) {
  static const std::array<std::byte, 256> buffer{};
  const auto& f = pid.items();
  VG_INPUT_CHECK(pid.is(PickleValue::Kind::Tuple) && f.size() == 5 && f[1].is(PickleValue::Kind::Global) &&
                     f[4].is(PickleValue::Kind::Int),
                 "fuzz: not a storage id");
  std::string dtype = torch_storage_dtype(f[1].text);
  if (dtype.empty()) dtype = "float32";
  PickleValue v;
  v.kind = PickleValue::Kind::Storage;
  v.storage = std::make_shared<PickleStorage>();
  v.storage->dtype = dtype;
  v.storage->numel =
      std::clamp<std::int64_t>(f[4].integer, 0, 256 / static_cast<std::int64_t>(torch_element_size(dtype)));
  v.storage->bytes = buffer;
  return v;
}

void read_one(std::span<const std::byte> bytes) {
  try {
    const PickleValue v = read_pickle(bytes, "fuzz.pkl", fake_storage);
    for (const auto& [k, x] : v.entries()) (void)(k.text.size() + x.items().size());
  } catch (const Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  read_one(bytes);
  if (size >= 2 && data[0] == 'P' && data[1] == 'K') {
    try {
      const ZipArchive zip = ZipArchive::from_bytes(std::string(reinterpret_cast<const char*>(data), size), "fuzz.zip");
      for (const ZipEntry& e : zip.entries()) {
        try {
          read_one(zip.read(e));
        } catch (const Error&) {
        }
      }
    } catch (const Error&) {
    }
  }
  return 0;
}
