// libFuzzer target for a run folder's config.json (apps/pipeline/run_config.h): any bytes must give a
// RunConfig that survives a write-and-read round trip unchanged, or a voxgrad::Error; never a
// crash, a sanitizer report, another exception type, a hang or a huge allocation. Built without
// libFuzzer it is a replay program (tests/fuzz/replay_main.cpp): `config_json_fuzz_replay
// FILE_OR_DIR...`. Seeds: tests/fuzz/corpus_config_json (a real config.json and variants).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <span>
#include <string>
#include <vector>

#include "apps/pipeline/run_config.h"
#include "engine/error.h"
#include "tests/fuzz/fuzz_files.h"

namespace {

using namespace voxgrad;
using namespace voxgrad::pipeline;

// read_run_config reads RUN/config.json: one run folder per process.
const std::string& run_dir() { return fuzz::scratch_dir("config"); }

void write_input(std::span<const std::byte> bytes) { fuzz::write_file(run_config_path(run_dir()), bytes); }

// A bug in the reader, not in the input: stop as a crash does, so libFuzzer keeps the input.
void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "config_json_fuzz: invariant broken: %s\n", what);
    std::abort();
  }
}

// What `train --resume` and `predict` rely on in an accepted config, and that writing it back
// (as `train` does) and reading that again changes nothing.
void use(const RunConfig& c) {
  require(c.model.in_channels == static_cast<int>(c.channels.size()), "channels agree with the model");
  require(c.model.classes == c.plan.classes && c.model.classes >= 2, "classes agree");
  require(c.model.in_channels >= 1 && c.model.base_features >= 1 && c.model.levels >= 1 && c.model.feature_cap >= 1,
          "a network that can be built");
  for (const auto& [value, name] : c.labels) require(value >= 0 && value <= 255, "label value range");
  for (const std::int64_t side : c.training.patch) require(side >= 1, "patch side");
  require(c.training.batch_size >= 1 && c.training.epochs >= 1 && c.training.iters_per_epoch >= 1, "counts");
  const Json written = run_config_to_json(c);
  const Json again = run_config_to_json(run_config_from_json(Json::parse(written.dump(2)), "round trip"));
  require(written == again, "a written config reads back the same");
}

void run_one(std::span<const std::byte> bytes) {
  write_input(bytes);
  try {
    use(read_run_config(run_dir()));
  } catch (const Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  run_one(std::span<const std::byte>(reinterpret_cast<const std::byte*>(data), size));
  return 0;
}
