// safetensors files: bit-exact round trips, the byte layout and checksum checked by hand, shared
// tensors written once and loaded under every name, damaged,
// edited, non-finite and malformed files refused with messages naming the problem, load_state_dict's
// mismatch report, atomic writes, model files and training checkpoints, and the reference Python
// reader opening our files (when it is installed).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>

#include "engine/checkpoint.h"
#include "engine/json.h"
#include "engine/ops.h"
#include "tests/test_support.h"

namespace voxgrad {
namespace {

namespace fs = std::filesystem;

using voxgrad::test::read_file;

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le64(std::uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// A file from a header text and a data block, the header length written as given.
std::string file_of(const std::string& header, const std::string& data) { return le64(header.size()) + header + data; }

std::string floats_le(std::initializer_list<float> v) {
  std::string s;
  for (float f : v) s.append(reinterpret_cast<const char*>(&f), sizeof f);
  return s;
}

std::string raw(const Tensor& t) {
  const Tensor h = t.cpu();
  return std::string(static_cast<const char*>(h.raw_data()), h.nbytes());
}

std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// The Error's message, or "" when `f` does not throw voxgrad::Error.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// The message of the InputError `f` throws: a problem with the file, in plain words (no source
// text). Any other outcome is a test failure.
template <class F>
std::string input_error_of(F&& f) {
  try {
    f();
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find(".cpp:"), std::string::npos) << "source text in \"" << msg << "\"";
    return msg;
  } catch (const Error& e) {
    ADD_FAILURE() << "an internal error, not an InputError: " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

// What `f` writes to stderr (the log's warnings).
template <class F>
std::string stderr_of(F&& f) {
  ::testing::internal::CaptureStderr();
  try {
    f();
  } catch (...) {
    (void)::testing::internal::GetCapturedStderr();
    throw;
  }
  return ::testing::internal::GetCapturedStderr();
}

// Where the data section of a safetensors file starts.
std::size_t data_start(const std::string& bytes) {
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), sizeof n);
  return 8 + static_cast<std::size_t>(n);
}

std::string hex8(std::uint32_t v) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

std::uint32_t crc_continue(std::uint32_t crc, const std::string& bytes) {
  return static_cast<std::uint32_t>(
      ::crc32(crc, reinterpret_cast<const Bytef*>(bytes.data()), static_cast<uInt>(bytes.size())));
}

TEST(Checkpoint, RoundTripIsBitExactForEveryDtype) {
  const std::string path = test::temp_dir("ckpt") + "/all.safetensors";
  float nan_payload;
  const std::uint32_t bits = 0x7fc01234u;
  std::memcpy(&nan_payload, &bits, sizeof bits);
  const NamedTensors tensors = {
      {"f32", from_vector<float>({1.5f, -0.0f, nan_payload, INFINITY, 1e-42f, -3.25e38f}, {2, 3})},
      {"f64", from_vector<double>({3.141592653589793, -1e-310, 2.5e300}, {3, 1})},
      {"i32", from_vector<std::int32_t>({-2147483647 - 1, 0, 7, 2147483647}, {1, 2, 2})},
      {"u8", from_vector<std::uint8_t>({0, 1, 128, 255, 42}, {5})},
      {"scalar", from_vector<float>({2.0f}, {})},
      {"empty", zeros({0, 3})},
  };
  // NaN and Inf are refused by default (they are never weights); the format itself keeps them.
  save_safetensors(path, tensors, {{"epoch", "3"}, {"note", "ünïcode ✓"}}, NonFinite::allow);
  const SafeTensors back = load_safetensors(path, Device::cpu(), NonFinite::allow);
  EXPECT_TRUE(back.checksum_verified);
  ASSERT_EQ(back.tensors.size(), tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_EQ(back.tensors[i].first, tensors[i].first);
    EXPECT_EQ(back.tensors[i].second.shape(), tensors[i].second.shape()) << tensors[i].first;
    EXPECT_EQ(back.tensors[i].second.dtype(), tensors[i].second.dtype()) << tensors[i].first;
    EXPECT_EQ(raw(back.tensors[i].second), raw(tensors[i].second)) << tensors[i].first;
  }
  EXPECT_EQ(back.metadata, (Metadata{{"epoch", "3"}, {"note", "ünïcode ✓"}}));
}

TEST(Checkpoint, ByteLayoutMatchesTheFormatWithTheDocumentedChecksum) {
  const std::string path = test::temp_dir("ckpt") + "/tiny.safetensors";
  save_safetensors(path,
                   {{"w", from_vector<float>({1.0f, 2.0f}, {2})}, {"b", from_vector<std::uint8_t>({7}, {1, 1})}},
                   {{"k", "vv"}});
  const std::string bytes = read_file(path);
  const std::string data = floats_le({1.0f, 2.0f}) + std::string(1, '\7');
  // kChecksumKey's definition: the data, then each tensor in data order, then each other metadata entry.
  std::uint32_t crc = crc_continue(0, data);
  crc = crc_continue(crc, std::string("w\0F32\0" "2\0", 8));
  crc = crc_continue(crc, std::string("b\0U8\0" "1,1\0", 9));
  crc = crc_continue(crc, std::string("k\0vv\0", 5));
  std::string header = R"({"__metadata__":{"k":"vv","voxgrad_crc32":")" + hex8(crc) + R"("},)"
                       R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                       R"("b":{"dtype":"U8","shape":[1,1],"data_offsets":[8,9]}})";
  ASSERT_EQ(header.size(), 161u);
  header += std::string(7, ' ');  // padded to 168, a multiple of 8
  const std::string expected = le64(168) + header + data;
  EXPECT_EQ(bytes.size(), expected.size());
  EXPECT_EQ(bytes, expected);
  const SafeTensors back = load_safetensors(path);
  EXPECT_TRUE(back.checksum_verified);
  EXPECT_EQ(back.metadata, (Metadata{{"k", "vv"}}));  // the checksum describes the file, not its content
}

struct Malformed {
  const char* what;
  std::string bytes;
  const char* message;  // a part of the expected error
};

TEST(Checkpoint, MalformedFilesAreRefusedWithTheReason) {
  const std::string dir = test::temp_dir("ckpt");
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string data8 = floats_le({1, 2});
  const Malformed cases[] = {
      {"empty file", "", "file too short"},
      {"truncated length", std::string("\x10\0\0", 3), "file too short"},
      {"huge header length", le64(0xffffffffffffull) + "{}", "goes beyond the end of the file"},
      {"header past the end", le64(64) + "{}", "goes beyond the end of the file"},
      {"bad json", file_of("{\"a\":", ""), "not valid JSON"},
      {"not an object", file_of("[1,2]   ", ""), "must be a JSON object"},
      {"number beyond a double", file_of(R"({"a":1e999})", ""), "not valid JSON (number overflow"},
      {"unknown dtype", file_of(R"({"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})", "abcd"),
       "dtype \"BF16\" is not supported"},
      {"missing field", file_of(R"({"a":{"dtype":"F32","shape":[2]}})", ""), "needs dtype, shape and data_offsets"},
      {"offsets out of range", file_of(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "abcd"),
       "lie outside the 4-byte data"},
      {"offsets reversed", file_of(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", "abcd"),
       "lie outside"},
      {"size mismatch", file_of(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data8),
       "needs 12 bytes but data_offsets [0, 8] hold 8"},
      {"negative size", file_of(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data8), "non-size"},
      {"overlap",
       file_of("{" + ok_entry + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data8), "overlaps"},
      {"gap", file_of(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data8), "belong to no tensor"},
      {"trailing bytes", file_of("{" + ok_entry + "}", data8 + "xx"), "trailing bytes"},
      {"metadata not strings", file_of(R"({"__metadata__":{"step":3}})", ""), "is not a string"},
      {"huge shape", file_of(R"({"a":{"dtype":"F32","shape":[1099511627776,2],"data_offsets":[0,8]}})", data8),
       "implausibly large"},
      // A zero size must not hide sizes whose product overflows wherever strides are computed.
      {"zero hiding huge sizes",
       file_of(R"({"a":{"dtype":"U8","shape":[4294967296,0,4294967296],"data_offsets":[0,0]}})", ""),
       "implausibly large"},
      {"too many dims", file_of(R"({"a":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1],"data_offsets":[0,1]}})", "x"),
       "at most 7 sizes"},
      {"deep nesting", file_of(R"({"a":)" + std::string(100000, '[') + std::string(100000, ']') + "}", ""),
       "nests deeper than 64 levels"},
      {"checksum not hex", file_of(R"({"__metadata__":{"voxgrad_crc32":"12345g78"}})", ""), "is not a checksum"},
      {"checksum mismatch", file_of(R"({"__metadata__":{"voxgrad_crc32":"00000000"},)" + ok_entry + "}", data8),
       "corrupt file (checksum mismatch"},
  };
  for (const auto& c : cases) {
    const std::string path = dir + "/bad.safetensors";
    write_bytes(path, c.bytes);
    const std::string msg = input_error_of([&] { load_safetensors(path); });
    EXPECT_NE(msg.find(c.message), std::string::npos) << c.what << ": got \"" << msg << "\"";
    EXPECT_NE(msg.find(path), std::string::npos) << c.what << ": the message does not name the file";
  }
  // The well-formed neighbour of those cases loads.
  write_bytes(dir + "/good.safetensors", file_of("{" + ok_entry + "}", data8));
  EXPECT_EQ(load_safetensors(dir + "/good.safetensors").tensors[0].second.to_vector<float>(),
            (std::vector<float>{1, 2}));
  EXPECT_NE(input_error_of([&] { load_safetensors(dir + "/absent.safetensors"); }).find("no such file"),
            std::string::npos);
}

TEST(Checkpoint, TruncatedRealFileIsRefused) {
  const std::string dir = test::temp_dir("ckpt");
  save_safetensors(dir + "/m.safetensors", {{"w", ones({4, 4})}});
  const std::string bytes = read_file(dir + "/m.safetensors");
  for (std::size_t keep : {std::size_t{0}, std::size_t{7}, std::size_t{20}, bytes.size() - 1}) {
    write_bytes(dir + "/cut.safetensors", bytes.substr(0, keep));
    EXPECT_THROW(load_safetensors(dir + "/cut.safetensors"), InputError) << "kept " << keep << " bytes";
  }
}

// conv.weight (2, 3), conv.bias (2), norm.running_mean (2) as buffer.
class Tiny : public Module {
 public:
  Tiny() {
    register_parameter("weight", zeros({2, 3}));
    register_parameter("bias", zeros({2}));
    register_buffer("running_mean", zeros({2}));
  }
  Tensor forward(const Tensor& x) override { return x; }
};

TEST(Checkpoint, LoadStateDictReportsEveryDifference) {
  Sequential net({std::make_shared<Tiny>()});
  const NamedTensors wrong = {
      {"0.weight", ones({3, 2})},                                   // shape
      {"0.running_mean", zeros({2}, DType::Float64)},               // dtype
      {"0.extra", ones({1})},                                       // unexpected
  };                                                                // 0.bias missing
  const std::string msg = input_error_of([&] { load_state_dict(net, wrong); });
  EXPECT_NE(msg.find("missing keys (1): 0.bias"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unexpected keys (1): 0.extra"), std::string::npos) << msg;
  EXPECT_NE(msg.find("0.weight: checkpoint float32 (3, 2), model float32 (2, 3)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("0.running_mean: checkpoint float64 (2,), model float32 (2,)"), std::string::npos) << msg;

  // Non-strict: missing and unexpected names are fine, a shape mismatch is not.
  const NamedTensors partial = {{"0.weight", full({2, 3}, 5.0)}, {"0.extra", ones({1})}};
  load_state_dict(net, partial, false);
  EXPECT_EQ(net.state_dict()[0].second.to_vector<float>(), std::vector<float>(6, 5.0f));
  EXPECT_THROW(load_state_dict(net, {{"0.weight", ones({6})}}, false), Error);
  EXPECT_TRUE(net.state_dict()[0].second.requires_grad());
}

TEST(Checkpoint, ModelFileRoundTrip) {
  const std::string path = test::temp_dir("ckpt") + "/model.safetensors";
  Generator gen(7);
  Sequential a({std::make_shared<Tiny>(), std::make_shared<Tiny>()});
  for (auto& [n, t] : a.state_dict()) t.copy_(randn(t.shape(), gen));
  save_model(path, a, {{"format", "pt"}});
  Sequential b({std::make_shared<Tiny>(), std::make_shared<Tiny>()});
  load_model(path, b);
  const auto sa = a.state_dict(), sb = b.state_dict();
  for (std::size_t i = 0; i < sa.size(); ++i) EXPECT_EQ(raw(sa[i].second), raw(sb[i].second)) << sa[i].first;
  Sequential other({std::make_shared<Tiny>()});
  const std::string msg = input_error_of([&] { load_model(path, other); });
  EXPECT_EQ(msg.rfind(path + ": the tensors do not match the model", 0), 0u) << msg;  // named once
  EXPECT_NE(msg.find(path), std::string::npos);
  EXPECT_NE(msg.find("unexpected keys (3): 1.weight, 1.bias, 1.running_mean"), std::string::npos) << msg;
}

// A tensor listed under several names (a state_dict's aliases) is written once: its further names
// become metadata entries "alias": "first name", as safetensors.torch.save_model writes them, and
// loading lists it under every name again, one tensor shared. Other views of the same storage
// (another shape, another offset) keep bytes of their own.
TEST(Checkpoint, SharedTensorsAreWrittenOnceAndLoadUnderEveryName) {
  const std::string dir = test::temp_dir("ckpt");
  const std::string path = dir + "/shared.safetensors";
  Generator gen(5);
  const Tensor weight = randn({4, 3}, gen), bias = randn({3}, gen), empty = zeros({0});
  const Tensor flat = reshape(weight, {12});  // the same bytes read as another shape
  const NamedTensors tensors = {{"conv.weight", weight},
                                {"conv.bias", bias},
                                {"all_modules.0.weight", weight},
                                {"all_modules.0.bias", bias},
                                {"decoder.encoder.weight", weight},
                                {"flat", flat},
                                {"empty", empty},
                                {"empty_again", empty}};
  save_safetensors(path, tensors, {{"epoch", "2"}});
  const std::string bytes = read_file(path);
  const std::size_t start = data_start(bytes);
  EXPECT_EQ(bytes.size() - start, (12 + 3 + 12) * sizeof(float));  // weight, bias and flat once each
  const Json header = Json::parse(bytes.substr(8, start - 8));
  std::vector<std::string> stored;
  for (const auto& [key, value] : header.items())
    if (key != "__metadata__") stored.push_back(key);
  EXPECT_EQ(stored, (std::vector<std::string>{"conv.bias", "conv.weight", "empty", "empty_again", "flat"}));  // sorted
  EXPECT_EQ(header["__metadata__"]["all_modules.0.weight"], "conv.weight");
  EXPECT_EQ(header["__metadata__"]["all_modules.0.bias"], "conv.bias");
  EXPECT_EQ(header["__metadata__"]["decoder.encoder.weight"], "conv.weight");
  EXPECT_EQ(header["__metadata__"]["epoch"], "2");

  const SafeTensors back = load_safetensors(path);
  EXPECT_TRUE(back.checksum_verified);
  EXPECT_EQ(back.metadata, (Metadata{{"epoch", "2"}}));  // the aliases are tensors again, not metadata
  std::vector<std::string> names;
  std::map<std::string, Tensor> by_name;
  for (const auto& [name, t] : back.tensors) {
    names.push_back(name);
    by_name[name] = t;
  }
  EXPECT_EQ(names, (std::vector<std::string>{"conv.weight", "all_modules.0.weight", "decoder.encoder.weight",
                                             "conv.bias", "all_modules.0.bias", "flat", "empty", "empty_again"}));
  EXPECT_EQ(by_name["all_modules.0.weight"].impl(), by_name["conv.weight"].impl());
  EXPECT_EQ(by_name["decoder.encoder.weight"].impl(), by_name["conv.weight"].impl());
  EXPECT_EQ(by_name["all_modules.0.bias"].impl(), by_name["conv.bias"].impl());
  EXPECT_NE(by_name["flat"].impl()->storage, by_name["conv.weight"].impl()->storage);
  for (const auto& [name, t] : tensors) {
    EXPECT_EQ(by_name[name].shape(), t.shape()) << name;
    EXPECT_EQ(raw(by_name[name]), raw(t)) << name;
  }
  // What loads saves again to the same bytes.
  save_safetensors(dir + "/again.safetensors", back.tensors, back.metadata);
  EXPECT_EQ(read_file(dir + "/again.safetensors"), bytes);
  // Metadata that would read back as an alias is the program's mistake, refused before writing.
  EXPECT_THROW(save_safetensors(dir + "/ambiguous.safetensors", {{"w", weight}}, {{"note", "w"}}), Error);
  EXPECT_FALSE(fs::exists(dir + "/ambiguous.safetensors"));
}

// A file another writer made the same way (safetensors.torch.save_model's shared tensors, no
// checksum) loads its aliases too; a metadata entry whose value names no tensor stays metadata.
TEST(Checkpoint, AliasesOfOtherWritersLoad) {
  const std::string path = test::temp_dir("ckpt") + "/hf.safetensors";
  write_bytes(path, file_of(R"({"__metadata__":{"format":"pt","lm_head.weight":"embed.weight","note":"embed"},)"
                            R"("embed.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                            floats_le({1.5f, -2.0f})));
  SafeTensors back;
  EXPECT_NE(stderr_of([&] { back = load_safetensors(path); }).find("no checksum"), std::string::npos);
  ASSERT_EQ(back.tensors.size(), 2u);
  EXPECT_EQ(back.tensors[0].first, "embed.weight");
  EXPECT_EQ(back.tensors[1].first, "lm_head.weight");
  EXPECT_EQ(back.tensors[1].second.impl(), back.tensors[0].second.impl());
  EXPECT_EQ(back.tensors[1].second.to_vector<float>(), (std::vector<float>{1.5f, -2.0f}));
  EXPECT_EQ(back.metadata, (Metadata{{"format", "pt"}, {"note", "embed"}}));
}

TEST(Checkpoint, TrainingCheckpointResumesExactly) {
  const std::string path = test::temp_dir("ckpt") + "/train.safetensors";
  Sequential a({std::make_shared<Tiny>()});
  SGD opt_a(a.named_parameters(), {.lr = 0.01, .momentum = 0.99, .nesterov = true});
  auto step = [](Sequential& net, Optimizer& opt) {
    Generator g(3);
    for (Tensor p : net.parameters()) p.set_grad(randn(p.shape(), g));
    opt.step();
  };
  step(a, opt_a);
  step(a, opt_a);
  opt_a.set_lr(0.005);
  const TrainingState saved{.step = 2, .epoch = 1, .rng_seed = 42, .rng_offset = 1ull << 40,
                            .config = R"({"loss":"dice","patch":[64,64,64]})"};
  save_training_checkpoint(path, a, opt_a, saved);

  const SafeTensors file = load_safetensors(path);
  std::vector<std::string> names;
  for (const auto& [n, t] : file.tensors) names.push_back(n);
  EXPECT_EQ(names, (std::vector<std::string>{"model.0.weight", "model.0.bias", "model.0.running_mean",
                                             "optimizer.state.0.weight.momentum_buffer", "optimizer.state.0.weight.step",
                                             "optimizer.state.0.bias.momentum_buffer", "optimizer.state.0.bias.step"}));
  EXPECT_EQ(file.metadata.at("optimizer"), "SGD");
  EXPECT_EQ(Json::parse(file.metadata.at("config"))["patch"][0], 64);

  Sequential b({std::make_shared<Tiny>()});
  SGD opt_b(b.named_parameters(), {.lr = 0.01, .momentum = 0.99, .nesterov = true});
  const TrainingState got = load_training_checkpoint(path, b, opt_b);
  EXPECT_EQ(got.step, 2);
  EXPECT_EQ(got.epoch, 1);
  EXPECT_EQ(got.rng_seed, 42u);
  EXPECT_EQ(got.rng_offset, 1ull << 40);
  EXPECT_EQ(got.config, saved.config);
  EXPECT_EQ(opt_b.lr(), 0.005);
  step(a, opt_a);
  step(b, opt_b);
  for (std::size_t i = 0; i < 2; ++i)
    EXPECT_EQ(raw(a.state_dict()[i].second), raw(b.state_dict()[i].second)) << "after resuming";

  Adam adam(b.named_parameters(), {});
  EXPECT_NE(error_of([&] { load_training_checkpoint(path, b, adam); }).find("optimizer is SGD"), std::string::npos);
}

TEST(Checkpoint, RefusedOptimizerStateLeavesTheModelUntouched) {
  const std::string path = test::temp_dir("ckpt") + "/train.safetensors";
  Generator gen(5);
  Sequential a({std::make_shared<Tiny>()});
  for (auto& [n, t] : a.state_dict()) t.copy_(randn(t.shape(), gen));
  SGD opt_a(a.named_parameters(), {.lr = 0.01, .momentum = 0.9});
  for (Tensor p : a.parameters()) p.set_grad(ones_like(p));
  opt_a.step();
  save_training_checkpoint(path, a, opt_a, TrainingState{});

  // The weights match, but this optimizer holds only one parameter: its state is refused after
  // the weights would have gone in.
  Sequential b({std::make_shared<Tiny>()});
  const auto before = b.state_dict();
  std::vector<std::string> kept;
  for (const auto& [n, t] : before) kept.push_back(raw(t));
  SGD opt_b({b.named_parameters()[0]}, {.lr = 0.01, .momentum = 0.9});
  EXPECT_THROW(load_training_checkpoint(path, b, opt_b), Error);
  const auto after = b.state_dict();
  for (std::size_t i = 0; i < after.size(); ++i) EXPECT_EQ(raw(after[i].second), kept[i]) << after[i].first;
}

TEST(Checkpoint, WritesAreAtomic) {
  const std::string dir = test::temp_dir("ckpt");
  const std::string path = dir + "/model.safetensors";
  save_safetensors(path, {{"w", ones({3})}});
  save_safetensors(path, {{"w", full({3}, 2.0)}});  // replaces it
  EXPECT_EQ(files_in(dir), std::vector<std::string>{"model.safetensors"});  // no temporary left
  const std::string old_bytes = read_file(path);

  // Refused before writing: an undefined tensor, a reserved or repeated name.
  EXPECT_NE(error_of([&] { save_safetensors(path, {{"w", ones({3})}, {"v", Tensor()}}); }).find("\"v\" is undefined"),
            std::string::npos);
  EXPECT_THROW(save_safetensors(path, {{"__metadata__", ones({1})}}), Error);
  EXPECT_THROW(save_safetensors(path, {{"w", ones({1})}, {"w", ones({1})}}), Error);
  // Fails after the whole temporary file is written: the rename onto a folder.
  const std::string folder_target = dir + "/a_folder";
  fs::create_directories(folder_target + "/inside");
  EXPECT_NE(input_error_of([&] { save_safetensors(folder_target, {{"w", ones({3})}}); })
                .find(folder_target + ": cannot put the new file in place"),
            std::string::npos);
  // Fails to start: the folder does not exist.
  EXPECT_NE(input_error_of([&] { save_safetensors(dir + "/missing/m.safetensors", {{"w", ones({3})}}); })
                .find("cannot create a file in " + dir + "/missing: no such file"),
            std::string::npos);
  EXPECT_EQ(files_in(dir), (std::vector<std::string>{"a_folder", "model.safetensors"}));
  EXPECT_EQ(read_file(path), old_bytes);
  EXPECT_EQ(load_safetensors(path).tensors[0].second.to_vector<float>(), std::vector<float>(3, 2.0f));
}

TEST(Checkpoint, UnwritableFolderLeavesTheOldFile) {
  const std::string dir = test::temp_dir("ckpt") + "/ro";
  fs::create_directories(dir);
  const std::string path = dir + "/model.safetensors";
  save_safetensors(path, {{"w", ones({3})}});
  const std::string old_bytes = read_file(path);
  fs::permissions(dir, fs::perms::owner_read | fs::perms::owner_exec);
  const bool writable = ::access(dir.c_str(), W_OK) == 0;  // root ignores the mode
  if (!writable) {
    EXPECT_THROW(save_safetensors(path, {{"w", zeros({3})}}), InputError);
  }
  fs::permissions(dir, fs::perms::owner_all);
  if (writable) GTEST_SKIP() << "running as a user that can write to a read-only folder (root)";
  EXPECT_EQ(read_file(path), old_bytes);
  EXPECT_EQ(files_in(dir), std::vector<std::string>{"model.safetensors"});
}

// A training checkpoint of a Tiny network with random weights after one SGD step.
std::string saved_checkpoint(const std::string& dir, std::uint64_t seed = 5) {
  const std::string path = dir + "/checkpoint.safetensors";
  Generator gen(seed);
  Sequential net({std::make_shared<Tiny>()});
  for (auto& [n, t] : net.state_dict()) t.copy_(randn(t.shape(), gen));
  SGD opt(net.named_parameters(), {.lr = 0.01, .momentum = 0.9});
  for (Tensor p : net.parameters()) p.set_grad(ones_like(p));
  opt.step();
  save_training_checkpoint(path, net, opt, TrainingState{.step = 2, .epoch = 1, .rng_seed = 9});
  return path;
}

TEST(Checkpoint, FlippedDataBitIsRefusedAsCorrupt) {
  const std::string dir = test::temp_dir("ckpt");
  const std::string path = saved_checkpoint(dir);
  const std::string good = read_file(path);
  const std::size_t start = data_start(good);
  ASSERT_LT(start, good.size());
  // The lowest bit of a float's mantissa: the value stays finite and plausible, only the checksum tells.
  for (std::size_t at : {start, start + (good.size() - start) / 2, good.size() - 1}) {
    std::string bad = good;
    bad[at] = static_cast<char>(bad[at] ^ 1);
    write_bytes(path, bad);
    const std::string msg = input_error_of([&] { load_safetensors(path); });
    EXPECT_NE(msg.find(path + ": corrupt file (checksum mismatch"), std::string::npos) << "byte " << at << ": " << msg;
    Sequential net({std::make_shared<Tiny>()});
    SGD opt(net.named_parameters(), {.lr = 0.01, .momentum = 0.9});
    EXPECT_NE(input_error_of([&] { load_training_checkpoint(path, net, opt); }).find("checksum mismatch"),
              std::string::npos);
    EXPECT_NE(input_error_of([&] { load_checkpoint_weights(path, net); }).find("checksum mismatch"), std::string::npos);
  }
  write_bytes(path, good);
  EXPECT_TRUE(load_safetensors(path).checksum_verified);
}

TEST(Checkpoint, EditedHeaderIsRefusedAsCorrupt) {
  const std::string dir = test::temp_dir("ckpt");
  const std::string path = saved_checkpoint(dir);
  const std::string good = read_file(path);
  auto edited = [&](const std::string& from, const std::string& to) {
    std::string bytes = good;
    const auto at = bytes.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    if (at != std::string::npos) bytes.replace(at, from.size(), to);
    return bytes;
  };
  // Same lengths, so the header stays well-formed: only the checksum can tell.
  const std::pair<std::string, std::string> edits[] = {
      {R"("step":"2")", R"("step":"7")"},                            // a metadata value
      {R"("model.0.bias")", R"("model.0.bia5")"},                    // a tensor's name
      {R"("model.0.running_mean":{"dtype":"F32","shape":[2])", R"("model.0.running_mean":{"dtype":"I32","shape":[2])"},
  };
  for (const auto& [from, to] : edits) {
    write_bytes(path, edited(from, to));
    EXPECT_NE(input_error_of([&] { load_safetensors(path); }).find("checksum mismatch"), std::string::npos) << to;
  }
  // Swapping the places of two same-sized tensors moves no data byte but changes which is which.
  std::string swapped = good;
  const std::string a = R"("model.0.bias":{"dtype":"F32","shape":[2],"data_offsets":[24,32]})";
  const std::string b = R"("model.0.running_mean":{"dtype":"F32","shape":[2],"data_offsets":[32,40]})";
  const auto at_a = swapped.find(a), at_b = swapped.find(b);
  ASSERT_NE(at_a, std::string::npos);
  ASSERT_NE(at_b, std::string::npos);
  swapped.replace(at_a + a.size() - 8, 7, "[32,40]");
  swapped.replace(at_b + b.size() - 8, 7, "[24,32]");
  write_bytes(path, swapped);
  EXPECT_NE(input_error_of([&] { load_safetensors(path); }).find("checksum mismatch"), std::string::npos);
}

TEST(Checkpoint, NonFiniteWeightsAreRefusedNamingTheTensor) {
  const std::string dir = test::temp_dir("ckpt");
  const std::string path = dir + "/model.safetensors";
  for (const float bad : {NAN, INFINITY, -INFINITY}) {
    // A file with a valid checksum, as a diverged training would write it.
    save_safetensors(path, {{"0.weight", from_vector<float>({1, 2, bad, 4, 5, 6}, {2, 3})}, {"0.bias", ones({2})},
                            {"0.running_mean", zeros({2})}},
                     {}, NonFinite::allow);
    const std::string msg = input_error_of([&] { load_safetensors(path); });
    EXPECT_NE(msg.find(path + ": tensor \"0.weight\" holds 1 non-finite value (NaN or Inf)"), std::string::npos) << msg;
    Sequential net({std::make_shared<Tiny>()});
    EXPECT_NE(input_error_of([&] { load_model(path, net); }).find("\"0.weight\" holds 1 non-finite"),
              std::string::npos);
    EXPECT_EQ(load_safetensors(path, Device::cpu(), NonFinite::allow).tensors.size(), 3u);
  }
  // F64 too.
  save_safetensors(path, {{"d", from_vector<double>({0.5, NAN}, {2})}}, {}, NonFinite::allow);
  EXPECT_NE(input_error_of([&] { load_safetensors(path); }).find("tensor \"d\" holds 1 non-finite"), std::string::npos);
}

TEST(Checkpoint, NonFiniteWeightsAreNeverWrittenOverAGoodFile) {
  const std::string dir = test::temp_dir("ckpt");
  const std::string path = dir + "/model_best.safetensors";
  Sequential net({std::make_shared<Tiny>()});
  for (auto& [n, t] : net.state_dict()) t.copy_(ones_like(t));
  save_model(path, net);
  const std::string good = read_file(path);
  {
    NoGradGuard no_grad;
    net.state_dict()[1].second.copy_(from_vector<float>({1, NAN}, {2}));
  }
  const std::string msg = input_error_of([&] { save_model(path, net); });
  EXPECT_NE(msg.find(path + ": not written: tensor \"0.bias\" holds 1 non-finite value"), std::string::npos) << msg;
  SGD opt(net.named_parameters(), {.lr = 0.01});
  EXPECT_NE(input_error_of([&] { save_training_checkpoint(path, net, opt, TrainingState{}); }).find("not written"),
            std::string::npos);
  EXPECT_EQ(read_file(path), good);
  EXPECT_EQ(files_in(dir), std::vector<std::string>{"model_best.safetensors"});
}

TEST(Checkpoint, FileWithoutChecksumLoadsWithAWarning) {
  const std::string dir = test::temp_dir("ckpt");
  const std::string path = dir + "/old.safetensors";
  write_bytes(path, file_of(R"({"__metadata__":{"epoch":"3"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                            floats_le({1, 2})));
  SafeTensors file;
  const std::string err = stderr_of([&] { file = load_safetensors(path); });
  EXPECT_NE(err.find("voxgrad: warning: " + path + ": the file carries no checksum"), std::string::npos) << err;
  EXPECT_NE(err.find("its bytes cannot be verified"), std::string::npos) << err;
  EXPECT_FALSE(file.checksum_verified);
  EXPECT_EQ(file.metadata, (Metadata{{"epoch", "3"}}));
  EXPECT_EQ(file.tensors[0].second.to_vector<float>(), (std::vector<float>{1, 2}));
  // What voxgrad writes loads in silence.
  save_safetensors(dir + "/new.safetensors", {{"a", from_vector<float>({1, 2}, {2})}});
  EXPECT_EQ(stderr_of([&] { load_safetensors(dir + "/new.safetensors"); }), "");
}

TEST(Checkpoint, AllZeroWeightsLoadWithAWarning) {
  const std::string dir = test::temp_dir("ckpt");
  Sequential net({std::make_shared<Tiny>()});  // zero-initialised
  save_model(dir + "/zeros.safetensors", net);
  const std::string err = stderr_of([&] { load_model(dir + "/zeros.safetensors", net); });
  EXPECT_NE(err.find(dir + "/zeros.safetensors: every floating-point tensor is all zeros"), std::string::npos) << err;
  // One non-zero weight is a legitimate file (zero-initialised biases are common).
  {
    NoGradGuard no_grad;
    net.state_dict()[0].second.copy_(full({2, 3}, 0.5));
  }
  save_model(dir + "/some.safetensors", net);
  EXPECT_EQ(stderr_of([&] { load_model(dir + "/some.safetensors", net); }), "");
}

TEST(Checkpoint, BadHeaderIsQuotedToItsFirst200Characters) {
  const std::string dir = test::temp_dir("ckpt");
  const std::string path = dir + "/bad.safetensors";
  const std::string filler(100000, 'x');
  const std::string headers[] = {
      R"({"__metadata__":{"config":")" + filler,                                  // not JSON (cut short)
      R"({"a":{"dtype":"F32","note":")" + filler + R"("}})",                    // an entry without fields
      R"({"__metadata__":{"config":[")" + filler + R"("]}})",                    // a non-string metadata value
      R"({"a":{"dtype":")" + filler + R"(","shape":[],"data_offsets":[0,0]}})",  // an unknown dtype
      "[\"" + filler + "\"]",                                                    // not an object
  };
  for (const std::string& header : headers) {
    write_bytes(path, file_of(header, ""));
    const std::string msg = input_error_of([&] { load_safetensors(path); });
    EXPECT_LT(msg.size(), 900u) << msg.substr(0, 2000);
    EXPECT_EQ(msg.find(std::string(201, 'x')), std::string::npos) << msg.substr(0, 2000);
    EXPECT_NE(msg.find(std::string(100, 'x')), std::string::npos) << msg;  // a useful part is still shown
  }
  // Control characters are shown escaped, never sent to the terminal.
  write_bytes(path, file_of("{\"\x1b[31mred", ""));
  const std::string msg = input_error_of([&] { load_safetensors(path); });
  EXPECT_EQ(msg.find('\x1b'), std::string::npos) << msg;
  EXPECT_NE(msg.find("\\x1b[31mred"), std::string::npos) << msg;
}

TEST(Checkpoint, OnlyRegularFilesAreRead) {
  const std::string dir = test::temp_dir("ckpt");
  const std::string fifo = dir + "/model.safetensors";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto result = std::async(std::launch::async, [&] { return error_of([&] { load_safetensors(fifo); }); });
  if (result.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    ADD_FAILURE() << "load_safetensors blocks on a FIFO";
    const int writer = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);  // lets the blocked open return
    if (writer >= 0) ::close(writer);
  }
  EXPECT_NE(result.get().find(fifo + ": not a regular file (a FIFO)"), std::string::npos);
  EXPECT_NE(input_error_of([&] { load_safetensors(dir); }).find(dir + ": not a regular file (a folder)"),
            std::string::npos);
  EXPECT_NE(input_error_of([&] { load_safetensors("/dev/null"); }).find("/dev/null: not a regular file (a device)"),
            std::string::npos);
}

TEST(Checkpoint, TensorsLargerThanTheMemoryAreRefusedBeforeAllocating) {
  const std::string path = test::temp_dir("ckpt") + "/sparse.safetensors";
  // 2^38 floats: 1 TiB of data, held as a sparse file that takes no disk space.
  const std::string header = R"({"w":{"dtype":"F32","shape":[274877906944],"data_offsets":[0,1099511627776]}})";
  write_bytes(path, le64(header.size()) + header);
  if (::truncate(path.c_str(), static_cast<off_t>(8 + header.size() + (std::uint64_t{1} << 40))) != 0)
    GTEST_SKIP() << "this file system holds no 1 TiB sparse file";
  const std::string msg = input_error_of([&] { load_safetensors(path); });
  EXPECT_NE(msg.find(path + ": loading its 1 tensors would need 1.0 TiB"), std::string::npos) << msg;
}

// A valid training checkpoint (checksum and all) whose metadata entry `key` says `value`.
std::string checkpoint_with(const std::string& dir, const std::string& key, const std::string& value) {
  SafeTensors file = load_safetensors(saved_checkpoint(dir));
  file.metadata[key] = value;
  const std::string path = dir + "/edited.safetensors";
  save_safetensors(path, file.tensors, file.metadata);
  return path;
}

TEST(Checkpoint, TrainingCheckpointMetadataIsChecked) {
  const std::string dir = test::temp_dir("ckpt");
  const std::pair<std::string, std::string> bad[] = {
      {"step", "-1"}, {"epoch", "-3"}, {"step", "12abc"}, {"rng_seed", "-1"},
      {"lr", "nan"},  {"lr", "inf"},   {"lr", "-0.1"},    {"lr", "0.01x"}, {"format", "something-else"},
  };
  for (const auto& [key, value] : bad) {
    const std::string path = checkpoint_with(dir, key, value);
    Sequential net({std::make_shared<Tiny>()});
    SGD opt(net.named_parameters(), {.lr = 0.01, .momentum = 0.9});
    const std::string msg = input_error_of([&] { load_training_checkpoint(path, net, opt); });
    EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << key << "=" << value << ": " << msg;
    EXPECT_NE(msg.find(key == "format" ? "not a voxgrad training checkpoint" : "\"" + key + "\""), std::string::npos)
        << key << "=" << value << ": " << msg;
  }
  Sequential net({std::make_shared<Tiny>()});
  SGD opt(net.named_parameters(), {.lr = 0.01, .momentum = 0.9});
  EXPECT_EQ(load_training_checkpoint(checkpoint_with(dir, "lr", "0.25"), net, opt).step, 2);
  EXPECT_EQ(opt.lr(), 0.25);
}

TEST(Checkpoint, WeightsOfATrainingCheckpoint) {
  const std::string dir = test::temp_dir("ckpt");
  const std::string path = saved_checkpoint(dir, 11);
  Sequential net({std::make_shared<Tiny>()});
  load_checkpoint_weights(path, net);
  const SafeTensors file = load_safetensors(path);
  EXPECT_EQ(raw(net.state_dict()[0].second), raw(file.tensors[0].second));  // model.0.weight
  Sequential other({std::make_shared<Tiny>(), std::make_shared<Tiny>()});
  const std::string msg = input_error_of([&] { load_checkpoint_weights(path, other); });
  EXPECT_EQ(msg.rfind(path + ": the tensors do not match the model", 0), 0u) << msg;
  // A model file is not a training checkpoint.
  save_model(dir + "/model.safetensors", net);
  EXPECT_NE(input_error_of([&] { load_checkpoint_weights(dir + "/model.safetensors", net); })
                .find("not a voxgrad training checkpoint"),
            std::string::npos);
}

TEST(Checkpoint, MismatchReportListsAtMostTwentyNames) {
  Sequential net({std::make_shared<Tiny>()});
  NamedTensors many = net.state_dict();
  for (int i = 0; i < 1000; ++i) many.emplace_back("extra." + std::to_string(i), ones({1}));
  const std::string msg = input_error_of([&] { load_state_dict(net, many); });
  EXPECT_NE(msg.find("unexpected keys (1000): extra.0, "), std::string::npos) << msg;
  EXPECT_NE(msg.find("extra.19, and 980 more"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("extra.20,"), std::string::npos) << msg;
}

// The fuzz seeds carry checksums computed by the Python recipe of kChecksumKey's comment: they verify.
TEST(Checkpoint, ChecksumRecipeReproducedInPythonVerifies) {
  const std::string seeds = test::source_path("tests/fuzz/corpus_safetensors/");
  for (const char* name : {"model.safetensors", "checkpoint.safetensors", "all_dtypes.safetensors"}) {
    const SafeTensors file = load_safetensors(seeds + name);
    EXPECT_TRUE(file.checksum_verified) << name;
  }
  Sequential net({std::make_shared<Tiny>()});
  SGD opt(net.named_parameters(), {.lr = 0.1, .momentum = 0.9});
  EXPECT_EQ(load_training_checkpoint(seeds + "checkpoint.safetensors", net, opt).step, 3);
}

// The reference reader (the `safetensors` Python package) opens our file: names, shapes, dtypes, values.
TEST(Checkpoint, ReferencePythonReaderOpensOurFiles) {
  const char* python = "/usr/bin/python3";
  if (std::system("/usr/bin/python3 -c 'import safetensors' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "the safetensors Python package is not installed for " << python
                 << " (pip install safetensors)";
  const bool with_torch = std::system("/usr/bin/python3 -c 'import safetensors.torch' >/dev/null 2>&1") == 0;
  const std::string path = test::temp_dir("ckpt") + "/py.safetensors";
  const Tensor shared = from_vector<float>({0.5f, -1.25f, 3.0f, 1e-3f}, {1, 1, 2, 2});
  save_safetensors(path,
                   {{"encoder.0.conv1.weight", shared},
                    {"encoder.0.all_modules.0.weight", shared},  // an alias: stored once
                    {"f64", from_vector<double>({0.1, -2.5}, {2})},
                    {"labels", from_vector<std::int32_t>({-3, 4, 5}, {3})},
                    {"mask", from_vector<std::uint8_t>({0, 255}, {2})}},
                   {{"epoch", "7"}});
  // safetensors.torch when PyTorch is there (what users call), else the NumPy front end of the same reader.
  const std::string script =
      with_torch
          ? "import json,sys; from safetensors.torch import load_file; from safetensors import safe_open; "
            "t = load_file(sys.argv[1]); m = safe_open(sys.argv[1], 'pt').metadata(); "
            "print(json.dumps({'meta': m, 'tensors': {k: [list(v.shape), str(v.dtype).replace('torch.', ''), "
            "v.flatten().tolist()] for k, v in t.items()}}))"
          : "import json,sys; from safetensors.numpy import load_file; from safetensors import safe_open; "
            "t = load_file(sys.argv[1]); m = safe_open(sys.argv[1], 'np').metadata(); "
            "print(json.dumps({'meta': m, 'tensors': {k: [list(v.shape), str(v.dtype), "
            "v.flatten().tolist()] for k, v in t.items()}}))";
  const std::string command = std::string(python) + " -c \"" + script + "\" " + path;
  FILE* pipe = ::popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string out;
  char buf[4096];
  while (std::size_t n = std::fread(buf, 1, sizeof buf, pipe)) out.append(buf, n);
  ASSERT_EQ(::pclose(pipe), 0) << command << "\n" << out;
  const Json j = Json::parse(out);
  EXPECT_EQ(j["meta"]["epoch"], "7");
  // The alias as safetensors.torch.save_model records one (its load_model fills it back).
  EXPECT_EQ(j["meta"]["encoder.0.all_modules.0.weight"], "encoder.0.conv1.weight");
  const Json& t = j["tensors"];
  EXPECT_EQ(t.size(), 4u);
  EXPECT_EQ(t["encoder.0.conv1.weight"][0], Json({1, 1, 2, 2}));
  EXPECT_EQ(t["encoder.0.conv1.weight"][1], "float32");
  EXPECT_EQ(t["encoder.0.conv1.weight"][2], Json({0.5, -1.25, 3.0, static_cast<double>(1e-3f)}));
  EXPECT_EQ(t["f64"][1], "float64");
  EXPECT_EQ(t["f64"][2], Json({0.1, -2.5}));
  EXPECT_EQ(t["labels"][1], "int32");
  EXPECT_EQ(t["labels"][2], Json({-3, 4, 5}));
  EXPECT_EQ(t["mask"][1], "uint8");
  EXPECT_EQ(t["mask"][2], Json({0, 255}));
}

}  // namespace
}  // namespace voxgrad
