// Writing a converted nnU-Net model folder: the plans reduced to the configuration the folds were
// trained with (inheritance resolved), the weights each under its first name only.
#include "apps/pipeline/nnunet_convert.h"

#include <filesystem>

#include "apps/pipeline/build_info.h"
#include "apps/pipeline/nnunet_model.h"
#include "engine/checkpoint.h"
#include "engine/error.h"
#include "engine/files.h"
#include "engine/json.h"

namespace voxgrad::pipeline::nnunet {

namespace fs = std::filesystem;

std::vector<std::string> convert_model_folder(const std::string& model_dir, const std::string& out_dir,
                                              const std::string& folds, const std::string& checkpoint) {
  VG_USAGE_CHECK(!is_converted_model_folder(model_dir),
                 "--model " << model_dir << ": already a converted model; predict runs it as it is");
  VG_USAGE_CHECK(is_nnunet_model_folder(model_dir),
                 "--model " << model_dir << ": not an nnU-Net trained-model folder (it needs dataset.json, plans.json "
                            << "and fold_K/checkpoint_final.pth)");
  const auto model_identity = files::identity_of(model_dir);
  VG_USAGE_CHECK(!model_identity || model_identity != files::identity_of(out_dir),
                 "--out " << out_dir << ": is the --model folder; the converted model goes to a folder of its own");
  ModelFolder m = open_model_folder(model_dir, folds, checkpoint);
  std::vector<std::string> fold_names;
  for (const FoldCheckpoint& f : m.folds) fold_names.push_back(f.fold);
  // Loading into the network is the check that the converted folder will run.
  const auto networks = build_fold_networks(m);

  // A converted model already there stops being one before its weights are replaced, so a failed
  // conversion never leaves an old description over new weights.
  std::error_code ec;
  fs::remove(fs::path(out_dir) / kConvertedModelFile, ec);
  VG_INPUT_CHECK(!ec, out_dir << "/" << kConvertedModelFile << ": cannot be replaced (" << ec.message() << ")");
  std::vector<std::string> written;
  Json fold_list = Json::array();
  for (std::size_t i = 0; i < networks.size(); ++i) {
    NamedTensors tensors = networks[i]->named_parameters();
    for (auto& buffer : networks[i]->named_buffers()) tensors.push_back(buffer);
    const std::string file = "fold_" + fold_names[i] + ".safetensors";
    const std::string path = (fs::path(out_dir) / file).string();
    save_safetensors(path, tensors, {{"fold", fold_names[i]}, {"format", kConvertedModelFormat}});
    written.push_back(path);
    fold_list.push_back({{"fold", fold_names[i]}, {"weights", file}});
  }
  Json plans = m.plans_json;
  plans["configurations"] = Json::object({{m.configuration.name, m.configuration.json}});
  Json axes = Json::array();
  for (int a : m.mirror_axes) axes.push_back(a);
  const Json description = {
      {"format", kConvertedModelFormat},
      {"format_version", 1},
      {"converted_by", std::string("voxgrad ") + version()},
      {"converted_from", fs::absolute(model_dir).lexically_normal().string()},
      {"trainer_name", m.trainer_name},
      {"configuration", m.configuration.name},
      {"checkpoint", m.checkpoint},
      {"inference_allowed_mirroring_axes", m.mirror_axes.empty() ? Json(nullptr) : axes},
      {"folds", fold_list},
      {"dataset_json", m.dataset_json},
      {"plans_json", plans},
  };
  const std::string json_path = (fs::path(out_dir) / kConvertedModelFile).string();
  files::write_file_atomically(json_path, description.dump(2) + "\n");
  written.push_back(json_path);
  return written;
}

}  // namespace voxgrad::pipeline::nnunet
