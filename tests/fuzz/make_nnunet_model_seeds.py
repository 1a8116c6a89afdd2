#!/usr/bin/env python3
"""Hostile variants of the converted nnU-Net models in tests/fuzz/corpus_nnunet_model (each seed file
`Dataset*.json` is `voxgrad convert` of a committed fixture model): wrong types, missing keys, cycles,
out-of-range values, paths that leave the folder. Run from the repository root; rewrites hostile_*.json."""
import copy
import glob
import json
import os

HERE = os.path.join("tests", "fuzz", "corpus_nnunet_model")


def config(d):
    return d["plans_json"]["configurations"][d["configuration"]]


def arch(d):
    return config(d)["architecture"]["arch_kwargs"]


EDITS = {
    "format_number": lambda d: d.update(format=7),
    "version_string": lambda d: d.update(format_version="1"),
    "dataset_list": lambda d: d.update(dataset_json=[1, 2]),
    "labels_nested": lambda d: d["dataset_json"]["labels"].update(x=[[1, 2], 3]),
    "regions_no_order": lambda d: d["dataset_json"]["labels"].update(both=[1, 2]),
    "ignore_string": lambda d: d["dataset_json"]["labels"].update(ignore="last"),
    "channels_empty": lambda d: d["dataset_json"].update(channel_names={}),
    "inherit_cycle": lambda d: config(d).update(inherits_from=d["configuration"]),
    "inherit_missing": lambda d: config(d).update(inherits_from="3d_nothing"),
    "patch_negative": lambda d: config(d).update(patch_size=[-8, 16, 16]),
    "patch_float": lambda d: config(d).update(patch_size=[8.5, 16, 16]),
    "patch_four": lambda d: config(d).update(patch_size=[1, 8, 16, 16]),
    "spacing_zero": lambda d: config(d).update(spacing=[0, 1, 1]),
    "spacing_nan_string": lambda d: config(d).update(spacing=["nan", 1, 1]),
    "transpose_repeat": lambda d: d["plans_json"].update(transpose_forward=[1, 1, 0]),
    "transpose_big": lambda d: d["plans_json"].update(transpose_forward=[0, 1, 2**40]),
    "schemes_short": lambda d: config(d).update(normalization_schemes=[]),
    "mask_not_bool": lambda d: config(d).update(use_mask_for_norm=[1] * len(config(d)["use_mask_for_norm"])),
    "resampling_kwargs_list": lambda d: config(d).update(resampling_fn_data_kwargs=[3, 0]),
    "resampling_order_huge": lambda d: config(d)["resampling_fn_data_kwargs"].update(order=2**62),
    "stages_string": lambda d: arch(d).update(n_stages="six"),
    "stages_huge": lambda d: arch(d).update(n_stages=2**31),
    "features_short": lambda d: arch(d).update(features_per_stage=[4]),
    "kernels_ragged": lambda d: arch(d).update(kernel_sizes=[[3, 3], [3], 3]),
    "strides_zero": lambda d: arch(d).update(strides=[[0, 0, 0]] * len(arch(d)["strides"])),
    "norm_unknown": lambda d: arch(d).update(norm_op="torch.nn.LayerNorm"),
    "mirror_axes_big": lambda d: d.update(inference_allowed_mirroring_axes=[0, 7]),
    "mirror_axes_dict": lambda d: d.update(inference_allowed_mirroring_axes={"0": 1}),
    "folds_dict": lambda d: d.update(folds={"0": "fold_0.safetensors"}),
    "folds_escape": lambda d: d.update(folds=[{"fold": "0", "weights": "../../etc/passwd"}]),
    "intensity_strings": lambda d: d["plans_json"].update(
        foreground_intensity_properties_per_channel={"0": {"mean": "a", "std": 1, "percentile_00_5": 0,
                                                           "percentile_99_5": 1}}),
    "reader_unknown": lambda d: d["plans_json"].update(image_reader_writer="NaturalImage2DIO"),
    "cascade": lambda d: config(d).update(previous_stage="3d_lowres"),
}


def main():
    for old in glob.glob(os.path.join(HERE, "hostile_*.json")):
        os.remove(old)
    seeds = sorted(glob.glob(os.path.join(HERE, "Dataset*.json")))
    base = json.load(open(seeds[0]))
    for name, edit in EDITS.items():
        d = copy.deepcopy(base)
        edit(d)
        with open(os.path.join(HERE, f"hostile_{name}.json"), "w") as f:
            json.dump(d, f)
    with open(os.path.join(HERE, "hostile_deep_nesting.json"), "w") as f:
        f.write("[" * 5000 + "]" * 5000)
    with open(os.path.join(HERE, "hostile_truncated.json"), "w") as f:
        f.write(json.dumps(base)[:700])


if __name__ == "__main__":
    main()
