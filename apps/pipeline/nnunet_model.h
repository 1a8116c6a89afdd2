// An nnU-Net v2 trained-model folder (dataset.json, plans.json, fold_K/checkpoint_{final,best}.pth)
// read the way nnUNetPredictor.initialize_from_trained_model_folder reads it: the configuration the
// checkpoints were trained with (plans inheritance resolved), the label layout of dataset.json, the
// image reader, and every chosen fold's network weights. Nothing here runs Python or a pickle's
// code.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <vector>

#include "apps/pipeline/nnunet_preprocessing.h"
#include "apps/pipeline/resample.h"
#include "engine/json.h"
#include "engine/nn.h"
#include "models/nnunet_networks.h"

namespace voxgrad::pipeline::nnunet {

// dataset.json's labels as nnU-Net's LabelManager reads them: plain labels (softmax, argmax) or
// regions (sigmoid per region; a voxel takes the last region in regions_class_order above 0.5).
struct LabelLayout {
  bool has_regions = false;
  std::vector<int> labels;                // every label value (ignore label excluded), sorted
  std::vector<std::vector<int>> regions;  // foreground regions, dataset.json's order
  std::vector<int> regions_class_order;   // the label each region writes
  std::optional<int> ignore_label;
  int segmentation_heads() const {
    return has_regions ? static_cast<int>(regions.size()) : static_cast<int>(labels.size());
  }
  int largest_label() const;  // what the output label map must hold
};

// One plans configuration with its `inherits_from` chain resolved (the child's keys win).
struct Configuration {
  std::string name;
  Json json;                                       // the resolved configuration, for what is read later
  Spacing3 spacing{};                              // in nnU-Net's array order after transpose_forward
  std::vector<std::int64_t> patch_size;            // 2 entries for a 2-D configuration, else 3
  std::vector<std::string> normalization_schemes;  // one per input channel
  std::vector<bool> use_mask_for_norm;
  std::string resampling_fn_data, resampling_fn_probabilities;
  Json resampling_fn_data_kwargs, resampling_fn_probabilities_kwargs;
  Json architecture;  // {"network_class_name", "arch_kwargs", ...}
  bool is_2d() const { return patch_size.size() == 2; }
};

struct FoldCheckpoint {
  std::string fold;  // "0", "1", ... or "all"
  std::string path;  // MODEL/fold_K/checkpoint_final.pth, or a converted folder's fold_K.safetensors
  NamedTensors network_weights;
  // A converted folder stores each tensor once, under the first of its names (the network's
  // named_parameters and named_buffers); the other names of a tensor are the network's to fill in.
  bool aliases_omitted = false;
};

struct ModelFolder {
  std::string path;
  std::string dataset_json_path, plans_json_path;
  Json dataset_json, plans_json;
  std::string trainer_name;  // from the first fold's checkpoint
  std::string checkpoint;    // "final" or "best": the checkpoint files the weights come from
  Configuration configuration;
  int input_channels = 0;  // dataset.json's channel_names
  LabelLayout labels;
  std::string image_reader_writer;  // SimpleITKIO, NibabelIO or NibabelIOWithReorient
  std::string file_ending;          // ".nii.gz" or ".nii"
  std::array<int, 3> transpose_forward{0, 1, 2}, transpose_backward{0, 1, 2};
  std::vector<IntensityProperties> intensity_properties;  // per channel; empty when the plans have none
  std::vector<int> mirror_axes;                           // inference_allowed_mirroring_axes (array axes
                                                          // of the network input)
  std::vector<FoldCheckpoint> folds;
};

// What `voxgrad convert` writes: one JSON holding everything inference reads from dataset.json,
// plans.json (the one configuration, resolved) and the checkpoints besides the weights, and one
// safetensors file of weights per fold (with voxgrad's checksum).
inline constexpr const char* kConvertedModelFile = "nnunet_model.json";
inline constexpr const char* kConvertedModelFormat = "voxgrad nnU-Net model";

// True when `dir` holds dataset.json and plans.json, or is a converted folder (nnunet_model.json).
bool is_nnunet_model_folder(const std::string& dir);
bool is_converted_model_folder(const std::string& dir);

// The folds `dir` has a `checkpoint_file` for, as nnUNetPredictor auto-detects them (fold_*
// folders, sorted; "all" for fold_all).
std::vector<std::string> available_folds(const std::string& dir, const std::string& checkpoint_file);

// Reads the model folder (an nnU-Net one or a converted one). `folds`: "" for every fold present,
// "all" for fold_all, or a comma list such as "0,1,4". `checkpoint`: "final" (checkpoint_final.pth,
// the default when empty) or "best" (checkpoint_best.pth); a converted folder holds the one it was
// converted from. Every problem is an InputError naming the file and what to do (a missing fold, a
// cascade configuration, folds trained with different configurations, an image format voxgrad does
// not read).
ModelFolder open_model_folder(const std::string& dir, const std::string& folds, const std::string& checkpoint);

// Parses `folds` ("", "all", "0,1,..."), UsageError naming --folds on a bad list.
std::vector<std::string> parse_fold_list(const std::string& folds);

// The description a converted folder's nnunet_model.json holds (`text`; `path` names it in errors):
// everything open_model_folder returns, each fold with its weights' file name and no weights read.
ModelFolder read_converted_description(const std::string& text, const std::string& path);

// One network per fold, built from the configuration's architecture and loaded strictly with the
// fold's weights (which are released from `m` as they load), in eval mode on the CPU. A mismatch
// lists every difference; for a trainer other than nnU-Net's own it adds that the trainer may build
// a network voxgrad does not.
std::vector<std::shared_ptr<NnunetNetwork>> build_fold_networks(ModelFolder& m);

}  // namespace voxgrad::pipeline::nnunet
