// Finds the pickle of a torch.save archive, resolves its ('storage', TYPE, KEY, LOCATION, NUMEL)
// persistent ids to the archive's data/KEY entries (each read once, CRC-checked, shared between
// the views of one storage), and lets io/pickle.cpp rebuild the tensors over them.
#include "io/torch_checkpoint.h"

#include <map>
#include <memory>
#include <utility>

#include "engine/error.h"
#include "io/gzip_stream.h"
#include "io/zip_archive.h"

namespace voxgrad::io {
namespace {

using Kind = PickleValue::Kind;

PickleValue load(const ZipArchive& archive) {
  const std::string& name = archive.name();
  // The pickle is PREFIX/data.pkl, PREFIX being the name the file was saved under.
  const ZipEntry* pickle = nullptr;
  for (const ZipEntry& e : archive.entries()) {
    const auto slash = e.name.find('/');
    if (slash != std::string::npos && e.name.substr(slash) == "/data.pkl") {
      VG_INPUT_CHECK(pickle == nullptr, name << ": not a PyTorch checkpoint (two data.pkl entries)");
      pickle = &e;
    }
  }
  VG_INPUT_CHECK(pickle != nullptr, name << ": not a PyTorch checkpoint (a zip archive without data.pkl)");
  const std::string prefix = pickle->name.substr(0, pickle->name.size() - 8);
  // Storages are in the byte order the writer named; every machine voxgrad runs on is little-endian.
  if (const ZipEntry* order = archive.find(prefix + "byteorder"); order != nullptr) {
    const auto bytes = archive.read(*order);
    const std::string text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    VG_INPUT_CHECK(text == "little", name << ": storages in byte order \"" << text.substr(0, 16)
                                          << "\" are not supported (only little-endian)");
  }
  std::map<std::string, std::shared_ptr<PickleStorage>> storages;
  const PersistentLoad storage_of = [&](const PickleValue& pid) {
    const auto& f = pid.items();
    VG_INPUT_CHECK(pid.is(Kind::Tuple) && f.size() == 5 && f[0].is(Kind::String) && f[0].text == "storage" &&
                       f[1].is(Kind::Global) && f[2].is(Kind::String) && f[4].is(Kind::Int),
                   name << ": malformed checkpoint (a persistent id that is not a storage)");
    const std::string dtype = torch_storage_dtype(f[1].text);
    VG_INPUT_CHECK(!dtype.empty(), name << ": storage type " << f[1].text << " is not supported");
    PickleValue v;
    v.kind = Kind::Storage;
    auto& cached = storages[f[2].text];
    if (cached == nullptr) {
      const std::string entry_name = prefix + "data/" + f[2].text;
      const ZipEntry* entry = archive.find(entry_name);
      VG_INPUT_CHECK(entry != nullptr,
                     name << ": malformed checkpoint (storage " << f[2].text << " has no entry " << entry_name << ")");
      const std::uint64_t element = torch_element_size(dtype);
      VG_INPUT_CHECK(f[4].integer >= 0 && static_cast<std::uint64_t>(f[4].integer) <= entry->size / element,
                     name << ": malformed checkpoint (storage " << f[2].text << " declares " << f[4].integer << " "
                          << dtype << " elements, its entry holds " << entry->size << " bytes)");
      cached = std::make_shared<PickleStorage>();
      cached->dtype = dtype;
      cached->numel = f[4].integer;
      cached->bytes = archive.read(*entry);
    }
    VG_INPUT_CHECK(cached->dtype == dtype,
                   name << ": malformed checkpoint (storage " << f[2].text << " named with two element types)");
    v.storage = cached;
    return v;
  };
  return read_pickle(archive.read(*pickle), name, storage_of);
}

}  // namespace

PickleValue load_torch_checkpoint_from_bytes(std::string bytes, const std::string& name) {
  // The legacy format (before PyTorch 1.6, or _use_new_zipfile_serialization=False) is a bare
  // pickle stream: protocol 2 starts with 0x80 0x02.
  VG_INPUT_CHECK(!(bytes.size() >= 2 && static_cast<unsigned char>(bytes[0]) == 0x80),
                 name << ": legacy (non-zip) PyTorch checkpoint format is not supported; re-save it with "
                         "torch.save from PyTorch 1.6 or later");
  VG_INPUT_CHECK(bytes.size() >= 4 && bytes.compare(0, 4, "PK\x03\x04") == 0,
                 name << ": not a PyTorch checkpoint (not a zip archive)");
  return load(ZipArchive::from_bytes(std::move(bytes), name));
}

PickleValue load_torch_checkpoint(const std::string& path) {
  return load_torch_checkpoint_from_bytes(read_file_bytes(path), path);
}

}  // namespace voxgrad::io
