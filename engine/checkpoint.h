// Checkpoints in the safetensors format (what safetensors.torch.load_file opens): model files (a
// module's state_dict) and training checkpoints (weights, optimizer state and progress in one file,
// so a crash never leaves them out of step). Files are written atomically, carry a checksum, and
// loading validates strictly: a damaged or foreign file is refused with a voxgrad::InputError.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "nn.h"
#include "optim.h"

namespace voxgrad {

using Metadata = std::map<std::string, std::string>;

// The checksum every file voxgrad writes carries, in its "__metadata__" under this key, as 8
// lowercase hex digits: zlib's CRC-32 of
//   1. the data section (every byte after the header), then, continuing the same CRC,
//   2. for each tensor in data order (by begin offset, then end offset, then name):
//        name '\0' dtype '\0' shape as decimal sizes joined by ',' '\0'
//   3. for each other metadata entry in byte order of its key: key '\0' value '\0'.
// One CRC over the bytes and the header's meaning rather than one per tensor: a flipped bit in
// any weight, a renamed or reordered tensor and an edited metadata value (a step, the config) all
// change it, and it does not depend on JSON spacing or key order, so a file re-saved by another
// safetensors writer with the same content still verifies. It guards against damage, not
// intent: a file stripped of the key loads, with the no-checksum warning. In Python
// (tests/fuzz/make_safetensors_seeds.py writes files this way):
//   c = zlib.crc32(data)
//   for n in names in data order: c = zlib.crc32(f"{n}\0{dtype}\0{','.join(map(str, shape))}\0".encode(), c)
//   for k in sorted(meta) if k != key: c = zlib.crc32(f"{k}\0{meta[k]}\0".encode(), c)
inline constexpr const char* kChecksumKey = "voxgrad_crc32";

struct SafeTensors {
  NamedTensors tensors;            // in data order; an alias right after the tensor it names again, sharing it
  Metadata metadata;               // the "__metadata__" string map less the checksum and the aliases (may be empty)
  bool checksum_verified = false;  // the file carried a checksum and it matched
};

// Whether a floating-point tensor may hold NaN or Inf. Weights never may: a network with such a
// value predicts nothing, so by default such a tensor is neither written nor read.
enum class NonFinite { refuse, allow };

// Writes F32, F64, I32 and U8 tensors (any device) in the given order with their checksum, the
// header padded with spaces to a multiple of 8 bytes. A tensor listed under several names (the
// same storage, offset, dtype and shape: a state_dict's aliases) is written once, under its first
// name; every further name becomes the metadata entry "name": "first name", as
// safetensors.torch.save_model writes shared tensors, so the file stays one any safetensors
// reader opens, and load_safetensors lists the tensor under every name again. Atomic
// (files::AtomicFile): `path` holds either the old file or the complete new one. With
// NonFinite::refuse a tensor holding NaN or Inf is an InputError naming it and nothing is written,
// so a diverged network never replaces a good file. `metadata` must not use kChecksumKey nor read
// as an alias (a value that is a tensor's name under a key that is none).
void save_safetensors(const std::string& path, const NamedTensors& tensors, const Metadata& metadata = {},
                      NonFinite non_finite = NonFinite::refuse);

// Reads and validates a whole file: a regular file only (a FIFO or device is refused at once),
// the header size against the file and a limit, the header JSON (nesting at most 64 deep),
// dtypes, shapes against offsets, offsets covering the data without gaps or overlaps, the
// checksum when the file has one (a file without one loads with a warning that its bytes cannot
// be verified), and with NonFinite::refuse that every F32/F64 value is finite. Every allocation is
// bounded by the file's size, and the tensors' total is checked against the memory available
// before any is made. When every floating-point tensor is all zeros it warns (such weights
// predict one class everywhere) but loads: a zero-initialised tensor is legal, only a whole file
// of zeros is suspicious. Tensors are placed on `device`. Anything wrong with the file throws
// voxgrad::InputError "PATH: reason" (header text in it cut to its first 200 characters). A
// metadata entry whose key is no tensor's name and whose value is one is an alias (see
// save_safetensors): it comes back as that tensor under the key's name, not as metadata.
SafeTensors load_safetensors(const std::string& path, Device device = Device::cpu(),
                             NonFinite non_finite = NonFinite::refuse);

// Copies `tensors` into the module's parameters and buffers (on their devices). Names, shapes and
// dtypes must match; strict also refuses missing and unexpected names. The InputError lists the
// differences. Non-strict loading skips missing and unexpected names but never a mismatched shape.
void load_state_dict(Module& module, const NamedTensors& tensors, bool strict = true);

// Model files: the module's state_dict, names as in PyTorch ("decoder.seg_layers.0.weight").
// Weights holding NaN or Inf are refused on both sides (InputError; nothing is written).
void save_model(const std::string& path, const Module& module, const Metadata& metadata = {});
// Rewrites a file's tensor names before they load (unet3d_migrate_names for files of UNet3d's former
// names); applied to every tensor of the file, "model." and "optimizer." ones of a checkpoint alike.
using TensorRenamer = std::function<NamedTensors(const NamedTensors&)>;

void load_model(const std::string& path, Module& module, bool strict = true, const TensorRenamer& rename = nullptr);

// What a training checkpoint records besides tensors. `config` is a JSON document kept as a string.
struct TrainingState {
  std::int64_t step = 0;
  std::int64_t epoch = 0;
  std::uint64_t rng_seed = 0;
  std::uint64_t rng_offset = 0;
  std::string config = "{}";
};

// One file: "model.<name>" for the weights, "optimizer.<name>" for the optimizer's state
// (Optimizer::state() names); metadata keys format, optimizer, lr, step, epoch, rng_seed,
// rng_offset and config. Weights or optimizer state holding NaN or Inf are refused (InputError,
// nothing written): the file on disk stays the last good state.
void save_training_checkpoint(const std::string& path, const Module& module, const Optimizer& optimizer,
                              const TrainingState& state);
// Restores the module's weights, the optimizer's state and learning rate; returns the progress.
// All or nothing: when anything is refused, the module keeps its own weights.
TrainingState load_training_checkpoint(const std::string& path, Module& module, Optimizer& optimizer,
                                       const TensorRenamer& rename = nullptr);
// Only the weights ("model.*") of a training checkpoint, e.g. for inference from the latest state.
void load_checkpoint_weights(const std::string& path, Module& module, bool strict = true,
                             const TensorRenamer& rename = nullptr);

}  // namespace voxgrad
