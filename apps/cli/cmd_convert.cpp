// `voxgrad convert --model NNUNET_MODEL --out DIR`: an nnU-Net v2 trained-model folder as a folder
// `predict` and the C API run with no .pth reading (nnunet_model.json and safetensors weights).
// One JSON line on stdout lists the files written.
#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "apps/cli/cli.h"
#include "apps/cli/cli_checks.h"
#include "apps/pipeline/nnunet_convert.h"
#include "apps/pipeline/nnunet_model.h"
#include "apps/pipeline/output_folder.h"
#include "engine/error.h"
#include "engine/files.h"
#include "engine/json.h"

namespace voxgrad::cli {

namespace {

struct ConvertOptions {
  std::string model;
  std::string out;
  std::string folds;
  std::string checkpoint = "final";
  bool overwrite = false;
};

int run_convert(const ConvertOptions& o) {
  pipeline::nnunet::parse_fold_list(o.folds);  // a bad list is a usage error before anything is read
  // The model is read and checked before the output folder is made.
  const bool converted = pipeline::nnunet::is_converted_model_folder(o.out);
  VG_USAGE_CHECK(!converted || o.overwrite,
                 "--out " << o.out << ": holds a converted model already; --overwrite replaces it");
  pipeline::OutputFolder folder(o.out, "--out");
  const std::vector<std::string> files = pipeline::nnunet::convert_model_folder(o.model, o.out, o.folds, o.checkpoint);
  folder.keep();
  write_json_line(std::cout, {{"out", o.out}, {"files", files}});
  return kExitOk;
}

}  // namespace

Command convert_command() {
  return {"convert",
          "Rewrite an nnU-Net v2 trained-model folder as a voxgrad model folder (safetensors weights with "
          "checksums, one JSON) that predict and the C API run without reading .pth files",
          [](CLI::App& sub) -> RunFn {
            auto opt = std::make_shared<ConvertOptions>();
            sub.add_option("--model", opt->model,
                           "nnU-Net trained-model folder (dataset.json, plans.json, fold_K/checkpoint_final.pth)")
                ->type_name("NNUNET_MODEL")
                ->required();
            sub.add_option("--out", opt->out, "Folder for nnunet_model.json and fold_K.safetensors")
                ->type_name("DIR")
                ->required();
            sub.add_option("--folds", opt->folds, "The folds to keep, e.g. 0,1,4, or all; default every fold present")
                ->type_name("LIST");
            sub.add_option("--checkpoint", opt->checkpoint,
                           "final (checkpoint_final.pth) or best (checkpoint_best.pth)")
                ->check(one_of({"final", "best"}))
                ->capture_default_str();
            sub.add_flag("--overwrite", opt->overwrite, "Replace a converted model already in --out");
            return [opt](const GlobalOptions&) { return run_convert(*opt); };
          }};
}

}  // namespace voxgrad::cli
