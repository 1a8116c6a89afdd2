// `voxgrad bench loss`: forward+backward time of every segmentation loss on logits (2, 4, S, S, S)
// with random labels; on a GPU beside one CUB radix sort of as many key-value pairs as Lovász-softmax
// sorts (and both of its sort paths), on the CPU beside Berman's reference Lovász-softmax in PyTorch.
#include "apps/bench/bench_loss.h"

#include <omp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "apps/cli/cli_checks.h"
#include "apps/bench/python_reference.h"
#include "engine/allocator.h"
#include "engine/device.h"
#include "engine/error.h"
#include "engine/json.h"
#include "engine/log.h"
#include "engine/losses.h"
#include "engine/tensor.h"
#include "kernels/lovasz.h"
#if defined(VOXGRAD_HAS_CUDA)
#endif

namespace voxgrad::bench {

using namespace cli;  // the command line's option checks and exit statuses

namespace {

constexpr std::int64_t kImages = 2, kClasses = 4;

struct LossBenchOptions {
  std::int64_t size = 128;
  int reps = 5;
  int warmup = 1;
  bool json = false;
  std::vector<std::string> losses;  // empty: all
  std::string torch_script;         // empty: tools/lovasz_reference.py found next to the build
  std::string python = "/usr/bin/python3";
};

struct Timing {
  double median_ms = 0, min_ms = 0, max_ms = 0;
};

Timing summarize(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  const std::size_t n = ms.size();
  return {n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]), ms.front(), ms.back()};
}

Json timing_json(const Timing& t) { return {{"median_ms", t.median_ms}, {"min_ms", t.min_ms}, {"max_ms", t.max_ms}}; }

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Runs `once` warmup + reps times; the device is synchronized before the clock starts and before
// it is read, so every queued kernel is counted.
Timing time_runs(const std::function<void()>& once, Device d, const LossBenchOptions& opt) {
  std::vector<double> ms;
  for (int i = 0; i < opt.warmup + opt.reps; ++i) {
    synchronize(d);
    const auto t0 = std::chrono::steady_clock::now();
    once();
    synchronize(d);
    if (i >= opt.warmup) ms.push_back(ms_since(t0));
  }
  return summarize(ms);
}

struct LossCase {
  std::string name;  // "lovasz[segmented_sort]" where the sort path is part of the case
  LossKind kind;
  LovaszSort sort = LovaszSort::CompositeKeys;
};

const std::vector<std::string>& loss_names() {
  static const std::vector<std::string> names = {"ce", "wce", "dice", "jaccard", "lovasz", "lovasz_hinge", "dice_ce"};
  return names;
}

// Labels drawn uniformly from [0, classes) on the host, so both devices see the same ones.
Tensor random_labels(const Shape& shape, std::int64_t classes, Device d) {
  std::mt19937 rng(42);
  std::uniform_int_distribution<std::int32_t> pick(0, static_cast<std::int32_t>(classes) - 1);
  std::vector<std::int32_t> y(static_cast<std::size_t>(shape_numel(shape)));
  for (std::int32_t& v : y) v = pick(rng);
  return from_vector(y, shape, d);
}

void write_raw(const std::string& path, const void* data, std::size_t bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  VG_CHECK(f.good(), path << ": cannot write the reference's input");
}

// A temporary folder removed with its contents on every path out.
struct TempFolder {
  std::filesystem::path path;
  TempFolder()
      : path(std::filesystem::temp_directory_path() / ("voxgrad-bench-loss-" + std::to_string(::getpid()))) {
    std::filesystem::create_directories(path);
  }
  ~TempFolder() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

// Berman's Lovász-softmax in PyTorch on the very same logits and labels (handed over as raw files,
// so the two loss values must agree): its JSON, or {"available": false, "reason"}.
Json run_reference(const LossBenchOptions& opt, const Tensor& logits, const Tensor& labels) {
  const std::string script = find_tools_script(opt.torch_script, "lovasz_reference.py");
  if (script.empty()) return {{"available", false}, {"reason", "tools/lovasz_reference.py not found (--torch-script)"}};
  const TempFolder tmp;
  const std::string logits_path = (tmp.path / "logits.f32").string(), labels_path = (tmp.path / "labels.i32").string();
  write_raw(logits_path, logits.data<float>(), logits.nbytes());
  write_raw(labels_path, labels.data<std::int32_t>(), labels.nbytes());
  const std::string args = "--images " + std::to_string(kImages) + " --classes " + std::to_string(kClasses) +
                           " --size " + std::to_string(opt.size) + " --reps " + std::to_string(opt.reps) +
                           " --warmup " + std::to_string(opt.warmup) + " --logits-raw " + shell_quote(logits_path) +
                           " --labels-raw " + shell_quote(labels_path) + " --threads " +
                           std::to_string(omp_get_max_threads());  // the threads voxgrad's CPU kernels use
  return run_python_json(opt.python, script, args);
}

std::string cell(double v, const char* fmt = "%10.2f") {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

std::string row(const std::string& name, const std::string& median, const std::string& min, const std::string& max,
                const std::string& note = "") {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-28s %10s %10s %10s  %s", name.c_str(), median.c_str(), min.c_str(), max.c_str(),
                note.c_str());
  std::string r = buf;
  while (!r.empty() && r.back() == ' ') r.pop_back();
  return r + "\n";
}

int run_bench_loss(const LossBenchOptions& opt, const GlobalOptions& global) {
  const Device dev = resolve_device(global.device);
  const std::int64_t S = opt.size;
  const Shape zshape = {kImages, kClasses, S, S, S}, hinge_shape = {kImages, 1, S, S, S}, yshape = {kImages, S, S, S};

  std::vector<LossCase> cases;
  for (const std::string& name : loss_names()) {
    if (!opt.losses.empty() && std::find(opt.losses.begin(), opt.losses.end(), name) == opt.losses.end()) continue;
    const LossKind kind = parse_loss_kind(name);
    if (kind == LossKind::LovaszSoftmax && dev.is_cuda()) {
      cases.push_back({name + "[composite_keys]", kind, LovaszSort::CompositeKeys});
      cases.push_back({name + "[segmented_sort]", kind, LovaszSort::SegmentedSort});
    } else {
      cases.push_back({name, kind});
    }
  }

  Generator gen(1234);
  const Tensor logits = randn(zshape, gen, DType::Float32, dev);       // (N, K, S, S, S)
  const Tensor hinge_logits = randn(hinge_shape, gen, DType::Float32, dev);  // (N, 1, S, S, S)
  const Tensor labels = random_labels(yshape, kClasses, dev);           // (N, S, S, S) in [0, K)
  const Tensor binary_labels = random_labels(yshape, 2, dev);           // (N, S, S, S) in {0, 1}

  std::string table = "bench loss on " + dev.str() + ": logits " + shape_str(zshape) +
                      " float32 (lovasz_hinge: " + shape_str(hinge_shape) + "), random labels; forward+backward, " +
                      std::to_string(opt.reps) + " runs\n";
  table += row("case", "median ms", "min ms", "max ms");
  std::vector<Json> lines;
  double lovasz_median = 0, lovasz_value = 0;

  {
    logging::ProgressBar bar("bench loss", static_cast<std::int64_t>(cases.size()) + 2, "case");
    std::int64_t done = 0;
    for (const LossCase& c : cases) {
      bar.update(done++, c.name);
      const bool hinge = c.kind == LossKind::LovaszHinge;
      Tensor z = (hinge ? hinge_logits : logits).detach();
      z.requires_grad_(true);
      const Tensor& y = hinge ? binary_labels : labels;
      LossOptions lo;
      lo.lovasz_sort = c.sort;
      double value = 0;
      const Timing t = time_runs(
          [&] {
            z.zero_grad();
            const Tensor loss = segmentation_loss(c.kind, z, y, lo);
            loss.backward();
            value = loss.item();
          },
          dev, opt);
      if (c.kind == LossKind::LovaszSoftmax && (lovasz_median == 0 || t.median_ms < lovasz_median)) {
        lovasz_median = t.median_ms;
        lovasz_value = value;
      }
      table += row(c.name, cell(t.median_ms), cell(t.min_ms), cell(t.max_ms));
      Json line = {{"case", c.name},           {"loss", loss_kind_name(c.kind)},
                   {"device", dev.str()},      {"shape", hinge ? hinge_shape : zshape},
                   {"dtype", "float32"},       {"reps", opt.reps},
                   {"forward_backward", timing_json(t)}, {"loss_value", value}};
      if (c.kind == LossKind::LovaszSoftmax)
        line["sort"] = c.sort == LovaszSort::CompositeKeys ? "composite_keys" : "segmented_sort";
      lines.push_back(line);
    }

    // The yardstick: one radix sort of the (N * K * S^3) pairs Lovász-softmax sorts.
    bar.update(done++, "cub sort");
    const std::int64_t pairs = shape_numel(zshape);
    Json sort_line = {{"case", "cub_radix_sort_pairs"}, {"device", dev.str()}, {"pairs", pairs}, {"reps", opt.reps}};
#if defined(VOXGRAD_HAS_CUDA)
    if (dev.is_cuda()) {
      // Keys with the errors' distribution (floats in [0, 1)), read as their bits.
      const Tensor keys = rand({pairs}, gen, DType::Float32, dev);  // (N * K * S^3)
      const Tensor values = zeros({pairs}, DType::Int32, dev);      // (N * K * S^3)
      const Timing t = time_runs(
          [&] {
            ScratchArena scratch(dev);
            kernels::cuda::lovasz_sort_benchmark(reinterpret_cast<const std::uint32_t*>(keys.data<float>()),
                                                 reinterpret_cast<const std::uint32_t*>(values.data<std::int32_t>()),
                                                 pairs, scratch, stream_for(dev));
          },
          dev, opt);
      sort_line["sort"] = timing_json(t);
      sort_line["lovasz_over_sort"] = lovasz_median > 0 ? Json(lovasz_median / t.median_ms) : Json(nullptr);
      table += row("cub radix sort (same pairs)", cell(t.median_ms), cell(t.min_ms), cell(t.max_ms),
                   lovasz_median > 0 ? "best lovasz / sort = " + cell(lovasz_median / t.median_ms, "%.2f") : "");
    }
#endif
    if (!sort_line.contains("sort")) {
      sort_line["sort"] = nullptr;
      sort_line["note"] = "n/a: needs a CUDA device";
      table += row("cub radix sort (same pairs)", "n/a", "n/a", "n/a", "needs a CUDA device");
    }
    lines.push_back(sort_line);

    // Berman's reference, side by side in the same run, on the CPU only.
    bar.update(done++, "torch reference");
    if (dev.is_cpu()) {
      Json ref = run_reference(opt, logits, labels);
      ref["case"] = "torch_lovasz_softmax_reference";
      const bool available = ref.value("available", false);
      if (available) {
        const Json& fb = ref["forward_backward"];
        const double median = fb.value("median_ms", 0.0);
        table += row("torch lovasz_softmax (Berman)", cell(median), cell(fb.value("min_ms", 0.0)),
                     cell(fb.value("max_ms", 0.0)),
                     "torch " + ref.value("torch", std::string("?")) +
                         (lovasz_median > 0 ? ", torch / voxgrad = " + cell(median / lovasz_median, "%.2f") : ""));
        if (lovasz_median > 0) {
          ref["torch_over_voxgrad"] = median / lovasz_median;
          // Same inputs, same definition: the values differ only by float32 rounding.
          ref["voxgrad_loss_value"] = lovasz_value;
          ref["abs_diff"] = std::fabs(ref.value("loss_value", 0.0) - lovasz_value);
        }
      } else {
        table += row("torch lovasz_softmax (Berman)", "unavailable", "", "", ref.value("reason", std::string()));
      }
      lines.push_back(ref);
    }
    bar.finish();
  }

  // --json: the lines are the result and the table a note; otherwise the table is the result.
  if (opt.json) {
    for (const Json& line : lines) write_json_line(std::cout, line);
    std::cerr << table << std::flush;
  } else {
    std::cout << table << std::flush;
  }
  return kExitOk;
}

}  // namespace

NestedCommand add_bench_loss(CLI::App& bench) {
  auto opt = std::make_shared<LossBenchOptions>();
  CLI::App* sub = bench.add_subcommand(
      "loss",
      "Time every segmentation loss forward+backward on logits (2, 4, S, S, S); on a GPU beside one CUB radix "
      "sort of as many pairs, on the CPU beside Berman's Lovász-softmax in PyTorch");
  sub->add_option("--size", opt->size, "Spatial size S of the S^3 volumes")
      ->check(number_above_zero())
      ->capture_default_str();
  sub->add_option("--reps", opt->reps, "Timed runs per case")->check(number_above_zero())->capture_default_str();
  sub->add_option("--warmup", opt->warmup, "Untimed runs per case before timing")
      ->check(number_above_zero(false))
      ->capture_default_str();
  sub->add_option("--losses", opt->losses, "Comma-separated losses to time (default: all)")
      ->delimiter(',')
      ->check(one_of(loss_names()));
  sub->add_flag("--json", opt->json, "One JSON line per case on stdout (the table goes to stderr)");
  sub->add_option("--torch-script", opt->torch_script, "The PyTorch reference (default: tools/lovasz_reference.py)")
      ->type_name("FILE");
  sub->add_option("--python", opt->python, "The Python that runs the reference")->capture_default_str();
  return {sub, [opt](const GlobalOptions& global) { return run_bench_loss(*opt, global); }};
}

}  // namespace voxgrad::bench
