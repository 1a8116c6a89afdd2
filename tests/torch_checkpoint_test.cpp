// The PyTorch checkpoint reader against files torch.save wrote (tests/data/pth, compared value by
// value with expected.json) and against tests/data/pth_malformed, where every file must be refused
// with the reason manifest.tsv gives. Both made by tools/make_pth_fixtures.py.
#include "io/torch_checkpoint.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/allocator.h"
#include "engine/error.h"
#include "engine/json.h"
#include "io/gzip_stream.h"
#include "io/pickle.h"
#include "io/zip_archive.h"
#include "tests/test_support.h"

namespace voxgrad::io {
namespace {

using Kind = PickleValue::Kind;

std::string fixtures() { return test::source_path("tests/data/pth"); }
std::string malformed() { return test::source_path("tests/data/pth_malformed"); }

Json expected_json() {
  std::ifstream in(fixtures() + "/expected.json");
  return Json::parse(in);
}

std::vector<double> tensor_values(const Tensor& t) {
  std::vector<double> out;
  switch (t.dtype()) {
    case DType::Float32:
      for (float x : t.to_vector<float>()) out.push_back(x);
      break;
    case DType::Float64:
      for (double x : t.to_vector<double>()) out.push_back(x);
      break;
    case DType::Int32:
      for (std::int32_t x : t.to_vector<std::int32_t>()) out.push_back(x);
      break;
    case DType::UInt8:
      for (std::uint8_t x : t.to_vector<std::uint8_t>()) out.push_back(x);
      break;
  }
  return out;
}

DType voxgrad_dtype_for(const std::string& torch_dtype) {
  if (torch_dtype == "float64") return DType::Float64;
  if (torch_dtype == "int64" || torch_dtype == "int32") return DType::Int32;
  if (torch_dtype == "uint8" || torch_dtype == "bool") return DType::UInt8;
  return DType::Float32;  // float32, float16, bfloat16
}

// Compares `v` with its mirror (the JSON form make_pth_fixtures.py writes); `path` names the spot.
::testing::AssertionResult same(const PickleValue& v, const Json& j, const std::string& path) {
  auto fail = [&](const std::string& what) {
    return ::testing::AssertionFailure() << path << ": " << what << " (read a " << pickle_kind_name(v.kind)
                                         << ", expected " << j.dump().substr(0, 200) << ")";
  };
  if (j.is_null()) return v.is(Kind::None) ? ::testing::AssertionSuccess() : fail("not None");
  if (j.is_boolean())
    return v.is(Kind::Bool) && v.boolean == j.get<bool>() ? ::testing::AssertionSuccess() : fail("bool");
  if (j.is_string())
    return v.is(Kind::String) && v.text == j.get<std::string>() ? ::testing::AssertionSuccess() : fail("str");
  if (j.is_array()) {
    if (!v.is(Kind::List) || v.items().size() != j.size()) return fail("list");
    for (std::size_t i = 0; i < j.size(); ++i) {
      auto r = same(v.items()[i], j[i], path + "[" + std::to_string(i) + "]");
      if (!r) return r;
    }
    return ::testing::AssertionSuccess();
  }
  const auto& [tag, body] = *j.items().begin();
  if (tag == "int")
    return v.is(Kind::Int) && v.integer == body.get<std::int64_t>() ? ::testing::AssertionSuccess() : fail("int");
  if (tag == "float")
    return v.is(Kind::Float) && v.number == body.get<double>() ? ::testing::AssertionSuccess() : fail("float");
  if (tag == "bytes") {
    std::string bytes;
    for (const auto& b : body) bytes.push_back(static_cast<char>(b.get<int>()));
    return v.is(Kind::Bytes) && v.text == bytes ? ::testing::AssertionSuccess() : fail("bytes");
  }
  if (tag == "object")
    return v.is(Kind::Object) && v.text == body.get<std::string>() ? ::testing::AssertionSuccess() : fail("object");
  if (tag == "tuple") {
    if (!v.is(Kind::Tuple) || v.items().size() != body.size()) return fail("tuple");
    for (std::size_t i = 0; i < body.size(); ++i) {
      auto r = same(v.items()[i], body[i], path + "[" + std::to_string(i) + "]");
      if (!r) return r;
    }
    return ::testing::AssertionSuccess();
  }
  if (tag == "dict") {
    if (!v.is(Kind::Dict) || v.entries().size() != body.size()) return fail("dict of another size");
    for (std::size_t i = 0; i < body.size(); ++i) {
      const std::string at = path + "{" + body[i][0].dump() + "}";
      auto r = same(v.entries()[i].first, body[i][0], at + " key");
      if (!r) return r;
      r = same(v.entries()[i].second, body[i][1], at);
      if (!r) return r;
    }
    return ::testing::AssertionSuccess();
  }
  if (tag == "tensor") {
    if (!v.is(Kind::Tensor)) return fail("not a tensor");
    if (v.tensor.shape() != body["shape"].get<Shape>()) return fail("shape " + shape_str(v.tensor.shape()));
    if (v.tensor.dtype() != voxgrad_dtype_for(body["dtype"].get<std::string>())) return fail("dtype");
    const std::vector<double> got = tensor_values(v.tensor);
    const auto want = body["values"].get<std::vector<double>>();
    if (got.size() != want.size()) return fail("element count");
    for (std::size_t i = 0; i < got.size(); ++i)
      if (got[i] != want[i] || std::signbit(got[i]) != std::signbit(want[i]))
        return fail("element " + std::to_string(i) + " is " + std::to_string(got[i]));
    return ::testing::AssertionSuccess();
  }
  return fail("unknown mirror tag " + tag);
}

TEST(TorchCheckpoint, EveryFixtureMatchesWhatTorchSaved) {
  const Json expected = expected_json();
  ASSERT_EQ(expected.size(), 2u);
  for (const auto& [file, mirror] : expected.items()) {
    SCOPED_TRACE(file);
    const PickleValue v = load_torch_checkpoint(fixtures() + "/" + file);
    EXPECT_TRUE(same(v, mirror, file));
  }
}

TEST(TorchCheckpoint, StateDictKeepsViewsAndConvertsHalfPrecision) {
  const PickleValue sd = load_torch_checkpoint(fixtures() + "/state_dict.pth");
  ASSERT_TRUE(sd.is(Kind::Dict));
  const PickleValue* transposed = sd.get("transposed");
  ASSERT_NE(transposed, nullptr);
  EXPECT_EQ(transposed->tensor.shape(), (Shape{4, 3}));
  // base = arange(12) * 0.5 - 1.25 as (3, 4); its transpose's first row is column 0: 0, 4, 8.
  EXPECT_EQ(transposed->tensor.to_vector<float>()[1], 4 * 0.5f - 1.25f);
  const PickleValue* f16 = sd.get("f16");
  ASSERT_NE(f16, nullptr);
  EXPECT_EQ(f16->tensor.dtype(), DType::Float32);
  EXPECT_EQ(f16->tensor.to_vector<float>()[2], 65504.0f);
  const PickleValue* bf16 = sd.get("bf16");
  ASSERT_NE(bf16, nullptr);
  EXPECT_EQ(bf16->tensor.to_vector<float>()[3], 7.0f);
}

TEST(TorchCheckpoint, NnunetLikeCheckpointHasItsKeys) {
  const PickleValue ckpt = load_torch_checkpoint(fixtures() + "/nnunet_like.pth");
  for (const char* key : {"network_weights", "optimizer_state", "grad_scaler_state", "logging", "current_epoch",
                          "init_args", "trainer_name", "inference_allowed_mirroring_axes"})
    EXPECT_NE(ckpt.get(key), nullptr) << key;
  const PickleValue& weights = *ckpt.get("network_weights");
  ASSERT_TRUE(weights.is(Kind::Dict));
  ASSERT_NE(weights.get("0.weight"), nullptr);
  EXPECT_EQ(weights.get("0.weight")->tensor.shape(), (Shape{2, 1, 2, 2, 2}));
  EXPECT_EQ(ckpt.get("trainer_name")->text, "nnUNetTrainer");
  EXPECT_EQ(ckpt.get("current_epoch")->integer, 2);
  const PickleValue& dice = *ckpt.get("logging")->get("mean_fg_dice");
  ASSERT_EQ(dice.items().size(), 2u);
  EXPECT_EQ(dice.items()[1].number, 0.71875);  // a numpy.float64, decoded
}

TEST(TorchCheckpoint, BytesReaderMatchesFileReader) {
  const std::string path = fixtures() + "/state_dict.pth";
  const PickleValue a = load_torch_checkpoint(path);
  const PickleValue b = load_torch_checkpoint_from_bytes(read_file_bytes(path), "memory");
  ASSERT_EQ(a.entries().size(), b.entries().size());
  for (std::size_t i = 0; i < a.entries().size(); ++i)
    EXPECT_EQ(tensor_values(a.entries()[i].second.tensor), tensor_values(b.entries()[i].second.tensor));
}

// ---- malformed files -----------------------------------------------------------------------

struct Case {
  std::string file;
  std::string reason;
};

std::vector<Case> manifest() {
  std::ifstream in(malformed() + "/manifest.tsv");
  std::vector<Case> cases;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto tab = line.find('\t');
    if (tab != std::string::npos) cases.push_back({line.substr(0, tab), line.substr(tab + 1)});
  }
  return cases;
}

TEST(TorchCheckpointMalformed, ManifestListsTheCorpus) { EXPECT_GE(manifest().size(), 25u); }

TEST(TorchCheckpointMalformed, EveryFileFailsCleanlyWithItsReason) {
  for (const Case& c : manifest()) {
    SCOPED_TRACE(c.file);
    const std::string path = malformed() + "/" + c.file;
    const auto before = host_allocator_stats();
    try {
      load_torch_checkpoint(path);
      ADD_FAILURE() << "read without error, expected \"" << c.reason << "\"";
    } catch (const InputError& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << msg;
      EXPECT_NE(msg.find(c.reason), std::string::npos) << msg;
      EXPECT_FALSE(test::has_source_text(msg)) << msg;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "threw something other than an InputError: " << e.what();
    }
    // Refused before any tensor of the declared size could be allocated.
    EXPECT_LE(host_allocator_stats().allocations - before.allocations, 2u);
  }
}

// Every single-byte change and every cut of a real checkpoint: a value or an InputError, nothing else.
TEST(TorchCheckpointMalformed, EveryByteFlipAndCutFailsCleanlyOrReads) {
  const std::string good = read_file_bytes(fixtures() + "/state_dict.pth");
  int refused = 0;
  auto attempt = [&](std::string bytes) {
    try {
      load_torch_checkpoint_from_bytes(std::move(bytes), "flipped.pth");
    } catch (const InputError&) {
      ++refused;
    }
  };
  for (std::size_t at = 0; at < good.size(); ++at) {
    std::string bad = good;
    bad[at] = static_cast<char>(static_cast<unsigned char>(bad[at]) ^ 0xff);
    attempt(bad);
  }
  // Every byte of the stored data is covered by a CRC, so most flips are refused.
  EXPECT_GT(refused, static_cast<int>(good.size()) / 2);
  for (std::size_t size = 0; size < good.size(); size += 7) {
    std::string message = test::error_of([&] { load_torch_checkpoint_from_bytes(good.substr(0, size), "cut.pth"); });
    EXPECT_FALSE(message.empty()) << "cut to " << size;
  }
}

// ---- the readers on their own ----------------------------------------------------------------

std::span<const std::byte> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// Pickles written out as hex, as Python's pickle.dumps(..., protocol=2) gives them.
std::string from_hex(const std::string& hex) {
  std::string out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

TEST(Pickle, ReadsScalarsAndContainers) {
  // {'a': [1, -2, 3.5, None, True], 'b': ('x', b'\x01'), 300: 2**40}
  const std::string p = from_hex(
      "80027d71002858010000006171015d7102284b014afeffffff47400c0000000000004e88655801000000628c0178430101864d2c018a"
      "06000000000001752e");
  const PickleValue v = read_pickle(as_bytes(p), "hand.pkl");
  ASSERT_TRUE(v.is(Kind::Dict));
  ASSERT_EQ(v.entries().size(), 3u);
  const auto& a = v.get("a")->items();
  ASSERT_EQ(a.size(), 5u);
  EXPECT_EQ(a[0].integer, 1);
  EXPECT_EQ(a[1].integer, -2);
  EXPECT_EQ(a[2].number, 3.5);
  EXPECT_TRUE(a[3].is(Kind::None));
  EXPECT_TRUE(a[4].boolean);
  const auto& b = v.get("b")->items();
  EXPECT_EQ(b[0].text, "x");
  EXPECT_TRUE(b[1].is(Kind::Bytes));
  EXPECT_EQ(v.entries()[2].first.integer, 300);
  EXPECT_EQ(v.entries()[2].second.integer, std::int64_t{1} << 40);
}

TEST(Pickle, RefusesPersistentIdsWithoutALoader) {
  const std::string p = from_hex("8002580100000061512e");  // persistent id 'a'
  EXPECT_NE(test::error_of([&] { read_pickle(as_bytes(p), "p.pkl"); }).find("persistent id"), std::string::npos);
}

TEST(Pickle, DepthLimitIsTheCallers) {
  std::string p = "\x80\x02";
  p += std::string(10, ']') + std::string(9, 'a') + ".";
  EXPECT_NO_THROW(read_pickle(as_bytes(p), "p.pkl", {}, PickleLimits{10}));
  EXPECT_NE(test::error_of([&] { read_pickle(as_bytes(p), "p.pkl", {}, PickleLimits{9}); }).find("nests deeper"),
            std::string::npos);
}

TEST(Pickle, KeySetTwiceKeepsItsPlaceAndTakesTheLastValue) {
  // {'a': 1, 'b': 3, 'a': 2} in one SETITEMS, as a Python dict reads it: {'a': 2, 'b': 3}.
  const std::string p = from_hex("80027d285801000000614b015801000000624b035801000000614b02752e");
  const PickleValue v = read_pickle(as_bytes(p), "p.pkl");
  ASSERT_EQ(v.entries().size(), 2u);
  EXPECT_EQ(v.entries()[0].first.text, "a");
  EXPECT_EQ(v.entries()[0].second.integer, 2);
  EXPECT_EQ(v.get("b")->integer, 3);
}

// One 1 MiB string, memoised once and fetched 200 times: refused once the copies pass their budget.
TEST(Pickle, MemoCopiesOfLongStringsAreBounded) {
  const std::uint32_t n = 1u << 20;
  std::string p = "\x80\x02X";
  for (int i = 0; i < 4; ++i) p.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  p += std::string(n, 'a') + std::string("q\0", 2);
  for (int i = 0; i < 200; ++i) p += std::string("h\0", 2);
  p += ".";
  EXPECT_NE(test::error_of([&] { read_pickle(as_bytes(p), "p.pkl"); }).find("repeats its strings"), std::string::npos);
}

TEST(ZipArchive, ListsEntriesAndChecksTheirCrc) {
  const ZipArchive zip = ZipArchive::open_file(fixtures() + "/state_dict.pth");
  const ZipEntry* pickle = zip.find("state_dict/data.pkl");
  ASSERT_NE(pickle, nullptr);
  EXPECT_EQ(zip.read(*pickle).size(), pickle->size);
  EXPECT_EQ(zip.find("nothing"), nullptr);
  EXPECT_GE(zip.entries().size(), 3u);
}

}  // namespace
}  // namespace voxgrad::io
