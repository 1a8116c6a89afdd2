// Replays the malformed-NIfTI corpus (tests/data/nifti_malformed, made by make_corpus.py): every
// file must fail with a voxgrad::Error that starts with its path and names the reason listed in
// manifest.tsv, through every reading entry point, and never allocate what the file cannot back.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/allocator.h"
#include "engine/error.h"
#include "io/gzip_stream.h"
#include "io/nifti.h"
#include "tests/test_support.h"

namespace voxgrad::io {
namespace {

const std::string kCorpus = std::string(VOXGRAD_SOURCE_DIR) + "/tests/data/nifti_malformed";

struct Case {
  std::string file;
  std::string reason;  // "-": must read
};

std::vector<Case> manifest() {
  std::ifstream in(kCorpus + "/manifest.tsv");
  std::vector<Case> cases;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto tab = line.find('\t');
    if (tab == std::string::npos) continue;
    cases.push_back({line.substr(0, tab), line.substr(tab + 1)});
  }
  return cases;
}

bool is_pair(const std::string& name) { return name.ends_with(".hdr") || name.ends_with(".img"); }

// Runs `read` and checks it throws an Error starting with `path` and containing `reason`.
template <class F>
::testing::AssertionResult fails_with(F&& read, const std::string& path, const std::string& reason, const char* via) {
  try {
    read();
  } catch (const Error& e) {
    const std::string msg = e.what();
    // A pair's error names the half at fault: the .hdr, or the .img beside it.
    const std::string img = is_pair(path) ? path.substr(0, path.size() - 4) + ".img" : path;
    if (msg.rfind(path + ": ", 0) != 0 && msg.rfind(img + ": ", 0) != 0)
      return ::testing::AssertionFailure() << via << ": message does not start with the path: " << msg;
    if (msg.find(reason) == std::string::npos)
      return ::testing::AssertionFailure() << via << ": message lacks \"" << reason << "\": " << msg;
    return ::testing::AssertionSuccess();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << via << ": threw a non-voxgrad exception: " << e.what();
  }
  return ::testing::AssertionFailure() << via << ": read without error, expected \"" << reason << "\"";
}

TEST(NiftiMalformed, ManifestListsTheCorpus) {
  const auto cases = manifest();
  EXPECT_GE(cases.size(), 40u) << "manifest.tsv missing or short: rerun make_corpus.py";
}

TEST(NiftiMalformed, EveryFileFailsCleanlyWithItsReason) {
  for (const Case& c : manifest()) {
    if (c.reason == "-") continue;
    SCOPED_TRACE(c.file);
    const std::string path = kCorpus + "/" + c.file;
    EXPECT_TRUE(fails_with([&] { read_nifti(path); }, path, c.reason, "read_nifti"));
    EXPECT_TRUE(fails_with([&] { read_nifti_raw(path); }, path, c.reason, "read_nifti_raw"));
    EXPECT_TRUE(fails_with([&] { read_nifti_header(path); read_nifti_raw(path); }, path, c.reason, "header+raw"));
    if (!is_pair(c.file)) {
      // The in-memory reader must say the same with the name it was given.
      const std::string bytes = read_file_bytes(path);
      const std::span<const std::byte> span(reinterpret_cast<const std::byte*>(bytes.data()), bytes.size());
      EXPECT_TRUE(fails_with([&] { read_nifti_from_memory(span, path); }, path, c.reason, "from_memory"));
    }
  }
}

TEST(NiftiMalformed, ToleratedFilesRead) {
  int seen = 0;
  for (const Case& c : manifest()) {
    if (c.reason != "-") continue;
    ++seen;
    SCOPED_TRACE(c.file);
    const std::string path = kCorpus + "/" + c.file;
    // Every tolerated file holds the same 4x4x4 uint8 ramp: i % 251.
    Volume v = read_nifti(path);
    ASSERT_EQ(v.data.dtype(), DType::UInt8);
    ASSERT_EQ(v.data.shape(), (Shape{4, 4, 4}));
    const auto values = v.data.to_vector<std::uint8_t>();
    for (int i = 0; i < 64; ++i) ASSERT_EQ(values[static_cast<std::size_t>(i)], i % 251) << "voxel " << i;
    const std::string bytes = read_file_bytes(path);
    const std::span<const std::byte> span(reinterpret_cast<const std::byte*>(bytes.data()), bytes.size());
    EXPECT_EQ(read_nifti_from_memory(span, path).data.to_vector<std::uint8_t>(), values);
  }
  EXPECT_EQ(seen, 3);
}

// A header declaring 2^40 bytes must be refused from the header alone: no tensor allocated,
// nothing inflated.
TEST(NiftiMalformed, HugeDeclaredSizeFailsFastWithoutAllocating) {
  for (const char* name : {"huge_declared.nii", "huge_declared.nii.gz", "huge_declared_nifti2.nii"}) {
    SCOPED_TRACE(name);
    const std::string path = kCorpus + "/" + name;
    const auto before = host_allocator_stats();
    EXPECT_THROW(read_nifti(path), Error);
    EXPECT_THROW(read_nifti_raw(path), Error);
    const auto after = host_allocator_stats();
    EXPECT_EQ(after.allocations, before.allocations);
  }
}

// The bomb inflates to ~2 MiB, but only the 352 + 64 declared bytes may be inflated: reading it
// costs the same as reading a file without the tail.
TEST(NiftiMalformed, GzipBombInflatesOnlyTheDeclaredBytes) {
  const std::string path = kCorpus + "/gzip_bomb.nii.gz";
  InputStream s = InputStream::open_file(path);
  std::vector<unsigned char> buf(352 + 64);
  s.read_exact(buf.data(), buf.size(), "bomb");
  EXPECT_EQ(s.position(), buf.size());
  const NiftiRaw raw = read_nifti_raw(path);
  EXPECT_EQ(raw.nbytes, 64u);
}

}  // namespace
}  // namespace voxgrad::io
