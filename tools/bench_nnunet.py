#!/usr/bin/python3
"""Times `voxgrad predict` on an nnU-Net v2 model folder against nnUNetPredictor on the CPU: one model of realistic
width (nnU-Net's 3d_fullres PlainConvUNet, features 32..320, seeded weights, saved by nnU-Net's trainer) and one
synthetic case, both predicted without mirroring, alternating, N times each; the labels must agree before any time
counts.

Run with Debian's interpreter: /usr/bin/python3 tools/bench_nnunet.py [--voxgrad build/voxgrad] [--threads T]
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
REFERENCE_DIR = os.path.join(HERE, "nnunet_reference")
FIXTURE_PLANS = os.path.join(REPO, "tests", "data", "nnunet", "models", "Dataset904_IsoMR",
                             "nnUNetTrainer__nnUNetPlans__3d_fullres")
DATASET_NAME = "Dataset990_BenchMR"
# nnU-Net's ExperimentPlanner for 3d: 32 base features doubling per stage up to 320, two convs per stage.
BASE_FEATURES = 32
MAX_FEATURES = 320


def reexec_with_standins():
    """nnU-Net 2.8.1 imports names Debian's torch 1.13 lacks: the stand-ins go on PYTHONPATH before torch loads, for
    this process and the nnU-Net processes it times."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if REFERENCE_DIR in paths:
        return
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REFERENCE_DIR] + paths)
    env.setdefault("nnUNet_compile", "false")
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env)


if __name__ == "__main__":
    reexec_with_standins()

import numpy as np  # noqa: E402

import make_nnunet_fixtures as fixtures  # noqa: E402

# The nnU-Net side as its own process, as `nnUNetv2_predict` would run: interpreter start, imports, model loading,
# then predict_from_files_sequential (no worker processes), with the stages inside it timed separately.
NNUNET_CHILD = r"""
import json, sys, time
threads, model, inputs, out, report = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
import torch
torch.set_num_threads(threads)
import nnunetv2.inference.predict_from_raw_data as prd
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
stages = {"preprocess_s": 0.0, "sliding_window_s": 0.0, "export_s": 0.0}
def timed(name, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            stages[name] += time.perf_counter() - start
    return wrapper
predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                            perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                            verbose_preprocessing=False, allow_tqdm=False)
predictor.initialize_from_trained_model_folder(model, use_folds=None, checkpoint_name="checkpoint_final.pth")
preprocessor_class = predictor.configuration_manager.preprocessor_class
preprocessor_class.run_case = timed("preprocess_s", preprocessor_class.run_case)
predictor.predict_logits_from_preprocessed_data = timed("sliding_window_s",
                                                        predictor.predict_logits_from_preprocessed_data)
prd.export_prediction_from_logits = timed("export_s", prd.export_prediction_from_logits)
start = time.perf_counter()
predictor.predict_from_files_sequential(inputs, out, save_probabilities=False, overwrite=True)
stages["predict_s"] = time.perf_counter() - start
stages["torch_threads"] = torch.get_num_threads()
with open(report, "w") as f:
    json.dump(stages, f)
"""


def topology(spacing, patch):
    """Kernels, strides and features as nnU-Net's planner derives them for this patch and spacing."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
    _, strides, kernels, patch_size, _ = get_pool_and_conv_props(spacing, list(patch), 4, 999999)
    if list(patch_size) != list(patch):
        sys.exit(f"--patch {patch} is not a patch nnU-Net plans for this spacing (it would use {list(patch_size)})")
    n_stages = len(strides)
    return {"n_stages": n_stages,
            "features_per_stage": [min(MAX_FEATURES, BASE_FEATURES * 2 ** i) for i in range(n_stages)],
            "kernel_sizes": [list(k) for k in kernels], "strides": [list(s) for s in strides],
            "n_conv_per_stage": [2] * n_stages, "n_conv_per_stage_decoder": [2] * (n_stages - 1)}


def write_case(folder, shape, spacing, seed):
    """One single-channel MR-like case (blobs per label, bias field, noise) as CASE_0000.nii.gz."""
    spec = fixtures.DATASETS[904]
    channels, _ = fixtures.synth_case(spec, shape, spacing, np.random.default_rng(seed))
    os.makedirs(folder, exist_ok=True)
    fixtures.write_case(spec, channels, None, spacing, folder, "bench")
    return [os.path.join(folder, "bench_0000.nii.gz")]


def make_model(folder, patch, case_files, seed):
    """plans.json from the committed IsoMR fixture (1 mm isotropic, ZScore) with the 3d_fullres configuration set
    to a full-width network for `patch`; weights made and saved by nnU-Net's trainer (fixtures.make_checkpoint),
    with the head calibrated on the benchmark case so several labels appear."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    with open(os.path.join(FIXTURE_PLANS, "plans.json")) as f:
        plans = json.load(f)
    with open(os.path.join(FIXTURE_PLANS, "dataset.json")) as f:
        dataset_json = json.load(f)
    plans["dataset_name"] = DATASET_NAME
    plans["configurations"] = {"3d_fullres": plans["configurations"]["3d_fullres"]}
    cfg = plans["configurations"]["3d_fullres"]
    cfg["patch_size"] = list(patch)
    cfg["architecture"]["arch_kwargs"].update(topology(cfg["spacing"], patch))
    os.makedirs(os.path.join(folder, "fold_0"), exist_ok=True)
    with open(os.path.join(folder, "plans.json"), "w") as f:
        json.dump(plans, f, indent=4)
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=4)
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration("3d_fullres")
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    calibration, _, _ = preprocessor.run_case(case_files, None, plans_manager, configuration_manager, dataset_json)
    fixtures.make_checkpoint(plans, dataset_json, "3d_fullres", 0, seed, calibration,
                             os.path.join(folder, "fold_0", "checkpoint_final.pth"), best_ema=0.5)
    return cfg["architecture"]["arch_kwargs"]


def prepare(work, patch, case_shape, case_spacing, seed, threads):
    """Model folder and case under `work`, reused when a previous run made them with the same settings."""
    import torch
    settings = {"patch": list(patch), "case_shape": list(case_shape), "case_spacing": list(case_spacing),
                "seed": seed}
    model = os.path.join(work, "results", DATASET_NAME, "nnUNetTrainer__nnUNetPlans__3d_fullres")
    inputs = os.path.join(work, "input")
    stamp = os.path.join(work, "settings.json")
    if os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == settings:
                return model, inputs
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    torch.set_num_threads(threads)
    started = time.perf_counter()
    case_files = write_case(inputs, case_shape, case_spacing, seed)
    make_model(model, patch, case_files, seed)
    with open(stamp, "w") as f:
        json.dump(settings, f)
    print(f"made model and case in {time.perf_counter() - started:.0f} s", flush=True)
    return model, inputs


def tile_count(case_shape, case_spacing, spacing, patch, step=0.5):
    """nnU-Net's sliding-window tiles for the case after resampling to the plan's spacing."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    shape = [max(int(round(n * s / t)), p) for n, s, t, p in zip(case_shape, case_spacing, spacing, patch)]
    return int(np.prod([len(s) for s in compute_steps_for_sliding_window(shape, patch, step)]))


def timed_run(command, env):
    """Wall seconds and CPU seconds (user + system, the child's threads together) of one whole process; on a
    shared machine the CPU seconds show the work done even when other jobs stretch the wall time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return run, wall, cpu


def run_voxgrad(voxgrad, model, inputs, out, threads, profile=False):
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    command = [voxgrad, "predict", "--model", model, "--input", inputs, "--out", out, "--disable-tta",
               "--step-size", "0.5", "--device", "cpu"] + (["--profile"] if profile else [])
    run, wall, cpu = timed_run(command, env)
    if run.returncode != 0:
        sys.exit(f"voxgrad failed ({run.returncode}): {' '.join(command)}\n{run.stderr[-2000:]}")
    return wall, cpu, run.stderr


def run_nnunet(model, inputs, out, threads, work):
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)  # predict_from_files_sequential writes into it without creating it
    report = os.path.join(work, "nnunet_stages.json")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), nnUNet_def_n_proc="1", nnUNet_compile="false")
    command = [sys.executable, "-c", NNUNET_CHILD, str(threads), model, inputs, out, report]
    run, wall, cpu = timed_run(command, env)
    if run.returncode != 0:
        sys.exit(f"nnUNetPredictor failed ({run.returncode}):\n{run.stderr[-2000:]}")
    with open(report) as f:
        return wall, cpu, json.load(f)


def label_agreement(voxgrad_out, nnunet_out):
    """Percent of voxels with the same label; both files are on the input's grid (NIfTI (i, j, k) vs SimpleITK's
    (z, y, x) array order)."""
    import nibabel as nib
    import SimpleITK as sitk
    ours = np.asarray(nib.load(os.path.join(voxgrad_out, "bench.nii.gz")).dataobj).transpose(2, 1, 0)
    theirs = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(nnunet_out, "bench.nii.gz")))
    if ours.shape != theirs.shape:
        sys.exit(f"segmentation shapes differ: voxgrad {ours.shape}, nnU-Net {theirs.shape}")
    labels = {int(v): int(n) for v, n in zip(*np.unique(theirs, return_counts=True))}
    return 100.0 * float((ours == theirs).mean()), labels


def cpu_description():
    """Model name and widest vector ISA: voxgrad's CPU convolution picks its micro-kernel by ISA at run time."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name} ({isa})"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voxgrad", default=os.path.join(REPO, "build", "voxgrad"), help="voxgrad binary")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="OMP_NUM_THREADS for voxgrad, torch.set_num_threads for nnU-Net (default: all cores)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side, alternating (default 3)")
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 64, 64], metavar=("Z", "Y", "X"),
                        help="3d_fullres patch; the network's depth follows from it as in nnU-Net's planner")
    parser.add_argument("--case-shape", type=int, nargs=3, default=[64, 96, 96], metavar=("Z", "Y", "X"),
                        help="input case shape in SimpleITK's (z, y, x) order (default 64 96 96: 4 tiles)")
    parser.add_argument("--case-spacing", type=float, nargs=3, default=[1.0, 1.0, 1.0], metavar=("Z", "Y", "X"),
                        help="input spacing in mm; the plan's is 1 1 1, so another one adds resampling both ways")
    parser.add_argument("--seed", type=int, default=990)
    parser.add_argument("--min-agreement", type=float, default=99.0,
                        help="label agreement (%%) below which the timings are refused (default 99)")
    parser.add_argument("--profile", action="store_true",
                        help="afterwards run voxgrad once more with --profile and print its per-op table")
    parser.add_argument("--work", default="/tmp/voxgrad_bench_nnunet",
                        help="scratch folder; the model and case are kept there and reused (same settings)")
    args = parser.parse_args()
    voxgrad = os.path.abspath(args.voxgrad)
    if not os.access(voxgrad, os.X_OK):
        sys.exit(f"no voxgrad binary at {voxgrad} (--voxgrad)")
    from importlib.metadata import version
    import torch

    work = os.path.abspath(args.work)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[key] = os.path.join(work, "results")  # read when nnU-Net is imported; nothing is read from it
    model, inputs = prepare(work, args.patch, args.case_shape, args.case_spacing, args.seed, args.threads)
    with open(os.path.join(model, "plans.json")) as f:
        cfg = json.load(f)["configurations"]["3d_fullres"]
    tiles = tile_count(args.case_shape, args.case_spacing, cfg["spacing"], args.patch)
    load_before = os.getloadavg()

    voxgrad_s, voxgrad_cpu, nnunet_s, nnunet_cpu, stages, agreements = [], [], [], [], [], []
    labels = {}
    for repeat in range(args.repeats):
        voxgrad_out, nnunet_out = os.path.join(work, "out_voxgrad"), os.path.join(work, "out_nnunet")
        wall, cpu, _ = run_voxgrad(voxgrad, model, inputs, voxgrad_out, args.threads)
        voxgrad_s.append(wall)
        voxgrad_cpu.append(cpu)
        wall, cpu, inside = run_nnunet(model, inputs, nnunet_out, args.threads, work)
        nnunet_s.append(wall)
        nnunet_cpu.append(cpu)
        stages.append(inside)
        agreement, labels = label_agreement(voxgrad_out, nnunet_out)
        agreements.append(agreement)
        print(f"run {repeat + 1}/{args.repeats}: voxgrad {voxgrad_s[-1]:.2f} s, nnU-Net {nnunet_s[-1]:.2f} s "
              f"(predict {inside['predict_s']:.2f} s), labels agree {agreement:.3f}%", flush=True)
        if agreement < args.min_agreement:
            sys.exit(f"labels agree on {agreement:.3f}% only (< {args.min_agreement}%): not timing a wrong answer")
    load_after = os.getloadavg()

    def median(key):
        return statistics.median(s[key] for s in stages)

    vg, nn_whole, nn_predict = statistics.median(voxgrad_s), statistics.median(nnunet_s), median("predict_s")
    arch = cfg["architecture"]["arch_kwargs"]
    voxgrad_version = subprocess.run([voxgrad, "--version"], capture_output=True, text=True).stdout.strip()
    print()
    print(f"voxgrad predict vs nnUNetPredictor, CPU, no mirroring, step 0.5, {args.threads} thread(s), "
          f"median of {args.repeats}")
    print(f"  {voxgrad_version}; nnunetv2 {version('nnunetv2')}, dynamic-network-architectures "
          f"{version('dynamic_network_architectures')}, torch {torch.__version__} "
          f"({stages[0]['torch_threads']} thread(s) in nnU-Net), numpy {np.__version__}")
    print(f"  {cpu_description()}, {os.cpu_count()} cores; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after")
    print(f"  PlainConvUNet features {arch['features_per_stage']}, patch {args.patch}, case {args.case_shape} at "
          f"{args.case_spacing} mm ({int(np.prod(args.case_shape))} voxels, {tiles} tiles), labels {labels}")
    print()
    rows = [("voxgrad predict, whole process", voxgrad_s, voxgrad_cpu),
            ("nnU-Net, whole process", nnunet_s, nnunet_cpu),
            ("nnU-Net, predict call (in-process)", [s["predict_s"] for s in stages], None),
            ("  preprocessing", [s["preprocess_s"] for s in stages], None),
            ("  sliding window", [s["sliding_window_s"] for s in stages], None),
            ("  export", [s["export_s"] for s in stages], None)]
    print(f"| {'what':<36} | {'wall s':>7} | {'CPU s':>7} | {'wall s per run':<24} |")
    print(f"| {'-' * 36} | {'-' * 6}: | {'-' * 6}: | {'-' * 24} |")
    for name, walls, cpus in rows:
        cpu = f"{statistics.median(cpus):7.2f}" if cpus else f"{'':7}"
        listed = " ".join(f"{v:.2f}" for v in walls)
        print(f"| {name:<36} | {statistics.median(walls):7.2f} | {cpu} | {listed:<24} |")
    print()
    print(f"voxgrad / nnU-Net whole process:      {vg / nn_whole:.2f} (CPU seconds: "
          f"{statistics.median(voxgrad_cpu) / statistics.median(nnunet_cpu):.2f})")
    print(f"voxgrad / nnU-Net in-process predict: {vg / nn_predict:.2f}")
    print(f"label agreement: {min(agreements):.3f}% (lowest of {len(agreements)})")

    if args.profile:
        _, _, profile = run_voxgrad(voxgrad, model, inputs, os.path.join(work, "out_profile"), args.threads,
                                    profile=True)
        table = profile[profile.find("op "):] if "op " in profile else profile
        print("\nvoxgrad predict --profile:\n" + table.rstrip())


if __name__ == "__main__":
    main()
