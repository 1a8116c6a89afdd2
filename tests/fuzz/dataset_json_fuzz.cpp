// libFuzzer target for dataset.json parsing: any bytes must give a Dataset whose every number is
// in range, or a voxgrad::Error; never a crash, a sanitizer report, a hang or a huge allocation.
// The cases are looked up in a small fixture folder (empty files, and a FIFO that must never be
// opened). Built without libFuzzer it is a replay program (tests/fuzz/replay_main.cpp):
// `dataset_json_fuzz_replay FILE_OR_DIR...`. Seeds: tests/fuzz/corpus_dataset_json.
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include "engine/error.h"
#include "io/dataset.h"

namespace {

using namespace voxgrad;
using namespace voxgrad::io;
namespace fs = std::filesystem;

const std::string& fixture_root();

void remove_fixture() {
  std::error_code ec;
  fs::remove_all(fixture_root(), ec);
}

// A dataset folder with two v2 training cases of two channels, a test case, MSD v1 style files,
// all empty (parsing never reads voxels), and in extra/ a FIFO and a folder under NIfTI names for
// the listed layouts to name: a FIFO in imagesTr would make every discovered dataset fail.
const std::string& fixture_root() {
  static const std::string root = [] {
    const std::string base = fs::exists("/dev/shm") ? "/dev/shm" : fs::temp_directory_path().string();
    const std::string r = base + "/voxgrad-dataset-fuzz-" + std::to_string(::getpid());
    for (const char* sub : {"imagesTr", "labelsTr", "imagesTs", "extra/folder.nii.gz"})
      fs::create_directories(r + "/" + sub);
    for (const char* file : {"imagesTr/a_0000.nii.gz", "imagesTr/a_0001.nii.gz", "imagesTr/b_0000.nii.gz",
                             "imagesTr/b_0001.nii.gz", "labelsTr/a.nii.gz", "labelsTr/b.nii.gz",
                             "imagesTs/t_0000.nii.gz", "imagesTr/a.nii.gz", "imagesTr/c_0000.nii", "labelsTr/c.nii"})
      std::ofstream(r + "/" + file).flush();
    ::mkfifo((r + "/extra/fifo.nii.gz").c_str(), 0600);
    ::mkfifo((r + "/extra/fifo_0000.nii.gz").c_str(), 0600);
    return r;
  }();
  static const bool cleaned_at_exit = std::atexit(remove_fixture) == 0;
  (void)cleaned_at_exit;
  return root;
}

// A bug in the parser, not in the input: stop as a crash does, so libFuzzer keeps the input.
void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "dataset_json_fuzz: invariant broken: %s\n", what);
    std::abort();
  }
}

// Everything a caller may rely on in what read_dataset returns.
void use(const Dataset& ds) {
  require(!ds.channels.empty() && ds.num_channels() <= kMaxChannels, "channel count");
  require(ds.labels.count(0) == 1, "background label");
  for (const int v : ds.label_values()) require(v >= 0 && v <= kMaxLabelValue, "label value range");
  for (const int v : ds.regions_class_order) require(v >= 0 && v <= kMaxLabelValue, "class order range");
  require(ds.num_classes() >= 1 && ds.num_classes() <= kMaxLabelValue + 1, "class count");
  require(ds.file_ending == ".nii.gz" || ds.file_ending == ".nii", "file ending");
  for (const std::vector<Case>* cases : {&ds.training, &ds.test})
    for (const Case& c : *cases) require(!c.images.empty(), "a case without images");
  (void)dataset_layout_name(ds.layout);
}

void run_one(std::string_view bytes) {
  try {
    use(parse_dataset(bytes, fixture_root()));
  } catch (const Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  run_one(std::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
