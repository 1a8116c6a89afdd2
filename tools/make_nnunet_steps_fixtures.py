#!/usr/bin/python3
"""Makes tests/data/nnunet_steps/{preprocessing,sliding_window,export}.pth: small arrays put through
nnU-Net v2's own functions (crop_to_nonzero, the normalisation classes, compute_steps_for_sliding_window,
compute_gaussian, nnUNetPredictor's sliding-window prediction with a fixed tiny network, the folds'
mean, convert_predicted_logits_to_segmentation_with_correct_shape), inputs and outputs as a flat dict
of tensors for tests/nnunet_steps_test.cpp. Run with Debian's /usr/bin/python3 (torch 1.13, nnunetv2
2.8.1); tools/nnunet_reference/sitecustomize.py stands in for the modules torch 1.13 lacks.
"""
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("nnunet_reference_stubs",
                                               os.path.join(HERE, "nnunet_reference", "sitecustomize.py"))
_spec.loader.exec_module(importlib.util.module_from_spec(_spec))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from nnunetv2.inference.export_prediction import \
    convert_predicted_logits_to_segmentation_with_correct_shape  # noqa: E402
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: E402
from nnunetv2.inference.sliding_window_prediction import compute_gaussian, \
    compute_steps_for_sliding_window  # noqa: E402
from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero  # noqa: E402
from nnunetv2.preprocessing.normalization.default_normalization_schemes import (  # noqa: E402
    CTNormalization, NoNormalization, RescaleTo01Normalization, RGBTo01Normalization, ZScoreNormalization)
from nnunetv2.utilities.label_handling.label_handling import LabelManager  # noqa: E402

OUT = os.path.join(HERE, "..", "tests", "data", "nnunet_steps")


def t(a, dtype=None):
    """A contiguous tensor of a numpy array (float16 widened to float32: voxgrad has no float16)."""
    a = np.ascontiguousarray(a)
    if a.dtype == np.float16:
        a = a.astype(np.float32)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if dtype is not None:
        a = a.astype(dtype)
    return torch.from_numpy(a.copy())


def ints(values):
    return torch.tensor(list(values), dtype=torch.int64)


def preprocessing(rng):
    out = {}
    # Transposition of (C, Z, Y, X) as DefaultPreprocessor does it.
    data = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    out["transpose/input"] = t(data)
    for i, order in enumerate([(2, 0, 1), (1, 2, 0), (0, 2, 1)]):
        out[f"transpose/{i}/order"] = ints(order)
        out[f"transpose/{i}/output"] = t(data.transpose([0, *[a + 1 for a in order]]))

    # Cropping: a zero border, an enclosed cavity (filled), a notch open to the border (kept), a second
    # channel that reaches further on one axis.
    image = np.zeros((2, 9, 10, 11), np.float32)
    image[0, 2:7, 2:8, 3:9] = rng.random((5, 6, 6)) + 0.5
    image[0, 3:5, 4:6, 5:7] = 0  # a cavity
    image[0, 2:7, 2, 3:5] = 0  # a notch on the box's face, open to the outside
    image[1, 4, 5, 1] = -3.0  # a lone voxel in channel 1
    crops = {"cavity": image, "empty": np.zeros((1, 4, 5, 6), np.float32)}
    flat = np.zeros((1, 1, 6, 7), np.float32)  # one slice: a ring whose hole touches the z border
    flat[0, 0, 1:5, 1:6] = 1
    flat[0, 0, 2:4, 3] = 0
    crops["slice_ring"] = flat
    for name, img in crops.items():
        cropped, seg, bbox = crop_to_nonzero(img.copy())
        out[f"crop/{name}/input"] = t(img)
        out[f"crop/{name}/data"] = t(cropped)
        out[f"crop/{name}/seg"] = t(seg, np.int64)
        out[f"crop/{name}/bbox"] = ints(v for pair in bbox for v in pair)

    # Normalisation through the full view path: transpose, crop (views), then the scheme on the view.
    # Large enough that numpy's 8192-value blocks and the memory order matter.
    base = np.zeros((1, 20, 21, 22), np.float32)
    base[0, 1:, :, :21] = (rng.standard_normal((19, 21, 21)) * 40 + 300).astype(np.float32)
    base[0, 5:8, 6:9, 0:3] = 0  # zeros inside the box, open to its face: outside the mask
    out["norm/view/input"] = t(base)
    for order in [(2, 0, 1)]:
        key = "".join(map(str, order))
        for use_mask in (False, True):
            # DefaultPreprocessor: astype copies, transpose and crop are views, run() works on the view.
            data = base.astype(np.float32).transpose([0, *[a + 1 for a in order]])
            cropped, seg, _ = crop_to_nonzero(data)
            result = ZScoreNormalization(use_mask_for_norm=use_mask, intensityproperties={}).run(cropped[0], seg[0])
            out[f"norm/view/{key}/zscore_mask{int(use_mask)}"] = t(result)
    small = (rng.standard_normal((5, 6, 7)) * 30 + 100).astype(np.float32)
    small[0] = 0
    out["norm/small/input"] = t(small)
    props = {"mean": 98.25, "std": 27.5, "percentile_00_5": 60.1, "percentile_99_5": 141.3}
    out["norm/small/ct_properties"] = torch.tensor(
        [props["mean"], props["std"], props["percentile_00_5"], props["percentile_99_5"]], dtype=torch.float64)
    out["norm/small/ct"] = t(CTNormalization(False, props).run(small.copy()))
    out["norm/small/none"] = t(NoNormalization(False, {}).run(small.copy()))
    out["norm/small/rescale01"] = t(RescaleTo01Normalization(False, {}).run(small.copy()))
    out["norm/small/zscore"] = t(ZScoreNormalization(False, {}).run(small.copy()))
    rgb = rng.integers(0, 256, (1, 6, 7)).astype(np.float32)
    out["norm/rgb/input"] = t(rgb)
    out["norm/rgb/output"] = t(RGBTo01Normalization(False, {}).run(rgb.copy()))
    constant = np.full((2, 3, 4), 7.0, np.float32)
    out["norm/constant/input"] = t(constant)
    out["norm/constant/zscore"] = t(ZScoreNormalization(False, {}).run(constant.copy()))
    out["norm/constant/rescale01"] = t(RescaleTo01Normalization(False, {}).run(constant.copy()))
    return out


STEP_CASES = [((110,), (64,), 0.5), ((64,), (64,), 0.5), ((65,), (64,), 0.5), ((200, 37, 50), (96, 37, 24), 0.5),
              ((129, 300), (128, 112), 0.7), ((97, 97, 97), (32, 32, 32), 0.33), ((17, 5, 9), (4, 5, 3), 1.0),
              ((75,), (10,), 0.25)]


class ElementwiseNet(torch.nn.Module):
    """A 1x1x1 convolution written as elementwise ops (((x0 w0k + x1 w1k) + bk) + Rk), so the C++ side can
    round alike, plus a fixed per-position term R that makes mirroring matter."""

    def __init__(self, weight, bias, ramp):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.from_numpy(weight))  # (K, C)
        self.bias = torch.nn.Parameter(torch.from_numpy(bias))  # (K)
        self.ramp = torch.nn.Parameter(torch.from_numpy(ramp))  # (K, *patch)

    def forward(self, x):
        outs = []
        for k in range(self.weight.shape[0]):
            acc = x[:, 0] * self.weight[k, 0]
            for c in range(1, x.shape[1]):
                acc = acc + x[:, c] * self.weight[k, c]
            outs.append((acc + self.bias[k]) + self.ramp[k])
        return torch.stack(outs, 1)


class Config:
    def __init__(self, patch):
        self.patch_size = list(patch)


class Labels:
    def __init__(self, k):
        self.num_segmentation_heads = k


def predictor(net, patch, classes, step, mirror_axes):
    p = nnUNetPredictor(tile_step_size=step, use_gaussian=True, use_mirroring=mirror_axes is not None,
                        perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                        verbose_preprocessing=False, allow_tqdm=False)
    p.network = net
    p.configuration_manager = Config(patch)
    p.label_manager = Labels(classes)
    p.allowed_mirroring_axes = mirror_axes
    return p


def sliding_window(rng):
    out = {}
    for i, (size, patch, step) in enumerate(STEP_CASES):
        for a, steps in enumerate(compute_steps_for_sliding_window(size, patch, step)):
            out[f"steps/{i}/{a}"] = ints(steps)
    for name, patch in (("3d", (8, 12, 20)), ("2d", (12, 20)), ("odd", (5, 7, 9))):
        out[f"gaussian/{name}/float16"] = t(compute_gaussian(patch, 1. / 8, 10, torch.float16, torch.device("cpu"))
                                            .numpy())
        out[f"gaussian/{name}/float32"] = t(compute_gaussian(patch, 1. / 8, 10, torch.float32, torch.device("cpu"))
                                            .numpy())
    # float32 -> float16 rounding as torch does it: normals, subnormals, ties, overflow.
    values = np.concatenate([rng.standard_normal(600) * 10.0 ** rng.integers(-9, 6, 600),
                             np.array([65504, 65519.99, 65520, 65536, 1e6, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26,
                                       2.0 ** -14, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, -0.0, 5.960464477539063e-08])])
    values = values.astype(np.float32)
    out["half/input"] = t(values)
    out["half/output"] = t(torch.from_numpy(values).half().float().numpy())

    classes, channels = 3, 2
    cases = {
        "3d": ((channels, 9, 14, 18), (6, 10, 12), 0.5, None),
        "3d_mirror": ((channels, 9, 14, 18), (6, 10, 12), 0.5, (0, 1, 2)),
        "3d_mirror_yx_pad": ((channels, 4, 7, 19), (6, 10, 12), 0.5, (1, 2)),
        "2d_mirror": ((channels, 3, 15, 18), (10, 12), 0.6, (0, 1)),
    }
    for name, (shape, patch, step, mirror) in cases.items():
        image = rng.standard_normal(shape).astype(np.float32)
        weight = rng.standard_normal((classes, channels)).astype(np.float32)
        bias = rng.standard_normal(classes).astype(np.float32)
        ramp = (rng.standard_normal((classes, *patch)) * 2).astype(np.float32)
        net = ElementwiseNet(weight, bias, ramp)
        p = predictor(net, patch, classes, step, mirror)
        with torch.no_grad():
            logits = p.predict_sliding_window_return_logits(torch.from_numpy(image))
        assert logits.dtype == torch.float16, logits.dtype  # nnU-Net 2.8.1 accumulates in float16 on the CPU too
        prefix = f"window/{name}/"
        out[prefix + "image"] = t(image)
        out[prefix + "weight"] = t(weight)
        out[prefix + "bias"] = t(bias)
        out[prefix + "ramp"] = t(ramp)
        out[prefix + "patch"] = ints(patch)
        out[prefix + "step"] = torch.tensor([step], dtype=torch.float64)
        out[prefix + "mirror_axes"] = ints(mirror or ())
        out[prefix + "logits"] = t(logits.numpy())
        if name == "3d":
            # Two folds through predict_logits_from_preprocessed_data: the float16 mean of float16 logits.
            second = {"weight": torch.from_numpy(rng.standard_normal((classes, channels)).astype(np.float32)),
                      "bias": torch.from_numpy(rng.standard_normal(classes).astype(np.float32)),
                      "ramp": torch.from_numpy((rng.standard_normal((classes, *patch)) * 2).astype(np.float32))}
            p.list_of_parameters = [{k: v.clone() for k, v in net.state_dict().items()}, second]
            mean = p.predict_logits_from_preprocessed_data(torch.from_numpy(image))
            assert mean.dtype == torch.float16
            out[prefix + "fold2/weight"] = second["weight"].clone()
            out[prefix + "fold2/bias"] = second["bias"].clone()
            out[prefix + "fold2/ramp"] = second["ramp"].clone()
            out[prefix + "fold_mean"] = t(mean.numpy())
    return out


class Plans:
    def __init__(self, forward):
        self.transpose_forward = list(forward)
        self.transpose_backward = [int(i) for i in np.argsort(forward)]


class ConfigNoResampling:
    spacing = [1.0, 1.0, 1.0]

    @staticmethod
    def resampling_fn_probabilities(logits, shape, current_spacing, new_spacing):
        assert tuple(logits.shape[1:]) == tuple(shape)
        return logits


def export(rng):
    out = {}
    forward = (2, 0, 1)
    plans = Plans(forward)
    before = (9, 10, 12)  # transposed axis order
    bbox = [[2, 8], [1, 8], [3, 11]]
    crop = tuple(b - a for a, b in bbox)
    out["export/transpose_forward"] = ints(forward)
    out["export/shape_before_cropping"] = ints(before)
    out["export/bbox"] = ints(v for pair in bbox for v in pair)
    props = {"spacing": [1.0, 1.0, 1.0], "shape_after_cropping_and_before_resampling": crop,
             "shape_before_cropping": before, "bbox_used_for_cropping": bbox}
    labels = {"softmax": (LabelManager({"background": 0, "a": 1, "b": 2, "c": 3}, None), 4),
              "regions": (LabelManager({"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enh": [3]},
                                       [1, 2, 3]), 3)}
    for name, (manager, heads) in labels.items():
        # float16 logits, as the predictor hands them over; coarse values so ties occur.
        logits = (np.round(rng.standard_normal((heads, *crop)) * 4) / 4).astype(np.float16)
        logits[:, 0, 0, 0] = 0  # exact ties: argmax takes the first; sigmoid(0) = 0.5 is not > 0.5
        out[f"export/{name}/logits"] = t(logits)
        seg = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits.copy(), plans, ConfigNoResampling, manager, props, return_probabilities=False)
        out[f"export/{name}/segmentation"] = t(seg, np.int64)
        seg_p, probs = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits.copy(), plans, ConfigNoResampling, manager, props, return_probabilities=True)
        out[f"export/{name}/segmentation_from_probabilities"] = t(seg_p, np.int64)
        out[f"export/{name}/probabilities"] = t(probs)
    return out


def main():
    rng = np.random.default_rng(20261202)
    os.makedirs(OUT, exist_ok=True)
    for name, make in (("preprocessing", preprocessing), ("sliding_window", sliding_window), ("export", export)):
        path = os.path.join(OUT, name + ".pth")
        torch.save(make(rng), path)
        print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    sys.exit(main())
