// A Python pickle reader for the opcodes torch.save writes (protocol 2, plus the framing and memo
// opcodes of 4). It executes nothing: the few globals it knows (tensor rebuilds, storage types,
// OrderedDict, torch.device, numpy scalars and arrays) are rebuilt as data; any other is refused.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace voxgrad::io {

struct PickleContainer;

// Bytes of one storage a persistent id named, with the element type its storage class says
// ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool").
struct PickleStorage {
  std::string dtype;
  std::int64_t numel = 0;
  std::span<const std::byte> bytes;
};

struct PickleValue {
  // Object: an allow-listed global kept inert (torch.device, numpy arrays and dtypes): its
  // `text` is "module.name" and its container holds {args, state}. Global: a callable not yet called.
  enum class Kind { None, Bool, Int, Float, String, Bytes, List, Tuple, Dict, Tensor, Object, Global, Storage };
  Kind kind = Kind::None;
  bool boolean = false;
  std::int64_t integer = 0;
  double number = 0;
  std::string text;                            // String, Bytes, and the name of a Global or an Object
  std::shared_ptr<PickleContainer> container;  // List, Tuple, Dict, Object
  Tensor tensor;
  std::shared_ptr<PickleStorage> storage;

  bool is(Kind k) const { return kind == k; }
  // List, Tuple or Object items; Dict entries. Empty for scalars.
  const std::vector<PickleValue>& items() const;
  const std::vector<std::pair<PickleValue, PickleValue>>& entries() const;
  // The value of a Dict's string key, or nullptr.
  const PickleValue* get(const std::string& key) const;
};

struct PickleContainer {
  std::vector<PickleValue> items;
  std::vector<std::pair<PickleValue, PickleValue>> entries;
};

const char* pickle_kind_name(PickleValue::Kind k);

struct PickleLimits {
  int max_depth = 64;  // nesting of containers in the result
};

// Resolves a persistent id (a BINPERSID operand) to a Storage value; throws to refuse it.
using PersistentLoad = std::function<PickleValue(const PickleValue& pid)>;

// Reads one pickle. Errors are InputErrors starting with "`name`: ". Without `load`, persistent
// ids are refused.
// The element type of a torch storage class ("torch.HalfStorage" -> "float16"); "" when unknown.
std::string torch_storage_dtype(const std::string& global);
std::size_t torch_element_size(const std::string& dtype);

PickleValue read_pickle(std::span<const std::byte> bytes, const std::string& name, const PersistentLoad& load = {},
                        const PickleLimits& limits = {});

}  // namespace voxgrad::io
