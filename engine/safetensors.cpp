// The safetensors format: atomic writing with a checksum (see kChecksumKey in checkpoint.h), shared
// tensors written once, and strict reading of hostile bytes: regular files only, every size checked
// against the file before anything is allocated, the checksum and the weights' finiteness verified.
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <tuple>

#include "engine/checkpoint.h"
#include "engine/crc32.h"
#include "engine/files.h"
#include "engine/json.h"
#include "engine/log.h"
#include "engine/memory_budget.h"

namespace voxgrad {

// The format stores little-endian data and we write host memory as it is.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace {

// The reference implementation refuses larger headers; so do we, before allocating one.
constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;
// A real header nests three levels deep; a hostile one could nest deep enough to exhaust the stack
// of anything that walks the parsed value recursively.
constexpr int kMaxHeaderDepth = 64;
// No tensor of a model file comes near 2^40 elements; the bound keeps every product of sizes
// far from overflow.
constexpr std::uint64_t kMaxElements = std::uint64_t{1} << 40;
// Header text quoted in an error: enough to recognise it, never the whole metadata.
constexpr std::size_t kQuoteChars = 200;

const char* safetensors_dtype(DType t) {
  switch (t) {
    case DType::Float32: return "F32";
    case DType::Float64: return "F64";
    case DType::Int32: return "I32";
    case DType::UInt8: return "U8";
  }
  return nullptr;
}

bool parse_dtype(const std::string& s, DType* t) {
  for (DType d : {DType::Float32, DType::Float64, DType::Int32, DType::UInt8}) {
    if (s == safetensors_dtype(d)) {
      *t = d;
      return true;
    }
  }
  return false;
}

// One tensor's place in the data section.
struct Entry {
  std::string name;
  DType dtype = DType::Float32;
  Shape shape;
  std::uint64_t begin = 0, end = 0;  // byte offsets into the data section
};

// What makes two names one tensor in a file: the same bytes of the same storage read as the same
// dtype and shape (PyTorch's aliases, such as nnU-Net's "all_modules.0" for "conv"). Views that
// merely overlap, or read the bytes otherwise, are written apart, each with its own bytes.
struct SharedBytes {
  const Storage* storage;
  std::size_t byte_offset;
  DType dtype;
  Shape shape;
  bool operator<(const SharedBytes& o) const {
    return std::tie(storage, byte_offset, dtype, shape) < std::tie(o.storage, o.byte_offset, o.dtype, o.shape);
  }
};

// Data order: the order the tensors' bytes appear in, ties (empty tensors) broken by name.
void sort_in_data_order(std::vector<Entry>& entries) {
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.name < b.name;
  });
}

// Parts 2 and 3 of the checksum (checkpoint.h), continuing `data_crc`; `entries` in data order.
std::uint32_t checksum_of(std::uint32_t data_crc, const std::vector<Entry>& entries, const Metadata& metadata) {
  std::uint32_t crc = data_crc;
  for (const Entry& e : entries) {
    std::string part = e.name;
    part += '\0';
    part += safetensors_dtype(e.dtype);
    part += '\0';
    for (std::size_t i = 0; i < e.shape.size(); ++i) {
      if (i > 0) part += ',';
      part += std::to_string(e.shape[i]);
    }
    part += '\0';
    crc = crc32_update(crc, part.data(), part.size());
  }
  for (const auto& [key, value] : metadata) {  // std::map: byte order of the keys
    if (key == kChecksumKey) continue;
    const std::string part = key + '\0' + value + '\0';
    crc = crc32_update(crc, part.data(), part.size());
  }
  return crc;
}

std::string hex8(std::uint32_t v) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

bool parse_hex8(const std::string& s, std::uint32_t* v) {
  if (s.size() != 8) return false;
  std::uint32_t out = 0;
  for (char c : s) {
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else return false;
    out = out << 4 | static_cast<std::uint32_t>(d);
  }
  *v = out;
  return true;
}

// At most kQuoteChars characters of `text` (never cutting a UTF-8 sequence), control characters
// escaped so that a hostile header cannot drive the terminal; the cut is said.
std::string quote_text(const std::string& text) {
  std::size_t cut = std::min(text.size(), kQuoteChars);
  while (cut < text.size() && cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  std::string out;
  for (std::size_t i = 0; i < cut; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (cut < text.size()) out += "... (" + std::to_string(text.size()) + " bytes in all)";
  return out;
}

// A JSON value of the header as it reads in an error.
std::string quote_json(const Json& value) {
  return quote_text(value.dump(-1, ' ', false, Json::error_handler_t::replace));
}
// A tensor or key name, in quotes.
std::string quote_name(const std::string& name) { return quote_json(Json(name)); }

// How deeply the text's arrays and objects nest (strings skipped); stops counting past `limit`.
int nesting_depth(const std::string& text, int limit) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) return deepest;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

// A descriptor that closes itself.
class Descriptor {
 public:
  explicit Descriptor(int fd) : fd_(fd) {}
  ~Descriptor() { ::close(fd_); }
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Exactly `bytes` at `offset`, or an error naming what was being read.
void read_exact(int fd, const std::string& path, std::uint64_t offset, void* out, std::size_t bytes,
                const std::string& what) {
  char* p = static_cast<char*>(out);
  while (bytes > 0) {
    const ssize_t n = ::pread(fd, p, std::min<std::size_t>(bytes, std::size_t{1} << 30), static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      VG_INPUT_FAIL(path << ": cannot read " << what << ": " << std::strerror(err));
    }
    VG_INPUT_CHECK(n > 0, path << ": the file ended while reading " << what << " (it shrank while being read)");
    p += n;
    offset += static_cast<std::uint64_t>(n);
    bytes -= static_cast<std::size_t>(n);
  }
}

// The number of NaN and Inf values of a floating-point tensor (0 for other dtypes).
std::int64_t count_non_finite(const Tensor& t) {
  std::int64_t bad = 0;
  if (t.dtype() == DType::Float32) {
    const float* p = static_cast<const float*>(t.raw_data());
    for (std::int64_t i = 0, n = t.numel(); i < n; ++i) bad += !std::isfinite(p[i]);
  } else if (t.dtype() == DType::Float64) {
    const double* p = static_cast<const double*>(t.raw_data());
    for (std::int64_t i = 0, n = t.numel(); i < n; ++i) bad += !std::isfinite(p[i]);
  }
  return bad;
}

bool all_zero(const Tensor& t) {
  if (t.dtype() == DType::Float32) {
    const float* p = static_cast<const float*>(t.raw_data());
    return std::all_of(p, p + t.numel(), [](float v) { return v == 0.0f; });
  }
  const double* p = static_cast<const double*>(t.raw_data());
  return std::all_of(p, p + t.numel(), [](double v) { return v == 0.0; });
}

bool is_floating(DType t) { return t == DType::Float32 || t == DType::Float64; }

// One header entry, validated against the data section's size.
Entry parse_entry(const std::string& path, const std::string& name, const Json& value, std::uint64_t data_size) {
  const std::string where = path + ": tensor " + quote_name(name);
  VG_INPUT_CHECK(value.is_object() && value.contains("dtype") && value.contains("shape") && value.contains("data_offsets"),
                 where << " needs dtype, shape and data_offsets, got " << quote_json(value));
  Entry e;
  e.name = name;
  const Json& dtype = value["dtype"];
  VG_INPUT_CHECK(dtype.is_string() && parse_dtype(dtype.get<std::string>(), &e.dtype),
                 where << ": dtype " << quote_json(dtype) << " is not supported (F32, F64, I32, U8)");
  const Json& shape = value["shape"];
  VG_INPUT_CHECK(shape.is_array() && shape.size() <= static_cast<std::size_t>(kMaxDims),
                 where << ": shape " << quote_json(shape) << " is not a list of at most " << kMaxDims << " sizes");
  // The product of the non-zero sizes is bounded too, so a zero size cannot hide huge neighbours
  // from code that multiplies sizes for strides.
  std::uint64_t numel = 1, nonzero = 1;
  for (const Json& s : shape) {
    VG_INPUT_CHECK(s.is_number_unsigned(), where << ": shape " << quote_json(shape) << " holds a non-size " << quote_json(s));
    const std::uint64_t n = s.get<std::uint64_t>();
    VG_INPUT_CHECK(n <= kMaxElements && (n == 0 || nonzero <= kMaxElements / n),
                   where << ": shape " << quote_json(shape) << " is implausibly large (over 2^40 elements)");
    if (n != 0) nonzero *= n;
    numel *= n;
    e.shape.push_back(static_cast<std::int64_t>(n));
  }
  const Json& offsets = value["data_offsets"];
  VG_INPUT_CHECK(offsets.is_array() && offsets.size() == 2 && offsets[0].is_number_unsigned() &&
                     offsets[1].is_number_unsigned(),
                 where << ": data_offsets " << quote_json(offsets) << " is not a pair of byte offsets");
  e.begin = offsets[0].get<std::uint64_t>();
  e.end = offsets[1].get<std::uint64_t>();
  VG_INPUT_CHECK(e.begin <= e.end && e.end <= data_size, where << ": data_offsets [" << e.begin << ", " << e.end
                                                               << "] lie outside the " << data_size << "-byte data");
  const std::uint64_t bytes = numel * dtype_size(e.dtype);  // <= 2^43: no overflow
  VG_INPUT_CHECK(e.end - e.begin == bytes, where << ": shape " << quote_json(shape) << " of " << dtype.get<std::string>()
                                                 << " needs " << bytes << " bytes but data_offsets [" << e.begin << ", "
                                                 << e.end << "] hold " << e.end - e.begin);
  return e;
}

}  // namespace

void save_safetensors(const std::string& path, const NamedTensors& tensors, const Metadata& metadata,
                      NonFinite non_finite) {
  // Everything that can be refused is refused before the temporary file exists. The names and
  // dtypes come from the program, not from a user: a bad one is an internal error.
  VG_CHECK(metadata.count(kChecksumKey) == 0, path << ": metadata key " << kChecksumKey << " is reserved");
  std::vector<Entry> entries;
  std::vector<Tensor> host;  // the bytes to write, in the given order
  std::uint64_t offset = 0;
  std::uint32_t data_crc = crc32_update(0, nullptr, 0);
  std::set<std::string> names;
  // The same bytes under another name (see SharedBytes): written once, the other names as aliases.
  std::map<SharedBytes, std::string> stored_as;
  Metadata header_metadata = metadata;
  // (No structured bindings here: the check macros' lambdas capture them only from clang 16 on.)
  for (const auto& named : tensors) {
    const std::string& name = named.first;
    const Tensor& t = named.second;
    VG_CHECK(!name.empty() && name != "__metadata__", path << ": tensor name " << quote_name(name) << " is not allowed");
    VG_CHECK(names.insert(name).second, path << ": tensor name " << quote_name(name) << " appears twice");
    VG_CHECK(t.defined(), path << ": tensor " << quote_name(name) << " is undefined");
    VG_CHECK(safetensors_dtype(t.dtype()) != nullptr,
             path << ": tensor " << quote_name(name) << " has dtype " << static_cast<int>(t.dtype())
                  << ", which safetensors files of voxgrad do not hold");
    if (t.numel() > 0) {
      const SharedBytes bytes_of_t{t.impl()->storage.get(), t.impl()->byte_offset, t.dtype(), t.shape()};
      const auto [first, is_new] = stored_as.emplace(bytes_of_t, name);
      if (!is_new) {
        VG_CHECK(metadata.count(name) == 0,
                 path << ": tensor name " << quote_name(name) << " is also a metadata key, so it cannot be an alias");
        header_metadata[name] = first->second;
        continue;
      }
    }
    const Tensor h = t.device().is_cpu() ? t : t.cpu();
    if (non_finite == NonFinite::refuse) {
      const std::int64_t bad = count_non_finite(h);
      VG_INPUT_CHECK(bad == 0, path << ": not written: tensor " << quote_name(name) << " holds " << bad
                                    << " non-finite value" << (bad == 1 ? "" : "s")
                                    << " (NaN or Inf); the file keeps its previous content");
    }
    const std::uint64_t bytes = h.nbytes();
    entries.push_back({name, h.dtype(), h.shape(), offset, offset + bytes});
    if (bytes > 0) data_crc = crc32_update(data_crc, h.raw_data(), bytes);
    host.push_back(h);
    offset += bytes;
  }
  // A metadata entry that reads as an alias (its value a tensor's name, its key none) would come
  // back from load_safetensors as a tensor: the program's own metadata never looks like one.
  for (const auto& [key, value] : metadata)
    VG_CHECK(names.count(key) != 0 || names.count(value) == 0,
             path << ": metadata " << quote_name(key) << ": " << quote_name(value)
                  << " would read as another name of tensor " << quote_name(value));
  std::vector<Entry> ordered = entries;
  sort_in_data_order(ordered);
  const std::uint32_t checksum = checksum_of(data_crc, ordered, header_metadata);

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  nlohmann::ordered_json meta = nlohmann::ordered_json::object();
  for (const auto& [k, v] : header_metadata) meta[k] = v;
  meta[kChecksumKey] = hex8(checksum);
  header["__metadata__"] = meta;
  for (const Entry& e : entries)
    header[e.name] = {{"dtype", safetensors_dtype(e.dtype)}, {"shape", e.shape}, {"data_offsets", {e.begin, e.end}}};
  std::string json = header.dump();
  // Padded with spaces to a multiple of 8 so the data starts aligned, as the reference writer does.
  json.append((8 - json.size() % 8) % 8, ' ');
  const std::uint64_t header_len = json.size();

  files::AtomicFile file(path);
  file.write(&header_len, sizeof header_len);
  file.write(json.data(), json.size());
  for (const Tensor& h : host)
    if (h.nbytes() > 0) file.write(h.raw_data(), h.nbytes());
  file.commit();
}

SafeTensors load_safetensors(const std::string& path, Device device, NonFinite non_finite) {
  const Descriptor fd(files::open_regular_for_reading(path));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    const int err = errno;
    VG_INPUT_FAIL(path << ": cannot read its size: " << std::strerror(err));
  }
  const auto file_size = static_cast<std::uint64_t>(st.st_size);
  VG_INPUT_CHECK(file_size >= 8, path << ": file too short (" << file_size
                                      << " bytes): a safetensors file starts with an 8-byte header length");
  std::uint64_t header_len = 0;
  read_exact(fd.get(), path, 0, &header_len, sizeof header_len, "the header length");
  VG_INPUT_CHECK(header_len <= file_size - 8, path << ": header length " << header_len
                                                   << " goes beyond the end of the file (" << file_size
                                                   << " bytes): the file is truncated or not safetensors");
  VG_INPUT_CHECK(header_len <= kMaxHeaderBytes,
                 path << ": header length " << header_len << " exceeds the limit of " << kMaxHeaderBytes << " bytes");
  std::string text(header_len, '\0');
  read_exact(fd.get(), path, 8, text.data(), text.size(), "the header");
  const std::uint64_t data_size = file_size - 8 - header_len;

  VG_INPUT_CHECK(nesting_depth(text, kMaxHeaderDepth) <= kMaxHeaderDepth,
                 path << ": the header nests deeper than " << kMaxHeaderDepth
                      << " levels, which no safetensors file does; it begins: " << quote_text(text));
  Json header;
  try {
    header = Json::parse(text);
  } catch (const Json::exception& e) {
    // parse_error, or out_of_range for a number beyond a double ("1e999"). nlohmann's message
    // after its "[json.exception...] " tag; the header itself only in part.
    std::string reason = e.what();
    if (const auto tag = reason.find("] "); reason.rfind("[json.exception", 0) == 0 && tag != std::string::npos)
      reason = reason.substr(tag + 2);
    VG_INPUT_FAIL(path << ": the header is not valid JSON (" << quote_text(reason) << "); it begins: " << quote_text(text));
  }
  VG_INPUT_CHECK(header.is_object(),
                 path << ": the header must be a JSON object, got " << header.type_name() << ": " << quote_text(text));

  SafeTensors out;
  std::vector<Entry> entries;
  for (const auto& item : header.items()) {
    const Json& value = item.value();
    if (item.key() == "__metadata__") {
      VG_INPUT_CHECK(value.is_object(), path << ": __metadata__ must be an object of strings, got " << quote_json(value));
      for (const auto& entry : value.items()) {
        VG_INPUT_CHECK(entry.value().is_string(), path << ": __metadata__ entry " << quote_name(entry.key())
                                                       << " is not a string: " << quote_json(entry.value()));
        out.metadata[entry.key()] = entry.value().get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(path, item.key(), value, data_size));
  }

  // The tensors must tile the data exactly: no overlap, no gap, nothing left over.
  sort_in_data_order(entries);
  std::uint64_t expected = 0;
  for (const Entry& e : entries) {
    VG_INPUT_CHECK(e.begin >= expected, path << ": tensor " << quote_name(e.name) << " at [" << e.begin << ", " << e.end
                                             << "] overlaps the tensor before it (which ends at " << expected << ")");
    VG_INPUT_CHECK(e.begin == expected, path << ": bytes [" << expected << ", " << e.begin
                                             << ") of the data belong to no tensor (a gap before "
                                             << quote_name(e.name) << ")");
    expected = e.end;
  }
  VG_INPUT_CHECK(expected == data_size, path << ": the tensors cover " << expected << " bytes but the data holds "
                                             << data_size << " (trailing bytes)");

  std::optional<std::uint32_t> recorded;
  if (const auto it = out.metadata.find(kChecksumKey); it != out.metadata.end()) {
    std::uint32_t v = 0;
    VG_INPUT_CHECK(parse_hex8(it->second, &v), path << ": metadata " << kChecksumKey << " " << quote_name(it->second)
                                                    << " is not a checksum (8 hex digits)");
    recorded = v;
  }

  // Every allocation below is a tensor whose bytes lie inside the file (checked above), and the
  // file must fit the memory: a sparse file can claim a terabyte without holding one.
  memory::check_fits(data_size, path + ": loading its " + std::to_string(entries.size()) + " tensors");
  std::uint32_t data_crc = crc32_update(0, nullptr, 0);
  for (const Entry& e : entries) {
    Tensor t = empty(e.shape, e.dtype, Device::cpu());
    if (e.end > e.begin) {
      read_exact(fd.get(), path, 8 + header_len + e.begin, t.raw_data(), e.end - e.begin,
                 "the data of tensor " + quote_name(e.name));
      data_crc = crc32_update(data_crc, t.raw_data(), e.end - e.begin);
    }
    out.tensors.emplace_back(e.name, t);
  }
  if (recorded) {
    const std::uint32_t actual = checksum_of(data_crc, entries, out.metadata);
    VG_INPUT_CHECK(actual == *recorded, path << ": corrupt file (checksum mismatch: the file records " << hex8(*recorded)
                                             << ", its content gives " << hex8(actual)
                                             << "); it was damaged or edited after it was written");
    out.metadata.erase(kChecksumKey);
    out.checksum_verified = true;
  }
  // Names written as aliases of a stored tensor (metadata "alias": "stored name", as
  // save_safetensors and safetensors.torch.save_model write them) come back as that tensor.
  std::map<std::string, std::vector<std::string>> aliases_of;  // stored name -> its aliases
  {
    std::set<std::string> stored;
    for (const Entry& e : entries) stored.insert(e.name);
    for (auto it = out.metadata.begin(); it != out.metadata.end();) {
      if (stored.count(it->first) == 0 && stored.count(it->second) != 0) {
        aliases_of[it->second].push_back(it->first);
        it = out.metadata.erase(it);
      } else {
        ++it;
      }
    }
  }

  bool any_floating = false, floating_all_zero = true;
  for (const auto& named : out.tensors) {
    const std::string& name = named.first;
    const Tensor& t = named.second;
    if (!is_floating(t.dtype()) || t.numel() == 0) continue;
    if (non_finite == NonFinite::refuse) {
      const std::int64_t bad = count_non_finite(t);
      VG_INPUT_CHECK(bad == 0, path << ": tensor " << quote_name(name) << " holds " << bad << " non-finite value"
                                    << (bad == 1 ? "" : "s") << " (NaN or Inf) among " << t.numel()
                                    << "; weights like these predict nothing (a diverged training or a damaged file)");
    }
    any_floating = true;
    floating_all_zero = floating_all_zero && all_zero(t);
  }
  if (!recorded)
    logging::warning(path + ": the file carries no checksum (written by another tool or an older voxgrad), so its "
                            "bytes cannot be verified");
  if (any_floating && floating_all_zero)
    logging::warning(path + ": every floating-point tensor is all zeros; a network with these weights predicts one "
                            "class everywhere");

  if (!device.is_cpu())
    for (auto& [name, t] : out.tensors) t = t.to(device);
  if (!aliases_of.empty()) {
    NamedTensors with_aliases;
    for (const auto& [name, t] : out.tensors) {
      with_aliases.emplace_back(name, t);
      if (const auto it = aliases_of.find(name); it != aliases_of.end())
        for (const std::string& alias : it->second) with_aliases.emplace_back(alias, t);
    }
    out.tensors = std::move(with_aliases);
  }
  return out;
}

}  // namespace voxgrad
