// PyTorch checkpoint files (torch.save's zip format: ARCHIVE/data.pkl and ARCHIVE/data/KEY), read
// without Python and without executing anything: the pickle becomes a PickleValue whose tensors are
// materialised from their storages. The legacy non-zip format is refused with a plain message.
#pragma once

#include <string>

#include "io/pickle.h"

namespace voxgrad::io {

// The object torch.save wrote to `path`. Errors are InputErrors starting with "`path`: ".
PickleValue load_torch_checkpoint(const std::string& path);
// The same for a file's bytes, named `name` in errors.
PickleValue load_torch_checkpoint_from_bytes(std::string bytes, const std::string& name);

}  // namespace voxgrad::io
