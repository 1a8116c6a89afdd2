// `voxgrad bench`: op micro-benchmarks at a U-Net-like activation size, forward and forward+backward,
// one JSON line per case on stdout and a table on stderr; optionally the CPU alongside the GPU.
// Device time is read only after synchronize(), so queued GPU work is counted in full.
// `voxgrad bench nifti FILE`: reading a NIfTI file (raw, and into float32) beside zlib alone
// inflating the same file into memory, the yardstick the reader is held to.
#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <thread>

#include "apps/bench/bench_conv.h"
#include "apps/bench/bench_loss.h"
#include "apps/bench/bench_peak.h"
#include "apps/bench/bench_predict.h"
#include "apps/bench/bench_train.h"
#include "apps/cli/cli.h"
#include "apps/cli/cli_checks.h"
#include "engine/files.h"
#include "engine/json.h"
#include "engine/log.h"
#include "engine/ops.h"
#include "engine/tensor.h"
#include "io/nifti.h"

namespace voxgrad::cli {

namespace {

struct BenchOptions {
  std::vector<std::int64_t> shape = {2, 32, 64, 64, 64};  // (N, C, D, H, W)
  int reps = 10;
  int warmup = 2;
  std::vector<std::string> cases;  // empty: all
  bool compare_cpu = false;
};

struct BenchCase {
  std::string name;
  // The operands on `d` for an (N, C, D, H, W) activation shape.
  std::function<std::vector<Tensor>(const Shape&, Device, Generator&)> inputs;
  std::function<Tensor(const std::vector<Tensor>&)> op;
};

Tensor activation(const Shape& s, Device d, Generator& g) { return randn(s, g, DType::Float32, d); }

const std::vector<BenchCase>& bench_cases() {
  static const std::vector<BenchCase> cases = {
      {"add_channel",
       [](const Shape& s, Device d, Generator& g) {
         return std::vector<Tensor>{activation(s, d, g), randn({s[1]}, g, DType::Float32, d)};
       },
       [](const std::vector<Tensor>& in) { return add(in[0], in[1]); }},
      {"exp", [](const Shape& s, Device d, Generator& g) { return std::vector<Tensor>{activation(s, d, g)}; },
       [](const std::vector<Tensor>& in) { return exp(in[0]); }},
      {"leaky_relu", [](const Shape& s, Device d, Generator& g) { return std::vector<Tensor>{activation(s, d, g)}; },
       [](const std::vector<Tensor>& in) { return leaky_relu(in[0], 0.01); }},
      {"sum_0234", [](const Shape& s, Device d, Generator& g) { return std::vector<Tensor>{activation(s, d, g)}; },
       [](const std::vector<Tensor>& in) { return sum(in[0], {0, 2, 3, 4}); }},
      {"softmax", [](const Shape& s, Device d, Generator& g) { return std::vector<Tensor>{activation(s, d, g)}; },
       [](const std::vector<Tensor>& in) { return softmax(in[0], 1); }},
      {"concat",
       [](const Shape& s, Device d, Generator& g) {
         // Two halves of the channels, as a U-Net decoder joins its skip connection.
         Shape a = s, b = s;
         a[1] = s[1] / 2;
         b[1] = s[1] - a[1];
         return std::vector<Tensor>{activation(a, d, g), activation(b, d, g)};
       },
       [](const std::vector<Tensor>& in) { return concat(in, 1); }},
  };
  return cases;
}

struct Timing {
  double median_ms = 0, min_ms = 0, max_ms = 0, gb_per_s = 0;
};

Timing summarize(std::vector<double> ms, double bytes) {
  std::sort(ms.begin(), ms.end());
  Timing t;
  const std::size_t n = ms.size();
  t.median_ms = n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
  t.min_ms = ms.front();
  t.max_ms = ms.back();
  t.gb_per_s = t.median_ms > 0 ? bytes / (t.median_ms * 1e6) : 0;
  return t;
}

Json timing_json(const Timing& t) {
  return {{"median_ms", t.median_ms}, {"min_ms", t.min_ms}, {"max_ms", t.max_ms}, {"gb_per_s", t.gb_per_s}};
}

struct CaseResult {
  Timing forward, forward_backward;
};

// Times one case on one device. GB/s counts every operand and result once (and every gradient
// once in forward+backward): a lower bound on the memory traffic, comparable across devices.
CaseResult time_case(const BenchCase& c, const Shape& shape, Device d, const BenchOptions& opt) {
  Generator gen(1234);
  const std::vector<Tensor> inputs = c.inputs(shape, d, gen);
  std::vector<Tensor> leaves;
  for (const Tensor& t : inputs) {
    leaves.push_back(t.detach());
    leaves.back().requires_grad_(true);
  }
  Tensor grad_out;
  double io_bytes = 0;
  {
    const Tensor y = c.op(inputs);
    grad_out = ones_like(y);
    io_bytes = static_cast<double>(y.nbytes());
    for (const Tensor& t : inputs) io_bytes += static_cast<double>(t.nbytes());
  }

  using clock = std::chrono::steady_clock;
  auto once = [&](bool with_backward) {
    for (Tensor& l : leaves) l.zero_grad();
    synchronize(d);
    const auto t0 = clock::now();
    if (with_backward) {
      const Tensor y = c.op(leaves);
      y.backward(grad_out);
    } else {
      const Tensor y = c.op(inputs);
    }
    synchronize(d);
    return std::chrono::duration<double, std::milli>(clock::now() - t0).count();
  };

  CaseResult r;
  for (const bool with_backward : {false, true}) {
    for (int i = 0; i < opt.warmup; ++i) once(with_backward);
    std::vector<double> ms;
    for (int i = 0; i < opt.reps; ++i) ms.push_back(once(with_backward));
    (with_backward ? r.forward_backward : r.forward) = summarize(ms, with_backward ? 2 * io_bytes : io_bytes);
  }
  return r;
}

std::string cell(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

int run_bench(const BenchOptions& opt, const GlobalOptions& global) {
  const Device dev = resolve_device(global.device);
  const bool compare = opt.compare_cpu && dev.is_cuda();
  if (opt.compare_cpu && !compare) logging::info("--compare-cpu: the benchmark already runs on the CPU");
  const Shape shape(opt.shape.begin(), opt.shape.end());

  std::vector<const BenchCase*> chosen;
  for (const BenchCase& c : bench_cases())
    if (opt.cases.empty() || std::find(opt.cases.begin(), opt.cases.end(), c.name) != opt.cases.end())
      chosen.push_back(&c);

  std::vector<std::string> rows;
  {
    logging::ProgressBar bar("bench", static_cast<std::int64_t>(chosen.size()), "case");
    std::int64_t done = 0;
    for (const BenchCase* c : chosen) {
      bar.update(done, c->name);
      const CaseResult on_dev = time_case(*c, shape, dev, opt);
      Json line = {{"case", c->name},
                   {"device", dev.str()},
                   {"shape", opt.shape},
                   {"dtype", "float32"},
                   {"reps", opt.reps},
                   {"forward", timing_json(on_dev.forward)},
                   {"forward_backward", timing_json(on_dev.forward_backward)}};
      char buf[256];
      std::snprintf(buf, sizeof buf, "%-12s %10.3f %8.1f %12.3f %8.1f", c->name.c_str(), on_dev.forward.median_ms,
                    on_dev.forward.gb_per_s, on_dev.forward_backward.median_ms, on_dev.forward_backward.gb_per_s);
      std::string row = buf;
      if (compare) {
        const CaseResult on_cpu = time_case(*c, shape, Device::cpu(), opt);
        const double fwd_ratio = on_cpu.forward.median_ms / on_dev.forward.median_ms;
        const double both_ratio = on_cpu.forward_backward.median_ms / on_dev.forward_backward.median_ms;
        line["cpu"] = {{"forward", timing_json(on_cpu.forward)},
                       {"forward_backward", timing_json(on_cpu.forward_backward)}};
        line["cpu_over_device"] = {{"forward", fwd_ratio}, {"forward_backward", both_ratio}};
        row += cell(" %13.1fx", fwd_ratio) + cell(" %13.1fx", both_ratio);
      }
      write_json_line(std::cout, line);
      rows.push_back(row);
      bar.update(++done, c->name);
    }
    bar.finish();
  }

  std::string table = "bench on " + dev.str() + ", shape " + shape_str(shape) + " float32, median of " +
                      std::to_string(opt.reps) + " runs\n";
  char header[256];
  std::snprintf(header, sizeof header, "%-12s %10s %8s %12s %8s", "case", "fwd ms", "GB/s", "fwd+bwd ms", "GB/s");
  table += header;
  if (compare) table += "    cpu/gpu fwd    cpu/gpu f+b";
  table += "\n";
  for (const std::string& row : rows) table += row + "\n";
  std::cerr << table << std::flush;
  return kExitOk;
}

// ---- bench nifti ----------------------------------------------------------------------------

struct NiftiBenchOptions {
  std::string file;
  int reps = 5;
  int warmup = 1;
};

// A file descriptor closed on every path out; only regular files (a FIFO would block the bench).
struct Fd {
  int fd = -1;
  explicit Fd(const std::string& path) : fd(files::open_regular_for_reading(path)) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

// Refills `in` after the `keep` unread bytes at its end (moved to the front); returns bytes now held.
std::size_t refill(const Fd& f, std::vector<unsigned char>& in, const unsigned char* unread, std::size_t keep,
                   const std::string& path) {
  std::memmove(in.data(), unread, keep);
  std::size_t have = keep;
  while (have < in.size()) {
    const ssize_t got = ::read(f.fd, in.data() + have, in.size() - have);
    if (got < 0) {
      if (errno == EINTR) continue;
      VG_INPUT_FAIL(path << ": read failed: " << std::strerror(errno));
    }
    if (got == 0) break;
    have += static_cast<std::size_t>(got);
  }
  return have;
}

// The yardstick: zlib alone inflating every gzip member of `path` into `dst` (capacity `cap`),
// reading the file in the reader's chunk size. dst null: inflates into a small scratch buffer and
// only counts. A plain file is read into dst as it is. Returns the bytes produced.
std::uint64_t inflate_file(const std::string& path, std::byte* dst, std::uint64_t cap) {
  constexpr std::size_t kChunk = 1 << 18;  // as io/gzip_stream.cpp reads
  constexpr std::size_t kMaxSpan = std::size_t{1} << 30;
  const Fd f(path);
  std::vector<unsigned char> in(kChunk);
  std::vector<unsigned char> scratch(dst == nullptr ? kChunk : 0);
  std::size_t avail = refill(f, in, in.data(), 0, path);
  const bool gzip = avail >= 2 && in[0] == 0x1f && in[1] == 0x8b;
  std::uint64_t produced = 0;

  if (!gzip) {
    // As the reader reads plain voxels: straight into the destination, no staging chunk after the first.
    if (dst == nullptr) {
      const off_t end = ::lseek(f.fd, 0, SEEK_END);
      if (end < 0) VG_INPUT_FAIL(path << ": cannot seek: " << std::strerror(errno));
      return static_cast<std::uint64_t>(end);
    }
    VG_CHECK(avail <= cap, path << ": more bytes than the buffer holds");
    std::memcpy(dst, in.data(), avail);
    produced = avail;
    while (produced < cap) {
      const ssize_t got = ::read(f.fd, dst + produced, std::min<std::uint64_t>(cap - produced, kMaxSpan));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) VG_INPUT_FAIL(path << ": read failed: " << std::strerror(errno));
      if (got == 0) break;
      produced += static_cast<std::uint64_t>(got);
    }
    return produced;
  }

  z_stream z{};
  int rc = inflateInit2(&z, 16 + MAX_WBITS);
  if (rc != Z_OK) VG_FAIL(path << ": inflateInit2: " << zError(rc));
  struct End {
    z_stream* z;
    ~End() { inflateEnd(z); }
  } end{&z};
  z.next_in = in.data();
  z.avail_in = static_cast<uInt>(avail);
  for (;;) {
    if (z.avail_in == 0) {
      avail = refill(f, in, in.data(), 0, path);
      if (avail == 0) VG_INPUT_FAIL(path << ": file truncated: it ends inside its gzip data");
      z.next_in = in.data();
      z.avail_in = static_cast<uInt>(avail);
    }
    // A full buffer still gets called with no room: the member's trailer needs no output space.
    unsigned char* out = dst != nullptr ? reinterpret_cast<unsigned char*>(dst) + produced : scratch.data();
    const std::uint64_t room = dst != nullptr ? cap - produced : scratch.size();
    z.next_out = out;
    z.avail_out = static_cast<uInt>(std::min<std::uint64_t>(room, kMaxSpan));
    const uInt before = z.avail_out;
    rc = inflate(&z, Z_NO_FLUSH);
    produced += before - z.avail_out;
    if (rc == Z_STREAM_END) {
      // Another member follows only when the next bytes are a gzip magic; anything else is trailing.
      if (z.avail_in < 2) {
        avail = refill(f, in, z.next_in, z.avail_in, path);
        z.next_in = in.data();
        z.avail_in = static_cast<uInt>(avail);
      }
      if (z.avail_in < 2 || z.next_in[0] != 0x1f || z.next_in[1] != 0x8b) return produced;
      inflateReset(&z);
    } else if (rc == Z_BUF_ERROR && z.avail_in > 0 && z.avail_out == 0) {
      VG_INPUT_FAIL(path << ": inflates to more than the " << cap << " bytes it did in the counting pass");
    } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
      VG_INPUT_FAIL(path << ": corrupt gzip data: " << (z.msg != nullptr ? z.msg : zError(rc)));
    }
  }
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

int run_bench_nifti(const NiftiBenchOptions& opt) {
  using clock = std::chrono::steady_clock;
  const std::string& path = opt.file;
  const io::NiftiHeader header = io::read_nifti_header(path);
  // The yardstick reads the file that holds the voxels: the .img[.gz] of a pair.
  const std::string& image = header.image_path;
  std::uint64_t file_bytes = 0;
  bool gzip = false;
  {
    const Fd f(image);
    const off_t end = ::lseek(f.fd, 0, SEEK_END);
    if (end >= 0) file_bytes = static_cast<std::uint64_t>(end);
    unsigned char magic[2] = {0, 0};
    gzip = ::pread(f.fd, magic, 2, 0) == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
  }

  // The yardstick's buffer is sized by one counting pass and touched before timing, so the timed
  // runs measure inflate alone, not page faults.
  const std::uint64_t inflated = inflate_file(image, nullptr, 0);
  VG_INPUT_CHECK(inflated <= std::numeric_limits<std::size_t>::max(), path << ": too large for this machine");
  auto buffer = std::make_unique<std::byte[]>(static_cast<std::size_t>(inflated));  // zero-filled: touched

  // GB/s counts the bytes each path produces: the whole inflated file, or the voxels.
  const double file_out = static_cast<double>(inflated), voxels_out = static_cast<double>(header.data_bytes());
  struct Path {
    const char* key;
    const char* label;
    double bytes;
    std::function<double()> run;  // ms until the result exists; freeing it happens after the clock stops
  };
  const std::vector<Path> paths = {
      {"inflate", gzip ? "zlib inflate to memory" : "plain read to memory", file_out,
       [&] {
         const auto t0 = clock::now();
         (void)inflate_file(image, buffer.get(), inflated);
         return ms_since(t0);
       }},
      // The same into a buffer allocated by the run, as a reader must: the difference from the
      // line above is the cost of the fresh memory's page faults, not of the reader.
      {"inflate_fresh", gzip ? "zlib inflate to fresh memory" : "plain read to fresh memory", file_out,
       [&] {
         const auto t0 = clock::now();
         const std::unique_ptr<std::byte[]> fresh(new std::byte[static_cast<std::size_t>(inflated)]);
         (void)inflate_file(image, fresh.get(), inflated);
         return ms_since(t0);
       }},
      {"read_raw", "read_nifti_raw", voxels_out,
       [&] {
         const auto t0 = clock::now();
         const io::NiftiRaw raw = io::read_nifti_raw(path);
         return ms_since(t0);
       }},
      {"read_float32", "read_nifti_raw + convert_raw", voxels_out,
       [&] {
         const auto t0 = clock::now();
         const io::NiftiRaw raw = io::read_nifti_raw(path);
         const Tensor t = empty(raw.header.shape(), DType::Float32);
         io::convert_raw(raw, t.data<float>());
         return ms_since(t0);
       }},
      {"read_volume_float32", "read_nifti + to_float32", voxels_out,
       [&] {
         const auto t0 = clock::now();
         const Tensor t = io::read_nifti(path).to_float32();
         return ms_since(t0);
       }},
  };

  std::vector<std::vector<double>> times(paths.size());
  {
    logging::ProgressBar bar("bench nifti", static_cast<std::int64_t>(paths.size()) * (opt.warmup + opt.reps), "run");
    std::int64_t done = 0;
    // Interleaved, so drift in the machine's load (page cache, other processes) hits every path alike.
    // The pause before each run lets the OpenMP workers of the conversions stop spinning: on a busy
    // machine a spinning worker takes the core the next run's single-threaded inflate would get.
    for (int rep = 0; rep < opt.warmup + opt.reps; ++rep) {
      for (std::size_t p = 0; p < paths.size(); ++p) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        const double ms = paths[p].run();
        if (rep >= opt.warmup) times[p].push_back(ms);
        bar.update(++done, paths[p].key);
      }
    }
    bar.finish();
  }

  std::vector<Timing> t(paths.size());
  for (std::size_t p = 0; p < paths.size(); ++p)
    t[p] = summarize(times[p], paths[p].bytes);
  auto median = [&](const std::string& key) {
    for (std::size_t p = 0; p < paths.size(); ++p)
      if (key == paths[p].key) return t[p].median_ms;
    return 0.0;
  };

  Json line = {{"file", path},
               {"gzip", gzip},
               {"datatype", io::nifti_datatype_name(header.datatype)},
               {"dims", header.dims()},
               {"file_bytes", file_bytes},
               {"inflated_bytes", inflated},
               {"voxel_bytes", header.data_bytes()},
               {"reps", opt.reps}};
  for (std::size_t p = 0; p < paths.size(); ++p) line[paths[p].key] = timing_json(t[p]);
  // The measure: >= 0.95 means reading (with every gzip trailer checked) costs at most ~5% more
  // than zlib inflating the whole file alone.
  for (const char* key : {"read_raw", "read_float32", "read_volume_float32"})
    line[std::string("inflate_over_") + key] = median("inflate") / median(key);
  write_json_line(std::cout, line);

  char buf[256];
  std::string table = "bench nifti " + path + ": " + io::nifti_datatype_name(header.datatype) + " " +
                      shape_str(header.shape()) + ", " + cell("%.1f", static_cast<double>(file_bytes) / 1e6) +
                      " MB on disk, " + cell("%.1f", static_cast<double>(inflated) / 1e6) +
                      (gzip ? " MB inflated" : " MB") + "; median of " + std::to_string(opt.reps) + " runs\n";
  std::snprintf(buf, sizeof buf, "%-30s %10s %10s %10s %8s %14s\n", "path", "median ms", "min ms", "max ms", "GB/s",
                "inflate/path");
  table += buf;
  for (std::size_t p = 0; p < paths.size(); ++p) {
    std::snprintf(buf, sizeof buf, "%-30s %10.2f %10.2f %10.2f %8.3f %13.2fx\n", paths[p].label, t[p].median_ms,
                  t[p].min_ms, t[p].max_ms, t[p].gb_per_s, t[0].median_ms / t[p].median_ms);
    table += buf;
  }
  std::cerr << table << std::flush;
  return kExitOk;
}


}  // namespace

Command bench_command() {
  return {"bench",
          "Time ops forward and forward+backward; `bench nifti FILE`, `bench loss` and `bench conv` time "
          "NIfTI reading against zlib, the losses and one convolution shape",
          [](CLI::App& sub) -> RunFn {
            // The op benchmark keeps its options on `bench` itself, so `voxgrad bench --shape ...`
            // works as before; `bench nifti FILE` is a nested subcommand that refuses them.
            auto opt = std::make_shared<BenchOptions>();
            std::vector<std::string> names;
            for (const BenchCase& c : bench_cases()) names.push_back(c.name);
            std::vector<CLI::Option*> op_options;
            op_options.push_back(sub.add_option("--shape", opt->shape, "Activation shape N,C,D,H,W")
                                     ->delimiter(',')
                                     ->expected(5)
                                     ->check(number_above_zero())
                                     ->capture_default_str());
            op_options.push_back(sub.add_option("--reps", opt->reps, "Timed repetitions per case")
                                     ->check(number_above_zero())
                                     ->capture_default_str());
            op_options.push_back(sub.add_option("--warmup", opt->warmup, "Untimed runs before timing")
                                     ->check(number_above_zero(false))
                                     ->capture_default_str());
            op_options.push_back(sub.add_option("--cases", opt->cases, "Comma-separated cases to run (default: all)")
                                     ->delimiter(',')
                                     ->check(one_of(names)));
            op_options.push_back(
                sub.add_flag("--compare-cpu", opt->compare_cpu, "With a CUDA device, time the CPU too (ratio columns)"));

            auto nifti_opt = std::make_shared<NiftiBenchOptions>();
            CLI::App* nifti = sub.add_subcommand(
                "nifti",
                "Time reading a NIfTI file (raw, and into float32) beside zlib alone inflating it into memory; "
                "runs on the CPU whatever --device says");
            nifti->add_option("FILE", nifti_opt->file, "A .nii.gz (or any file the reader reads)")
                ->type_name("")
                ->required();
            nifti->add_option("--reps", nifti_opt->reps, "Timed runs of each path")
                ->check(number_above_zero())
                ->capture_default_str();
            nifti->add_option("--warmup", nifti_opt->warmup, "Untimed runs of each path before timing")
                ->check(number_above_zero(false))
                ->capture_default_str();
            for (CLI::Option* o : op_options) nifti->excludes(o);
            const bench::NestedCommand loss = bench::add_bench_loss(sub);
            for (CLI::Option* o : op_options) loss.app->excludes(o);
            const bench::NestedCommand conv = bench::add_bench_conv(sub);
            for (CLI::Option* o : op_options) conv.app->excludes(o);
            const bench::NestedCommand train = bench::add_bench_train(sub);
            for (CLI::Option* o : op_options) train.app->excludes(o);
            const bench::NestedCommand predict = bench::add_bench_predict(sub);
            for (CLI::Option* o : op_options) predict.app->excludes(o);
            const bench::NestedCommand peak = bench::add_bench_peak(sub);
            for (CLI::Option* o : op_options) peak.app->excludes(o);
            sub.require_subcommand(0, 1);

            return [opt, nifti_opt, nifti, loss, conv, train, predict, peak](const GlobalOptions& global) {
              if (loss.app->parsed()) return loss.run(global);
              if (conv.app->parsed()) return conv.run(global);
              if (train.app->parsed()) return train.run(global);
              if (predict.app->parsed()) return predict.run(global);
              if (peak.app->parsed()) return peak.run(global);
              return nifti->parsed() ? run_bench_nifti(*nifti_opt) : run_bench(*opt, global);
            };
          }};
}

}  // namespace voxgrad::cli
