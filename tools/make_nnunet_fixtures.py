#!/usr/bin/python3
"""Makes tests/data/nnunet/: small nnU-Net v2 trained-model folders made by nnU-Net's own fingerprint extractor,
planner, network code and trainer checkpointing, input cases, and what nnUNetPredictor makes of them. These are the
ground truth voxgrad's native nnU-Net inference is compared against; --compare runs a voxgrad binary beside nnU-Net.

Run with Debian's interpreter: /usr/bin/python3 tools/make_nnunet_fixtures.py [--out DIR] [--compare VOXGRAD_BINARY]
"""

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE_DIR = os.path.join(HERE, "nnunet_reference")
DEFAULT_OUT = os.path.join(os.path.dirname(HERE), "tests", "data", "nnunet")


def reexec_with_standins():
    """nnU-Net 2.8.1 imports names Debian's torch 1.13 lacks; the stand-ins must reach this process and every worker
    nnU-Net spawns, so they go on PYTHONPATH before anything imports torch."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if REFERENCE_DIR in paths and os.environ.get("nnUNet_def_n_proc") == os.environ.get("OMP_NUM_THREADS") == "1":
        return
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REFERENCE_DIR] + [p for p in paths if p != REFERENCE_DIR])
    # One thread: the float sums (and so the fixtures) stay the same from run to run, and torch 1.13's CPU
    # instance norm on these tiny tensors runs ten times faster than with two contended threads.
    env["nnUNet_def_n_proc"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("nnUNet_compile", "false")
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env)


if __name__ == "__main__":
    reexec_with_standins()

import numpy as np  # noqa: E402

# Each dataset: numpy (z, y, x) shape and spacing of its training cases (nnU-Net's axis order, SimpleITK's array
# order), the spacing of the second input case, and the labels. kind: "mr" two channels (the first stored as
# float32), "mr1" one int16 channel, "ct" int16 HU with zero padding, "brain" zeros outside an ellipsoidal head.
DATASETS = {
    901: dict(name="AnisoMR", channels={"0": "T2", "1": "ADC"}, kind="mr",
              labels={"background": 0, "lesion": 1, "organ": 2},
              shape=(10, 28, 28), spacing=(4.0, 1.0, 1.0), other_spacing=(5.0, 1.25, 1.25)),
    # Thick slices along numpy's last axis: nnU-Net transposes that axis to the front (transpose_forward [2, 0, 1]).
    902: dict(name="Slices2D", channels={"0": "MR"}, kind="mr1",
              labels={"background": 0, "left": 1, "right": 2, "centre": 3},
              shape=(32, 32, 6), spacing=(0.9, 0.9, 5.0), other_spacing=(1.1, 1.0, 6.0)),
    903: dict(name="CTBorder", channels={"0": "CT"}, kind="ct",
              labels={"background": 0, "liver": 1, "tumour": 2},
              shape=(14, 26, 26), spacing=(2.0, 1.5, 1.5), other_spacing=(2.5, 1.2, 1.2)),
    904: dict(name="IsoMR", channels={"0": "T1"}, kind="mr1",
              labels={"background": 0, "a": 1, "b": 2, "c": 3},
              shape=(18, 18, 18), spacing=(1.0, 1.0, 1.0), other_spacing=(1.3, 0.8, 1.1)),
    # Skull-stripped brain: zeros outside the head shrink the crop by over a quarter, so ZScore uses the mask.
    905: dict(name="Regions", channels={"0": "FLAIR"}, kind="brain",
              labels={"background": 0, "whole": [1, 2], "core": 2}, regions_class_order=[1, 2],
              shape=(12, 24, 24), spacing=(1.5, 1.0, 1.0), other_spacing=(1.2, 0.9, 1.1)),
}
NUM_TRAINING_CASES = 4
FEATURE_CAP = 12
FEATURE_BASE = 4

# The fixture models. patch: the shrunk configuration's patch; variants: (name, checkpoint file, mirroring).
MODELS = [
    dict(key="aniso_mr_3d", dataset=901, planner="ExperimentPlanner", plans="nnUNetPlans",
         configuration="3d_fullres", patch=(8, 16, 16), folds=(0,), best=True,
         variants=[("default", "checkpoint_final.pth", True), ("best", "checkpoint_best.pth", True)]),
    dict(key="slices_2d", dataset=902, planner="ExperimentPlanner", plans="nnUNetPlans",
         configuration="2d", patch=(16, 24), folds=(0,), best=False,
         variants=[("default", "checkpoint_final.pth", True)]),
    dict(key="ct_border", dataset=903, planner="ExperimentPlanner", plans="nnUNetPlans",
         configuration="3d_fullres", patch=(8, 16, 16), folds=(0,), best=False,
         variants=[("default", "checkpoint_final.pth", True), ("no_tta", "checkpoint_final.pth", False)]),
    dict(key="resenc_m", dataset=904, planner="nnUNetPlannerResEncM", plans="nnUNetResEncUNetMPlans",
         configuration="3d_fullres", patch=(16, 16, 16), folds=(0,), best=False, feature_cap=8,
         variants=[("default", "checkpoint_final.pth", True)]),
    dict(key="ensemble", dataset=904, planner="ExperimentPlanner", plans="nnUNetPlans",
         configuration="3d_fullres", patch=(16, 16, 8), folds=(0, 1), best=False,
         variants=[("default", "checkpoint_final.pth", True)]),
    dict(key="regions", dataset=905, planner="ExperimentPlanner", plans="nnUNetPlans",
         configuration="3d_fullres", patch=(8, 16, 16), folds=(0,), best=False,
         variants=[("default", "checkpoint_final.pth", True)]),
]
INPUT_CASES = ("case_plan", "case_other")


def dataset_folder_name(dataset_id):
    return f"Dataset{dataset_id:03d}_{DATASETS[dataset_id]['name']}"


def model_folder(model):
    return os.path.join("models", dataset_folder_name(model["dataset"]),
                        f"nnUNetTrainer__{model['plans']}__{model['configuration']}")


# ---------------------------------------------------------------------------------------------------------------
# synthetic images


def synth_case(spec, shape, spacing, rng):
    """Blobs placed in millimetres (so a case at another spacing shows the same anatomy), each label with its own
    intensity per channel, plus a smooth bias and noise. Returns ([channel arrays (z, y, x)], label array)."""
    shape = np.array(shape)
    spacing = np.array(spacing, dtype=np.float64)
    extent = shape * spacing
    grids = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    label = np.zeros(tuple(shape), dtype=np.uint8)
    label_values = sorted({v for v in spec["labels"].values() if isinstance(v, int) and v > 0} |
                          {x for v in spec["labels"].values() if isinstance(v, list) for x in v})
    nested = "regions_class_order" in spec
    for value in label_values:
        for _ in range(2):
            centre = extent * rng.uniform(0.3, 0.7, 3)
            radii = extent * rng.uniform(0.12, 0.25, 3)
            if nested and value > 1:  # the core sits inside the whole tumour
                radii *= 0.5
            inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0
            label[inside] = value
    if spec["kind"] == "brain":
        head = sum(((g - e / 2) / (0.42 * e)) ** 2 for g, e in zip(grids, extent)) <= 1.0
        label[~head] = 0
    bias = 1.0 + 0.15 * np.sin(grids[1] / extent[1] * np.pi) * np.cos(grids[2] / extent[2] * np.pi)
    channels = []
    for c in range(len(spec["channels"])):
        if spec["kind"] == "ct":
            body = (((grids[1] - extent[1] / 2) / (0.42 * extent[1])) ** 2 +
                    ((grids[2] - extent[2] / 2) / (0.45 * extent[2])) ** 2) <= 1.0
            img = np.where(body, 40.0, -1000.0) + rng.normal(0, 12, label.shape)
            img[label == 1] = 90 + rng.normal(0, 12, int((label == 1).sum()))
            img[label == 2] = 150 + rng.normal(0, 15, int((label == 2).sum()))
            img = np.round(img)
            img[img == 0] = 1  # zero is reserved for the padding nnU-Net crops away
            channels.append(img.astype(np.int16))
        else:
            offsets = rng.uniform(-60, 80, len(label_values) + 1)
            offsets[0] = 0
            img = (200 + (60 if c else 0) + offsets[label]) * bias + rng.normal(0, 10, label.shape)
            img = np.clip(img, 1, None)
            if spec["kind"] == "brain":
                img[~head] = 0
            if spec["kind"] == "mr" and c == 0:
                channels.append((np.round(img * 8) / 8).astype(np.float32))  # float input, compressible
            else:
                channels.append(np.round(img).astype(np.int16))
    return channels, label


def add_zero_border(channels, label, rng):
    """CT as some scanners export it: padded with exact zeros on a few sides, which nnU-Net's crop removes."""
    widths = [(int(rng.integers(1, 3)), int(rng.integers(0, 2))), (int(rng.integers(2, 4)), 0),
              (1, int(rng.integers(2, 4)))]
    for img in channels:
        for axis, (lo, hi) in enumerate(widths):
            index = [slice(None)] * 3
            if lo:
                index[axis] = slice(0, lo)
                img[tuple(index)] = 0
                label[tuple(index)] = 0
            if hi:
                index[axis] = slice(img.shape[axis] - hi, None)
                img[tuple(index)] = 0
                label[tuple(index)] = 0


def write_image(array, spacing_zyx, path, origin=(0.0, 0.0, 0.0), direction=None):
    import SimpleITK as sitk
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, path, useCompression=True)


def write_case(spec, channels, label, spacing, folder, case, label_folder=None, origin=(0.0, 0.0, 0.0),
               direction=None):
    for c, img in enumerate(channels):
        write_image(img, spacing, os.path.join(folder, f"{case}_{c:04d}.nii.gz"), origin, direction)
    if label_folder is not None:
        write_image(label, spacing, os.path.join(label_folder, f"{case}.nii.gz"), origin)


def make_raw_dataset(dataset_id, raw_root):
    spec = DATASETS[dataset_id]
    rng = np.random.default_rng(1000 + dataset_id)
    folder = os.path.join(raw_root, dataset_folder_name(dataset_id))
    os.makedirs(os.path.join(folder, "imagesTr"))
    os.makedirs(os.path.join(folder, "labelsTr"))
    for i in range(NUM_TRAINING_CASES):
        shape = tuple(int(n + d) for n, d in zip(spec["shape"], rng.integers(-1, 2, 3)))
        channels, label = synth_case(spec, shape, spec["spacing"], rng)
        if spec["kind"] == "ct":
            add_zero_border(channels, label, rng)
        write_case(spec, channels, label, spec["spacing"], os.path.join(folder, "imagesTr"), f"train_{i:03d}",
                   os.path.join(folder, "labelsTr"))
    dataset_json = {"channel_names": spec["channels"], "labels": spec["labels"], "numTraining": NUM_TRAINING_CASES,
                    "file_ending": ".nii.gz", "name": spec["name"]}
    if "regions_class_order" in spec:
        dataset_json["regions_class_order"] = spec["regions_class_order"]
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=4)
    return folder


def make_input_cases(dataset_id, folder):
    """Two cases per dataset: one at the training spacing, one at another spacing (so resampling runs both ways)."""
    spec = DATASETS[dataset_id]
    rng = np.random.default_rng(2000 + dataset_id)
    os.makedirs(folder, exist_ok=True)
    for case in INPUT_CASES:
        spacing = spec["spacing"] if case == "case_plan" else spec["other_spacing"]
        shape = [int(round(n * s / t)) for n, s, t in zip(spec["shape"], spec["spacing"], spacing)]
        channels, label = synth_case(spec, shape, spacing, rng)
        if spec["kind"] == "ct":
            add_zero_border(channels, label, rng)
        origin = (0.0, 0.0, 0.0) if case == "case_plan" else (-12.5, 30.0, 4.25)
        # nnU-Net works in array order and only copies the direction to its outputs; a flipped axis checks that.
        direction = (-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0) if case == "case_other" and spec["kind"] == "ct" else None
        write_case(spec, channels, label, spacing, folder, case, origin=origin, direction=direction)


# ---------------------------------------------------------------------------------------------------------------
# planning


def shrink_configuration(plans, configuration, patch, feature_cap):
    """Small patch and few features: the topology is recomputed with nnU-Net's own get_pool_and_conv_props, the
    way its planner derives kernels and strides, so the plans stay consistent."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
    cfg = plans["configurations"][configuration]
    _, strides, kernels, patch_size, _ = get_pool_and_conv_props(cfg["spacing"], list(patch), 4, 999999)
    assert list(patch_size) == list(patch), (patch, patch_size)
    arch = cfg["architecture"]["arch_kwargs"]
    n_stages = len(strides)

    def stretch(values, n):
        values = list(values)
        return (values + [values[-1]] * n)[:n]

    arch["n_stages"] = n_stages
    arch["features_per_stage"] = [min(feature_cap, FEATURE_BASE * 2 ** i) for i in range(n_stages)]
    arch["kernel_sizes"] = [list(k) for k in kernels]
    arch["strides"] = [list(s) for s in strides]
    for name in ("n_conv_per_stage", "n_blocks_per_stage"):
        if name in arch:
            arch[name] = stretch(arch[name], n_stages)
    arch["n_conv_per_stage_decoder"] = stretch(arch["n_conv_per_stage_decoder"], n_stages - 1)
    cfg["patch_size"] = [int(p) for p in patch_size]
    cfg["batch_size"] = 2


def plan_dataset(dataset_id, planner, plans_name, preprocessed_root):
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiments
    identifier = plan_experiments([dataset_id], planner)
    assert identifier == plans_name, (identifier, plans_name)
    with open(os.path.join(preprocessed_root, dataset_folder_name(dataset_id), plans_name + ".json")) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------------------------
# networks and checkpoints


def randomise(network, seed):
    """He init leaves norm affines at (1, 0) and conv biases at 0; random values make every parameter matter."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, (torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d)) and module.affine:
                module.weight.copy_(0.6 + 0.8 * torch.rand(module.weight.shape, generator=gen))
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)) and module.bias is not None:
                module.bias.copy_(0.05 * torch.randn(module.bias.shape, generator=gen))


def inference_network(plans_manager, configuration_manager, dataset_json):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    return nnUNetTrainer.build_network_architecture(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)


def centre_patch(data, patch):
    """A patch-sized window from the middle of a preprocessed (C, Z, Y, X) case, zero-padded where the case is
    smaller; 2d patches come from the middle slice. Returns (1, C, *patch)."""
    data = np.asarray(data)
    if len(patch) == 2:
        data = data[:, data.shape[1] // 2]
    out = np.zeros((data.shape[0], *patch), dtype=np.float32)
    src, dst = [slice(None)], [slice(None)]
    for n, p in zip(data.shape[1:], patch):
        start = max(0, (n - p) // 2)
        length = min(n, p)
        src.append(slice(start, start + length))
        dst.append(slice(0, length))
    out[tuple(dst)] = data[tuple(src)]
    return out[None]


class CudaGradScalerState:
    """What GradScaler.state_dict() holds after CUDA training (a CPU trainer has no scaler and saves None)."""

    def state_dict(self):
        return {"scale": 32768.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                "_growth_tracker": 117}


def make_checkpoint(plans, dataset_json, configuration, fold, seed, calibration_data, path, best_ema):
    """Builds the network with the trainer's own code, takes one real SGD step with the trainer's optimizer and
    saves through nnUNetTrainer.save_checkpoint, so the file has exactly the keys and types training writes."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    plans = copy.deepcopy(plans)
    plans["continue_training"] = False
    trainer = nnUNetTrainer(plans, configuration, fold, copy.deepcopy(dataset_json), device=torch.device("cpu"))
    # Trained models come from CUDA: their init_args name that device and the AMP scaler has state.
    trainer.my_init_kwargs["device"] = torch.device("cuda")
    trainer.grad_scaler = CudaGradScalerState()
    num_inputs = determine_num_input_channels(trainer.plans_manager, trainer.configuration_manager, dataset_json)
    num_heads = trainer.label_manager.num_segmentation_heads
    torch.manual_seed(seed)
    trainer.network = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager,
                                                         num_inputs, num_heads, trainer.enable_deep_supervision)
    randomise(trainer.network, seed)
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()

    trainer.lr_scheduler.step(trainer.current_epoch)
    trainer.network.train()
    gen = torch.Generator().manual_seed(seed + 1)
    patch = trainer.configuration_manager.patch_size
    x = torch.randn((2, num_inputs, *patch), generator=gen)
    out = trainer.network(x)[0]
    if trainer.label_manager.has_regions:
        target = (torch.rand(out.shape, generator=gen) > 0.5).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out, target)
    else:
        target = torch.randint(0, num_heads, (2, *patch), generator=gen)
        loss = torch.nn.functional.cross_entropy(out, target)
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    trainer.optimizer.step()

    # Shift the full-resolution head's bias so each output's median logit on a real case is zero: a random network
    # then predicts a mix of labels instead of one class everywhere.
    net = inference_network(trainer.plans_manager, trainer.configuration_manager, dataset_json)
    net.load_state_dict(trainer.network.state_dict())
    net.eval()
    with torch.no_grad():
        logits = net(torch.from_numpy(centre_patch(calibration_data, patch)))[0]
        medians = logits.reshape(logits.shape[0], -1).median(dim=1).values
        trainer.network.decoder.seg_layers[-1].bias -= medians

    # One epoch's log, with the value types training logs (numpy scalars for losses and Dice).
    dice = [np.float64(0.5 + 0.1 * i) for i in range(num_heads - (0 if trainer.label_manager.has_regions else 1))]
    trainer.logger.log("train_losses", np.float64(round(float(loss), 6)), 0)
    trainer.logger.log("val_losses", np.float64(-0.25), 0)
    trainer.logger.log("dice_per_class_or_region", dice, 0)
    trainer.logger.log("mean_fg_dice", np.float64(best_ema), 0)
    trainer.logger.log("lrs", trainer.optimizer.param_groups[0]["lr"], 0)
    trainer.logger.log("epoch_start_timestamps", 1767225600.0 + fold, 0)
    trainer.logger.log("epoch_end_timestamps", 1767225642.5 + fold, 0)
    trainer._best_ema = trainer.logger.get_value("ema_fg_dice", step=-1)
    trainer.save_checkpoint(path)
    return trainer


# ---------------------------------------------------------------------------------------------------------------
# prediction and what is stored of it


def make_predictor(model_dir, checkpoint, mirroring):
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_dir, use_folds=None, checkpoint_name=checkpoint)
    return predictor


def run_nnunet(model_dir, checkpoint, mirroring, input_dir, output_dir):
    predictor = make_predictor(model_dir, checkpoint, mirroring)
    predictor.predict_from_files(input_dir, output_dir, save_probabilities=True, overwrite=True,
                                 num_processes_preprocessing=1, num_processes_segmentation_export=1)
    return predictor


def probabilities_to_nifti(probabilities, reference_image, path):
    """nnU-Net's .npz holds (C, z, y, x) in SimpleITK's array order on the input's grid; NIfTI's voxel order is
    (i, j, k) = (x, y, z), so the array becomes (x, y, z, C) under the input image's own affine."""
    import nibabel as nib
    ref = nib.load(reference_image)
    array = np.ascontiguousarray(np.asarray(probabilities, dtype=np.float32).transpose(3, 2, 1, 0))
    assert array.shape[:3] == ref.shape[:3], (array.shape, ref.shape)
    image = nib.Nifti1Image(array, ref.affine)
    image.set_qform(ref.affine, code=int(ref.header["qform_code"]))
    image.set_sform(ref.affine, code=int(ref.header["sform_code"]))
    image.header.set_xyzt_units(*ref.header.get_xyzt_units())
    image.header["pixdim"][4] = 1.0
    nib.save(image, path)


def intermediates(predictor, input_files):
    """Preprocessing and sliding window exactly as predict_from_files runs them, kept for the record."""
    import torch
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    data, _, props = preprocessor.run_case(input_files, None, predictor.plans_manager,
                                           predictor.configuration_manager, predictor.dataset_json)
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
    record = {
        "data": torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).clone(),
        "bbox_used_for_cropping": [[int(a), int(b)] for a, b in props["bbox_used_for_cropping"]],
        "shape_before_cropping": [int(n) for n in props["shape_before_cropping"]],
        "shape_after_cropping_and_before_resampling": [int(n) for n in
                                                       props["shape_after_cropping_and_before_resampling"]],
        "spacing": [float(s) for s in props["spacing"]],
        "target_spacing": [float(s) for s in predictor.configuration_manager.spacing],
        "transpose_forward": [int(a) for a in predictor.plans_manager.transpose_forward],
        "logits": logits.float().contiguous().clone(),
        "logits_dtype": str(logits.dtype).replace("torch.", ""),
    }
    return record, logits, props


def check_against_export(predictor, logits, props, npz_probabilities, segmentation_file):
    """The separately computed logits must export to what predict_from_files wrote."""
    import SimpleITK as sitk
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    seg, probs = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits.numpy(), predictor.plans_manager, predictor.configuration_manager, predictor.label_manager,
        copy.deepcopy(props), return_probabilities=True)
    written = sitk.GetArrayFromImage(sitk.ReadImage(segmentation_file))
    assert np.array_equal(seg, written), "intermediate logits do not reproduce the written segmentation"
    assert np.abs(probs - npz_probabilities).max() < 1e-5, "intermediate logits do not reproduce the npz"
    return written


def network_record(plans_manager, configuration_manager, dataset_json, weights, data):
    """The network alone on one preprocessed patch: float32 and float64 (weights cast) logits."""
    import torch
    net = inference_network(plans_manager, configuration_manager, dataset_json)
    net.load_state_dict(weights)
    net.eval()
    x = torch.from_numpy(centre_patch(data, configuration_manager.patch_size))
    with torch.no_grad():
        out32 = net(x)
        out64 = net.double()(x.double())
    return {"input": x.contiguous().clone(), "logits_float32": out32.contiguous().clone(),
            "logits_float64": out64.contiguous().clone(), "checkpoint": "fold_0/checkpoint_final.pth"}


def input_files(input_dir, case, num_channels):
    return [os.path.join(input_dir, f"{case}_{c:04d}.nii.gz") for c in range(num_channels)]


def plans_facts(plans, configuration):
    cfg = plans["configurations"][configuration]
    arch = cfg["architecture"]
    return {
        "plans_name": plans["plans_name"], "configuration": configuration,
        "network": arch["network_class_name"].split(".")[-1],
        "patch_size": cfg["patch_size"], "spacing": cfg["spacing"],
        "transpose_forward": plans["transpose_forward"],
        "features_per_stage": arch["arch_kwargs"]["features_per_stage"],
        "kernel_sizes": arch["arch_kwargs"]["kernel_sizes"], "strides": arch["arch_kwargs"]["strides"],
        "normalization_schemes": cfg["normalization_schemes"], "use_mask_for_norm": cfg["use_mask_for_norm"],
        "resampling_fn_data_kwargs": cfg["resampling_fn_data_kwargs"],
        "resampling_fn_probabilities_kwargs": cfg["resampling_fn_probabilities_kwargs"],
    }


def make_fixtures(out):
    from importlib.metadata import version
    import torch

    started = time.time()
    work = tempfile.mkdtemp(prefix="nnunet_fixtures_")
    try:
        raw, preprocessed, results = (os.path.join(work, n) for n in ("raw", "preprocessed", "results"))
        for key, path in (("nnUNet_raw", raw), ("nnUNet_preprocessed", preprocessed), ("nnUNet_results", results)):
            os.makedirs(path)
            os.environ[key] = path
        from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        # Everything but the hand-written README.md is this script's output and is made afresh.
        for name in ("models", "inputs", "expected", "manifest.json"):
            path = os.path.join(out, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        os.makedirs(out, exist_ok=True)
        dataset_ids = sorted({m["dataset"] for m in MODELS})
        for dataset_id in dataset_ids:
            make_raw_dataset(dataset_id, raw)
            make_input_cases(dataset_id, os.path.join(out, "inputs", dataset_folder_name(dataset_id)))
        extract_fingerprints(dataset_ids, num_processes=1, check_dataset_integrity=False, show_progress_bar=False)
        print(f"fingerprints done ({time.time() - started:.0f} s)", flush=True)

        manifest = {"nnunetv2": version("nnunetv2"),
                    "dynamic_network_architectures": version("dynamic_network_architectures"),
                    "torch": torch.__version__, "numpy": np.__version__, "models": []}
        planned = {}
        for model in MODELS:
            dataset_id = model["dataset"]
            if (dataset_id, model["planner"]) not in planned:
                planned[(dataset_id, model["planner"])] = plan_dataset(dataset_id, model["planner"], model["plans"],
                                                                       preprocessed)
            plans = copy.deepcopy(planned[(dataset_id, model["planner"])])
            shrink_configuration(plans, model["configuration"], model["patch"], model.get("feature_cap", FEATURE_CAP))
            with open(os.path.join(raw, dataset_folder_name(dataset_id), "dataset.json")) as f:
                dataset_json = json.load(f)
            plans_manager = PlansManager(plans)
            configuration_manager = plans_manager.get_configuration(model["configuration"])

            folder = os.path.join(out, model_folder(model))
            os.makedirs(folder)
            with open(os.path.join(folder, "plans.json"), "w") as f:
                json.dump(plans, f, indent=4, sort_keys=False)
            with open(os.path.join(folder, "dataset.json"), "w") as f:
                json.dump(dataset_json, f, indent=4, sort_keys=False)

            raw_folder = os.path.join(raw, dataset_folder_name(dataset_id))
            preprocessor = configuration_manager.preprocessor_class(verbose=False)
            calibration, _, _ = preprocessor.run_case(
                input_files(os.path.join(raw_folder, "imagesTr"), "train_000", len(dataset_json["channel_names"])),
                None, plans_manager, configuration_manager, dataset_json)
            seed_base = 10000 + 100 * dataset_id + 10 * MODELS.index(model)
            for fold in model["folds"]:
                os.makedirs(os.path.join(folder, f"fold_{fold}"))
                make_checkpoint(plans, dataset_json, model["configuration"], fold, seed_base + fold, calibration,
                                os.path.join(folder, f"fold_{fold}", "checkpoint_final.pth"), best_ema=0.61)
                if model["best"]:
                    make_checkpoint(plans, dataset_json, model["configuration"], fold, seed_base + 5, calibration,
                                    os.path.join(folder, f"fold_{fold}", "checkpoint_best.pth"), best_ema=0.67)

            expected = os.path.join(out, "expected", model["key"])
            os.makedirs(expected)
            weights = torch.load(os.path.join(folder, "fold_0", "checkpoint_final.pth"), map_location="cpu")
            torch.save(network_record(plans_manager, configuration_manager, dataset_json,
                                      weights["network_weights"], calibration), os.path.join(expected, "network.pth"))

            input_dir = os.path.join(out, "inputs", dataset_folder_name(dataset_id))
            num_channels = len(dataset_json["channel_names"])
            entry = {"key": model["key"], "model_folder": model_folder(model),
                     "inputs": os.path.relpath(input_dir, out), "cases": list(INPUT_CASES),
                     "folds": list(model["folds"]), "plans": plans_facts(plans, model["configuration"]),
                     "num_outputs": plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
                     "variants": []}
            for variant, checkpoint, mirroring in model["variants"]:
                scratch = os.path.join(work, "predictions", model["key"], variant)
                predictor = run_nnunet(folder, checkpoint, mirroring, input_dir, scratch)
                dest = os.path.join(expected, variant)
                os.makedirs(dest)
                labels_seen = {}
                for case in INPUT_CASES:
                    npz = np.load(os.path.join(scratch, case + ".npz"))["probabilities"]
                    seg_file = os.path.join(scratch, case + ".nii.gz")
                    shutil.copyfile(seg_file, os.path.join(dest, case + ".nii.gz"))
                    files = input_files(input_dir, case, num_channels)
                    probabilities_to_nifti(npz, files[0], os.path.join(dest, case + "_probabilities.nii.gz"))
                    record, logits, props = intermediates(predictor, files)
                    seg = check_against_export(predictor, logits, props, npz, seg_file)
                    labels_seen[case] = {int(v): int(n) for v, n in zip(*np.unique(seg, return_counts=True))}
                    assert len(labels_seen[case]) >= 2, f"{model['key']} {case}: one label only {labels_seen[case]}"
                    if variant == "default":
                        if case != "case_plan":
                            del record["logits"], record["logits_dtype"]  # size: case_plan's logits suffice
                        torch.save(record, os.path.join(dest, case + "_intermediates.pth"))
                entry["variants"].append({"name": variant, "checkpoint": checkpoint, "mirroring": mirroring,
                                          "expected": os.path.relpath(dest, out), "label_counts": labels_seen,
                                          "intermediates": variant == "default"})
                print(f"{model['key']}/{variant}: labels {labels_seen} ({time.time() - started:.0f} s)", flush=True)
            manifest["models"].append(entry)
        with open(os.path.join(out, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"fixtures written to {out} in {time.time() - started:.0f} s")


# ---------------------------------------------------------------------------------------------------------------
# comparison with voxgrad


def compare(fixtures, voxgrad):
    """Reruns nnUNetPredictor live on the committed models and inputs, runs voxgrad on the same, and prints how
    far apart they are per model and variant."""
    import nibabel as nib
    import SimpleITK as sitk
    with open(os.path.join(fixtures, "manifest.json")) as f:
        manifest = json.load(f)
    work = tempfile.mkdtemp(prefix="nnunet_compare_")
    failures = 0
    try:
        for model in manifest["models"]:
            for variant in model["variants"]:
                name = f"{model['key']}/{variant['name']}"
                ours = os.path.join(work, model["key"], variant["name"], "nnunet")
                theirs = os.path.join(work, model["key"], variant["name"], "voxgrad")
                model_dir = os.path.join(fixtures, model["model_folder"])
                input_dir = os.path.join(fixtures, model["inputs"])
                run_nnunet(model_dir, variant["checkpoint"], variant["mirroring"], input_dir, ours)
                command = [voxgrad, "predict", "--model", model_dir, "--input", input_dir, "--out", theirs,
                           "--save-probabilities"]
                if not variant["mirroring"]:
                    command.append("--disable-tta")
                if variant["checkpoint"] == "checkpoint_best.pth":
                    command += ["--checkpoint", "best"]
                run = subprocess.run(command, capture_output=True, text=True)
                if run.returncode != 0:
                    failures += 1
                    print(f"{name}: voxgrad failed ({run.returncode}): {(run.stderr or run.stdout).strip()[-400:]}")
                    continue
                for case in model["cases"]:
                    ref_seg = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(ours, case + ".nii.gz")))
                    ref_prob = np.load(os.path.join(ours, case + ".npz"))["probabilities"]  # (C, z, y, x)
                    try:
                        seg = np.asarray(nib.load(os.path.join(theirs, case + ".nii.gz")).dataobj).transpose(2, 1, 0)
                        prob = np.asarray(nib.load(os.path.join(theirs, case + "_probabilities.nii.gz")).dataobj,
                                          dtype=np.float32).transpose(3, 2, 1, 0)
                    except FileNotFoundError as e:
                        failures += 1
                        print(f"{name} {case}: missing output {e.filename}")
                        continue
                    if seg.shape != ref_seg.shape or prob.shape != ref_prob.shape:
                        failures += 1
                        print(f"{name} {case}: shapes differ: seg {seg.shape} vs {ref_seg.shape}, "
                              f"probabilities {prob.shape} vs {ref_prob.shape}")
                        continue
                    agree = seg == ref_seg
                    top2 = np.sort(ref_prob, axis=0)[-2:]
                    clear = (top2[1] - top2[0]) > 0.05
                    clear_agreement = 100.0 * agree[clear].mean() if clear.any() else float("nan")
                    difference = np.abs(prob - ref_prob)
                    print(f"{name} {case}: labels agree {100.0 * agree.mean():.3f}%, where nnU-Net's top two "
                          f"differ by > 0.05 {clear_agreement:.3f}% ({int(clear.sum())} voxels), "
                          f"mean |dp| {difference.mean():.2e}, max |dp| {difference.max():.2e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT, help="fixture folder (default: tests/data/nnunet)")
    parser.add_argument("--compare", metavar="VOXGRAD_BINARY",
                        help="compare VOXGRAD_BINARY predict with a live nnUNetPredictor run on the fixtures in --out")
    args = parser.parse_args()
    if args.compare:
        sys.exit(compare(os.path.abspath(args.out), args.compare))
    make_fixtures(os.path.abspath(args.out))


if __name__ == "__main__":
    main()
