#!/usr/bin/env python3
# Berman's reference Lovász-softmax (github.com/bermanmaxim/LovaszSoftmax, lovasz_losses.py: classes
# 'present', per_image False) in PyTorch, timed forward+backward on logits (N, C, S, S, S) with random
# labels; prints one JSON object. `voxgrad bench loss` runs it beside its own Lovász-softmax on the CPU.
import argparse
import json
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--logits-raw", help="float32 logits (N, C, S, S, S), C order, from voxgrad (default: random)")
    ap.add_argument("--labels-raw", help="int32 labels (N, S, S, S), C order, from voxgrad (default: random)")
    ap.add_argument("--float64", action="store_true", help="compute in float64 (to see which float32 result is closer)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch's intra-op threads, voxgrad's count for a fair comparison (default: torch's own)")
    args = ap.parse_args()
    try:
        import torch
    except ImportError as e:  # a missing torch is a result, not a failure: the caller says "unavailable"
        print(json.dumps({"available": False, "reason": "PyTorch is unavailable (%s); Debian: apt-get install python3-torch" % e}))
        return 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    def lovasz_grad(gt_sorted):
        # Gradient of the Lovász extension w.r.t. sorted errors: Berman's lovasz_grad, with his
        # .float() casts made .to(gt_sorted.dtype) so --float64 stays in float64.
        p = len(gt_sorted)
        gts = gt_sorted.sum()
        intersection = gts - gt_sorted.cumsum(0)
        union = gts + (1 - gt_sorted).cumsum(0)
        jaccard = 1.0 - intersection / union
        if p > 1:
            jaccard[1:p] = jaccard[1:p] - jaccard[0:-1]
        return jaccard

    def lovasz_softmax_flat(probas, labels):
        # probas (P, C), labels (P); classes 'present' as in the reference's default.
        losses = []
        for c in range(probas.size(1)):
            fg = (labels == c).to(probas.dtype)
            if fg.sum() == 0:
                continue
            errors = (fg - probas[:, c]).abs()
            errors_sorted, perm = torch.sort(errors, 0, descending=True)
            losses.append(torch.dot(errors_sorted, lovasz_grad(fg[perm])))
        return torch.stack(losses).mean() if losses else probas.sum() * 0.0

    def loss_of(logits, labels):
        probas = torch.softmax(logits, dim=1)
        c = probas.size(1)
        # (N, C, D, H, W) -> (N*D*H*W, C), as the reference's flatten_probas does for 2D.
        flat = probas.movedim(1, -1).reshape(-1, c)
        return lovasz_softmax_flat(flat, labels.reshape(-1))

    gen = torch.Generator().manual_seed(1234)
    shape = (args.images, args.classes, args.size, args.size, args.size)
    lshape = (args.images, args.size, args.size, args.size)
    if args.logits_raw:
        logits = torch.from_file(args.logits_raw, size=args.images * args.classes * args.size ** 3, dtype=torch.float32)
        logits = logits.reshape(shape).clone().requires_grad_(True)
    else:
        logits = torch.randn(shape, generator=gen, dtype=torch.float32).requires_grad_(True)
    if args.labels_raw:
        labels = torch.from_file(args.labels_raw, size=args.images * args.size ** 3, dtype=torch.int32)
        labels = labels.reshape(lshape).long()
    else:
        labels = torch.randint(0, args.classes, lshape, generator=gen)

    if args.float64:
        logits = logits.detach().double().requires_grad_(True)
    times = []
    value = None
    for i in range(args.warmup + args.reps):
        logits.grad = None
        t0 = time.perf_counter()
        loss = loss_of(logits, labels)
        loss.backward()
        ms = (time.perf_counter() - t0) * 1e3
        value = float(loss)
        if i >= args.warmup:
            times.append(ms)
    print(json.dumps({
        "available": True,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "shape": list(shape),
        "dtype": "float64" if args.float64 else "float32",
        "reps": args.reps,
        "loss_value": value,
        "forward_backward": {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
