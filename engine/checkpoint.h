// Checkpoints in the safetensors format (what safetensors.torch.load_file opens): model files (a
// module's state_dict) and training checkpoints (weights, optimizer state and progress in one file,
// so a crash never leaves them out of step). Files are written atomically; loading validates strictly.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "engine/nn.h"
#include "engine/optim.h"

namespace voxgrad {

using Metadata = std::map<std::string, std::string>;

struct SafeTensors {
  NamedTensors tensors;  // in file order
  Metadata metadata;     // the "__metadata__" string map (empty when the file has none)
};

// Writes F32, F64, I32 and U8 tensors (any device) in the given order, the header padded with
// spaces to a multiple of 8 bytes. Atomic: a temporary file in the same folder is written, synced
// and renamed over `path`, so `path` holds either the old file or the complete new one.
void save_safetensors(const std::string& path, const NamedTensors& tensors, const Metadata& metadata = {});

// Reads and validates a whole file (header size and JSON, dtypes, shapes against offsets, offsets
// covering the data without gaps or overlaps); tensors are placed on `device`. Throws
// voxgrad::Error naming the path and the problem.
SafeTensors load_safetensors(const std::string& path, Device device = Device::cpu());

// Copies `tensors` into the module's parameters and buffers (on their devices). Names, shapes and
// dtypes must match; strict also refuses missing and unexpected names. The error lists every
// difference. Non-strict loading skips missing and unexpected names but never a mismatched shape.
void load_state_dict(Module& module, const NamedTensors& tensors, bool strict = true);

// Model files: the module's state_dict, names as in PyTorch ("encoder.0.conv1.weight").
void save_model(const std::string& path, const Module& module, const Metadata& metadata = {});
void load_model(const std::string& path, Module& module, bool strict = true);

// What a training checkpoint records besides tensors. `config` is a JSON document kept as a string.
struct TrainingState {
  std::int64_t step = 0;
  std::int64_t epoch = 0;
  std::uint64_t rng_seed = 0;
  std::uint64_t rng_offset = 0;
  std::string config = "{}";
};

// One file: "model.<name>" for the weights, "optimizer.state.<param>.<what>" for the optimizer's
// state; metadata keys format, optimizer, lr, step, epoch, rng_seed, rng_offset and config.
void save_training_checkpoint(const std::string& path, const Module& module, const Optimizer& optimizer,
                              const TrainingState& state);
// Restores the module's weights, the optimizer's state and learning rate; returns the progress.
TrainingState load_training_checkpoint(const std::string& path, Module& module, Optimizer& optimizer);

}  // namespace voxgrad
