// `voxgrad bench predict`: median and minimum time of sliding-window inference of the nnU-Net-style
// U-Net over a random (1, D, H, W) volume (windows overlapping by half, Gaussian weighting, as
// `predict` runs it, under NoGradGuard), after warm-up, with the allocator's and the process's peak
// memory; --torch runs tools/bench_predict_torch.py (the same network and windows in PyTorch under
// torch.no_grad()) beside it.
#include "apps/bench/bench_predict.h"

#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "apps/bench/bench_stats.h"
#include "apps/bench/python_reference.h"
#include "apps/cli/cli_checks.h"
#include "apps/pipeline/sliding_window.h"
#include "engine/allocator.h"
#include "engine/device.h"
#include "engine/json.h"
#include "engine/log.h"
#include "engine/tensor.h"
#include "models/unet3d.h"

namespace voxgrad::bench {

using namespace cli;  // the command line's option checks and exit statuses

namespace {

struct PredictBenchOptions {
  std::string size = "128";  // D,H,W or S (validated)
  std::string patch = "64";
  int base = 16, levels = 4, classes = 3;
  double overlap = 0.5;
  int reps = 3;
  int warmup = 1;
  bool json = false;
  bool torch = false;
  std::string torch_script;  // empty: tools/bench_predict_torch.py found next to the build
  std::string python = "/usr/bin/python3";
};

std::string dims_text(const std::array<std::int64_t, 3>& d) {
  return std::to_string(d[0]) + "x" + std::to_string(d[1]) + "x" + std::to_string(d[2]);
}

Json run_torch(const PredictBenchOptions& opt) {
  const std::string script = find_tools_script(opt.torch_script, "bench_predict_torch.py");
  if (script.empty())
    return {{"available", false}, {"reason", "tools/bench_predict_torch.py not found (--torch-script)"}};
  const std::string args = "--size " + opt.size + " --patch " + opt.patch + " --base " + std::to_string(opt.base) +
                           " --levels " + std::to_string(opt.levels) + " --classes " + std::to_string(opt.classes) +
                           " --overlap " + std::to_string(opt.overlap) + " --reps " + std::to_string(opt.reps) +
                           " --warmup " + std::to_string(opt.warmup) + " --threads " +
                           std::to_string(omp_get_max_threads());  // voxgrad's CPU threads
  Json j = run_python_json(opt.python, script, args);
  if (j.value("available", true) && !j.contains("predict_median_s"))
    return {{"available", false}, {"reason", script + " printed no predict_median_s"}};
  j["available"] = j.value("available", true);
  return j;
}

int run_bench_predict(const PredictBenchOptions& opt, const GlobalOptions& global) {
  const Device dev = resolve_device(global.device);
  UNet3dConfig config;
  config.in_channels = 1;
  config.classes = opt.classes;
  config.base_features = opt.base;
  config.levels = opt.levels;
  Generator gen(1);
  UNet3d model(config, gen);
  const std::array<std::int64_t, 3> size = *parse_patch(opt.size), patch = *parse_patch(opt.patch);
  const std::int64_t q = std::int64_t{1} << (opt.levels - 1);
  for (std::int64_t side : patch)
    VG_USAGE_CHECK(side % q == 0, "--patch " << opt.patch << ": " << side << " is not divisible by " << q
                                             << " (--levels " << opt.levels << " halves each axis " << opt.levels - 1
                                             << " times)");
  model.to(dev);
  const std::int64_t params = model.parameter_count();
  const Tensor image = randn({1, size[0], size[1], size[2]}, gen, DType::Float32, Device::cpu());
  pipeline::SlidingWindowOptions windows;
  windows.patch = patch;
  windows.overlap = opt.overlap;
  std::int64_t window_count = 1;
  for (int a = 0; a < 3; ++a)
    window_count *= static_cast<std::int64_t>(
        pipeline::sliding_window_starts(std::max(size[a], patch[a]), patch[a], opt.overlap).size());

  logging::info("bench predict on " + dev.str() + ": U-Net base " + std::to_string(opt.base) + ", " +
                std::to_string(opt.levels) + " levels, " + std::to_string(params) + " parameters, volume " +
                dims_text(size) + ", " + std::to_string(window_count) + " windows of " + dims_text(patch));
  std::vector<double> times;
  std::size_t peak = 0;
  {
    logging::ProgressBar bar("bench predict", opt.warmup + opt.reps, "run");
    for (int i = 0; i < opt.warmup + opt.reps; ++i) {
      if (i == opt.warmup && dev.is_cuda()) cuda_allocator().reset_peak();
      synchronize(dev);
      const auto t0 = std::chrono::steady_clock::now();
      const Tensor logits = pipeline::sliding_window_logits(model, image, windows, dev);
      synchronize(dev);
      const double s = seconds_since(t0);
      if (i >= opt.warmup) times.push_back(s);
      bar.update(i + 1);
    }
    bar.finish();
    peak = dev.is_cuda() ? cuda_allocator().stats().peak_bytes_in_use : host_allocator_stats().peak_bytes_in_use;
  }

  const double med = median(times), min = *std::min_element(times.begin(), times.end());
  const double voxels = static_cast<double>(size[0] * size[1] * size[2]);
  const std::int64_t peak_rss = peak_rss_bytes();
  Json line = {{"device", dev.str()},     {"params", params},          {"windows", window_count},
               {"predict_median_s", med}, {"predict_min_s", min},      {"voxels_per_s", voxels / med},
               {"peak_bytes", peak},      {"peak_rss_bytes", peak_rss}};

  Json ref = Json::object();  // the twin's report; empty without --torch
  if (opt.torch) {
    if (!dev.is_cpu()) {
      ref = {{"available", false}, {"reason", "the PyTorch twin runs on the CPU only"}};
    } else {
      logging::info("running the PyTorch twin");
      ref = run_torch(opt);
    }
    if (ref.value("available", false) && ref.value("params", std::int64_t{0}) != params)
      logging::warning("PyTorch twin has " + std::to_string(ref.value("params", std::int64_t{0})) +
                       " parameters, voxgrad " + std::to_string(params) + ": not the same architecture");
    if (ref.value("available", false) && ref.value("windows", std::int64_t{0}) != window_count)
      logging::warning("PyTorch twin ran " + std::to_string(ref.value("windows", std::int64_t{0})) +
                       " windows, voxgrad " + std::to_string(window_count));
  }
  const double torch_median = ref.value("available", false) ? ref.value("predict_median_s", 0.0) : 0.0;

  if (opt.json) {
    // The object keeps its keys for scripts; the twin's numbers go to stderr.
    write_json_line(std::cout, line);
    if (opt.torch) std::cerr << "torch: " << ref.dump() << "\n";
    if (torch_median > 0) std::cerr << "voxgrad / pytorch = " << med / torch_median << "\n";
    return kExitOk;
  }
  std::printf(
      "bench predict on %s: %lld parameters, volume %s, %lld windows of %s (overlap %.2f), %d runs after %d "
      "warm-up\n",
      dev.str().c_str(), static_cast<long long>(params), dims_text(size).c_str(), static_cast<long long>(window_count),
      dims_text(patch).c_str(), opt.overlap, opt.reps, opt.warmup);
  std::printf("%-10s %12s %10s %14s %12s %12s\n", "engine", "median s", "min s", "voxels/s", "peak MB", "peak RSS MB");
  std::printf("%-10s %12.3f %10.3f %14.0f %12.1f %12.1f\n", "voxgrad", med, min, voxels / med,
              static_cast<double>(peak) / 1e6, static_cast<double>(peak_rss) / 1e6);
  if (opt.torch) {
    if (torch_median > 0) {
      std::printf("%-10s %12.3f %10.3f %14.0f %12s %12.1f\n", "pytorch", torch_median, ref.value("predict_min_s", 0.0),
                  voxels / torch_median, "-", static_cast<double>(ref.value("peak_rss_bytes", std::int64_t{0})) / 1e6);
      std::printf("voxgrad / pytorch = %.2f (torch %s under no_grad, %lld parameters)\n", med / torch_median,
                  ref.value("torch", std::string("?")).c_str(),
                  static_cast<long long>(ref.value("params", std::int64_t{0})));
    } else {
      std::printf("%-10s unavailable: %s\n", "pytorch", ref.value("reason", std::string()).c_str());
    }
  }
  return kExitOk;
}

}  // namespace

NestedCommand add_bench_predict(CLI::App& bench) {
  auto opt = std::make_shared<PredictBenchOptions>();
  CLI::App* sub = bench.add_subcommand(
      "predict", "Time sliding-window inference of the U-Net over a random (1, D, H, W) volume, median after warm-up");
  sub->add_option("--size", opt->size, "Volume size D,H,W or S")->check(patch_validator())->capture_default_str();
  sub->add_option("--patch", opt->patch, "Window size D,H,W or S (each divisible by 2^(levels-1))")
      ->check(patch_validator())
      ->capture_default_str();
  sub->add_option("--base", opt->base, "Features at full resolution")
      ->check(number_above_zero())
      ->capture_default_str();
  sub->add_option("--levels", opt->levels, "Resolution levels, 2 to 7 (levels - 1 downsamplings)")
      ->check(number_in_range(2, 7))
      ->capture_default_str();
  sub->add_option("--classes", opt->classes, "Output classes (background included)")
      ->check(number_in_range(2, 1000))
      ->capture_default_str();
  sub->add_option("--overlap", opt->overlap, "Fraction of a window its neighbour overlaps, in [0, 1)")
      ->check(CLI::Range(0.0, 0.99))
      ->capture_default_str();
  sub->add_option("--reps", opt->reps, "Timed runs")->check(number_above_zero())->capture_default_str();
  sub->add_option("--warmup", opt->warmup, "Untimed runs before timing")
      ->check(number_above_zero(false))
      ->capture_default_str();
  sub->add_flag("--json", opt->json, "One JSON object on stdout");
  sub->add_flag("--torch", opt->torch, "Also time the same network and windows in PyTorch (CPU) and print the ratio");
  sub->add_option("--torch-script", opt->torch_script, "The PyTorch twin (default: tools/bench_predict_torch.py)");
  sub->add_option("--python", opt->python, "The Python that runs the twin")->capture_default_str();
  return {sub, [opt](const GlobalOptions& global) { return run_bench_predict(*opt, global); }};
}

}  // namespace voxgrad::bench
