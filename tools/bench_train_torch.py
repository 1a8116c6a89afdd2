#!/usr/bin/env python3
# The PyTorch twin of `voxgrad bench train`: the network voxgrad's UNet3d is, dynamic_network_architectures'
# PlainConvUNet with the arch_kwargs of models/unet3d.cpp's unet3d_architecture (so the same parameters
# and the same state_dict names), the same soft Dice (engine/losses.cpp) and SGD (momentum 0.99,
# Nesterov, lr 0.01), timed over the same steps; prints one JSON line with step_median_s, step_min_s
# and params. `voxgrad bench train --torch` runs it.
import argparse
import json
import os
import resource
import statistics
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # the bench reports the reason as "unavailable"
    print(json.dumps({"available": False, "reason": f"PyTorch not importable: {e}"}))
    sys.exit(1)
try:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from dynamic_network_architectures.initialization.weight_init import InitWeights_He
except ImportError as e:
    print(json.dumps({"available": False, "reason": f"dynamic_network_architectures not importable: {e}"}))
    sys.exit(1)


def features(base, level, cap=320):
    return min(base * 2 ** level, cap)


def unet3d(in_channels, classes, base, levels, first_stride=(2, 2, 2)):
    # models/unet3d.h: n_stages = levels, features min(base * 2^i, 320), kernels 3^3, strides
    # [1, first_stride, 2, ...], two convs per encoder and decoder stage, conv bias, affine InstanceNorm3d
    # (eps 1e-5), LeakyReLU 0.01, no dropout, no deep supervision (the bench trains one output).
    model = PlainConvUNet(
        input_channels=in_channels, n_stages=levels, features_per_stage=[features(base, i) for i in range(levels)],
        conv_op=nn.Conv3d, kernel_sizes=[[3, 3, 3]] * levels,
        strides=[[1, 1, 1], list(first_stride)] + [[2, 2, 2]] * (levels - 2),
        n_conv_per_stage=[2] * levels, num_classes=classes, n_conv_per_stage_decoder=[2] * (levels - 1),
        conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        dropout_op=None, dropout_op_kwargs=None, nonlin=nn.LeakyReLU,
        nonlin_kwargs={"negative_slope": 0.01, "inplace": True}, deep_supervision=False)
    model.apply(InitWeights_He(1e-2))  # nnU-Net's initialisation, as voxgrad's kaiming_normal_
    return model


def soft_dice(logits, labels, eps=1e-5):
    # engine/losses.cpp: D_c = (2 I + eps) / (P + G + eps) per image and foreground class; loss = mean(1 - D).
    p = torch.softmax(logits, 1)
    g = F.one_hot(labels.long(), logits.shape[1]).movedim(-1, 1).to(p.dtype)
    dims = tuple(range(2, logits.dim()))
    inter = (p * g).sum(dims)[:, 1:]
    denom = (p.sum(dims) + g.sum(dims))[:, 1:]
    return (1 - (2 * inter + eps) / (denom + eps)).mean()


def sphere_labels(n, p, classes, gen):
    # A few ellipsoids per foreground class, as the voxgrad bench draws them (not the same draws: timing only).
    z, y, x = torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in p), indexing="ij")
    labels = torch.zeros(n, *p, dtype=torch.int64)
    for i in range(n):
        for c in range(1, classes):
            for _ in range(2):
                cz, cy, cx = (0.2 + 0.6 * torch.rand(3, generator=gen)) * torch.tensor(p, dtype=torch.float32)
                r = 0.1 + 0.15 * torch.rand(1, generator=gen).item()
                labels[i][((z - cz) / (r * p[0])) ** 2 + ((y - cy) / (r * p[1])) ** 2 + ((x - cx) / (r * p[2])) ** 2
                          <= 1] = c
    return labels


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--patch", default="64", help="D,H,W or S")
    ap.add_argument("--first-stride", default="2", help="D,H,W or S: the first downsampling's stride")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--levels", type=int, default=4)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--loss", default="dice")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch's intra-op threads (default: every core)")
    a = ap.parse_args()
    losses = {"dice": soft_dice, "ce": lambda lg, lb: F.cross_entropy(lg, lb.long()),
              "dice_ce": lambda lg, lb: F.cross_entropy(lg, lb.long()) + soft_dice(lg, lb)}
    if a.loss not in losses:
        print(json.dumps({"available": False, "reason": f"the PyTorch twin has no --loss {a.loss}"}))
        return 1

    torch.set_num_threads(a.threads if a.threads > 0 else os.cpu_count())
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    first_stride = [int(s) for s in a.first_stride.split(",")]
    first_stride = first_stride * 3 if len(first_stride) == 1 else first_stride
    model = unet3d(1, a.classes, a.base, a.levels, first_stride).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    patch = [int(s) for s in a.patch.split(",")]
    patch = patch * 3 if len(patch) == 1 else patch
    images = torch.randn(a.batch_size, 1, *patch, generator=gen)
    labels = sphere_labels(a.batch_size, patch, a.classes, gen)
    loss_fn = losses[a.loss]

    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(model(images), labels)
        loss.backward()
        opt.step()
        s = time.perf_counter() - t0
        if i >= a.warmup:
            times.append(s)
    print(json.dumps({"available": True, "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "params": sum(p.numel() for p in model.parameters()),
                      "step_median_s": statistics.median(times), "step_min_s": min(times),
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "loss": loss.item()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
