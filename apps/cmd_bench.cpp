// `voxgrad bench`: op micro-benchmarks at a U-Net-like activation size, forward and forward+backward,
// one JSON line per case on stdout and a table on stderr; optionally the CPU alongside the GPU.
// Device time is read only after synchronize(), so queued GPU work is counted in full.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <iostream>
#include <memory>

#include "apps/cli.h"
#include "apps/cli_checks.h"
#include "engine/json.h"
#include "engine/log.h"
#include "engine/ops.h"
#include "engine/tensor.h"

namespace voxgrad::apps {

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

}  // namespace

Command bench_command() {
  return {"bench", "Time ops forward and forward+backward (JSON lines on stdout, a table on stderr)",
          [](CLI::App& sub) -> RunFn {
            auto opt = std::make_shared<BenchOptions>();
            std::vector<std::string> names;
            for (const BenchCase& c : bench_cases()) names.push_back(c.name);
            sub.add_option("--shape", opt->shape, "Activation shape N,C,D,H,W")
                ->delimiter(',')
                ->expected(5)
                ->check(number_above_zero())
                ->capture_default_str();
            sub.add_option("--reps", opt->reps, "Timed repetitions per case")
                ->check(number_above_zero())
                ->capture_default_str();
            sub.add_option("--warmup", opt->warmup, "Untimed runs before timing")
                ->check(number_above_zero(false))
                ->capture_default_str();
            sub.add_option("--cases", opt->cases, "Comma-separated cases to run (default: all)")
                ->delimiter(',')
                ->check(CLI::IsMember(names));
            sub.add_flag("--compare-cpu", opt->compare_cpu, "With a CUDA device, time the CPU too (ratio columns)");
            return [opt](const GlobalOptions& global) { return run_bench(*opt, global); };
          }};
}

}  // namespace voxgrad::apps
