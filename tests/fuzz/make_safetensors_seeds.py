#!/usr/bin/env python3
"""Writes the seed inputs of the safetensors fuzz target into tests/fuzz/corpus_safetensors/.

Model files and training checkpoints shaped like the target's small network, each with and without
voxgrad's checksum (the ones without let the fuzzer reach the checks behind it), every dtype, an
empty file, and the inputs that once got past the loader's checks (regression_*). The checksum follows the recipe documented at kChecksumKey in engine/checkpoint.h,
so these files also show that recipe reproduced outside voxgrad (checkpoint_test loads them).
Standard library only, deterministic: python3 tests/fuzz/make_safetensors_seeds.py
"""
import json
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKSUM_KEY = "voxgrad_crc32"
FORMATS = {"F32": "f", "F64": "d", "I32": "i", "U8": "B"}


def safetensors(tensors, metadata=None, checksum=True):
    """tensors: list of (name, dtype, shape, values) in data order; returns the file's bytes."""
    data = b""
    header = {}
    for name, dtype, shape, values in tensors:
        raw = struct.pack("<%d%s" % (len(values), FORMATS[dtype]), *values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    meta = dict(metadata or {})
    if checksum:
        crc = zlib.crc32(data)
        for name, dtype, shape, _ in tensors:
            crc = zlib.crc32(("%s\0%s\0%s\0" % (name, dtype, ",".join(str(s) for s in shape))).encode(), crc)
        for key in sorted(meta, key=lambda k: k.encode()):
            crc = zlib.crc32(("%s\0%s\0" % (key, meta[key])).encode(), crc)
        meta[CHECKSUM_KEY] = "%08x" % crc
    if meta:
        header = {"__metadata__": meta, **header}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


# The fuzz target's network: one Tiny layer, parameters weight (2, 3) and bias (2), buffer running_mean (2).
WEIGHTS = [("0.weight", "F32", [2, 3], [0.5, -1.25, 3.0, 0.001, -0.75, 2.0]),
           ("0.bias", "F32", [2], [0.1, -0.2]),
           ("0.running_mean", "F32", [2], [0.0, 1.5])]


def checkpoint_tensors():
    model = [("model." + n, d, s, v) for n, d, s, v in WEIGHTS]
    state = [("optimizer.state.0.weight.momentum_buffer", "F32", [2, 3], [0.01] * 6),
             ("optimizer.state.0.weight.step", "F64", [], [3.0]),
             ("optimizer.state.0.bias.momentum_buffer", "F32", [2], [0.02, -0.02]),
             ("optimizer.state.0.bias.step", "F64", [], [3.0])]
    return model + state


CHECKPOINT_META = {"format": "voxgrad-training-checkpoint", "optimizer": "SGD", "lr": "0.01", "step": "3",
                   "epoch": "1", "rng_seed": "7", "rng_offset": "3", "config": '{"history":[]}'}

ALL_DTYPES = [("f32", "F32", [2, 2], [1.5, -0.0, 1e-42, -3.25e38]),
              ("f64", "F64", [3, 1], [3.141592653589793, -1e-310, 2.5e300]),
              ("i32", "I32", [1, 2, 2], [-2147483648, 0, 7, 2147483647]),
              ("u8", "U8", [5], [0, 1, 128, 255, 42]),
              ("scalar", "F32", [], [2.0]),
              ("empty", "F32", [0, 3], [])]


def raw_file(header_text, data=b""):
    return struct.pack("<Q", len(header_text)) + header_text.encode() + data


# Inputs the fuzzer found or that sit on a limit: a number beyond a double (nlohmann's out_of_range,
# not a parse_error), nesting one level past the limit, a zero size between huge ones.
REGRESSIONS = {
    "regression_number_overflow.safetensors": raw_file('{"a":' + "8" * 60 + "e" + "8" * 30 + "}"),
    "regression_deep_nesting.safetensors": raw_file('{"a":' + "[" * 64 + "]" * 64 + "}"),
    "regression_zero_between_huge.safetensors":
        raw_file('{"a":{"dtype":"U8","shape":[4294967296,0,4294967296],"data_offsets":[0,0]}}'),
}


def main():
    out = os.path.join(HERE, "corpus_safetensors")
    os.makedirs(out, exist_ok=True)
    seeds = {
        "model.safetensors": safetensors(WEIGHTS, {"epoch": "4"}),
        "model_no_checksum.safetensors": safetensors(WEIGHTS, checksum=False),
        "checkpoint.safetensors": safetensors(checkpoint_tensors(), CHECKPOINT_META),
        "checkpoint_no_checksum.safetensors": safetensors(checkpoint_tensors(), CHECKPOINT_META, checksum=False),
        "all_dtypes.safetensors": safetensors(ALL_DTYPES, {"note": "\u00fcn\u00efcode"}),
        "all_dtypes_no_checksum.safetensors": safetensors(ALL_DTYPES, checksum=False),
        "no_tensors.safetensors": safetensors([], checksum=False),
        # A tensor stored once under several names: the further names are metadata entries whose
        # value is the stored name (safetensors.torch.save_model's convention), and variants that
        # point at no tensor or at another alias.
        "model_alias.safetensors": safetensors(WEIGHTS, {"1.weight": "0.weight", "epoch": "4"}),
        "model_alias_no_checksum.safetensors": safetensors(WEIGHTS, {"1.weight": "0.weight"}, checksum=False),
        "alias_chain_no_checksum.safetensors":
            safetensors(WEIGHTS, {"1.weight": "0.weight", "2.weight": "1.weight"}, checksum=False),
        "alias_shadowing_no_checksum.safetensors":
            safetensors(WEIGHTS, {"0.bias": "0.weight", "x": "missing"}, checksum=False),
        **REGRESSIONS,
    }
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print("wrote %d seeds to %s" % (len(seeds), out))


if __name__ == "__main__":
    main()
