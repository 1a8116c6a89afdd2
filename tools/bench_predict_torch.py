#!/usr/bin/env python3
# The PyTorch twin of `voxgrad bench predict`: the network of tools/bench_train_torch.py (voxgrad's
# UNet3d as dynamic_network_architectures' PlainConvUNet) in eval mode under torch.no_grad(), run
# over a random (1, D, H, W) volume by sliding windows as apps/pipeline/sliding_window.cpp runs
# them: nnU-Net's window starts, each window's logits weighted by the same Gaussian importance map,
# the weighted sum divided by the summed weights. Prints one JSON line with predict_median_s,
# predict_min_s, windows, params and peak_rss_bytes. `voxgrad bench predict --torch` runs it.
import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

try:
    import torch
except ImportError as e:  # the bench reports the reason as "unavailable"
    print(json.dumps({"available": False, "reason": f"PyTorch not importable: {e}"}))
    sys.exit(1)
try:
    from bench_train_torch import unet3d  # beside this script
except ImportError as e:
    print(json.dumps({"available": False, "reason": f"the network of bench_train_torch.py not importable: {e}"}))
    sys.exit(1)


def dims(text):
    d = [int(s) for s in text.split(",")]
    return d * 3 if len(d) == 1 else d


def window_starts(size, patch, overlap):
    # nnU-Net's compute_steps_for_sliding_window along one axis.
    if size <= patch:
        return [0]
    count = math.ceil((size - patch) / (patch * (1 - overlap))) + 1
    step = (size - patch) / (count - 1)
    return [int(round(step * i)) for i in range(count)]


def importance_map(patch):
    # exp(-d^2 / (2 sigma^2)) per axis, sigma = size / 8 around (size - 1) / 2, scaled to a maximum of 1.
    axes = []
    for s in patch:
        d = torch.arange(s, dtype=torch.float64) - (s - 1) / 2
        axes.append(torch.exp(-d * d / (2 * (s / 8) ** 2)))
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    g = (g / g.max()).float()
    g[g == 0] = g[g > 0].min()
    return g


def predict(model, image, patch, overlap, classes, gaussian):
    size = image.shape[1:]
    logits = torch.zeros(classes, *size)
    weights = torch.zeros(*size)
    starts = [window_starts(size[a], patch[a], overlap) for a in range(3)]
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                window = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                out = model(image[(slice(None),) + window][None])[0]
                logits[(slice(None),) + window] += out * gaussian
                weights[window] += gaussian
    return logits / weights, len(starts[0]) * len(starts[1]) * len(starts[2])


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="128", help="D,H,W or S")
    ap.add_argument("--patch", default="64", help="D,H,W or S")
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--levels", type=int, default=4)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch's intra-op threads (default: every core)")
    a = ap.parse_args()

    torch.set_num_threads(a.threads if a.threads > 0 else os.cpu_count())
    torch.manual_seed(1)
    model = unet3d(1, a.classes, a.base, a.levels).eval()
    size, patch = dims(a.size), dims(a.patch)
    image = torch.randn(1, *size, generator=torch.Generator().manual_seed(1))
    gaussian = importance_map(patch)

    times = []
    with torch.no_grad():
        for i in range(a.warmup + a.reps):
            t0 = time.perf_counter()
            _, windows = predict(model, image, patch, a.overlap, a.classes, gaussian)
            s = time.perf_counter() - t0
            if i >= a.warmup:
                times.append(s)
    print(json.dumps({"available": True, "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "params": sum(p.numel() for p in model.parameters()), "windows": windows,
                      "predict_median_s": statistics.median(times), "predict_min_s": min(times),
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
