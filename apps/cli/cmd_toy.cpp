// `voxgrad toy`: a seconds-long smoke test of the engine on this machine and device, needing no data.
// It fits a per-voxel linear classifier to a synthetic 3-D volume with autograd and plain gradient
// descent, shows the loss falling on a progress bar and prints one JSON result line; with --profile
// or --trace it is the smallest run that shows the profiler's output.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <limits>
#include <memory>

#include "apps/cli/cli.h"
#include "apps/cli/cli_checks.h"
#include "engine/json.h"
#include "engine/log.h"
#include "engine/ops.h"
#include "engine/tensor.h"

namespace voxgrad::cli {

namespace {

constexpr int kBatch = 2;     // N
constexpr int kChannels = 2;  // C, input channels
constexpr int kClasses = 3;   // K

struct ToyOptions {
  int steps = 200;
  double lr = 1.0;
  std::uint64_t seed = 7;
  int size = 32;
};

// The data: channel 0 is a bright soft-edged sphere (one per sample) plus noise, channel 1 pure
// noise. The hidden rule labels the sphere class 0 and splits the background by the sign of
// channel 1: a linear rule, so the model below can fit it up to the soft sphere boundary.
struct ToyData {
  std::vector<float> input;         // (N, C, S, S, S)
  std::vector<float> one_hot;       // (N, K, S, S, S)
  std::vector<std::int32_t> label;  // (N, S, S, S)
};

ToyData make_data(int s, std::uint64_t seed) {
  const std::int64_t vox = static_cast<std::int64_t>(s) * s * s;
  Generator gen(seed);
  const std::vector<float> noise = randn({kBatch, kChannels, s, s, s}, gen).to_vector<float>();
  const float rule_w[kClasses][kChannels] = {{2.0f, 0.0f}, {-1.0f, 1.5f}, {-1.0f, -1.5f}};
  const float rule_b[kClasses] = {-2.0f, 0.0f, 0.0f};

  ToyData d;
  d.input.resize(noise.size());
  d.one_hot.assign(static_cast<std::size_t>(kBatch * kClasses * vox), 0.0f);
  d.label.resize(static_cast<std::size_t>(kBatch * vox));
  for (int n = 0; n < kBatch; ++n) {
    const double cz = s * (0.4 + 0.2 * n), cy = s * 0.5, cx = s * (0.6 - 0.2 * n), radius = s * 0.3;
    for (std::int64_t i = 0; i < vox; ++i) {
      const double z = static_cast<double>(i / (s * s)), y = static_cast<double>((i / s) % s),
                   x = static_cast<double>(i % s);
      const double r = std::sqrt((z - cz) * (z - cz) + (y - cy) * (y - cy) + (x - cx) * (x - cx));
      const double sphere = 1.0 / (1.0 + std::exp(r - radius));
      const std::size_t c0 = static_cast<std::size_t>((n * kChannels + 0) * vox + i);
      const std::size_t c1 = static_cast<std::size_t>((n * kChannels + 1) * vox + i);
      d.input[c0] = static_cast<float>(0.5 * noise[c0] + 2.0 * sphere);
      d.input[c1] = noise[c1];
      int best = 0;
      float best_score = -INFINITY;
      for (int k = 0; k < kClasses; ++k) {
        const float score = rule_w[k][0] * d.input[c0] + rule_w[k][1] * d.input[c1] + rule_b[k];
        if (score > best_score) {
          best_score = score;
          best = k;
        }
      }
      d.label[static_cast<std::size_t>(n * vox + i)] = best;
      d.one_hot[static_cast<std::size_t>((n * kClasses + best) * vox + i)] = 1.0f;
    }
  }
  return d;
}

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4f", v);
  return buf;
}

int run_toy(const ToyOptions& opt, const GlobalOptions& global) {
  const Device dev = resolve_device(global.device);
  const int s = opt.size;
  const ToyData data = make_data(s, opt.seed);
  const Tensor x = from_vector(data.input, {kBatch, kChannels, s, s, s}, dev);         // (N, C, S, S, S)
  const Tensor one_hot = from_vector(data.one_hot, {kBatch, kClasses, s, s, s}, dev);  // (N, K, S, S, S)

  // The model: logit_k = <w_k, x> + b_k at every voxel, w_k (C), b (K).
  Generator gen(opt.seed + 1);
  std::vector<Tensor> w;
  for (int k = 0; k < kClasses; ++k) {
    w.push_back(randn({kChannels}, gen, DType::Float32, dev, 0.0, 0.1));
    w.back().requires_grad_(true);
  }
  Tensor b = zeros({kClasses}, DType::Float32, dev);
  b.requires_grad_(true);

  auto forward = [&]() {
    std::vector<Tensor> per_class;
    for (const Tensor& wk : w) per_class.push_back(sum(mul(x, wk), {1}, /*keepdim=*/true));  // (N, 1, S, S, S)
    return add(concat(per_class, 1), b);                                                      // (N, K, S, S, S)
  };
  // Cross-entropy: the mean over voxels of -log p(label), the label picked by the one-hot mask.
  auto loss_of = [&](const Tensor& logits) { return neg(mean(sum(mul(log_softmax(logits, 1), one_hot), {1}))); };

  const auto start = std::chrono::steady_clock::now();
  double loss_first = NAN;
  {
    logging::ProgressBar bar("toy", opt.steps, "step");
    double loss_value = NAN;
    for (int step = 0; step < opt.steps; ++step) {
      const Tensor loss = loss_of(forward());
      loss.backward();
      loss_value = loss.item();
      if (step == 0) loss_first = loss_value;
      {
        NoGradGuard no_grad;
        for (Tensor& wk : w) wk = sub(wk, mul(wk.grad(), opt.lr));
        b = sub(b, mul(b.grad(), opt.lr));
      }
      // The updated tensors are fresh leaves; marking them starts the next step's graph.
      for (Tensor& wk : w) wk.requires_grad_(true);
      b.requires_grad_(true);
      bar.update(step + 1, "loss " + fmt(loss_value));
    }
    bar.finish("loss " + fmt(loss_value));
  }

  // The fitted model on the whole volume: final loss and voxel accuracy.
  double loss_last = NAN, accuracy = NAN;
  {
    NoGradGuard no_grad;
    const Tensor logits = forward();
    loss_last = loss_of(logits).item();
    const std::vector<float> z = logits.cpu().to_vector<float>();  // (N, K, S, S, S)
    const std::int64_t vox = static_cast<std::int64_t>(s) * s * s;
    std::int64_t correct = 0;
    for (int n = 0; n < kBatch; ++n) {
      for (std::int64_t i = 0; i < vox; ++i) {
        int best = 0;
        for (int k = 1; k < kClasses; ++k)
          if (z[static_cast<std::size_t>((n * kClasses + k) * vox + i)] >
              z[static_cast<std::size_t>((n * kClasses + best) * vox + i)])
            best = k;
        correct += best == data.label[static_cast<std::size_t>(n * vox + i)];
      }
    }
    accuracy = static_cast<double>(correct) / static_cast<double>(kBatch * vox);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  write_json_line(std::cout, {{"device", dev.str()},
                              {"steps", opt.steps},
                              {"loss_first", loss_first},
                              {"loss_last", loss_last},
                              {"accuracy", accuracy},
                              {"seconds", seconds}});
  return kExitOk;
}

}  // namespace

Command toy_command() {
  return {"toy", "Smoke-test the engine on this machine in seconds, no data needed: fit a per-voxel classifier to a "
          "synthetic volume with autograd (add --profile or --trace to see the profiler)",
          [](CLI::App& sub) -> RunFn {
            auto opt = std::make_shared<ToyOptions>();
            sub.add_option("--steps", opt->steps, "Gradient-descent steps")
                ->check(number_above_zero())
                ->capture_default_str();
            sub.add_option("--lr", opt->lr, "Learning rate")->check(number_above_zero())->capture_default_str();
            sub.add_option("--seed", opt->seed, "Seed of the data and of the initial weights")
                ->check(whole_number(0, std::numeric_limits<std::uint64_t>::max()))
                ->capture_default_str();
            sub.add_option("--size", opt->size, "Edge of the cubic volume in voxels")
                ->check(number_in_range(4, 256))
                ->capture_default_str();
            return [opt](const GlobalOptions& global) { return run_toy(*opt, global); };
          }};
}

}  // namespace voxgrad::cli
