// libFuzzer target for a converted nnU-Net model's nnunet_model.json (apps/pipeline/nnunet_model.h):
// it holds the model's dataset.json and plans.json, so one input drives every reader of an nnU-Net
// model description (labels and regions, channels, configurations and their inheritance, the
// readers, transposes, intensity properties, mirroring axes, folds) and the parsers behind them
// (architecture, resampling, normalisation). Any bytes must give a description or a voxgrad::Error,
// never a crash, a sanitizer report, another exception type or a hang. Built without libFuzzer it is
// a replay program (tests/fuzz/replay_main.cpp): `nnunet_model_fuzz_replay FILE_OR_DIR...`.
// Seeds: tests/fuzz/corpus_nnunet_model (the fixtures' models converted, and hostile variants).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "apps/pipeline/nnunet_model.h"
#include "apps/pipeline/nnunet_preprocessing.h"
#include "apps/pipeline/nnunet_resampling.h"
#include "engine/error.h"
#include "models/nnunet_networks.h"

namespace {

using namespace voxgrad;
using namespace voxgrad::pipeline::nnunet;

void require(bool ok) {
  if (!ok) std::abort();  // an accepted description that breaks what the reader promises
}

void run_one(const std::string& text) {
  try {
    const ModelFolder m = read_converted_description(text, "nnunet_model.json");
    const Configuration& c = m.configuration;
    require(c.patch_size.size() == 2 || c.patch_size.size() == 3);
    require(c.normalization_schemes.size() == static_cast<std::size_t>(m.input_channels));
    require(m.labels.segmentation_heads() >= 0);
    for (int a : m.mirror_axes) require(a >= 0 && a < static_cast<int>(c.patch_size.size()));
    for (int i = 0; i < 3; ++i) require(m.transpose_backward[m.transpose_forward[i]] == i);
    const NnunetArchitecture architecture = parse_nnunet_architecture(c.architecture, "architecture");
    require(architecture.n_stages == static_cast<int>(architecture.features_per_stage.size()));
    parse_resampling_settings(c.resampling_fn_data, c.resampling_fn_data_kwargs, "resampling_fn_data");
    parse_resampling_settings(c.resampling_fn_probabilities, c.resampling_fn_probabilities_kwargs,
                              "resampling_fn_probabilities");
    for (const std::string& scheme : c.normalization_schemes) parse_normalization_scheme(scheme);
  } catch (const Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  run_one(std::string(reinterpret_cast<const char*>(data), size));
  return 0;
}
