// Reading an nnU-Net v2 trained-model folder: dataset.json and plans.json with typed, file-named
// errors, the configuration chain, the label layout, and the folds' checkpoints through the
// non-executing PyTorch checkpoint reader.
#include "apps/pipeline/nnunet_model.h"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "engine/checkpoint.h"
#include "engine/error.h"
#include "io/gzip_stream.h"
#include "io/torch_checkpoint.h"

namespace voxgrad::pipeline::nnunet {

namespace {

namespace fs = std::filesystem;
using io::PickleValue;
using Kind = io::PickleValue::Kind;

Json read_json_file(const std::string& path) {
  std::error_code ec;
  VG_INPUT_CHECK(fs::exists(path, ec), path << ": missing (an nnU-Net model folder holds "
                                               "dataset.json, plans.json "
                                               "and fold_K/checkpoint_final.pth)");
  const std::string text = io::read_file_bytes(path);
  try {
    return Json::parse(text);
  } catch (const Json::exception& e) {
    VG_INPUT_FAIL(path << ": not valid JSON (" << e.what() << ")");
  }
}

// Typed access with errors that name the file and the key path.
const Json& member(const Json& object, const std::string& key, const std::string& where) {
  VG_INPUT_CHECK(object.is_object(), where << ": expected a JSON object");
  const auto it = object.find(key);
  VG_INPUT_CHECK(it != object.end(), where << ": has no \"" << key << "\"");
  return *it;
}

std::int64_t as_int(const Json& v, const std::string& where) {
  VG_INPUT_CHECK(v.is_number_integer(), where << ": expected an integer, got " << v.dump());
  return v.get<std::int64_t>();
}

double as_number(const Json& v, const std::string& where) {
  VG_INPUT_CHECK(v.is_number(), where << ": expected a number, got " << v.dump());
  return v.get<double>();
}

std::string as_string(const Json& v, const std::string& where) {
  VG_INPUT_CHECK(v.is_string(), where << ": expected a string, got " << v.dump());
  return v.get<std::string>();
}

std::array<int, 3> axis_permutation(const Json& v, const std::string& where) {
  VG_INPUT_CHECK(v.is_array() && v.size() == 3, where << ": expected 3 axes such as [0, 1, 2], got " << v.dump());
  std::array<int, 3> p{};
  for (int i = 0; i < 3; ++i) p[i] = static_cast<int>(as_int(v[i], where));
  std::array<int, 3> sorted = p;
  std::sort(sorted.begin(), sorted.end());
  VG_INPUT_CHECK((sorted == std::array<int, 3>{0, 1, 2}),
                 where << ": " << v.dump() << " is not a permutation of 0, 1, 2");
  return p;
}

LabelLayout read_labels(const Json& dataset, const std::string& path) {
  LabelLayout layout;
  const Json& labels = member(dataset, "labels", path);
  VG_INPUT_CHECK(labels.is_object() && !labels.empty(), path << ": \"labels\" must be an object of name: value");
  VG_INPUT_CHECK(labels.contains("background"), path << ": \"labels\" declares no \"background\" (label 0)");
  std::set<int> all;
  for (const auto& [name, value] : labels.items()) {
    const std::string where = path + ": labels." + name;
    if (name == "ignore") {
      layout.ignore_label = static_cast<int>(as_int(value, where));
      continue;
    }
    if (value.is_array()) {
      std::vector<int> region;
      for (const Json& v : value) region.push_back(static_cast<int>(as_int(v, where)));
      VG_INPUT_CHECK(!region.empty(), where << ": an empty region");
      all.insert(region.begin(), region.end());
      if (region.size() > 1) layout.has_regions = true;
    } else {
      all.insert(static_cast<int>(as_int(value, where)));
    }
  }
  VG_INPUT_CHECK(labels["background"].is_number_integer() && labels["background"] == 0,
                 path << ": labels.background must be 0, got " << labels["background"].dump());
  layout.labels.assign(all.begin(), all.end());
  if (!layout.has_regions) return layout;
  // Regions: every non-background entry, in dataset.json's order, each written as its
  // regions_class_order label (nnU-Net's LabelManager).
  for (const auto& [name, value] : labels.items()) {
    if (name == "ignore") continue;
    std::vector<int> region;
    if (value.is_array())
      for (const Json& v : value) region.push_back(static_cast<int>(v.get<std::int64_t>()));
    else
      region.push_back(static_cast<int>(value.get<std::int64_t>()));
    if (std::all_of(region.begin(), region.end(), [](int r) { return r == 0; })) continue;
    layout.regions.push_back(region);
  }
  const Json& order = member(dataset, "regions_class_order", path);
  VG_INPUT_CHECK(order.is_array() && order.size() == layout.regions.size(),
                 path << ": regions_class_order must list one label per region (" << layout.regions.size()
                      << " regions), got " << order.dump());
  for (const Json& v : order)
    layout.regions_class_order.push_back(static_cast<int>(as_int(v, path + ": regions_class_order")));
  return layout;
}

int count_channels(const Json& dataset, const std::string& path) {
  VG_INPUT_CHECK(dataset.is_object() && (dataset.contains("channel_names") || dataset.contains("modality")),
                 path << ": has no \"channel_names\" (the input channels, e.g. {\"0\": \"CT\"})");
  const char* key = dataset.contains("channel_names") ? "channel_names" : "modality";  // nnU-Net v1's name
  const Json& channels = member(dataset, key, path);
  VG_INPUT_CHECK(channels.is_object() && !channels.empty(),
                 path << ": \"" << key << "\" must name every input channel");
  return static_cast<int>(channels.size());
}

// plans.configurations[name] with its inherits_from chain applied, parent first.
Json resolve_configuration(const Json& plans, const std::string& name, const std::string& path, int depth = 0) {
  const Json& configurations = member(plans, "configurations", path);
  VG_INPUT_CHECK(
      configurations.contains(name), path << ": has no configuration \"" << name << "\" (it has: " << [&] {
        std::string list;
        for (const auto& [k, v] : configurations.items()) list += (list.empty() ? "" : ", ") + k;
        return list;
      }() << ")");
  VG_INPUT_CHECK(depth < 16, path << ": configuration \"" << name << "\" inherits in a cycle");
  const Json& own = configurations[name];
  VG_INPUT_CHECK(own.is_object(), path << ": configurations." << name << " is not an object");
  if (!own.contains("inherits_from")) return own;
  Json resolved = resolve_configuration(
      plans, as_string(own["inherits_from"], path + ": configurations." + name + ".inherits_from"), path, depth + 1);
  for (const auto& [k, v] : own.items()) resolved[k] = v;
  resolved.erase("inherits_from");
  return resolved;
}

Configuration read_configuration(const Json& plans, const std::string& name, const std::string& path) {
  Configuration c;
  c.name = name;
  c.json = resolve_configuration(plans, name, path);
  const std::string where = path + ": configurations." + name;
  VG_INPUT_CHECK(!c.json.contains("previous_stage") || c.json["previous_stage"].is_null(),
                 where << " is a cascade stage (previous_stage " << c.json["previous_stage"].dump()
                       << "): cascades are not supported yet; use the model's "
                          "3d_fullres or 3d_lowres configuration");
  const Json& patch = member(c.json, "patch_size", where);
  VG_INPUT_CHECK(patch.is_array() && (patch.size() == 2 || patch.size() == 3),
                 where << ".patch_size: expected 2 or 3 sizes, got " << patch.dump());
  for (const Json& v : patch) {
    c.patch_size.push_back(as_int(v, where + ".patch_size"));
    VG_INPUT_CHECK(c.patch_size.back() > 0, where << ".patch_size: sizes must be positive, got " << patch.dump());
  }
  const Json& spacing = member(c.json, "spacing", where);
  VG_INPUT_CHECK(spacing.is_array() && spacing.size() == patch.size(),
                 where << ".spacing: expected " << patch.size() << " spacings, got " << spacing.dump());
  // A 2-D configuration's spacing covers the in-plane axes; the slice axis keeps its own spacing
  // (nnU-Net resamples 2-D data slice by slice), marked here by 0 and filled in per case.
  const std::size_t first = 3 - spacing.size();
  for (std::size_t i = 0; i < spacing.size(); ++i) {
    c.spacing[first + i] = as_number(spacing[i], where + ".spacing");
    VG_INPUT_CHECK(c.spacing[first + i] > 0, where << ".spacing: spacings must be positive, got " << spacing.dump());
  }
  for (const Json& v : member(c.json, "normalization_schemes", where))
    c.normalization_schemes.push_back(as_string(v, where + ".normalization_schemes"));
  for (const Json& v : member(c.json, "use_mask_for_norm", where)) {
    VG_INPUT_CHECK(v.is_boolean(), where << ".use_mask_for_norm: expected true or false, got " << v.dump());
    c.use_mask_for_norm.push_back(v.get<bool>());
  }
  c.resampling_fn_data = as_string(member(c.json, "resampling_fn_data", where), where + ".resampling_fn_data");
  c.resampling_fn_data_kwargs = member(c.json, "resampling_fn_data_kwargs", where);
  c.resampling_fn_probabilities =
      as_string(member(c.json, "resampling_fn_probabilities", where), where + ".resampling_fn_probabilities");
  c.resampling_fn_probabilities_kwargs = member(c.json, "resampling_fn_probabilities_kwargs", where);
  c.architecture = member(c.json, "architecture", where);
  return c;
}

std::vector<IntensityProperties> read_intensity_properties(const Json& plans, const std::string& path) {
  std::vector<IntensityProperties> out;
  if (!plans.contains("foreground_intensity_properties_per_channel")) return out;
  const Json& all = plans["foreground_intensity_properties_per_channel"];
  for (int ch = 0; all.contains(std::to_string(ch)); ++ch) {
    const std::string where = path + ": foreground_intensity_properties_per_channel." + std::to_string(ch);
    const Json& p = all[std::to_string(ch)];
    out.push_back({as_number(member(p, "mean", where), where + ".mean"),
                   as_number(member(p, "std", where), where + ".std"),
                   as_number(member(p, "percentile_00_5", where), where + ".percentile_00_5"),
                   as_number(member(p, "percentile_99_5", where), where + ".percentile_99_5")});
  }
  return out;
}

std::string checkpoint_file_name(const std::string& checkpoint) {
  VG_USAGE_CHECK(checkpoint == "final" || checkpoint == "best",
                 "--checkpoint " << checkpoint
                                 << ": an nnU-Net model has final (checkpoint_final.pth) or best "
                                    "(checkpoint_best.pth)");
  return "checkpoint_" + checkpoint + ".pth";
}

// A checkpoint's dict entry, or an InputError naming the file.
const PickleValue& entry(const PickleValue& dict, const std::string& key, const std::string& path) {
  VG_INPUT_CHECK(dict.is(Kind::Dict),
                 path << ": holds a " << io::pickle_kind_name(dict.kind) << ", not the dict nnU-Net's trainer saves");
  const PickleValue* v = dict.get(key);
  VG_INPUT_CHECK(v != nullptr, path << ": has no \"" << key << "\" (not a checkpoint nnU-Net's trainer saved)");
  return *v;
}

std::string string_entry(const PickleValue& dict, const std::string& key, const std::string& path) {
  const PickleValue& v = entry(dict, key, path);
  VG_INPUT_CHECK(v.is(Kind::String),
                 path << ": \"" << key << "\" is a " << io::pickle_kind_name(v.kind) << ", not a string");
  return v.text;
}

NamedTensors network_weights_of(const PickleValue& weights, const std::string& path) {
  VG_INPUT_CHECK(weights.is(Kind::Dict),
                 path << ": network_weights is a " << io::pickle_kind_name(weights.kind) << ", not a state_dict");
  NamedTensors out;
  for (const auto& [k, v] : weights.entries()) {
    VG_INPUT_CHECK(k.is(Kind::String), path << ": network_weights has a " << io::pickle_kind_name(k.kind) << " key");
    VG_INPUT_CHECK(v.is(Kind::Tensor), path << ": network_weights." << k.text << " is a "
                                            << io::pickle_kind_name(v.kind) << ", not a tensor");
    out.emplace_back(k.text, v.tensor);
  }
  return out;
}

std::vector<int> mirror_axes_of(const PickleValue* axes, int spatial_dims, const std::string& path) {
  std::vector<int> out;
  if (axes == nullptr || axes->is(Kind::None)) return out;  // nnU-Net: no mirroring then
  VG_INPUT_CHECK(axes->is(Kind::Tuple) || axes->is(Kind::List),
                 path << ": inference_allowed_mirroring_axes is a " << io::pickle_kind_name(axes->kind));
  for (const PickleValue& a : axes->items()) {
    VG_INPUT_CHECK(a.is(Kind::Int) && a.integer >= 0 && a.integer < spatial_dims,
                   path << ": inference_allowed_mirroring_axes holds an axis outside 0.." << spatial_dims - 1);
    out.push_back(static_cast<int>(a.integer));
  }
  return out;
}

}  // namespace

int LabelLayout::largest_label() const {
  if (has_regions)
    return regions_class_order.empty() ? 0 : *std::max_element(regions_class_order.begin(), regions_class_order.end());
  return labels.empty() ? 0 : labels.back();
}

bool is_nnunet_model_folder(const std::string& dir) {
  std::error_code ec;
  return (fs::is_regular_file(fs::path(dir) / "dataset.json", ec) &&
          fs::is_regular_file(fs::path(dir) / "plans.json", ec)) ||
         is_converted_model_folder(dir);
}

std::vector<std::string> available_folds(const std::string& dir, const std::string& checkpoint_file) {
  std::vector<std::string> folds;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (!name.starts_with("fold_") || !e.is_directory(ec)) continue;
    if (fs::exists(e.path() / checkpoint_file, ec)) folds.push_back(name.substr(5));
  }
  // Numeric folds in numeric order, then names such as "all".
  std::sort(folds.begin(), folds.end(), [](const std::string& a, const std::string& b) {
    const bool an = !a.empty() && std::all_of(a.begin(), a.end(), ::isdigit);
    const bool bn = !b.empty() && std::all_of(b.begin(), b.end(), ::isdigit);
    if (an != bn) return an;
    if (an && a.size() != b.size()) return a.size() < b.size();
    return a < b;
  });
  return folds;
}

std::vector<std::string> parse_fold_list(const std::string& folds) {
  std::vector<std::string> out;
  if (folds.empty()) return out;
  if (folds == "all") return {"all"};
  std::stringstream in(folds);
  std::string item;
  while (std::getline(in, item, ',')) {
    VG_USAGE_CHECK(!item.empty() && item.size() <= 4 && std::all_of(item.begin(), item.end(), ::isdigit),
                   "--folds " << folds << ": expected fold numbers such as 0,1,4, or all");
    const std::string canonical = std::to_string(std::stoi(item));
    VG_USAGE_CHECK(std::find(out.begin(), out.end(), canonical) == out.end(),
                   "--folds " << folds << ": fold " << canonical << " is listed twice");
    out.push_back(canonical);
  }
  VG_USAGE_CHECK(!out.empty() && folds.back() != ',',
                 "--folds " << folds << ": expected fold numbers such as 0,1,4, or all");
  return out;
}

namespace {

// What dataset.json and plans.json say, for `configuration_name`; the folds are filled in by the
// caller.
void describe(ModelFolder& m, const std::string& configuration_name) {
  const std::string& ds = m.dataset_json_path;
  const std::string& pl = m.plans_json_path;
  m.input_channels = count_channels(m.dataset_json, ds);
  m.labels = read_labels(m.dataset_json, ds);
  m.file_ending = m.dataset_json.contains("file_ending")
                      ? as_string(m.dataset_json["file_ending"], ds + ": file_ending")
                      : std::string(".nii.gz");
  VG_INPUT_CHECK(m.file_ending == ".nii.gz" || m.file_ending == ".nii",
                 ds << ": file_ending " << m.file_ending << ": voxgrad reads NIfTI (.nii.gz or .nii) only");
  m.image_reader_writer = m.plans_json.contains("image_reader_writer")
                              ? as_string(m.plans_json["image_reader_writer"], pl + ": image_reader_writer")
                              : std::string("SimpleITKIO");
  if (m.dataset_json.contains("overwrite_image_reader_writer") &&
      !m.dataset_json["overwrite_image_reader_writer"].is_null())
    m.image_reader_writer =
        as_string(m.dataset_json["overwrite_image_reader_writer"], ds + ": overwrite_image_reader_writer");
  VG_INPUT_CHECK(m.image_reader_writer == "SimpleITKIO" || m.image_reader_writer == "NibabelIO" ||
                     m.image_reader_writer == "NibabelIOWithReorient",
                 pl << ": image_reader_writer " << m.image_reader_writer
                    << " is not supported (voxgrad reads NIfTI as SimpleITKIO, NibabelIO or NibabelIOWithReorient)");
  if (m.plans_json.contains("transpose_forward"))
    m.transpose_forward = axis_permutation(m.plans_json["transpose_forward"], pl + ": transpose_forward");
  if (m.plans_json.contains("transpose_backward"))
    m.transpose_backward = axis_permutation(m.plans_json["transpose_backward"], pl + ": transpose_backward");
  for (int i = 0; i < 3; ++i)
    VG_INPUT_CHECK(m.transpose_backward[m.transpose_forward[i]] == i,
                   pl << ": transpose_backward does not undo transpose_forward");
  m.intensity_properties = read_intensity_properties(m.plans_json, pl);
  m.configuration = read_configuration(m.plans_json, configuration_name, pl);
  const Configuration& c = m.configuration;
  VG_INPUT_CHECK(c.normalization_schemes.size() == static_cast<std::size_t>(m.input_channels) &&
                     c.use_mask_for_norm.size() == static_cast<std::size_t>(m.input_channels),
                 pl << ": configuration " << c.name << " normalises " << c.normalization_schemes.size()
                    << " channels, dataset.json names " << m.input_channels);
}

// Folds chosen by --folds among those present (all of them by default).
std::vector<std::string> choose_folds(const std::string& folds, const std::vector<std::string>& present,
                                      const std::function<std::string(const std::string&)>& path_of,
                                      const std::string& where, const std::string& hint) {
  std::vector<std::string> chosen = parse_fold_list(folds);
  std::string present_list;
  for (const std::string& f : present) present_list += (present_list.empty() ? "" : ", ") + f;
  if (chosen.empty()) {
    VG_INPUT_CHECK(!present.empty(), where << ": holds no folds" << hint);
    return present;
  }
  for (const std::string& f : chosen)
    VG_INPUT_CHECK(std::find(present.begin(), present.end(), f) != present.end(),
                   path_of(f) << ": missing; folds present: " << (present.empty() ? "none" : present_list)
                              << " (choose among them with --folds, or leave --folds out to use them all)");
  return chosen;
}

ModelFolder open_converted_folder(const std::string& dir, const std::string& folds, const std::string& checkpoint) {
  const std::string path = (fs::path(dir) / kConvertedModelFile).string();
  VG_INPUT_CHECK(fs::exists(path), path << ": missing");
  ModelFolder listed = read_converted_description(io::read_file_bytes(path), path);
  VG_INPUT_CHECK(checkpoint.empty() || checkpoint == listed.checkpoint,
                 path << ": converted from checkpoint_" << listed.checkpoint << ".pth; --checkpoint " << checkpoint
                      << " needs a conversion of that checkpoint (voxgrad convert --checkpoint " << checkpoint << ")");
  std::vector<std::string> present;
  for (const FoldCheckpoint& f : listed.folds) present.push_back(f.fold);
  const std::vector<std::string> chosen = choose_folds(
      folds, present, [&](const std::string& f) { return path + ": fold " + f; }, path, "");
  std::vector<FoldCheckpoint> kept;
  for (const std::string& f : chosen)
    for (FoldCheckpoint& fold : listed.folds)
      if (fold.fold == f) {
        fold.path = (fs::path(dir) / fold.path).string();
        fold.network_weights = load_safetensors(fold.path).tensors;
        kept.push_back(std::move(fold));
      }
  listed.path = dir;
  listed.folds = std::move(kept);
  return listed;
}

}  // namespace

bool is_converted_model_folder(const std::string& dir) {
  std::error_code ec;
  return fs::is_regular_file(fs::path(dir) / kConvertedModelFile, ec);
}

ModelFolder read_converted_description(const std::string& text, const std::string& path) {
  Json j;
  try {
    j = Json::parse(text);
  } catch (const Json::exception& e) {
    VG_INPUT_FAIL(path << ": not valid JSON (" << e.what() << ")");
  }
  VG_INPUT_CHECK(j.is_object() && j.contains("format") && j["format"] == kConvertedModelFormat,
                 path << ": \"format\" is not \"" << kConvertedModelFormat << "\" (not written by voxgrad convert)");
  const Json& version = member(j, "format_version", path);
  VG_INPUT_CHECK(version == 1, path << ": format_version " << version.dump(-1, ' ', true)
                                    << " is not 1, the version this voxgrad reads; convert the nnU-Net model again");
  ModelFolder m;
  m.path = fs::path(path).parent_path().string();
  m.dataset_json_path = path + " (dataset_json)";
  m.plans_json_path = path + " (plans_json)";
  m.dataset_json = member(j, "dataset_json", path);
  m.plans_json = member(j, "plans_json", path);
  m.trainer_name = as_string(member(j, "trainer_name", path), path + ": trainer_name");
  m.checkpoint = as_string(member(j, "checkpoint", path), path + ": checkpoint");
  VG_INPUT_CHECK(m.checkpoint == "final" || m.checkpoint == "best",
                 path << ": checkpoint " << m.checkpoint << " is neither final nor best");
  describe(m, as_string(member(j, "configuration", path), path + ": configuration"));
  const Json& axes = member(j, "inference_allowed_mirroring_axes", path);
  VG_INPUT_CHECK(axes.is_null() || axes.is_array(), path << ": inference_allowed_mirroring_axes is not a list");
  if (axes.is_array())
    for (const Json& a : axes) {
      const std::int64_t axis = as_int(a, path + ": inference_allowed_mirroring_axes");
      VG_INPUT_CHECK(axis >= 0 && axis < static_cast<std::int64_t>(m.configuration.patch_size.size()),
                     path << ": inference_allowed_mirroring_axes holds an axis outside the patch");
      m.mirror_axes.push_back(static_cast<int>(axis));
    }
  const Json& folds = member(j, "folds", path);
  VG_INPUT_CHECK(folds.is_array(), path << ": folds is not a list");
  for (const Json& f : folds) {
    FoldCheckpoint fold;
    fold.fold = as_string(member(f, "fold", path + ": folds"), path + ": folds[].fold");
    fold.path = as_string(member(f, "weights", path + ": folds"), path + ": folds[].weights");
    VG_INPUT_CHECK(!fold.path.empty() && fs::path(fold.path).filename().string() == fold.path,
                   path << ": fold " << fold.fold << "'s weights " << fold.path << " must be a file beside it");
    fold.aliases_omitted = true;
    m.folds.push_back(std::move(fold));
  }
  return m;
}

ModelFolder open_model_folder(const std::string& dir, const std::string& folds, const std::string& checkpoint) {
  if (is_converted_model_folder(dir)) return open_converted_folder(dir, folds, checkpoint);
  ModelFolder m;
  m.path = dir;
  const std::string file = checkpoint_file_name(checkpoint.empty() ? "final" : checkpoint);
  m.dataset_json_path = (fs::path(dir) / "dataset.json").string();
  m.plans_json_path = (fs::path(dir) / "plans.json").string();
  m.dataset_json = read_json_file(m.dataset_json_path);
  m.plans_json = read_json_file(m.plans_json_path);
  const std::vector<std::string> chosen = choose_folds(
      folds, available_folds(dir, file),
      [&](const std::string& f) { return (fs::path(dir) / ("fold_" + f) / file).string(); }, dir,
      std::string(" with fold_K/") + file + (checkpoint == "best" ? " (try --checkpoint final)" : ""));

  std::string configuration_name;
  for (const std::string& f : chosen) {
    FoldCheckpoint fold;
    fold.fold = f;
    fold.path = (fs::path(dir) / ("fold_" + f) / file).string();
    const PickleValue saved = io::load_torch_checkpoint(fold.path);
    const PickleValue& init_args = entry(saved, "init_args", fold.path);
    const std::string configuration = string_entry(init_args, "configuration", fold.path);
    const std::string trainer = string_entry(saved, "trainer_name", fold.path);
    if (configuration_name.empty()) {
      configuration_name = configuration;
      m.trainer_name = trainer;
      m.checkpoint = checkpoint.empty() ? "final" : checkpoint;
      describe(m, configuration_name);
      m.mirror_axes = mirror_axes_of(saved.get("inference_allowed_mirroring_axes"),
                                     static_cast<int>(m.configuration.patch_size.size()), fold.path);
    }
    VG_INPUT_CHECK(configuration == configuration_name,
                   fold.path << ": trained with configuration " << configuration << ", fold " << chosen.front()
                             << " with " << configuration_name << "; an ensemble needs one configuration");
    fold.network_weights = network_weights_of(entry(saved, "network_weights", fold.path), fold.path);
    m.folds.push_back(std::move(fold));
  }
  return m;
}

namespace {

// A converted folder's weights (each tensor under its first name) under every name of the network's
// state_dict. Names the file lacks stay missing and names the network lacks stay, so the strict
// load reports both.
NamedTensors with_aliases(const Module& network, const NamedTensors& stored) {
  std::map<const void*, std::string> first_name;
  for (const auto& [name, t] : network.named_parameters()) first_name.emplace(t.raw_data(), name);
  for (const auto& [name, t] : network.named_buffers()) first_name.emplace(t.raw_data(), name);
  std::map<std::string, Tensor> by_name(stored.begin(), stored.end());
  NamedTensors out;
  std::set<std::string> used;
  for (const auto& [name, t] : network.state_dict()) {
    const auto first = first_name.find(t.raw_data());
    const std::string& source = first == first_name.end() ? name : first->second;
    const auto found = by_name.find(source);
    if (found == by_name.end()) continue;
    out.emplace_back(name, found->second);
    used.insert(source);
  }
  for (const auto& [name, t] : stored)
    if (!used.count(name)) out.emplace_back(name, t);
  return out;
}

}  // namespace

std::vector<std::shared_ptr<NnunetNetwork>> build_fold_networks(ModelFolder& m) {
  const Configuration& c = m.configuration;
  const NnunetArchitecture architecture =
      parse_nnunet_architecture(c.architecture, m.plans_json_path + ": configurations." + c.name + ".architecture");
  VG_INPUT_CHECK(architecture.spatial_dims == static_cast<int>(c.patch_size.size()),
                 m.plans_json_path << ": configuration " << c.name << " has a " << c.patch_size.size()
                                   << "-D patch but a " << architecture.spatial_dims << "-D network");
  std::vector<std::shared_ptr<NnunetNetwork>> networks;
  for (FoldCheckpoint& fold : m.folds) {
    // Zero-initialised: the checkpoint overwrites every weight, so random draws would be wasted
    // time.
    auto network = build_nnunet_network(architecture, m.input_channels, m.labels.segmentation_heads(), DType::Float32,
                                        NnunetInit::Zeros);
    const NamedTensors weights =
        fold.aliases_omitted ? with_aliases(*network, fold.network_weights) : fold.network_weights;
    try {
      load_nnunet_weights(*network, weights, fold.path);
    } catch (const InputError& e) {
      if (m.trainer_name.starts_with("nnUNetTrainer")) throw;
      VG_INPUT_FAIL(e.what() << " (the checkpoint's trainer " << m.trainer_name
                             << " may build a network of its own, which voxgrad cannot build)");
    }
    fold.network_weights.clear();
    network->eval();
    networks.push_back(network);
  }
  return networks;
}

}  // namespace voxgrad::pipeline::nnunet
