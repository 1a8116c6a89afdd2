// `voxgrad convert`: an nnU-Net v2 trained-model folder rewritten as a folder voxgrad runs without
// reading any .pth: nnunet_model.json (dataset.json, the configuration's plans, the trainer, the
// checkpoint's mirroring axes) and one safetensors file of weights per fold, each with its checksum.
#pragma once

#include <string>
#include <vector>

namespace voxgrad::pipeline::nnunet {

// Reads `model_dir` (its `folds` and `checkpoint` as open_model_folder takes them), checks every
// fold's weights load into the network voxgrad builds, and writes into `out_dir` (which must
// exist and not be `model_dir`): fold_K.safetensors for each fold, then nnunet_model.json, each
// atomically. A nnunet_model.json already in `out_dir` is removed before the first weights are
// written and the new one is written last, so a folder without it is no model and a failed
// conversion never leaves a description over weights it does not describe. Returns the files written.
std::vector<std::string> convert_model_folder(const std::string& model_dir, const std::string& out_dir,
                                              const std::string& folds, const std::string& checkpoint);

}  // namespace voxgrad::pipeline::nnunet
