// safetensors writing (atomic: temporary file, fsync, rename, fsync of the folder) and strict
// reading, plus the model-file and training-checkpoint layouts on top of them.
#include "engine/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/autograd.h"
#include "engine/json.h"

namespace voxgrad {

// The format stores little-endian data and we write host memory as it is.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace {

// The reference implementation refuses larger headers; so do we, before allocating one.
constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

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

std::string errno_text() { return std::strerror(errno); }

// A file descriptor that closes itself; the temporary file it names is removed unless released.
class TempFile {
 public:
  explicit TempFile(const std::string& target) {
    static std::atomic<unsigned> counter{0};
    path_ = target + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0) VG_FAIL(target << ": cannot create the temporary file " << path_ << ": " << errno_text());
  }
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  void write(const std::string& target, const void* data, std::size_t bytes) {
    const char* p = static_cast<const char*>(data);
    while (bytes > 0) {
      const ssize_t n = ::write(fd_, p, bytes);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) VG_FAIL(target << ": writing " << path_ << " failed: " << errno_text());
      p += n;
      bytes -= static_cast<std::size_t>(n);
    }
  }

  // Durable data, then the name: after this `target` is the complete new file.
  void commit(const std::string& target) {
    if (::fsync(fd_) != 0) VG_FAIL(target << ": fsync of " << path_ << " failed: " << errno_text());
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) VG_FAIL(target << ": closing " << path_ << " failed: " << errno_text());
    if (::rename(path_.c_str(), target.c_str()) != 0)
      VG_FAIL(target << ": renaming " << path_ << " onto it failed: " << errno_text());
    path_.clear();
    // The rename itself is durable once the folder's entry is on disk.
    const std::string folder = std::filesystem::path(target).parent_path().string();
    const int dir = ::open(folder.empty() ? "." : folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0) {
      ::fsync(dir);
      ::close(dir);
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
};

std::string shape_of_json(const Json& j) { return j.dump(); }

}  // namespace

void save_safetensors(const std::string& path, const NamedTensors& tensors, const Metadata& metadata) {
  // Everything that can be refused is refused before the temporary file exists.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = meta;
  }
  std::uint64_t offset = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    VG_CHECK(!name.empty() && name != "__metadata__", path << ": tensor name \"" << name << "\" is not allowed");
    VG_CHECK(!header.contains(name), path << ": tensor name \"" << name << "\" appears twice");
    VG_CHECK(t.defined(), path << ": tensor \"" << name << "\" is undefined");
    const char* dtype = safetensors_dtype(t.dtype());
    VG_CHECK(dtype != nullptr, path << ": tensor \"" << name << "\" has dtype " << static_cast<int>(t.dtype())
                                    << ", which safetensors files of voxgrad do not hold");
    const std::uint64_t bytes = t.nbytes();
    header[name] = {{"dtype", dtype}, {"shape", t.shape()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string json = header.dump();
  // Padded with spaces to a multiple of 8 so the data starts aligned, as the reference writer does.
  json.append((8 - json.size() % 8) % 8, ' ');
  const std::uint64_t header_len = json.size();

  TempFile file(path);
  file.write(path, &header_len, sizeof header_len);
  file.write(path, json.data(), json.size());
  for (const auto& [name, t] : tensors) {
    if (t.nbytes() == 0) continue;
    const Tensor host = t.device().is_cpu() ? t : t.cpu();
    file.write(path, host.raw_data(), host.nbytes());
  }
  file.commit(path);
}

SafeTensors load_safetensors(const std::string& path, Device device) {
  std::error_code ec;
  const std::uint64_t file_size = std::filesystem::file_size(path, ec);
  VG_CHECK(!ec, path << ": cannot read the file: " << ec.message());
  std::ifstream in(path, std::ios::binary);
  VG_CHECK(in.good(), path << ": cannot open the file: " << errno_text());
  VG_CHECK(file_size >= 8, path << ": file too short (" << file_size
                                << " bytes): a safetensors file starts with an 8-byte header length");
  std::uint64_t header_len = 0;
  in.read(reinterpret_cast<char*>(&header_len), sizeof header_len);
  VG_CHECK(in.good(), path << ": cannot read the header length");
  VG_CHECK(header_len <= file_size - 8, path << ": header length " << header_len << " goes beyond the end of the file ("
                                             << file_size << " bytes): the file is truncated or not safetensors");
  VG_CHECK(header_len <= kMaxHeaderBytes,
           path << ": header length " << header_len << " exceeds the limit of " << kMaxHeaderBytes << " bytes");
  std::string text(header_len, '\0');
  in.read(text.data(), static_cast<std::streamsize>(header_len));
  VG_CHECK(in.good(), path << ": cannot read the " << header_len << "-byte header");
  const std::uint64_t data_size = file_size - 8 - header_len;

  Json header;
  try {
    header = Json::parse(text);
  } catch (const Json::exception& e) {
    VG_FAIL(path << ": the header is not valid JSON: " << e.what());
  }
  VG_CHECK(header.is_object(), path << ": the header must be a JSON object, got " << header.type_name());

  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    std::uint64_t begin, end;
  };
  SafeTensors out;
  std::vector<Entry> entries;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      VG_CHECK(value.is_object(), path << ": __metadata__ must be an object of strings");
      for (const auto& [k, v] : value.items()) {
        VG_CHECK(v.is_string(), path << ": __metadata__ entry \"" << k << "\" is not a string: " << v.dump());
        out.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string where = path + ": tensor \"" + name + "\"";
    VG_CHECK(value.is_object() && value.contains("dtype") && value.contains("shape") && value.contains("data_offsets"),
             where << " needs dtype, shape and data_offsets, got " << value.dump());
    Entry e{name, DType::Float32, {}, 0, 0};
    const Json& dtype = value["dtype"];
    VG_CHECK(dtype.is_string() && parse_dtype(dtype.get<std::string>(), &e.dtype),
             where << ": dtype " << dtype.dump() << " is not supported (F32, F64, I32, U8)");
    const Json& shape = value["shape"];
    VG_CHECK(shape.is_array() && shape.size() <= static_cast<std::size_t>(kMaxDims),
             where << ": shape " << shape_of_json(shape) << " is not a list of at most " << kMaxDims << " sizes");
    std::uint64_t numel = 1;
    for (const Json& s : shape) {
      VG_CHECK(s.is_number_unsigned(), where << ": shape " << shape_of_json(shape) << " holds a non-size " << s.dump());
      const std::uint64_t n = s.get<std::uint64_t>();
      VG_CHECK(n <= (std::uint64_t{1} << 40) && (n == 0 || numel <= (std::uint64_t{1} << 40) / n),
               where << ": shape " << shape_of_json(shape) << " is implausibly large");
      numel *= n;
      e.shape.push_back(static_cast<std::int64_t>(n));
    }
    const Json& offsets = value["data_offsets"];
    VG_CHECK(offsets.is_array() && offsets.size() == 2 && offsets[0].is_number_unsigned() &&
                 offsets[1].is_number_unsigned(),
             where << ": data_offsets " << offsets.dump() << " is not a pair of byte offsets");
    e.begin = offsets[0].get<std::uint64_t>();
    e.end = offsets[1].get<std::uint64_t>();
    VG_CHECK(e.begin <= e.end && e.end <= data_size, where << ": data_offsets [" << e.begin << ", " << e.end
                                                           << "] lie outside the " << data_size << "-byte data");
    VG_CHECK(e.end - e.begin == numel * dtype_size(e.dtype),
             where << ": shape " << shape_of_json(shape) << " of " << dtype.get<std::string>() << " needs "
                   << numel * dtype_size(e.dtype) << " bytes but data_offsets [" << e.begin << ", " << e.end
                   << "] hold " << e.end - e.begin);
    entries.push_back(std::move(e));
  }

  // The tensors must tile the data exactly: no overlap, no gap, nothing left over.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t expected = 0;
  for (const Entry& e : entries) {
    VG_CHECK(e.begin >= expected, path << ": tensor \"" << e.name << "\" at [" << e.begin << ", " << e.end
                                       << "] overlaps the tensor before it (which ends at " << expected << ")");
    VG_CHECK(e.begin == expected, path << ": bytes [" << expected << ", " << e.begin
                                       << ") of the data belong to no tensor (a gap before \"" << e.name << "\")");
    expected = e.end;
  }
  VG_CHECK(expected == data_size, path << ": the tensors cover " << expected << " bytes but the data holds "
                                       << data_size << " (trailing bytes)");

  for (const Entry& e : entries) {
    Tensor t = empty(e.shape, e.dtype, Device::cpu());
    if (e.end > e.begin) {
      in.seekg(static_cast<std::streamoff>(8 + header_len + e.begin));
      in.read(static_cast<char*>(t.raw_data()), static_cast<std::streamsize>(e.end - e.begin));
      VG_CHECK(in.good(), path << ": cannot read the data of tensor \"" << e.name << "\"");
    }
    out.tensors.emplace_back(e.name, device.is_cpu() ? t : t.to(device));
  }
  return out;
}

void load_state_dict(Module& module, const NamedTensors& tensors, bool strict) {
  const NamedTensors expected = module.state_dict();
  std::vector<std::string> missing, unexpected, mismatched;
  std::vector<std::pair<Tensor, Tensor>> copies;  // (destination, source)
  std::map<std::string, const Tensor*> given;
  for (const auto& [name, t] : tensors) given[name] = &t;
  for (const auto& [name, dst] : expected) {
    const auto it = given.find(name);
    if (it == given.end()) {
      missing.push_back(name);
      continue;
    }
    const Tensor& src = *it->second;
    if (src.shape() != dst.shape() || src.dtype() != dst.dtype()) {
      mismatched.push_back(name + ": checkpoint " + dtype_name(src.dtype()) + " " + shape_str(src.shape()) +
                           ", model " + dtype_name(dst.dtype()) + " " + shape_str(dst.shape()));
    } else {
      copies.emplace_back(dst, src);
    }
    given.erase(it);
  }
  for (const auto& [name, t] : tensors)
    if (given.count(name) != 0) unexpected.push_back(name);

  if (!mismatched.empty() || (strict && (!missing.empty() || !unexpected.empty()))) {
    std::ostringstream msg;
    auto list = [&](const char* what, const std::vector<std::string>& names, bool one_per_line) {
      if (names.empty()) return;
      msg << "\n  " << what << " (" << names.size() << "):";
      for (std::size_t i = 0; i < names.size(); ++i) msg << (one_per_line ? "\n    " : (i ? ", " : " ")) << names[i];
    };
    msg << "load_state_dict: the tensors do not match the model";
    if (strict) {
      list("missing keys", missing, false);
      list("unexpected keys", unexpected, false);
    }
    list("shape or dtype mismatch", mismatched, true);
    VG_FAIL(msg.str());
  }
  NoGradGuard no_grad;
  for (const auto& [dst, src] : copies) dst.copy_(src);
}

void save_model(const std::string& path, const Module& module, const Metadata& metadata) {
  save_safetensors(path, module.state_dict(), metadata);
}

void load_model(const std::string& path, Module& module, bool strict) {
  try {
    load_state_dict(module, load_safetensors(path).tensors, strict);
  } catch (const Error& e) {
    VG_FAIL(path << ": " << e.what());
  }
}

namespace {
const char* kTrainingFormat = "voxgrad-training-checkpoint";
const std::string kModelPrefix = "model.";
const std::string kOptimizerPrefix = "optimizer.";

std::int64_t parse_int(const std::string& path, const Metadata& m, const std::string& key) {
  const auto it = m.find(key);
  VG_CHECK(it != m.end(), path << ": training checkpoint metadata lacks \"" << key << "\"");
  try {
    std::size_t used = 0;
    const long long v = std::stoll(it->second, &used);
    if (used == it->second.size()) return v;
  } catch (const std::exception&) {
  }
  VG_FAIL(path << ": metadata \"" << key << "\" is not an integer: \"" << it->second << "\"");
}

std::uint64_t parse_uint(const std::string& path, const Metadata& m, const std::string& key) {
  const auto it = m.find(key);
  VG_CHECK(it != m.end(), path << ": training checkpoint metadata lacks \"" << key << "\"");
  try {
    std::size_t used = 0;
    const unsigned long long v = std::stoull(it->second, &used);
    if (used == it->second.size() && it->second[0] != '-') return v;
  } catch (const std::exception&) {
  }
  VG_FAIL(path << ": metadata \"" << key << "\" is not an unsigned integer: \"" << it->second << "\"");
}
}  // namespace

void save_training_checkpoint(const std::string& path, const Module& module, const Optimizer& optimizer,
                              const TrainingState& state) {
  NamedTensors tensors;
  for (auto& [name, t] : module.state_dict()) tensors.emplace_back(kModelPrefix + name, t);
  for (auto& [name, t] : optimizer.state()) tensors.emplace_back(kOptimizerPrefix + name, t);
  std::ostringstream lr;
  lr.precision(17);  // round-trips a double exactly
  lr << optimizer.lr();
  const Metadata metadata = {{"format", kTrainingFormat},
                             {"optimizer", optimizer.name()},
                             {"lr", lr.str()},
                             {"step", std::to_string(state.step)},
                             {"epoch", std::to_string(state.epoch)},
                             {"rng_seed", std::to_string(state.rng_seed)},
                             {"rng_offset", std::to_string(state.rng_offset)},
                             {"config", state.config}};
  save_safetensors(path, tensors, metadata);
}

TrainingState load_training_checkpoint(const std::string& path, Module& module, Optimizer& optimizer) {
  SafeTensors file = load_safetensors(path);
  const Metadata& m = file.metadata;
  const auto format = m.find("format");
  VG_CHECK(format != m.end() && format->second == kTrainingFormat,
           path << ": not a voxgrad training checkpoint (metadata \"format\" is not \"" << kTrainingFormat << "\")");
  const auto kind = m.find("optimizer");
  VG_CHECK(kind != m.end() && kind->second == optimizer.name(),
           path << ": the checkpoint's optimizer is " << (kind == m.end() ? std::string("not recorded") : kind->second)
                << " but this run uses " << optimizer.name());
  NamedTensors weights, optimizer_state;
  for (auto& [name, t] : file.tensors) {
    if (name.rfind(kModelPrefix, 0) == 0) weights.emplace_back(name.substr(kModelPrefix.size()), t);
    else if (name.rfind(kOptimizerPrefix, 0) == 0) optimizer_state.emplace_back(name.substr(kOptimizerPrefix.size()), t);
    else VG_FAIL(path << ": tensor \"" << name << "\" is neither model.* nor optimizer.*");
  }
  TrainingState state;
  state.step = parse_int(path, m, "step");
  state.epoch = parse_int(path, m, "epoch");
  state.rng_seed = parse_uint(path, m, "rng_seed");
  state.rng_offset = parse_uint(path, m, "rng_offset");
  const auto config = m.find("config");
  state.config = config == m.end() ? "{}" : config->second;
  double lr = 0;
  try {
    lr = std::stod(m.at("lr"));
  } catch (const std::exception&) {
    VG_FAIL(path << ": metadata \"lr\" is missing or not a number");
  }
  // All or nothing: if the optimizer state is refused after the weights went in, the module gets
  // its own weights back, so a failed resume never leaves a half-loaded model.
  NamedTensors previous;
  for (const auto& [name, t] : module.state_dict()) previous.emplace_back(name, t.clone());
  try {
    load_state_dict(module, weights, true);
    optimizer.load_state(optimizer_state);
  } catch (const Error& e) {
    load_state_dict(module, previous, true);
    VG_FAIL(path << ": " << e.what());
  }
  optimizer.set_lr(lr);
  return state;
}

}  // namespace voxgrad
