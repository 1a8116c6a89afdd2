// dataset.json in both layouts users have (MSD / nnU-Net v1 and nnU-Net v2) turned into one
// Dataset: keys parsed, type- and range-checked (every number it holds), cases listed (v1) or found
// from file names (v2), only regular files accepted; and nnU-Net v2's dataset.json and file names
// written. Loading and checking cases is dataset_check.cpp.
#include "io/dataset.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <sstream>
#include <string_view>

#include "engine/error.h"
#include "engine/files.h"
#include "engine/json.h"
#include "engine/log.h"
#include "engine/memory_budget.h"

namespace voxgrad::io {

namespace fs = std::filesystem;

const char* dataset_layout_name(DatasetLayout layout) {
  switch (layout) {
    case DatasetLayout::MsdV1:
      return "msd_v1";
    case DatasetLayout::NnunetV2:
      return "nnunet_v2";
  }
  return "unknown";
}

std::vector<int> Dataset::label_values() const {
  std::set<int> values;
  for (const auto& [value, name] : labels) values.insert(value);
  for (const LabelRegion& r : regions) values.insert(r.values.begin(), r.values.end());
  return {values.begin(), values.end()};
}

int Dataset::num_classes() const {
  const std::vector<int> values = label_values();
  return values.empty() ? 0 : values.back() + 1;
}

namespace dataset_detail {

// Shared with dataset_check.cpp, which declares it again (one private function needs no header).
[[noreturn]] void throw_problems(const std::string& subject, const std::vector<std::string>& problems) {
  constexpr std::size_t kShown = 10;
  std::ostringstream msg;
  msg << subject << ": " << problems.size() << (problems.size() == 1 ? " problem" : " problems");
  for (std::size_t i = 0; i < problems.size() && i < kShown; ++i) msg << "\n  " << problems[i];
  if (problems.size() > kShown) msg << "\n  ... and " << problems.size() - kShown << " more";
  msg << "\n";
  VG_INPUT_FAIL(msg.str());
}

}  // namespace dataset_detail

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Why `p` cannot serve as a case file, or nothing when it is a regular file. Links are followed:
// linked datasets are common. Only stat() is used: a FIFO is never opened here, so it cannot block.
struct FileProblem {
  bool missing = false;  // nothing there (or a dangling link)
  std::string text;      // "PATH does not exist", "PATH: not a regular file (a FIFO)"
};
std::optional<FileProblem> file_problem(const fs::path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0 && (errno == ENOENT || errno == ENOTDIR))
    return FileProblem{true, p.string() + " does not exist"};
  try {
    files::require_regular_file(p.string());
  } catch (const InputError& e) {
    return FileProblem{false, e.what()};
  }
  return std::nullopt;
}

// A whole-string non-negative decimal integer ("0", "12") that fits an int; nothing else.
std::optional<int> parse_index(const std::string& s) {
  int value = 0;
  const char* end = s.data() + s.size();
  const auto [ptr, ec] = std::from_chars(s.data(), end, value);
  if (s.empty() || ec != std::errc() || ptr != end || value < 0) return std::nullopt;
  return value;
}

bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
}

// A JSON number that is exactly a whole int64 (1 and 1.0 alike); nothing for fractions, for
// non-numbers and for values beyond int64 (an unsigned 18446744073709551615 must not become -1).
std::optional<std::int64_t> whole_number(const Json& j) {
  if (j.is_number_unsigned()) {
    const auto v = j.get<std::uint64_t>();
    if (v <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) return static_cast<std::int64_t>(v);
    return std::nullopt;
  }
  if (j.is_number_integer()) return j.get<std::int64_t>();
  if (j.is_number_float()) {
    const double v = j.get<double>();
    // The range test comes first: converting an out-of-range double to an integer is undefined.
    if (v >= -9223372036854775808.0 && v < 9223372036854775808.0 && v == std::floor(v))
      return static_cast<std::int64_t>(v);
  }
  return std::nullopt;
}

// A value as the file writes it, cut short: an error line must stay a line.
std::string brief(const Json& j) {
  constexpr std::size_t kLongest = 80;
  std::string text = j.dump();
  if (text.size() > kLongest) text = text.substr(0, kLongest) + "...";
  return text;
}

// A label value: a whole number 0..kMaxLabelValue. `shown` is the value as dataset.json writes it
// (a v1 key or a v2 number), `whose` says whose value it is ("label \"tumor\"").
int label_value(std::optional<std::int64_t> value, const std::string& shown, const std::string& whose,
                const std::string& path) {
  VG_INPUT_CHECK(value.has_value() && *value >= 0 && *value <= kMaxLabelValue,
                 path << ": " << whose << " has value " << shown << "; label values must be "
                      << (value.has_value() ? "" : "whole numbers ") << "0.." << kMaxLabelValue
                      << " (label maps are written as 8-bit integers)");
  return static_cast<int>(*value);
}

// Objects in which a repeated key would silently drop an entry (nlohmann, like Python, keeps the
// last): the top level, and the maps whose keys are the content.
bool guards_duplicates(int depth, const std::string& object_key) {
  return depth == 0 ||
         (depth == 1 && (object_key == "labels" || object_key == "modality" || object_key == "channel_names"));
}

// dataset.json's bytes, refusing FIFOs, devices and folders before they could block, and files
// far larger than any dataset description (nlohmann's tree takes several times the text).
std::string read_dataset_json(const std::string& path) {
  constexpr std::int64_t kLargest = 64 << 20;
  const int fd = files::open_regular_for_reading(path);
  struct stat st {};
  if (::fstat(fd, &st) == 0 && st.st_size > kLargest) {
    ::close(fd);
    VG_INPUT_FAIL(path << ": " << memory::format_bytes(static_cast<std::uint64_t>(st.st_size))
                       << " is far more than a dataset description takes (at most " << memory::format_bytes(kLargest)
                       << " is read)");
  }
  std::string text;
  char buffer[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      VG_INPUT_FAIL(path << ": cannot read: " << std::strerror(err));
    }
    if (n == 0) break;
    text.append(buffer, static_cast<std::size_t>(n));
    if (static_cast<std::int64_t>(text.size()) > kLargest) {  // grew while being read
      ::close(fd);
      VG_INPUT_FAIL(path << ": more than " << memory::format_bytes(kLargest)
                         << ", far more than a dataset description takes");
    }
  }
  ::close(fd);
  return text;
}

Json parse_dataset_json(std::string_view text, const std::string& path) {
  // dataset.json nests four levels deep; a limit keeps dump() and every recursive walk of a
  // hostile file's tree off the end of the stack.
  constexpr int kDeepest = 32;
  // Per open object: its key in the parent and the keys seen so far.
  struct Frame {
    std::string key;
    std::set<std::string> seen;
  };
  std::vector<Frame> frames;
  std::string last_key, duplicate;
  const auto callback = [&](int depth, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
      case Json::parse_event_t::array_start:
        VG_INPUT_CHECK(depth < kDeepest, path << ": values nested more than " << kDeepest
                                              << " deep; a dataset.json needs a handful of levels");
        if (event == Json::parse_event_t::object_start) frames.push_back({depth == 0 ? "" : last_key, {}});
        break;
      case Json::parse_event_t::object_end:
        frames.pop_back();
        break;
      case Json::parse_event_t::key: {
        last_key = parsed.get<std::string>();
        Frame& f = frames.back();
        if (!f.seen.insert(last_key).second && duplicate.empty() &&
            guards_duplicates(static_cast<int>(frames.size()) - 1, f.key)) {
          duplicate = f.key.empty() ? "key \"" + last_key + "\" appears twice"
                                    : "key \"" + last_key + "\" appears twice in \"" + f.key + "\"";
        }
        break;
      }
      default:
        break;
    }
    return true;
  };
  Json j;
  try {
    j = Json::parse(text, callback);
  } catch (const Json::exception& e) {
    // nlohmann's message carries the line and column ("parse error at line 3, column 7: ...").
    VG_INPUT_FAIL(path << ": not valid JSON: " << e.what());
  }
  VG_INPUT_CHECK(duplicate.empty(), path << ": " << duplicate << " (only the last would be kept)");
  VG_INPUT_CHECK(j.is_object(), path << ": expected a JSON object at the top level, found " << j.type_name());
  return j;
}

std::string optional_string(const Json& j, const char* key, const std::string& path) {
  if (!j.contains(key) || j[key].is_null()) return "";
  VG_INPUT_CHECK(j[key].is_string(), path << ": \"" << key << "\" must be a string, found " << j[key].type_name());
  return j[key].get<std::string>();
}

const Json& required(const Json& j, const char* key, const char* type_word, const std::string& path,
                     const char* layout_word) {
  VG_INPUT_CHECK(j.contains(key),
                 path << ": missing key \"" << key << "\" (" << layout_word << " dataset.json needs it)");
  const Json& v = j[key];
  const std::string want = type_word;
  const bool ok = (want == "object" && v.is_object()) || (want == "array" && v.is_array());
  VG_INPUT_CHECK(ok, path << ": \"" << key << "\" must be an " << want << ", found " << v.type_name());
  return v;
}

// {"0": "T2", "1": "ADC"} -> {"T2", "ADC"}: indices 0..C-1, each once.
std::vector<std::string> parse_channels(const Json& obj, const char* key, const std::string& path) {
  VG_INPUT_CHECK(!obj.empty(), path << ": \"" << key << "\" declares no channels");
  VG_INPUT_CHECK(obj.size() <= static_cast<std::size_t>(kMaxChannels),
                 path << ": \"" << key << "\" declares " << obj.size() << " channels; nnU-Net file names number them"
                      << " with 4 digits, so at most " << kMaxChannels);
  std::vector<std::string> channels(obj.size());
  std::vector<bool> given(obj.size(), false);
  for (const auto& item : obj.items()) {
    const std::string& k = item.key();
    const Json& v = item.value();
    const std::optional<int> index = parse_index(k);
    VG_INPUT_CHECK(index.has_value(),
                   path << ": \"" << key << "\" keys must be channel numbers \"0\", \"1\", ...; found \"" << k << "\"");
    VG_INPUT_CHECK(*index < static_cast<int>(obj.size()) && !given[static_cast<std::size_t>(*index)],
                   path << ": \"" << key << "\" must number its " << obj.size() << " channels 0 to " << obj.size() - 1
                        << " once each; found \"" << k << "\"");
    VG_INPUT_CHECK(v.is_string(),
                   path << ": \"" << key << "\"[\"" << k << "\"] must be a name, found " << v.type_name());
    channels[static_cast<std::size_t>(*index)] = v.get<std::string>();
    given[static_cast<std::size_t>(*index)] = true;
  }
  return channels;
}

void add_label(Dataset& ds, int value, const std::string& name, const std::string& path) {
  const auto placed = ds.labels.emplace(value, name);
  VG_INPUT_CHECK(placed.second, path << ": label value " << value << " is declared twice (\"" << placed.first->second
                                     << "\" and \"" << name << "\")");
}

void finish_labels(Dataset& ds, const std::string& path) {
  VG_INPUT_CHECK(ds.labels.count(0) == 1,
                 path << ": \"labels\" declares no value 0; 0 is the background and must be there");
  std::map<std::string, int> by_name;
  for (const auto& label : ds.labels) {
    const int value = label.first;
    const std::string& name = label.second;
    const auto placed = by_name.emplace(name, value);
    VG_INPUT_CHECK(placed.second, path << ": label name \"" << name << "\" is given to both " << placed.first->second
                                       << " and " << value);
    if (name == "ignore") ds.ignore_label = value;
  }
}

// MSD v1: {"0": "background", "1": "edema"}.
void parse_labels_v1(Dataset& ds, const Json& obj, const std::string& path) {
  for (const auto& item : obj.items()) {
    const std::string& k = item.key();
    const Json& v = item.value();
    VG_INPUT_CHECK(all_digits(k) && v.is_string(),
                   path << ": \"labels\" must map numbers to names in an MSD dataset.json ({\"0\": \"background\", "
                           "\"1\": \"edema\"}); found \""
                        << k << "\": " << brief(v));
    const std::string name = v.get<std::string>();
    std::int64_t parsed = 0;
    const auto [end, ec] = std::from_chars(k.data(), k.data() + k.size(), parsed);
    const std::optional<std::int64_t> value =
        ec == std::errc() && end == k.data() + k.size() ? std::optional<std::int64_t>(parsed) : std::nullopt;
    // Digits too many for int64 are still a number, just far out of range: say so, not "not a number".
    VG_INPUT_CHECK(value.has_value(), path << ": label \"" << name << "\" has value " << k
                                           << "; label values must be 0.." << kMaxLabelValue
                                           << " (label maps are written as 8-bit integers)");
    add_label(ds, label_value(value, k, "label \"" + name + "\"", path), name, path);
  }
  finish_labels(ds, path);
}

// nnU-Net v2: {"background": 0, "tumor": 1}, region-based entries as lists {"whole tumor": [1, 2]}.
void parse_labels_v2(Dataset& ds, const Json& obj, const std::string& path) {
  for (const auto& item : obj.items()) {
    const std::string& k = item.key();
    const Json& v = item.value();
    if (v.is_array()) {
      LabelRegion region{k, {}};
      for (const Json& e : v) {
        VG_INPUT_CHECK(e.is_number(),
                       path << ": region \"" << k << "\" in \"labels\" must list label values, found " << brief(e));
        region.values.push_back(label_value(whole_number(e), e.dump(), "region \"" + k + "\" in \"labels\"", path));
      }
      VG_INPUT_CHECK(!region.values.empty(), path << ": region \"" << k << "\" in \"labels\" lists no values");
      ds.regions.push_back(std::move(region));
      continue;
    }
    if (!v.is_number()) {
      const bool looks_v1 = all_digits(k) && v.is_string();
      VG_INPUT_FAIL(path << ": \"labels\" must map names to numbers in an nnU-Net v2 dataset.json ({\"background\": "
                            "0, \"tumor\": 1}); found \""
                         << k << "\": " << brief(v)
                         << (looks_v1 ? " (number -> name is the MSD v1 form; this file has v2 keys)" : ""));
    }
    add_label(ds, label_value(whole_number(v), v.dump(), "label \"" + k + "\"", path), k, path);
  }
  finish_labels(ds, path);
}

fs::path resolve(const std::string& root, const std::string& p) {
  const fs::path rel(p);
  return (rel.is_absolute() ? rel : fs::path(root) / rel).lexically_normal();
}

// ".nii.gz" or ".nii" from a file name; nullopt for anything voxgrad cannot read.
std::optional<std::string> nifti_ending(const std::string& name) {
  if (ends_with(name, ".nii.gz")) return ".nii.gz";
  if (ends_with(name, ".nii")) return ".nii";
  return std::nullopt;
}

std::string strip_ending(const std::string& name, const std::string& ending) {
  return name.substr(0, name.size() - ending.size());
}

void check_count(const Json& j, const char* key, std::size_t found, const char* what, const std::string& path,
                 std::vector<std::string>& warnings) {
  if (!j.contains(key)) return;
  const std::optional<std::int64_t> declared = whole_number(j[key]);
  if (!declared.has_value() || *declared < 0) {
    warnings.push_back(path + ": \"" + key + "\" is not a count of cases: " + brief(j[key]) + "; " +
                       std::to_string(found) + " " + what + " were found");
  } else if (static_cast<std::uint64_t>(*declared) != found) {
    warnings.push_back(path + ": \"" + key + "\" says " + std::to_string(*declared) + " but " +
                       std::to_string(found) + " " + what + " were found; using the " + std::to_string(found));
  }
}

// One v1 image entry: the listed file itself (3-D for one channel, 4-D (X, Y, Z, C) for several),
// or, when it is absent, nnU-Net v1's converted form <stem>_0000<ending>, <stem>_0001<ending>, ...
// that its dataset.json still lists without the channel suffix.
Case v1_case(const Dataset& ds, const std::string& listed, const std::string& where, const std::string& path,
             std::vector<std::string>& problems) {
  const fs::path image = resolve(ds.root, listed);
  const std::string file = image.filename().string();
  const std::optional<std::string> ending = nifti_ending(file);
  VG_INPUT_CHECK(ending.has_value(), path << ": " << where << " \"" << listed
                                          << "\" is not a NIfTI file (.nii or .nii.gz); voxgrad reads NIfTI only");
  Case c;
  c.id = strip_ending(file, *ending);
  const std::optional<FileProblem> listed_problem = file_problem(image);
  if (!listed_problem) {
    c.images = {image.string()};
    c.channels_in_one_file = ds.num_channels() > 1;
    return c;
  }
  if (!listed_problem->missing) {  // there, but a FIFO, a folder, unreadable...
    problems.push_back("case " + c.id + ": image " + listed_problem->text);
    return c;
  }
  const fs::path first = image.parent_path() / (c.id + "_0000" + *ending);
  if (const std::optional<FileProblem> p = file_problem(first); p && p->missing) {
    problems.push_back("case " + c.id + ": image " + image.string() + " does not exist (nor " + first.string() + ")");
    return c;
  }
  for (int ch = 0; ch < ds.num_channels(); ++ch) {
    char suffix[16];
    std::snprintf(suffix, sizeof suffix, "_%04d", ch);
    const fs::path p = image.parent_path() / (c.id + suffix + *ending);
    if (const std::optional<FileProblem> problem = file_problem(p))
      problems.push_back("case " + c.id + ": channel " + std::to_string(ch) + " image " + problem->text);
    c.images.push_back(p.string());
  }
  return c;
}

void read_v1(Dataset& ds, const Json& j, const std::string& path, std::vector<std::string>& problems) {
  const char* layout = "an MSD";
  ds.channels = parse_channels(required(j, "modality", "object", path, layout), "modality", path);
  parse_labels_v1(ds, required(j, "labels", "object", path, layout), path);
  const Json& training = required(j, "training", "array", path, layout);

  std::set<std::string> ids;
  bool ending_known = false;
  for (std::size_t i = 0; i < training.size(); ++i) {
    const Json& e = training[i];
    const std::string where = "training[" + std::to_string(i) + "]";
    VG_INPUT_CHECK(
        e.is_object() && e.contains("image") && e["image"].is_string() && e.contains("label") && e["label"].is_string(),
        path << ": " << where << " must be {\"image\": \"./imagesTr/x.nii.gz\", \"label\": \"./labelsTr/x.nii.gz\"}"
             << ", found " << brief(e));
    const std::string listed = e["image"].get<std::string>();
    Case c = v1_case(ds, listed, where + ".image", path, problems);
    if (!ending_known) {
      ds.file_ending = *nifti_ending(listed);
      ending_known = true;
    }
    const fs::path label = resolve(ds.root, e["label"].get<std::string>());
    c.label = label.string();
    if (const std::optional<FileProblem> p = file_problem(label))
      problems.push_back("case " + c.id + ": label " + p->text);
    if (!ids.insert(c.id).second) problems.push_back("case " + c.id + ": listed twice in \"training\"");
    ds.training.push_back(std::move(c));
  }

  if (j.contains("test")) {
    const Json& test = required(j, "test", "array", path, layout);
    for (std::size_t i = 0; i < test.size(); ++i) {
      // The Decathlon lists test images as plain strings; some converters write {"image": ...}.
      const Json& e = test[i];
      const Json* p =
          e.is_string() ? &e : (e.is_object() && e.contains("image") && e["image"].is_string() ? &e["image"] : nullptr);
      VG_INPUT_CHECK(p != nullptr, path << ": test[" << i << "] must be an image path, found " << brief(e));
      ds.test.push_back(v1_case(ds, p->get<std::string>(), "test[" + std::to_string(i) + "]", path, problems));
    }
  }
  check_count(j, "numTraining", ds.training.size(), "training cases", path, ds.warnings);
  check_count(j, "numTest", ds.test.size(), "test cases", path, ds.warnings);
}

// A folder's entries, sorted; an unreadable folder is an InputError naming it, not the library's
// "filesystem error" text.
std::vector<fs::directory_entry> list_folder(const fs::path& folder) {
  std::vector<fs::directory_entry> entries;
  std::error_code ec;
  fs::directory_iterator it(folder, ec);
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) entries.push_back(*it);
  VG_INPUT_CHECK(!ec, folder.string() << ": cannot list the folder: " << ec.message());
  std::sort(entries.begin(), entries.end());
  return entries;
}

// Cases of an nnU-Net v2 images folder: <case>_<XXXX><ending>, every channel 0..C-1 for every case.
std::map<std::string, Case> discover_images(const Dataset& ds, bool test, std::vector<std::string>& problems) {
  const fs::path folder = fs::path(ds.root) / (test ? "imagesTs" : "imagesTr");
  std::map<std::string, std::set<int>> found;
  for (const fs::directory_entry& entry : list_folder(folder)) {
    const std::string name = entry.path().filename().string();
    // Hidden files are skipped: the Decathlon's archives carry macOS "._BRATS_001.nii.gz" twins.
    if (name.empty() || name[0] == '.' || !ends_with(name, ds.file_ending)) continue;
    const std::string stem = strip_ending(name, ds.file_ending);
    const std::optional<int> channel =
        stem.size() > 5 && stem[stem.size() - 5] == '_' ? parse_index(stem.substr(stem.size() - 4)) : std::nullopt;
    if (!channel.has_value()) {
      problems.push_back(entry.path().string() + ": name does not follow <case>_<XXXX>" + ds.file_ending + " (e.g. " +
                         stem + "_0000" + ds.file_ending + ")");
      continue;
    }
    const std::string id = stem.substr(0, stem.size() - 5);
    if (*channel >= ds.num_channels()) {
      problems.push_back("case " + id + ": " + entry.path().string() + " is channel " + std::to_string(*channel) +
                         " but dataset.json declares " + std::to_string(ds.num_channels()) + " channel(s)");
      continue;
    }
    // A FIFO or a folder under a case's name is refused here, before anything could open it;
    // the channel still counts as found, so the case gets this one line rather than two.
    if (const std::optional<FileProblem> p = file_problem(entry.path()))
      problems.push_back("case " + id + ": " + p->text);
    found[id].insert(*channel);
  }
  std::map<std::string, Case> cases;
  for (const auto& [id, channels] : found) {
    Case c;
    c.id = id;
    for (int ch = 0; ch < ds.num_channels(); ++ch) {
      const std::string p = image_path(ds.root, id, ch, ds.file_ending, test);
      if (channels.count(ch) == 0)
        problems.push_back("case " + id + ": " + p + " is missing (dataset.json declares " +
                           std::to_string(ds.num_channels()) + " channels; each case needs one file per channel)");
      c.images.push_back(p);
    }
    cases.emplace(id, std::move(c));
  }
  return cases;
}

// v2's optional explicit list: "dataset": {"case": {"images": ["imagesTr/case_0000.nii.gz"], "label": ...}}.
void read_v2_explicit(Dataset& ds, const Json& obj, const std::string& path, std::vector<std::string>& problems) {
  VG_INPUT_CHECK(obj.is_object(), path << ": \"dataset\" must be an object of cases, found " << obj.type_name());
  for (const auto& item : obj.items()) {
    const std::string& id = item.key();
    const Json& e = item.value();
    VG_INPUT_CHECK(
        e.is_object() && e.contains("images") && e["images"].is_array() && e.contains("label") &&
            e["label"].is_string(),
        path << ": dataset[\"" << id << "\"] must be {\"images\": [...], \"label\": \"...\"}, found " << brief(e));
    Case c;
    c.id = id;
    for (const Json& p : e["images"]) {
      VG_INPUT_CHECK(p.is_string(), path << ": dataset[\"" << id << "\"].images must hold paths, found " << brief(p));
      c.images.push_back(resolve(ds.root, p.get<std::string>()).string());
      if (const std::optional<FileProblem> problem = file_problem(c.images.back()))
        problems.push_back("case " + id + ": image " + problem->text);
    }
    if (c.images.size() != static_cast<std::size_t>(ds.num_channels()))
      problems.push_back("case " + id + ": " + std::to_string(c.images.size()) +
                         " images listed but dataset.json declares " + std::to_string(ds.num_channels()) + " channels");
    c.label = resolve(ds.root, e["label"].get<std::string>()).string();
    if (const std::optional<FileProblem> p = file_problem(c.label))
      problems.push_back("case " + id + ": label " + p->text);
    ds.training.push_back(std::move(c));
  }
}

void read_v2(Dataset& ds, const Json& j, const std::string& path, std::vector<std::string>& problems) {
  const char* layout = "an nnU-Net v2";
  // nnU-Net v2 itself falls back to "modality" when "channel_names" is absent.
  const char* channel_key = j.contains("channel_names") || !j.contains("modality") ? "channel_names" : "modality";
  ds.channels = parse_channels(required(j, channel_key, "object", path, layout), channel_key, path);
  parse_labels_v2(ds, required(j, "labels", "object", path, layout), path);
  if (j.contains("regions_class_order")) {
    const Json& order = required(j, "regions_class_order", "array", path, layout);
    for (const Json& e : order) {
      VG_INPUT_CHECK(e.is_number(), path << ": \"regions_class_order\" must list label values, found " << brief(e));
      ds.regions_class_order.push_back(label_value(whole_number(e), e.dump(), "\"regions_class_order\" entry", path));
    }
  }
  const std::string ending = optional_string(j, "file_ending", path);
  if (!ending.empty()) ds.file_ending = ending;
  VG_INPUT_CHECK(
      ds.file_ending == ".nii.gz" || ds.file_ending == ".nii",
      path << ": \"file_ending\" is \"" << ds.file_ending << "\"; voxgrad reads NIfTI only (.nii.gz or .nii)");

  const fs::path root(ds.root);
  if (j.contains("dataset")) {
    read_v2_explicit(ds, j["dataset"], path, problems);
  } else {
    const fs::path images = root / "imagesTr", labels = root / "labelsTr";
    std::error_code ec;
    VG_INPUT_CHECK(fs::is_directory(images, ec),
                   images.string() << ": folder does not exist (nnU-Net v2 keeps training images there)");
    VG_INPUT_CHECK(fs::is_directory(labels, ec),
                   labels.string() << ": folder does not exist (nnU-Net v2 keeps training labels there)");
    std::map<std::string, Case> cases = discover_images(ds, /*test=*/false, problems);
    for (auto& [id, c] : cases) {
      c.label = label_path(ds.root, id, ds.file_ending);
      if (const std::optional<FileProblem> p = file_problem(c.label))
        problems.push_back("case " + id + ": label " + (p->missing ? c.label + " is missing" : p->text));
      ds.training.push_back(std::move(c));
    }
    for (const fs::directory_entry& entry : list_folder(labels)) {
      const std::string name = entry.path().filename().string();
      if (name.empty() || name[0] == '.' || !ends_with(name, ds.file_ending)) continue;
      const std::string id = strip_ending(name, ds.file_ending);
      if (cases.count(id) == 0)
        problems.push_back("case " + id + ": label " + entry.path().string() + " has no images (expected " +
                           image_path(ds.root, id, 0, ds.file_ending) + ")");
    }
  }
  const fs::path test = root / "imagesTs";
  std::error_code ec;
  if (fs::is_directory(test, ec)) {
    for (auto& [id, c] : discover_images(ds, /*test=*/true, problems)) ds.test.push_back(std::move(c));
  }
  if (!j.contains("numTraining"))
    ds.warnings.push_back(path + ": no \"numTraining\" (nnU-Net v2 expects it); found " +
                          std::to_string(ds.training.size()) + " training cases");
  check_count(j, "numTraining", ds.training.size(), "training cases", path, ds.warnings);
}

}  // namespace

Dataset read_dataset(const std::string& root) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) {
    VG_INPUT_CHECK(!fs::exists(root, ec), root << ": not a folder (a dataset is a folder holding dataset.json)");
    VG_INPUT_FAIL(root << ": dataset folder does not exist");
  }
  const std::string path = (fs::path(root) / "dataset.json").string();
  const std::optional<FileProblem> problem = file_problem(path);
  VG_INPUT_CHECK(!problem || !problem->missing,
                 path << ": does not exist (a dataset folder holds dataset.json, imagesTr/ and labelsTr/)");
  return parse_dataset(read_dataset_json(path), root);
}

Dataset parse_dataset(std::string_view json_text, const std::string& root) {
  const std::string path = (fs::path(root) / "dataset.json").string();
  const Json j = parse_dataset_json(json_text, path);

  Dataset ds;
  ds.root = root;
  ds.name = optional_string(j, "name", path);
  ds.description = optional_string(j, "description", path);
  std::vector<std::string> problems;
  if (j.contains("channel_names") || j.contains("file_ending")) {
    ds.layout = DatasetLayout::NnunetV2;
    read_v2(ds, j, path, problems);
  } else if (j.contains("training") || j.contains("modality")) {
    ds.layout = DatasetLayout::MsdV1;
    read_v1(ds, j, path, problems);
  } else {
    VG_INPUT_FAIL(path << ": cannot tell the layout: expected \"channel_names\" and \"file_ending\" (nnU-Net v2) or "
                          "\"modality\" and \"training\" (MSD / nnU-Net v1)");
  }
  if (!problems.empty()) dataset_detail::throw_problems(path, problems);
  return ds;
}

std::string image_path(const std::string& root, const std::string& case_id, int channel, const std::string& file_ending,
                       bool test) {
  VG_CHECK(channel >= 0 && channel <= 9999, "image_path: channel " << channel << " does not fit nnU-Net's 4 digits");
  char suffix[16];
  std::snprintf(suffix, sizeof suffix, "_%04d", channel);
  return (fs::path(root) / (test ? "imagesTs" : "imagesTr") / (case_id + suffix + file_ending)).string();
}

std::string label_path(const std::string& root, const std::string& case_id, const std::string& file_ending) {
  return (fs::path(root) / "labelsTr" / (case_id + file_ending)).string();
}

void create_dataset_folders(const std::string& root, bool with_test) {
  for (const char* sub : {"imagesTr", "labelsTr", "imagesTs"}) {
    if (!with_test && std::string(sub) == "imagesTs") continue;
    files::create_folder((fs::path(root) / sub).string(), "dataset folder");
  }
}

void write_dataset_v2(const std::string& root, const DatasetV2Spec& spec) {
  // The spec is made by a program (synth) that checked its flags: these are invariants.
  const std::string path = (fs::path(root) / "dataset.json").string();
  VG_CHECK(!spec.channel_names.empty(), path << ": a dataset needs at least one channel name");
  VG_CHECK(spec.channel_names.size() <= static_cast<std::size_t>(kMaxChannels),
           path << ": " << spec.channel_names.size() << " channels do not fit nnU-Net's 4-digit file names");
  VG_CHECK(spec.labels.count(0) == 1, path << ": labels must hold 0 (the background)");
  VG_CHECK(spec.file_ending == ".nii.gz" || spec.file_ending == ".nii",
           path << ": file_ending \"" << spec.file_ending << "\" is not .nii.gz or .nii");
  VG_CHECK(spec.num_training >= 0, path << ": numTraining " << spec.num_training << " is negative");

  // ordered_json keeps nnU-Net's key order and the labels in value order, as people read them.
  nlohmann::ordered_json j;
  j["name"] = spec.name;
  j["description"] = spec.description;
  nlohmann::ordered_json channels = nlohmann::ordered_json::object();
  for (std::size_t i = 0; i < spec.channel_names.size(); ++i) channels[std::to_string(i)] = spec.channel_names[i];
  j["channel_names"] = channels;
  nlohmann::ordered_json labels = nlohmann::ordered_json::object();
  for (const auto& label : spec.labels) {
    const int value = label.first;
    const std::string& name = label.second;
    VG_CHECK(value >= 0 && value <= kMaxLabelValue, path << ": label \"" << name << "\" has value " << value
                                                         << "; label values must be 0.." << kMaxLabelValue);
    VG_CHECK(!labels.contains(name), path << ": label name \"" << name << "\" is used twice");
    labels[name] = value;
  }
  j["labels"] = labels;
  j["numTraining"] = spec.num_training;
  j["file_ending"] = spec.file_ending;

  files::create_folder(root, "dataset folder");
  files::remove_stale_temporaries(root);  // a killed writer's "dataset.json.tmp-PID-N"
  // A temporary next to it, then a rename: a reader never sees half a dataset.json.
  files::write_file_atomically(path, j.dump(4) + "\n");
}

}  // namespace voxgrad::io
