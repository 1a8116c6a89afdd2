// libFuzzer target for an earlier study's study.json, as `voxgrad study --earlier` reads it
// (apps/pipeline/loss_study.h): any bytes must be refused with a voxgrad::Error, or accepted and
// then reported (results.md's section of every preset) without an exception; never a crash, a
// sanitizer report, a hang or a huge allocation. Built without libFuzzer it is a replay program
// (tests/fuzz/replay_main.cpp): `study_json_fuzz_replay FILE_OR_DIR...`. Seeds:
// tests/fuzz/corpus_study_json (a real study.json and variants, tests/fuzz/make_study_json_seeds.py).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>

#include "apps/pipeline/loss_study.h"
#include "engine/error.h"
#include "engine/json.h"
#include "tests/fuzz/fuzz_files.h"

namespace {

using namespace voxgrad;
namespace study = voxgrad::pipeline::study;

// read_earlier_study reads FOLDER/study.json and FOLDER/per_case.csv.
const std::string& study_dir() { return fuzz::scratch_dir("study"); }

// A bug in the reader, not in the input: stop as a crash does, so libFuzzer keeps the input.
[[noreturn]] void broken(const char* what, const char* detail) {
  std::fprintf(stderr, "study_json_fuzz: invariant broken: %s (%s)\n", what, detail);
  std::abort();
}

void run_one(std::span<const std::byte> bytes) {
  static const bool per_case_written = [] {
    const std::string header = "preset,arm,seed,case,dice,jaccard\n";
    fuzz::write_file(study_dir() + "/per_case.csv", std::as_bytes(std::span(header)));
    return true;
  }();
  (void)per_case_written;
  fuzz::write_file(study_dir() + "/study.json", bytes);
  study::EarlierStudy earlier;
  try {
    earlier = study::read_earlier_study(study_dir());
  } catch (const Error&) {
    return;
  }
  // What `voxgrad study --earlier` does with an accepted file: report every preset it holds.
  for (const Json& preset : earlier.study["per_preset"]) {
    try {
      (void)study::preset_results_markdown(preset);
    } catch (const std::exception& e) {
      broken("an accepted preset is reported", e.what());
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  run_one(std::span<const std::byte>(reinterpret_cast<const std::byte*>(data), size));
  return 0;
}
