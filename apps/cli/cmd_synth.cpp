// `voxgrad synth --out DIR`: writes a synthetic segmentation dataset in the nnU-Net v2 raw layout
// (dataset.json, imagesTr/labelsTr, imagesTs/labelsTs, .nii.gz) from apps/pipeline/synth_volume, a progress
// bar over cases on stderr and one JSON result line on stdout. Host code only: it never touches CUDA.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <limits>
#include <memory>
#include <string>
#include <system_error>

#include "apps/cli/cli.h"
#include "apps/cli/cli_checks.h"
#include "apps/pipeline/synth_volume.h"
#include "engine/error.h"
#include "engine/files.h"
#include "engine/json.h"
#include "engine/log.h"
#include "engine/tensor.h"
#include "io/dataset.h"
#include "io/nifti.h"
#include "io/volume.h"

namespace voxgrad::cli {

using namespace pipeline;

namespace {

namespace fs = std::filesystem;

constexpr const char* kEnding = ".nii.gz";
constexpr const char* kCasePrefix = "synth_";

struct SynthOptions {
  std::string out;
  std::string preset = "demo";
  int cases = 8;
  int test_cases = 4;
  // 48^3 (110k voxels): on a 2-core CPU a small U-Net sees enough patches of it to learn the demo
  // preset in a few minutes; 64 gives larger structures at about 2.4 times the voxels.
  int size = 48;
  int classes = 3;
  std::uint64_t seed = 0;
  bool force = false;
};

std::string case_id(int index) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%s%03d", kCasePrefix, index);
  return buf;
}

// labelsTs holds a test case's label under the same file name as labelsTr would.
std::string test_label_path(const std::string& root, const std::string& id) {
  return (fs::path(root) / "labelsTs" / fs::path(io::label_path(root, id, kEnding)).filename()).string();
}

bool is_empty_or_missing(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return true;
  VG_USAGE_CHECK(fs::is_directory(dir, ec), "--out " << dir << ": exists and is not a folder");
  return fs::is_empty(dir, ec);
}

// With --force, the previous run's case files go (a smaller run would otherwise leave stale cases
// that dataset.json does not count); anything else in the folder is left alone.
void remove_old_cases(const std::string& root) {
  for (const char* sub : {"imagesTr", "labelsTr", "imagesTs", "labelsTs"}) {
    std::error_code ec;
    const fs::path dir = fs::path(root) / sub;
    if (!fs::is_directory(dir, ec)) continue;
    for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
      const std::string name = e.path().filename().string();
      if (e.is_regular_file() && name.rfind(kCasePrefix, 0) == 0 && name.ends_with(kEnding)) fs::remove(e.path());
    }
  }
}

io::Affine spacing_affine(const std::array<double, 3>& spacing) {
  io::Affine a = io::identity_affine();
  for (int i = 0; i < 3; ++i) a[i][i] = spacing[i];
  return a;
}

void write_case(const std::string& root, const std::string& id, bool test, const SynthSpec& spec, std::uint64_t seed) {
  const SynthCase c = synth_case(spec, seed);
  const Shape shape{spec.size, spec.size, spec.size};  // (Z, Y, X)
  const io::Affine affine = spacing_affine(spec.spacing);
  io::write_nifti(io::image_path(root, id, 0, kEnding, test), io::make_volume(from_vector(c.image, shape), affine),
                  io::NiftiWriteType::Float32);
  io::Volume label = io::make_volume(from_vector(c.label, shape), affine);
  label.intent_code = 1002;  // NIFTI_INTENT_LABEL: viewers show it as a segmentation
  io::write_nifti(test ? test_label_path(root, id) : io::label_path(root, id, kEnding), label,
                  io::NiftiWriteType::UInt8);
}

int run_synth(const SynthOptions& opt) {
  if (!is_empty_or_missing(opt.out)) {
    if (!opt.force) {
      VG_USAGE_FAIL("--out " << opt.out
                             << ": exists and is not empty; choose a new folder, or pass --force to "
                                "write into it (earlier synth_* cases there are replaced, other files are kept)");
    }
    remove_old_cases(opt.out);
  }
  SynthSpec spec;
  spec.preset = opt.preset == "demo" ? SynthPreset::Demo : SynthPreset::SmallStructures;
  spec.size = opt.size;
  spec.classes = opt.classes;

  io::create_dataset_folders(opt.out, /*with_test=*/opt.test_cases > 0);
  if (opt.test_cases > 0) {
    files::create_folder((fs::path(opt.out) / "labelsTs").string(), "--out");
  }

  const int total = opt.cases + opt.test_cases;
  logging::ProgressBar bar("synth", total, "case");
  for (int i = 0; i < total; ++i) {
    const bool test = i >= opt.cases;
    const int split_index = test ? i - opt.cases : i;
    write_case(opt.out, case_id(i), test, spec, synth_case_seed(opt.seed, test ? 1 : 0, split_index));
    bar.update(i + 1);
  }
  bar.finish();

  // dataset.json last: a folder with one is complete.
  io::DatasetV2Spec ds;
  ds.name = std::string("synthetic-") + synth_preset_name(spec.preset);
  ds.description = std::string("voxgrad synth --preset ") + synth_preset_name(spec.preset) +
                   " --size " + std::to_string(opt.size) + " --classes " + std::to_string(opt.classes) +
                   " --seed " + std::to_string(opt.seed);
  ds.channel_names = {"synthetic"};
  ds.labels[0] = "background";
  for (int c = 1; c < opt.classes; ++c) ds.labels[c] = "structure_" + std::to_string(c);
  ds.num_training = opt.cases;
  ds.file_ending = kEnding;
  io::write_dataset_v2(opt.out, ds);

  write_json_line(std::cout, {{"out", opt.out},
                              {"preset", synth_preset_name(spec.preset)},
                              {"cases_train", opt.cases},
                              {"cases_test", opt.test_cases},
                              {"size", {opt.size, opt.size, opt.size}},
                              {"classes", opt.classes},
                              {"spacing", spec.spacing},
                              {"seed", opt.seed}});
  return kExitOk;
}

}  // namespace

Command synth_command() {
  return {"synth",
          "Write a synthetic segmentation dataset (nnU-Net v2 raw layout) to train and test on",
          [](CLI::App& sub) -> RunFn {
            auto opt = std::make_shared<SynthOptions>();
            sub.add_option("--out", opt->out, "Dataset folder to create (must be missing or empty)")
                ->type_name("DIR")
                ->required();
            sub.add_option("--preset", opt->preset,
                           "demo: structures of thousands of voxels; small-structures: also some of a few "
                           "hundred voxels")
                ->check(one_of({"demo", "small-structures"}))
                ->capture_default_str();
            sub.add_option("--cases", opt->cases, "Training cases")
                ->check(number_in_range(1, 100000))
                ->capture_default_str();
            sub.add_option("--test-cases", opt->test_cases, "Test cases (imagesTs, labelsTs)")
                ->check(number_in_range(0, 100000))
                ->capture_default_str();
            sub.add_option("--size", opt->size, "Volume side S (S^3 voxels)")
                ->check(number_in_range(16, 512))
                ->capture_default_str();
            sub.add_option("--classes", opt->classes, "Classes K including the background")
                ->check(number_in_range(2, 255))
                ->capture_default_str();
            sub.add_option("--seed", opt->seed, "Random seed: the same seed gives the same files")
                ->check(whole_number(0, std::numeric_limits<std::uint64_t>::max()))
                ->capture_default_str();
            sub.add_flag("--force", opt->force, "Write into a non-empty --out (replaces earlier synth_* cases only)");
            // --device is accepted like everywhere and ignored: synthesis runs on the host.
            return [opt](const GlobalOptions&) { return run_synth(*opt); };
          }};
}

}  // namespace voxgrad::cli
