#!/usr/bin/env python3
# The PyTorch twin of `voxgrad bench train`: the same nnU-Net-style U-Net as models/unet3d.cpp, the same
# soft Dice (engine/losses.cpp) and SGD (momentum 0.99, Nesterov, lr 0.01), timed over the same steps;
# prints one JSON line with step_median_s, step_min_s and params. `voxgrad bench train --torch` runs it.
import argparse
import json
import os
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


def features(base, level, cap=320):
    return min(base * 2 ** level, cap)


class ConvBlock(nn.Module):
    # Two (conv 3^3 pad 1 -> InstanceNorm3d affine -> LeakyReLU 0.01); the first conv may downsample.
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride, 1, bias=True)
        self.norm1 = nn.InstanceNorm3d(cout, eps=1e-5, affine=True)
        self.conv2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=True)
        self.norm2 = nn.InstanceNorm3d(cout, eps=1e-5, affine=True)

    def forward(self, x):
        x = F.leaky_relu(self.norm1(self.conv1(x)), 0.01)
        return F.leaky_relu(self.norm2(self.conv2(x)), 0.01)


class DecoderStage(ConvBlock):
    def __init__(self, below, channels):
        super().__init__(2 * channels, channels, 1)
        self.up = nn.ConvTranspose3d(below, channels, 2, 2, bias=True)

    def forward(self, below, skip):
        return super().forward(torch.cat([self.up(below), skip], 1))


class UNet3d(nn.Module):
    def __init__(self, in_channels, classes, base, levels):
        super().__init__()
        self.encoder = nn.ModuleList(
            ConvBlock(in_channels if i == 0 else features(base, i - 1), features(base, i), 1 if i == 0 else 2)
            for i in range(levels))
        self.decoder = nn.ModuleList(DecoderStage(features(base, i + 1), features(base, i)) for i in range(levels - 1))
        self.head = nn.Conv3d(features(base, 0), classes, 1, bias=True)

    def forward(self, x):
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(len(self.decoder))):
            x = self.decoder[i](x, skips[i])
        return self.head(x)


def soft_dice(logits, labels, eps=1e-5):
    # engine/losses.cpp: D_c = (2 I + eps) / (P + G + eps) per image and foreground class; loss = mean(1 - D).
    p = torch.softmax(logits, 1)
    g = F.one_hot(labels.long(), logits.shape[1]).movedim(-1, 1).to(p.dtype)
    dims = tuple(range(2, logits.dim()))
    inter = (p * g).sum(dims)[:, 1:]
    denom = (p.sum(dims) + g.sum(dims))[:, 1:]
    return (1 - (2 * inter + eps) / (denom + eps)).mean()


def sphere_labels(n, p, classes, gen):
    # A few balls per foreground class, as the voxgrad bench draws them (not the same draws: timing only).
    z, y, x = torch.meshgrid(*(torch.arange(p, dtype=torch.float32),) * 3, indexing="ij")
    labels = torch.zeros(n, p, p, p, dtype=torch.int64)
    for i in range(n):
        for c in range(1, classes):
            for _ in range(2):
                cz, cy, cx = (0.2 + 0.6 * torch.rand(3, generator=gen)) * p
                r = (0.1 + 0.15 * torch.rand(1, generator=gen).item()) * p
                labels[i][(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= r * r] = c
    return labels


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--levels", type=int, default=4)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--loss", default="dice")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    a = ap.parse_args()
    losses = {"dice": soft_dice, "ce": lambda lg, lb: F.cross_entropy(lg, lb.long()),
              "dice_ce": lambda lg, lb: F.cross_entropy(lg, lb.long()) + soft_dice(lg, lb)}
    if a.loss not in losses:
        print(json.dumps({"available": False, "reason": f"the PyTorch twin has no --loss {a.loss}"}))
        return 1

    torch.set_num_threads(os.cpu_count())
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = UNet3d(1, a.classes, a.base, a.levels).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    images = torch.randn(a.batch_size, 1, a.patch, a.patch, a.patch, generator=gen)
    labels = sphere_labels(a.batch_size, a.patch, a.classes, gen)
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
                      "loss": loss.item()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
