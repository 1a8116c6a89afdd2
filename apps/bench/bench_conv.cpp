// `voxgrad bench conv`: median forward and backward (dx, dw, db) time of conv3d (kernel k, padding
// k/2, stride s) or conv_transpose3d (kernel 2, stride 2) on (N, Ci, S, S, S), with the GFLOP/s, the
// CPU scratch bound and SIMD variant, after warm-up (the first cuDNN call also picks the algorithm).
#include "apps/bench/bench_conv.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "apps/bench/bench_stats.h"
#include "apps/cli/cli_checks.h"
#include "engine/autograd.h"
#include "engine/conv.h"
#include "engine/device.h"
#include "engine/json.h"
#include "engine/tensor.h"
#include "kernels/conv3d.h"

namespace voxgrad::bench {

using namespace cli;  // the command line's option checks and exit statuses

namespace {

struct ConvBenchOptions {
  std::int64_t size = 64, batch = 1, in_channels = 16, out_channels = 32, kernel = 3, stride = 1;
  int reps = 5;
  int warmup = 1;
  bool transpose = false;
  bool deterministic = false;
  bool tf32 = false;
  bool json = false;
};



int run_bench_conv(const ConvBenchOptions& opt, const GlobalOptions& global) {
  const Device dev = resolve_device(global.device);
  set_conv_deterministic(opt.deterministic);
  set_conv_allow_tf32(opt.tf32);
  const std::int64_t k = opt.transpose ? 2 : opt.kernel, s = opt.transpose ? 2 : opt.stride;
  Generator gen(1);
  Tensor x = randn({opt.batch, opt.in_channels, opt.size, opt.size, opt.size}, gen, DType::Float32, dev);
  Tensor w = randn(opt.transpose ? Shape{opt.in_channels, opt.out_channels, k, k, k}
                                 : Shape{opt.out_channels, opt.in_channels, k, k, k},
                   gen, DType::Float32, dev);
  Tensor b = randn({opt.out_channels}, gen, DType::Float32, dev);
  x.requires_grad_();
  w.requires_grad_();
  b.requires_grad_();
  auto op = [&] {
    return opt.transpose ? conv_transpose3d(x, w, b, ConvTranspose3dParams{{s, s, s}, {0, 0, 0}, {0, 0, 0}, {1, 1, 1}})
                         : conv3d(x, w, b, Conv3dParams{{s, s, s}, {k / 2, k / 2, k / 2}, {1, 1, 1}});
  };
  std::vector<double> fwd, bwd;
  Shape y_shape;
  for (int i = 0; i < opt.warmup + opt.reps; ++i) {
    synchronize(dev);
    auto t0 = std::chrono::steady_clock::now();
    Tensor y = op();
    synchronize(dev);
    const double f = seconds_since(t0);
    Tensor dy = ones_like(y);
    synchronize(dev);
    t0 = std::chrono::steady_clock::now();
    y.backward(dy);
    synchronize(dev);
    const double bw = seconds_since(t0);
    y_shape = y.shape();
    x.zero_grad();
    w.zero_grad();
    b.zero_grad();
    if (i >= opt.warmup) {
      fwd.push_back(f);
      bwd.push_back(bw);
    }
  }
  // Multiply-adds of one pass: every output voxel of the convolution (the input side of a transposed one).
  const Shape& big = opt.transpose ? x.shape() : y_shape;
  const double macs = static_cast<double>(big[0] * big[2] * big[3] * big[4]) * static_cast<double>(opt.in_channels) *
                      static_cast<double>(opt.out_channels) * static_cast<double>(k * k * k);
  const double fwd_s = median(fwd), bwd_s = median(bwd);
  kernels::Conv3dShape g;
  g.n = opt.batch;
  g.c_in = opt.transpose ? opt.out_channels : opt.in_channels;
  g.c_out = opt.transpose ? opt.in_channels : opt.out_channels;
  for (int a = 0; a < 3; ++a) {
    g.in[a] = opt.transpose ? y_shape[2 + a] : opt.size;
    g.out[a] = opt.transpose ? opt.size : y_shape[2 + a];
    g.kernel[a] = k;
    g.stride[a] = s;
    g.padding[a] = opt.transpose ? 0 : k / 2;
  }
  Json line = {{"case", opt.transpose ? "conv_transpose3d" : "conv3d"},
               {"device", dev.str()},
               {"input", x.shape()},
               {"weight", w.shape()},
               {"output", y_shape},
               {"forward_median_s", fwd_s},
               {"backward_median_s", bwd_s},
               {"forward_gflops", 2 * macs / fwd_s / 1e9},
               {"backward_gflops", 4 * macs / bwd_s / 1e9},
               {"reps", opt.reps}};
  if (dev.is_cpu()) {
    line["cpu_scratch_bytes"] = kernels::cpu::conv3d_scratch_bytes(g, sizeof(float));
    line["cpu_simd"] = kernels::cpu::conv3d_simd_variant();
  } else {
    line["deterministic"] = opt.deterministic;
    line["tf32"] = opt.tf32;
  }
  if (opt.json) {
    write_json_line(std::cout, line);
  } else {
    std::printf("%s on %s: forward %.4f s (%.1f GFLOP/s), backward dx+dw+db %.4f s (%.1f GFLOP/s)\n",
                opt.transpose ? "conv_transpose3d" : "conv3d", dev.str().c_str(), fwd_s, 2 * macs / fwd_s / 1e9,
                bwd_s, 4 * macs / bwd_s / 1e9);
  }
  return 0;
}

}  // namespace

NestedCommand add_bench_conv(CLI::App& bench) {
  auto opt = std::make_shared<ConvBenchOptions>();
  CLI::App* sub = bench.add_subcommand(
      "conv", "Time conv3d (or conv_transpose3d) forward and backward on (N, Ci, S, S, S), median of --reps runs");
  sub->add_option("--size", opt->size, "Spatial size S")->check(number_above_zero())->capture_default_str();
  sub->add_option("--batch-size", opt->batch, "N")->check(number_above_zero())->capture_default_str();
  sub->add_option("--in", opt->in_channels, "Input channels")->check(number_above_zero())->capture_default_str();
  sub->add_option("--out", opt->out_channels, "Output channels")->check(number_above_zero())->capture_default_str();
  sub->add_option("--kernel", opt->kernel, "Kernel size k (padding k/2)")
      ->check(number_above_zero())
      ->capture_default_str();
  sub->add_option("--stride", opt->stride, "Stride")->check(number_above_zero())->capture_default_str();
  sub->add_option("--reps", opt->reps, "Timed runs")->check(number_above_zero())->capture_default_str();
  sub->add_option("--warmup", opt->warmup, "Untimed runs before timing")
      ->check(number_above_zero(false))
      ->capture_default_str();
  sub->add_flag("--transpose", opt->transpose, "conv_transpose3d with kernel 2, stride 2 (the U-Net upsampling)");
  sub->add_flag("--deterministic", opt->deterministic, "cuDNN: deterministic algorithms only");
  sub->add_flag("--tf32", opt->tf32, "cuDNN: allow TF32 tensor cores");
  sub->add_flag("--json", opt->json, "One JSON line on stdout");
  return {sub, [opt](const GlobalOptions& global) { return run_bench_conv(*opt, global); }};
}

}  // namespace voxgrad::bench
