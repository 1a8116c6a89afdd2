#!/usr/bin/python3
# Makes tests/data/nnunet_resampling/cases.pth: small random arrays resampled by nnU-Net v2's own
# resample_data_or_seg_to_shape (and shapes from its compute_new_shape), inputs and outputs in float64,
# for tests/nnunet_resampling_test.cpp. Run with Debian's /usr/bin/python3 (nnunetv2 2.8.1, scipy, skimage).
import os
import sys

import numpy as np
import torch
from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape, resample_data_or_seg_to_shape

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "data", "nnunet_resampling", "cases.pth")

# name, (C, Z, Y, X), current spacing, new spacing (or None to give `shape` directly), shape,
# order, order_z, force_separate_z, input dtype
CASES = [
    ("iso_up_order3", (1, 5, 6, 7), (1.0, 1.0, 1.0), (0.65, 0.7, 0.8), None, 3, 0, None, np.float64),
    ("iso_down_order3_2ch", (2, 9, 10, 8), (0.8, 0.8, 0.9), (1.3, 1.25, 1.1), None, 3, 0, None, np.float64),
    ("iso_up_order1", (1, 5, 6, 4), (1.0, 1.1, 1.0), (0.7, 0.6, 0.55), None, 1, 0, None, np.float64),
    ("iso_down_order1_float32_2ch", (2, 8, 9, 7), (0.7, 0.7, 0.7), (1.1, 1.2, 0.95), None, 1, 0, None, np.float32),
    ("sepz_up_order3", (1, 4, 7, 6), (4.0, 0.8, 0.8), (2.7, 0.55, 0.6), None, 3, 0, None, np.float64),
    ("sepz_down_order3_2ch", (2, 7, 8, 8), (2.5, 0.6, 0.6), (3.7, 0.9, 0.85), None, 3, 0, None, np.float64),
    ("sepz_from_new_spacing", (1, 6, 5, 6), (1.0, 1.0, 1.0), (3.5, 0.9, 0.95), None, 3, 0, None, np.float64),
    ("sepz_axis1_order1_float32", (1, 6, 4, 6), (0.7, 3.0, 0.7), (0.5, 2.2, 0.6), None, 1, 0, None, np.float32),
    ("sepz_axis2_order3", (1, 6, 5, 3), (0.8, 0.8, 3.2), (0.55, 0.9, 2.3), None, 3, 0, None, np.float64),
    ("sepz_order_z1", (1, 4, 6, 5), (4.0, 0.8, 0.8), (2.6, 0.7, 0.55), None, 3, 1, None, np.float64),
    ("sepz_order_z3", (1, 5, 6, 5), (4.0, 0.8, 0.8), (2.6, 0.7, 0.95), None, 3, 3, None, np.float64),
    ("force_sepz_true", (1, 6, 5, 6), (1.0, 1.2, 1.0), (0.7, 0.8, 0.75), None, 3, 0, True, np.float64),
    ("force_sepz_false", (1, 4, 7, 6), (4.0, 0.8, 0.8), (2.7, 0.55, 0.6), None, 3, 0, False, np.float64),
    ("ambiguous_axis", (1, 8, 4, 4), (0.24, 1.25, 1.25), (0.4, 0.9, 0.8), None, 3, 0, None, np.float64),
    ("size1_axis_sepz", (1, 1, 7, 6), (3.0, 0.8, 0.8), (3.0, 0.55, 0.6), None, 3, 0, None, np.float64),
    ("size1_axis_upsampled", (2, 1, 5, 6), (1.0, 1.0, 1.0), (0.45, 0.8, 0.75), None, 3, 0, None, np.float64),
    ("one_axis_unchanged", (1, 6, 6, 5), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (4, 9, 5), 3, 0, None, np.float64),
    ("unchanged_shape", (2, 4, 5, 3), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), None, 3, 0, None, np.float64),
    ("order0", (1, 5, 6, 5), (1.0, 1.0, 1.0), (0.7, 1.3, 0.6), None, 0, 0, None, np.float64),
    # halving an axis puts nearest-neighbour samples exactly halfway between two voxels
    ("order0_halfway", (1, 4, 6, 5), (1.0, 1.0, 1.0), (2.0, 2.0, 1.0), None, 0, 0, None, np.float64),
    ("sepz_halfway", (1, 4, 5, 6), (2.0, 0.6, 0.6), (4.0, 0.9, 0.6), None, 3, 0, None, np.float64),
    # axes shrunk to one voxel, and a large upsampling factor
    ("to_one_voxel_order3", (1, 5, 6, 7), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (1, 4, 1), 3, 0, None, np.float64),
    ("to_one_voxel_order1", (2, 5, 6, 7), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (3, 1, 1), 1, 0, None, np.float64),
    ("upsample_sevenfold", (1, 2, 3, 2), (1.0, 1.0, 1.0), (0.14, 0.15, 0.16), None, 3, 0, None, np.float64),
    # nnUNetPredictor's logits are float16, and so is what it resamples them to
    ("logits_float16_sepz", (3, 4, 7, 6), (2.7, 0.55, 0.6), (4.0, 0.8, 0.8), None, 1, 0, None, np.float16),
    ("logits_float16_iso", (2, 6, 5, 7), (0.9, 0.9, 0.9), (1.0, 0.7, 1.2), None, 1, 0, None, np.float16),
]


def main():
    rng = np.random.default_rng(20261202)
    out = {}
    for name, shape, spacing, new_spacing, given_shape, order, order_z, force, dtype in CASES:
        scale = 20.0 if dtype == np.float16 else 200.0
        data = ((rng.random(shape) - 0.25) * scale).astype(dtype)
        if given_shape is None:
            new_shape = compute_new_shape(shape[1:], spacing, new_spacing)
        else:
            new_shape = np.array(given_shape)
        result = resample_data_or_seg_to_shape(data, new_shape, spacing, new_spacing, is_seg=False, order=order,
                                               order_z=order_z, force_separate_z=force)
        assert result.dtype == data.dtype and tuple(result.shape) == (shape[0], *new_shape), name
        # settings: order, order_z, force_separate_z (-1 None, 0 False, 1 True), input dtype (0 float64,
        # 1 float32, 2 float16),
        # shape from compute_new_shape
        settings = [order, order_z, -1 if force is None else int(force), {np.float64: 0, np.float32: 1, np.float16: 2}[dtype],
                    int(given_shape is None)]
        out[name + ".input"] = torch.from_numpy(data.astype(np.float64))
        out[name + ".output"] = torch.from_numpy(np.ascontiguousarray(result, dtype=np.float64))
        if dtype != np.float64:
            # The same values in float64: nnU-Net computes in float64 either way, so this is its result
            # before the cast back to the input's dtype, which is compared at full precision.
            result64 = resample_data_or_seg_to_shape(data.astype(np.float64), new_shape, spacing, new_spacing,
                                                     is_seg=False, order=order, order_z=order_z,
                                                     force_separate_z=force)
            assert np.array_equal(result64.astype(dtype), result), name
            out[name + ".output_float64"] = torch.from_numpy(np.ascontiguousarray(result64))
        out[name + ".spacing"] = torch.tensor(spacing, dtype=torch.float64)
        out[name + ".new_spacing"] = torch.tensor(new_spacing, dtype=torch.float64)
        out[name + ".new_shape"] = torch.tensor([int(s) for s in new_shape], dtype=torch.float64)
        out[name + ".settings"] = torch.tensor(settings, dtype=torch.float64)
    # compute_new_shape alone, rows of old shape, old spacing, new spacing, new shape: halves (2.5, 3.5,
    # 0.5) round to even as Python's round does, and spacings whose ratio is not exact in binary.
    rows = []
    for old_shape, spacing, new_spacing in [((5, 7, 3), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0)),
                                            ((1, 9, 11), (1.0, 3.0, 0.5), (2.0, 2.0, 2.0)),
                                            ((512, 512, 97), (0.7, 0.7, 5.0), (0.79, 0.79, 3.2)),
                                            ((33, 250, 301), (3.3, 0.4, 0.6), (1.1, 0.3, 0.7)),
                                            ((7, 10, 3), (0.1, 0.35, 1.7), (0.3, 0.1, 0.6))]:
        new_shape = compute_new_shape(old_shape, spacing, new_spacing)
        rows.append([*old_shape, *spacing, *new_spacing, *[int(v) for v in new_shape]])
    out["compute_new_shape"] = torch.tensor(rows, dtype=torch.float64)

    # numpy's float64 -> float16 cast: rows of x and float16(x), over every binade float16 has (and
    # beyond, both ways), with exact ties between neighbours, subnormals and the overflow edge.
    x = np.concatenate([
        np.ldexp(rng.random(1500) + 0.5, rng.integers(-27, 18, 1500)) * rng.choice([-1.0, 1.0], 1500),
        (np.arange(-40, 41) + 0.5) * 2.0 ** -24, 1.0 + (np.arange(0, 9) + 0.5) * 2.0 ** -10,
        [0.0, -0.0, 65504.0, 65519.99, 65520.0, 65535.0, 70000.0, -65520.0, 6.0e-8, 2.0 ** -25, 3 * 2.0 ** -26]])
    with np.errstate(over="ignore"):  # overflowing to infinity is the point
        half = x.astype(np.float16).astype(np.float64)
    out["float16_rounding"] = torch.from_numpy(np.stack([x, half], axis=1))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    torch.save(out, OUT)
    print(f"{len(CASES)} cases, {os.path.getsize(OUT)} bytes: {os.path.normpath(OUT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
