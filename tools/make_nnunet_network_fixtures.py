#!/usr/bin/python3
"""Writes tests/data/nnunet_networks/*.pth: small networks built by dynamic_network_architectures' own
classes from plans-style `architecture` entries, with seeded weights, an input and their logits, for
tests/nnunet_networks_test.cpp. Needs only torch and dynamic_network_architectures:
    /usr/bin/python3 tools/make_nnunet_network_fixtures.py
Each file holds a dict: architecture (the plans.json entry as a JSON string), in_channels,
num_classes, state_dict (float64 floats; BatchNorm's num_batches_tracked stays int64), input
(float64), logits_float64 (the network in float64) and logits_float32 (weights and input cast to
float32, output in float32). Networks run in eval mode with deep supervision off, as at inference.
"""
import json
import os
import pydoc
from collections import OrderedDict

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "nnunet_networks")
KW_REQUIRES_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def entry(network_class, **arch_kwargs):
    return {"network_class_name": "dynamic_network_architectures.architectures.unet." + network_class,
            "arch_kwargs": arch_kwargs, "_kw_requires_import": KW_REQUIRES_IMPORT}


# Plans-style entries, spelled as nnU-Net's planners write them (module paths, kwargs dicts).
NETWORKS = OrderedDict([
    # 3d_fullres of an anisotropic dataset: in-plane first, then isotropic kernels and strides.
    ("plain3d_anisotropic", (entry(
        "PlainConvUNet", n_stages=4, features_per_stage=[4, 6, 8, 8], conv_op="torch.nn.modules.conv.Conv3d",
        kernel_sizes=[[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
        n_conv_per_stage=[2, 2, 2, 2], n_conv_per_stage_decoder=[2, 2, 2], conv_bias=True,
        norm_op="torch.nn.modules.instancenorm.InstanceNorm3d", norm_op_kwargs={"eps": 1e-05, "affine": True},
        dropout_op=None, dropout_op_kwargs=None, nonlin="torch.nn.LeakyReLU", nonlin_kwargs={"inplace": True}),
        2, 3, (1, 2, 4, 16, 8))),
    # 2d: Conv2d weights; a non-square last stride and kernel so swapped axes show.
    ("plain2d", (entry(
        "PlainConvUNet", n_stages=3, features_per_stage=[4, 6, 8], conv_op="torch.nn.modules.conv.Conv2d",
        kernel_sizes=[[3, 3], [3, 3], [3, 1]], strides=[[1, 1], [2, 2], [2, 1]], n_conv_per_stage=[2, 2, 2],
        n_conv_per_stage_decoder=[2, 2], conv_bias=True, norm_op="torch.nn.modules.instancenorm.InstanceNorm2d",
        norm_op_kwargs={"eps": 1e-05, "affine": True}, dropout_op=None, dropout_op_kwargs=None,
        nonlin="torch.nn.LeakyReLU", nonlin_kwargs={"inplace": True}),
        1, 2, (2, 1, 16, 12))),
    # ResEnc-M's block counts (1, 3, 4, 6) and one decoder conv per stage, with few features.
    ("resenc_m_like", (entry(
        "ResidualEncoderUNet", n_stages=4, features_per_stage=[4, 4, 6, 6], conv_op="torch.nn.modules.conv.Conv3d",
        kernel_sizes=[[3, 3, 3], [3, 3, 3], [1, 3, 3], [1, 3, 3]], strides=[[1, 1, 1], [2, 2, 2], [1, 2, 2], [2, 2, 2]],
        n_blocks_per_stage=[1, 3, 4, 6], n_conv_per_stage_decoder=[1, 1, 1], conv_bias=True,
        norm_op="torch.nn.modules.instancenorm.InstanceNorm3d", norm_op_kwargs={"eps": 1e-05, "affine": True},
        dropout_op=None, dropout_op_kwargs=None, nonlin="torch.nn.LeakyReLU", nonlin_kwargs={"inplace": True}),
        1, 3, (1, 1, 8, 16, 8))),
    # A 2d ResEnc with its own stem width (a projection without stride), InstanceNorm without affine
    # parameters and another eps.
    ("resenc2d_stem", (entry(
        "ResidualEncoderUNet", n_stages=3, features_per_stage=[4, 8, 8], conv_op="torch.nn.modules.conv.Conv2d",
        kernel_sizes=3, strides=[1, 2, 2], n_blocks_per_stage=[1, 2, 2], n_conv_per_stage_decoder=1,
        conv_bias=False, norm_op="torch.nn.InstanceNorm2d", norm_op_kwargs={"eps": 1e-3, "affine": False},
        dropout_op=None, dropout_op_kwargs=None, nonlin="torch.nn.LeakyReLU",
        nonlin_kwargs={"negative_slope": 0.2, "inplace": True},
        block="dynamic_network_architectures.building_blocks.residual.BasicBlockD", stem_channels=6),
        2, 2, (1, 2, 12, 8))),
    # BatchNorm (running statistics and num_batches_tracked), ReLU, no conv bias.
    ("batchnorm_relu_nobias", (entry(
        "PlainConvUNet", n_stages=3, features_per_stage=[4, 6, 6], conv_op="torch.nn.modules.conv.Conv3d",
        kernel_sizes=[[3, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        n_conv_per_stage=[1, 2, 2], n_conv_per_stage_decoder=[1, 2], conv_bias=False,
        norm_op="torch.nn.modules.batchnorm.BatchNorm3d", norm_op_kwargs={"eps": 1e-4, "momentum": 0.05,
                                                                           "affine": True},
        dropout_op=None, dropout_op_kwargs=None, nonlin="torch.nn.ReLU", nonlin_kwargs={"inplace": True}),
        1, 2, (2, 1, 8, 8, 8))),
    # conv -> dropout -> nonlin -> norm: the dropout shifts every all_modules index.
    ("nonlin_first_dropout", (entry(
        "PlainConvUNet", n_stages=3, features_per_stage=[4, 6, 6], conv_op="torch.nn.modules.conv.Conv3d",
        kernel_sizes=[[3, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        n_conv_per_stage=2, n_conv_per_stage_decoder=[1, 1], conv_bias=True,
        norm_op="torch.nn.modules.instancenorm.InstanceNorm3d", norm_op_kwargs={"eps": 1e-05, "affine": True},
        dropout_op="torch.nn.modules.dropout.Dropout3d", dropout_op_kwargs={"p": 0.3, "inplace": False},
        nonlin="torch.nn.modules.activation.LeakyReLU", nonlin_kwargs={"negative_slope": 0.1, "inplace": True},
        nonlin_first=True),
        1, 2, (1, 1, 8, 8, 8))),
])


def build(architecture, in_channels, num_classes):
    kwargs = dict(architecture["arch_kwargs"])
    for key in architecture["_kw_requires_import"]:
        if kwargs.get(key) is not None:
            kwargs[key] = pydoc.locate(kwargs[key])
    if isinstance(kwargs.get("block"), str):
        kwargs["block"] = pydoc.locate(kwargs["block"])
    network_class = pydoc.locate(architecture["network_class_name"])
    return network_class(input_channels=in_channels, num_classes=num_classes, deep_supervision=False, **kwargs)


def randomise(network, generator):
    """Weights, norm affines and running statistics all away from their defaults, so each matters."""
    with torch.no_grad():
        for name, tensor in network.state_dict().items():
            if not tensor.is_floating_point():
                tensor.fill_(7)  # num_batches_tracked: read and carried, never used in eval
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype) * 1.5 + 0.5)
            elif name.endswith("running_mean") or name.endswith("bias"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * 0.2)
            elif tensor.dim() == 1:  # norm weights
                tensor.copy_(torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype) + 0.5)
            else:  # conv weights: He-like scale keeps activations O(1) through the depth
                fan_in = tensor[0].numel() if "transpconvs" not in name else tensor.shape[1] * tensor[0, 0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * (2.0 / fan_in) ** 0.5)


def main():
    os.makedirs(OUT, exist_ok=True)
    for index, (name, (architecture, in_channels, num_classes, input_shape)) in enumerate(NETWORKS.items()):
        generator = torch.Generator().manual_seed(1000 + index)
        network = build(architecture, in_channels, num_classes).double().eval()
        randomise(network, generator)
        x = torch.randn(input_shape, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            logits64 = network(x)
            network32 = build(architecture, in_channels, num_classes).eval()
            network32.load_state_dict(network.state_dict())  # load_state_dict casts float64 into float32
            logits32 = network32(x.float())
        # nnU-Net saves state_dict() as is: aliases (conv and all_modules.0, decoder.encoder.*) share
        # one storage in the file. The 2d fixture clones them apart, so both layouts are read.
        state = network.state_dict()
        if name == "plain2d":
            state = OrderedDict((k, v.clone()) for k, v in state.items())
        torch.save({"architecture": json.dumps(architecture), "in_channels": in_channels,
                    "num_classes": num_classes, "state_dict": state,
                    "input": x, "logits_float64": logits64, "logits_float32": logits32},
                   os.path.join(OUT, name + ".pth"))
        print(f"{name}: {len(state)} state_dict entries, logits {tuple(logits64.shape)}, "
              f"max|logit| {logits64.abs().max().item():.3g}, "
              f"float32 vs float64 {(logits32.double() - logits64).abs().max().item():.3g}")


if __name__ == "__main__":
    main()
