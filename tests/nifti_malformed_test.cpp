// Replays the malformed-NIfTI corpus (tests/data/nifti_malformed, made by make_corpus.py): every
// file must fail with a voxgrad::InputError that starts with its path and names the reason listed
// in manifest.tsv, through every reading entry point, and never allocate what the file cannot back.
// Then the gzip integrity checks on every corruption of a small file: each byte flipped, each cut.
#include <gtest/gtest.h>
#include <zlib.h>

#include <fstream>
#include <functional>
#include <regex>
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

// Found where the suite runs: a build carried to another machine has the tree elsewhere.
std::string corpus() { return test::source_path("tests/data/nifti_malformed"); }

struct Case {
  std::string file;
  std::string reason;  // "-": must read
};

std::vector<Case> manifest() {
  std::ifstream in(corpus() + "/manifest.tsv");
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

// Runs `read` and checks it throws an InputError starting with `path`, containing `reason` and no
// source text (a file's fault is told in plain words, never as a C++ expression or file:line).
template <class F>
::testing::AssertionResult fails_with(F&& read, const std::string& path, const std::string& reason, const char* via) {
  try {
    read();
  } catch (const InputError& e) {
    const std::string msg = e.what();
    static const std::regex source_text(R"(\.(cpp|h):[0-9]+)");
    if (std::regex_search(msg, source_text))
      return ::testing::AssertionFailure() << via << ": message carries source text: " << msg;
    // A pair's error names the half at fault: the .hdr, or the .img beside it.
    const std::string img = is_pair(path) ? path.substr(0, path.size() - 4) + ".img" : path;
    if (msg.rfind(path + ": ", 0) != 0 && msg.rfind(img + ": ", 0) != 0)
      return ::testing::AssertionFailure() << via << ": message does not start with the path: " << msg;
    if (msg.find(reason) == std::string::npos)
      return ::testing::AssertionFailure() << via << ": message lacks \"" << reason << "\": " << msg;
    return ::testing::AssertionSuccess();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << via << ": threw something other than a voxgrad::InputError: " << e.what();
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
    const std::string path = corpus() + "/" + c.file;
    EXPECT_TRUE(fails_with([&] { read_nifti(path); }, path, c.reason, "read_nifti"));
    EXPECT_TRUE(fails_with([&] { read_nifti_raw(path); }, path, c.reason, "read_nifti_raw"));
    EXPECT_TRUE(fails_with([&] { read_nifti_header(path); read_nifti_raw(path); }, path, c.reason, "header+raw"));
    EXPECT_TRUE(fails_with([&] { read_nifti_float32(path); }, path, c.reason, "read_nifti_float32"));
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
    const std::string path = corpus() + "/" + c.file;
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
    const std::string path = corpus() + "/" + name;
    const auto before = host_allocator_stats();
    EXPECT_THROW(read_nifti(path), Error);
    EXPECT_THROW(read_nifti_raw(path), Error);
    const auto after = host_allocator_stats();
    EXPECT_EQ(after.allocations, before.allocations);
  }
}

// The bomb inflates to ~2 MiB past its 64 declared voxels. The voxels are read as declared, and the
// rest is inflated only to check the member's trailer: a header read stops early, a voxel read
// reads the whole file.
TEST(NiftiMalformed, GzipBombIsCheckedToItsTrailerAndReads) {
  const std::string path = corpus() + "/gzip_bomb.nii.gz";
  InputStream s = InputStream::open_file(path);
  std::vector<unsigned char> buf(352 + 64);
  s.read_exact(buf.data(), buf.size(), "bomb");
  EXPECT_EQ(s.position(), buf.size());
  s.verify_to_end();
  EXPECT_EQ(s.position(), 352u + 64u + (2u << 20));
  const NiftiRaw raw = read_nifti_raw(path);
  EXPECT_EQ(raw.nbytes, 64u);
}

// The exact words for a trailer that disagrees, as the command line prints them after "voxgrad: error: ".
TEST(NiftiMalformed, TrailerMismatchesHaveFixedMessages) {
  for (const auto& [name, reason] : {std::pair<const char*, const char*>{"crc_mismatch.nii.gz", "CRC mismatch"},
                                     {"isize_mismatch.nii.gz", "length mismatch"},
                                     {"crc_mismatch_second_member.nii.gz", "CRC mismatch"}}) {
    SCOPED_TRACE(name);
    const std::string path = corpus() + "/" + name;
    EXPECT_EQ(test::error_of([&] { read_nifti(path); }), path + ": corrupt gzip data (" + reason + ")");
    // A header-only read inflates no further than the header.
    EXPECT_NO_THROW(read_nifti_header(path));
  }
}

// ---- every corruption of a small .nii.gz ------------------------------------------------------

// What `gzip -t` decides, computed with zlib alone: every gzip member inflates and its CRC32 and
// length trailer match; after a member, bytes that do not start another member are ignored (the
// reader's rule for trailing padding).
bool zlib_accepts(const std::string& bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  std::size_t pos = 0;
  std::vector<unsigned char> out(1 << 16);
  for (;;) {
    if (bytes.size() - pos < 2 || p[pos] != 0x1f || p[pos + 1] != 0x8b) return pos > 0;
    z_stream z{};
    if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) return false;
    z.next_in = const_cast<unsigned char*>(p + pos);
    z.avail_in = static_cast<uInt>(bytes.size() - pos);
    int rc = Z_OK;
    while (rc == Z_OK) {
      z.next_out = out.data();
      z.avail_out = static_cast<uInt>(out.size());
      rc = inflate(&z, Z_NO_FLUSH);
    }
    pos = bytes.size() - z.avail_in;
    inflateEnd(&z);
    if (rc != Z_STREAM_END) return false;
  }
}

// A small gzip image in one member (as voxgrad writes it) and in two (header, then voxels).
std::vector<std::pair<std::string, std::string>> small_gzip_images() {
  const std::string dir = test::temp_dir("nifti_gz_small");
  std::vector<float> values(5 * 4 * 3);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>((i * 7919) % 113) * 0.5f;
  write_nifti(dir + "/one.nii.gz", make_volume(from_vector(values, {3, 4, 5})));
  write_nifti(dir + "/plain.nii", make_volume(from_vector(values, {3, 4, 5})));
  const std::string plain = read_file_bytes(dir + "/plain.nii");
  auto deflated = [](const std::string& data) {
    z_stream z{};
    EXPECT_EQ(deflateInit2(&z, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
    std::string out(deflateBound(&z, data.size()), '\0');
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
    z.avail_in = static_cast<uInt>(data.size());
    z.next_out = reinterpret_cast<Bytef*>(out.data());
    z.avail_out = static_cast<uInt>(out.size());
    EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
    out.resize(z.total_out);
    deflateEnd(&z);
    return out;
  };
  return {{"one member", read_file_bytes(dir + "/one.nii.gz")},
          {"two members", deflated(plain.substr(0, 352)) + deflated(plain.substr(352))}};
}

// Every way of reading voxels must refuse `bytes`: from memory, and from a file through the raw,
// Volume and chunked float32 readers. Returns the first message (for the caller to inspect).
::testing::AssertionResult all_readers_refuse(const std::string& bytes, const std::string& file, std::string* message) {
  const std::span<const std::byte> span(reinterpret_cast<const std::byte*>(bytes.data()), bytes.size());
  {
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  const std::pair<const char*, std::function<void()>> readers[] = {
      {"read_nifti_from_memory", [&] { read_nifti_from_memory(span, file); }},
      {"read_nifti_raw", [&] { read_nifti_raw(file); }},
      {"read_nifti", [&] { read_nifti(file); }},
      {"read_nifti_float32", [&] { read_nifti_float32(file); }},
  };
  for (const auto& [via, read] : readers) {
    try {
      read();
      return ::testing::AssertionFailure() << via << " accepted it";
    } catch (const InputError& e) {
      if (message != nullptr && message->empty()) *message = e.what();
    } catch (const std::exception& e) {
      return ::testing::AssertionFailure() << via << " threw something other than an InputError: " << e.what();
    }
  }
  return ::testing::AssertionSuccess();
}

// Each byte of the file flipped in turn (all bits, then the lowest): whatever `gzip -t` would
// reject, the reader rejects, whichever way the voxels are read.
TEST(NiftiGzipIntegrity, EveryByteFlipThatZlibRejectsIsRejected) {
  const std::string file = test::temp_dir("nifti_flip") + "/flipped.nii.gz";
  for (const auto& [what, good] : small_gzip_images()) {
    SCOPED_TRACE(what);
    ASSERT_TRUE(zlib_accepts(good));
    int rejected = 0;
    for (std::size_t at = 0; at < good.size(); ++at) {
      for (const unsigned char mask : {0xff, 0x01}) {
        std::string bad = good;
        bad[at] = static_cast<char>(static_cast<unsigned char>(bad[at]) ^ mask);
        if (zlib_accepts(bad)) continue;
        ++rejected;
        ASSERT_TRUE(all_readers_refuse(bad, file, nullptr)) << "byte " << at << " of " << good.size() << " ^ "
                                                             << static_cast<int>(mask);
      }
    }
    // Nearly every flip breaks the data or its checksum; a few land in fields gzip ignores (mtime, OS).
    EXPECT_GT(rejected, static_cast<int>(good.size()));
  }
}

// The file cut at every length short of its end: always refused, and the message says truncated.
TEST(NiftiGzipIntegrity, EveryCutBeforeTheEndIsRejectedAsTruncated) {
  const std::string file = test::temp_dir("nifti_cut") + "/cut.nii.gz";
  for (const auto& [what, good] : small_gzip_images()) {
    SCOPED_TRACE(what);
    for (std::size_t size = 0; size < good.size(); ++size) {
      std::string message;
      ASSERT_TRUE(all_readers_refuse(good.substr(0, size), file, &message)) << "cut to " << size << " bytes";
      EXPECT_NE(message.find("truncated"), std::string::npos) << "cut to " << size << ": " << message;
    }
  }
}

}  // namespace
}  // namespace voxgrad::io
