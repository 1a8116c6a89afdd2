// `voxgrad bench train`: median and minimum time of full training steps of the nnU-Net-style U-Net
// (forward, loss, backward, SGD momentum 0.99 Nesterov) on random images with sphere labels, after
// warm-up, with the allocator's peak; --torch runs tools/bench_train_torch.py (the same network in PyTorch) beside it.
// Under mpirun with --distributed, the ranks share each global batch and average their gradients
// as `train --distributed` does, and the all-reduce's cost is measured alone and as the step pays
// it; --ranks 1,2,... runs that under mpirun for each rank count and prints the scaling
// (bench_scaling.cpp).
#include "apps/bench/bench_train.h"

#include <omp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "apps/bench/bench_scaling.h"
#include "apps/bench/bench_stats.h"
#include "apps/bench/python_reference.h"
#include "apps/cli/cli_checks.h"
#include "apps/distributed/failure.h"
#include "apps/distributed/mpi_world.h"
#include "apps/distributed/nccl_world.h"
#include "engine/allocator.h"
#include "engine/device.h"
#include "engine/gradient_reducer.h"
#include "engine/json.h"
#include "engine/log.h"
#include "engine/losses.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/tensor.h"
#include "models/nnunet_networks.h"
#include "models/unet3d.h"

namespace voxgrad::bench {

using namespace cli;  // the command line's option checks and exit statuses

namespace {

struct TrainBenchOptions : ScalingOptions {
  std::string patch = "64";        // D,H,W or S (validated)
  std::string first_stride = "2";  // D,H,W or S: the first downsampling's stride (each 1 or 2)
  std::int64_t batch = 2;
  int base = 16, levels = 4, classes = 3;
  std::string loss = "dice";
  int steps = 5;
  int warmup = 1;
  bool json = false;
  bool torch = false;
  std::string torch_script;  // empty: tools/bench_train_torch.py found next to the build
  std::string python = "/usr/bin/python3";
  double bucket_mb = 4.0;  // --distributed: MB of gradients per all-reduce
};

// Labels (N, D, H, W) int32: a few ellipsoids of each foreground class on background (balls in a
// cube), from a fixed seed, so every class is present and the Dice terms are not degenerate.
Tensor sphere_labels(std::int64_t n, const std::array<std::int64_t, 3>& p, int classes, Device d) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::vector<std::int32_t> y(static_cast<std::size_t>(n * p[0] * p[1] * p[2]), 0);
  for (std::int64_t i = 0; i < n; ++i) {
    for (int c = 1; c < classes; ++c) {
      for (int ball = 0; ball < 2; ++ball) {
        double centre[3], radius[3];
        for (int a = 0; a < 3; ++a) centre[a] = (0.2 + 0.6 * unit(rng)) * static_cast<double>(p[a]);
        const double r = 0.1 + 0.15 * unit(rng);  // a fraction of each side
        for (int a = 0; a < 3; ++a) radius[a] = r * static_cast<double>(p[a]);
        for (std::int64_t z = 0; z < p[0]; ++z)
          for (std::int64_t yy = 0; yy < p[1]; ++yy)
            for (std::int64_t x = 0; x < p[2]; ++x) {
              const double dz = (static_cast<double>(z) - centre[0]) / radius[0],
                           dy = (static_cast<double>(yy) - centre[1]) / radius[1],
                           dx = (static_cast<double>(x) - centre[2]) / radius[2];
              if (dz * dz + dy * dy + dx * dx <= 1.0)
                y[static_cast<std::size_t>(((i * p[0] + z) * p[1] + yy) * p[2] + x)] = c;
            }
      }
    }
  }
  return from_vector(y, {n, p[0], p[1], p[2]}, d);
}

// The script's JSON line, or {"available": false, "reason"}.
Json run_torch(const TrainBenchOptions& opt) {
  const std::string script = find_tools_script(opt.torch_script, "bench_train_torch.py");
  if (script.empty())
    return {{"available", false}, {"reason", "tools/bench_train_torch.py not found (--torch-script)"}};
  const std::string args = "--patch " + opt.patch + " --first-stride " + opt.first_stride + " --batch-size " +
                           std::to_string(opt.batch) + " --base " + std::to_string(opt.base) + " --levels " +
                           std::to_string(opt.levels) + " --classes " + std::to_string(opt.classes) + " --loss " +
                           shell_quote(opt.loss) + " --steps " + std::to_string(opt.steps) + " --warmup " +
                           std::to_string(opt.warmup) + " --threads " +
                           std::to_string(omp_get_max_threads());  // voxgrad's CPU threads
  Json j = run_python_json(opt.python, script, args);
  if (j.value("available", true) && !j.contains("step_median_s"))
    return {{"available", false}, {"reason", script + " printed no step_median_s"}};
  j["available"] = j.value("available", true);
  return j;
}

// The all-reduce of every bucket, started together and waited for, with no backward pass to hide
// behind: what the step would pay if nothing overlapped. Median over `repeats`.
double allreduce_alone_seconds(const GradientReducer& reducer, Communicator& comm, int repeats) {
  std::vector<Tensor> buffers;
  for (const GradientBucket& b : reducer.buckets())
    buffers.push_back(full({b.floats}, 1.0, DType::Float32, comm.device()));
  std::vector<double> times;
  for (int r = 0; r < repeats; ++r) {
    std::int64_t together = 0;
    comm.sum(&together, 1);  // the ranks start each repeat together
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::future<void>> pending;
    for (Tensor& buffer : buffers) pending.push_back(comm.start_sum(buffer.data<float>(), buffer.numel()));
    for (std::future<void>& f : pending) f.get();
    synchronize(comm.device());  // on a GPU, get() only ordered the device's stream after the sums
    times.push_back(seconds_since(t0));
  }
  return median(times);
}

int run_bench_train_on(const TrainBenchOptions& opt, const GlobalOptions& global,
                       const std::shared_ptr<Communicator>& comm);

int run_bench_train(const TrainBenchOptions& opt, const GlobalOptions& global) {
  VG_USAGE_CHECK(!opt.torch || (!opt.distributed && opt.ranks.empty()),
                 "--torch times one process; leave it out with --distributed or --ranks");
  if (!opt.ranks.empty()) {
    const std::string child = "--patch " + shell_quote(opt.patch) + " --first-stride " + shell_quote(opt.first_stride) +
                              " --batch-size " + std::to_string(opt.batch) + " --base " + std::to_string(opt.base) +
                              " --levels " + std::to_string(opt.levels) + " --classes " + std::to_string(opt.classes) +
                              " --loss " + shell_quote(opt.loss) + " --steps " + std::to_string(opt.steps) +
                              " --warmup " + std::to_string(opt.warmup) + " --bucket-mb " +
                              std::to_string(opt.bucket_mb);
    return run_scaling(opt, "train", child, global);
  }
  std::shared_ptr<Communicator> comm;
  if (opt.distributed) comm = distributed::mpi_world("--distributed");
  try {
    if (comm) comm = distributed::communicator_for(comm, global.device);
    return run_bench_train_on(opt, global, comm);
  } catch (const std::exception& e) {
    if (!comm || comm->size() == 1) throw;
    return distributed::handle_failure(e, *comm);
  }
}

// The bench itself, as one rank of `comm` when there is one.
int run_bench_train_on(const TrainBenchOptions& opt, const GlobalOptions& global,
                       const std::shared_ptr<Communicator>& comm) {
  const int ranks = comm ? comm->size() : 1;
  const bool rank0 = !comm || comm->rank() == 0;
  if (!rank0) logging::set_sink(logging::silent_sink());
  VG_USAGE_CHECK(opt.batch % ranks == 0, "--batch-size " << opt.batch << " is the global batch, and " << ranks
                                                         << " ranks cannot share it evenly");
  const std::int64_t share = opt.batch / ranks, first = comm ? share * comm->rank() : 0;
  const Device dev = comm ? comm->device() : resolve_device(global.device);  // a GPU rank: its own GPU
  const LossKind kind = parse_loss_kind(opt.loss);
  UNet3dConfig config;
  config.in_channels = 1;
  config.classes = opt.classes;
  config.base_features = opt.base;
  config.levels = opt.levels;
  // UNet3d's network, with the first downsampling's stride as given: (1, 2, 2) is what nnU-Net's
  // plans choose for images coarser along one axis.
  NnunetArchitecture architecture = unet3d_architecture(config);
  const Triple first_stride = *parse_patch(opt.first_stride);  // validated by the option
  for (std::int64_t s : first_stride)
    VG_USAGE_CHECK(s == 1 || s == 2, "--first-stride " << opt.first_stride << ": each stride must be 1 or 2");
  architecture.strides[1] = first_stride;
  Generator gen(1);
  NnunetNetwork model(architecture, 1, opt.classes, gen);
  const std::array<std::int64_t, 3> patch = *parse_patch(opt.patch);  // validated by the option
  for (int a = 0; a < 3; ++a) {
    std::int64_t q = 1;
    for (const Triple& stride : architecture.strides) q *= stride[a];
    VG_USAGE_CHECK(patch[a] % q == 0, "--patch " << opt.patch << ": " << patch[a] << " is not divisible by " << q
                                                 << " (--levels " << opt.levels << " and --first-stride "
                                                 << opt.first_stride << " halve axis " << a << " that often)");
  }
  model.check_input({share, 1, patch[0], patch[1], patch[2]});
  model.to(dev);
  model.train();
  std::int64_t params = 0;
  for (const auto& named : model.named_parameters()) params += named.second.numel();
  SgdOptions sgd;
  sgd.lr = 0.01;
  sgd.momentum = 0.99;  // nnU-Net's optimizer
  sgd.nesterov = true;
  SGD optimizer(model.named_parameters(), sgd);
  std::unique_ptr<GradientReducer> reducer;
  if (comm) {
    std::vector<Tensor> parameters;
    for (const auto& [name, p] : model.named_parameters()) parameters.push_back(p);
    reducer = std::make_unique<GradientReducer>(std::move(parameters), *comm,
                                                static_cast<std::int64_t>(opt.bucket_mb * 1024 * 1024));
  }

  // The global batch, of which this rank takes its share.
  const Tensor images =
      slice(randn({opt.batch, 1, patch[0], patch[1], patch[2]}, gen, DType::Float32, dev), 0, first, first + share)
          .clone();
  const Tensor labels = slice(sphere_labels(opt.batch, patch, opt.classes, dev), 0, first, first + share).clone();
  const std::string patch_text =
      std::to_string(patch[0]) + "x" + std::to_string(patch[1]) + "x" + std::to_string(patch[2]);

  double last_loss = 0;
  auto step = [&] {
    optimizer.zero_grad();
    const Tensor logits = model.forward(images);
    const Tensor loss = segmentation_loss(kind, logits, labels);
    if (reducer) {
      reducer->backward(loss);
    } else {
      loss.backward();
    }
    optimizer.step();
    return loss;
  };

  logging::info("bench train on " + dev.str() + ": U-Net base " + std::to_string(opt.base) + ", " +
                std::to_string(opt.levels) + " levels, " + std::to_string(params) + " parameters, batch " +
                std::to_string(opt.batch) + " x 1 x " + patch_text + ", loss " + opt.loss);
  using clock = std::chrono::steady_clock;
  std::vector<double> times, exposed;
  std::size_t peak = 0;
  {
    logging::ProgressBar bar("bench train", opt.warmup + opt.steps, "step");
    for (int i = 0; i < opt.warmup + opt.steps; ++i) {
      if (i == opt.warmup) {
        // The host allocator has no reset: its high-water mark also covers the warm-up steps, which
        // are the same steps, so it is the timed steps' peak unless model set-up went higher.
        if (dev.is_cuda()) cuda_allocator().reset_peak();
      }
      synchronize(dev);
      const auto t0 = clock::now();
      const Tensor loss = step();
      synchronize(dev);
      const double s = std::chrono::duration<double>(clock::now() - t0).count();
      last_loss = loss.item();
      if (i >= opt.warmup) times.push_back(s);
      if (i >= opt.warmup && reducer) exposed.push_back(reducer->last_timing().wait_seconds);
      bar.update(i + 1, "loss " + std::to_string(last_loss));
    }
    bar.finish();
    peak = dev.is_cuda() ? cuda_allocator().stats().peak_bytes_in_use : host_allocator_stats().peak_bytes_in_use;
  }

  const double med = median(times), min = *std::min_element(times.begin(), times.end());
  const double voxels = static_cast<double>(opt.batch * patch[0] * patch[1] * patch[2]);
  const std::int64_t peak_rss = peak_rss_bytes();
  Json line = {{"device", dev.str()},          {"params", params},   {"step_median_s", med},      {"step_min_s", min},
               {"voxels_per_s", voxels / med}, {"peak_bytes", peak}, {"peak_rss_bytes", peak_rss}};
  if (reducer) {
    // What the step pays for the all-reduce (the wait after the backward pass), what it would pay
    // without overlap, and the buckets it moves.
    const double alone = allreduce_alone_seconds(*reducer, *comm, std::max(3, opt.steps));
    const double paid = median(exposed);
    line["ranks"] = ranks;
    line["batch_per_rank"] = share;
    line["allreduce_bytes"] = reducer->last_timing().bytes;
    line["buckets"] = reducer->buckets().size();
    line["allreduce_alone_s"] = alone;
    // On a GPU the host does not wait for the sums (the device's stream does), so what the step
    // pays shows in its time and in the trace, not here.
    line["allreduce_exposed_s"] = dev.is_cpu() ? Json(paid) : Json(nullptr);
    line["overlap"] = dev.is_cpu() && alone > 0 ? Json(std::clamp(1.0 - paid / alone, 0.0, 1.0)) : Json(nullptr);
  }
  if (!rank0) return kExitOk;

  Json ref;
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
  }

  if (opt.json) {
    // The object keeps exactly its seven keys for scripts; the twin's numbers go to stderr.
    write_json_line(std::cout, line);
    if (opt.torch) std::cerr << "torch: " << ref.dump() << "\n";
  } else {
    std::printf("bench train on %s: %lld parameters, batch %lld x 1 x %s, loss %s, %d steps after %d warm-up\n",
                dev.str().c_str(), static_cast<long long>(params), static_cast<long long>(opt.batch),
                patch_text.c_str(), opt.loss.c_str(), opt.steps, opt.warmup);
    std::printf("%-10s %14s %12s %14s %12s %12s\n", "engine", "step median s", "step min s", "voxels/s", "peak MB",
                "peak RSS MB");
    std::printf("%-10s %14.3f %12.3f %14.0f %12.1f %12.1f\n", "voxgrad", med, min, voxels / med,
                static_cast<double>(peak) / 1e6, static_cast<double>(peak_rss) / 1e6);
    if (reducer) {
      std::printf("all-reduce: %d ranks, %zu buckets, %.1f MB per step; %.4f s alone", ranks, reducer->buckets().size(),
                  static_cast<double>(line["allreduce_bytes"].get<std::int64_t>()) / 1e6,
                  line["allreduce_alone_s"].get<double>());
      if (dev.is_cpu())
        std::printf(", %.4f s paid after the backward pass (%.0f%% hidden)", line["allreduce_exposed_s"].get<double>(),
                    100.0 * line["overlap"].get<double>());
      std::printf("\n");
    }
    if (opt.torch) {
      if (ref.value("available", false)) {
        const double tmed = ref.value("step_median_s", 0.0);
        std::printf("%-10s %14.3f %12.3f %14.0f %12s %12.1f\n", "pytorch", tmed, ref.value("step_min_s", 0.0),
                    tmed > 0 ? voxels / tmed : 0.0, "-",
                    static_cast<double>(ref.value("peak_rss_bytes", std::int64_t{0})) / 1e6);
        std::printf("voxgrad / pytorch = %.2f (torch %s, %lld parameters)\n", tmed > 0 ? med / tmed : 0.0,
                    ref.value("torch", std::string("?")).c_str(),
                    static_cast<long long>(ref.value("params", std::int64_t{0})));
      } else {
        std::printf("%-10s unavailable: %s\n", "pytorch", ref.value("reason", std::string()).c_str());
      }
    }
  }
  if (opt.json && opt.torch && ref.value("available", false) && ref.value("step_median_s", 0.0) > 0)
    std::cerr << "voxgrad / pytorch = " << med / ref["step_median_s"].get<double>() << "\n";
  return kExitOk;
}

}  // namespace

NestedCommand add_bench_train(CLI::App& bench) {
  auto opt = std::make_shared<TrainBenchOptions>();
  CLI::App* sub = bench.add_subcommand(
      "train",
      "Time full U-Net training steps (forward, loss, backward, SGD) on (N, 1, P, P, P), median after warm-up");
  sub->add_option("--patch", opt->patch, "Patch size D,H,W or S (each divisible by 2^(levels-1))")
      ->check(patch_validator())
      ->capture_default_str();
  sub->add_option("--first-stride", opt->first_stride,
                  "The first downsampling's stride D,H,W or S, each 1 or 2 (1,2,2: nnU-Net's for anisotropic images)")
      ->check(patch_validator())
      ->capture_default_str();
  sub->add_option("--batch-size", opt->batch, "N")->check(number_above_zero())->capture_default_str();
  sub->add_option("--base", opt->base, "Features at full resolution")
      ->check(number_above_zero())
      ->capture_default_str();
  sub->add_option("--levels", opt->levels, "Resolution levels, 2 to 7 (levels - 1 downsamplings)")
      ->check(number_in_range(2, 7))
      ->capture_default_str();
  sub->add_option("--classes", opt->classes, "Output classes (background included)")
      ->check(number_in_range(2, 1000))
      ->capture_default_str();
  sub->add_option("--loss", opt->loss, "Loss: ce, wce, dice, jaccard, lovasz, lovasz_hinge, dice_ce")
      ->check(one_of({"ce", "wce", "dice", "jaccard", "lovasz", "lovasz_hinge", "dice_ce"}))
      ->capture_default_str();
  sub->add_option("--steps", opt->steps, "Timed steps")->check(number_above_zero())->capture_default_str();
  sub->add_option("--warmup", opt->warmup, "Untimed steps before timing")
      ->check(number_above_zero(false))
      ->capture_default_str();
  sub->add_flag("--json", opt->json, "One JSON object on stdout");
  sub->add_flag("--torch", opt->torch, "Also time the same network in PyTorch (CPU) and print the ratio");
  sub->add_option("--torch-script", opt->torch_script, "The PyTorch twin (default: tools/bench_train_torch.py)");
  sub->add_option("--python", opt->python, "The Python that runs the twin")->capture_default_str();
  add_scaling_options(*sub, *opt);
  sub->add_option("--bucket-mb", opt->bucket_mb, "With --distributed or --ranks: MB of gradients per all-reduce")
      ->check(CLI::Range(0.01, 4096.0))
      ->capture_default_str();
  return {sub, [opt](const GlobalOptions& global) { return run_bench_train(*opt, global); }};
}

}  // namespace voxgrad::bench
