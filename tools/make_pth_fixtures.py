#!/usr/bin/python3
"""Writes the PyTorch checkpoint fixtures: tests/data/pth (files torch.save wrote, with expected.json
mirroring each one's content), tests/data/pth_pickles (their pickles alone, fuzzing seeds) and
tests/data/pth_malformed (files the reader must refuse, listed in
manifest.tsv with the words their error must contain). Run with a Python that has torch and numpy
(Debian: /usr/bin/python3 with python3-torch): /usr/bin/python3 tools/make_pth_fixtures.py
"""
import io
import json
import os
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict

import numpy as np
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")
GOOD = os.path.join(ROOT, "pth")
BAD = os.path.join(ROOT, "pth_malformed")
PICKLES = os.path.join(ROOT, "pth_pickles")  # raw pickles: seeds for tests/fuzz/pickle_fuzz.cpp


def mirror(value):
    """The JSON form tests/torch_checkpoint_test.cpp compares the C++ reader's result with."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.floating, float)):
        return {"float": float(value)}
    if isinstance(value, (np.integer, int)):
        return {"int": int(value)}
    if isinstance(value, bytes):
        return {"bytes": list(value)}
    if isinstance(value, torch.Tensor):
        flat = value.detach().reshape(-1)
        if value.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            values = [float(x) for x in flat.double().tolist()]
        else:
            values = [int(x) for x in flat.long().tolist()]
        return {"tensor": {"dtype": str(value.dtype).replace("torch.", ""), "shape": list(value.shape),
                           "values": values}}
    if isinstance(value, tuple):
        return {"tuple": [mirror(v) for v in value]}
    if isinstance(value, list):
        return [mirror(v) for v in value]
    if isinstance(value, dict):
        return {"dict": [[mirror(k), mirror(v)] for k, v in value.items()]}
    if isinstance(value, torch.device):
        return {"object": "torch.device"}
    if isinstance(value, np.ndarray):
        return {"object": "numpy.ndarray"}
    raise TypeError(type(value))


def state_dict():
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4) * 0.5 - 1.25
    return OrderedDict([
        ("f32", base),
        ("transposed", base.t()),  # shares base's storage, strides (1, 4)
        ("slice", base[1:, ::2]),  # offset 4, strides (4, 2)
        ("f16", torch.tensor([1 / 3, -0.0, 65504.0, 6e-8, -2.5e-5, 1.0], dtype=torch.float16).reshape(2, 3)),
        ("f16_view", torch.tensor([1.5, 2.5, 3.5, 4.5], dtype=torch.float16)[1::2]),
        ("bf16", torch.tensor([1 / 3, -1e30, 3.0e-39, 7.0], dtype=torch.bfloat16)),
        ("f64", torch.tensor([[0.1, -0.2]], dtype=torch.float64)),
        ("i64", torch.tensor([1, -2, 2**31 - 1], dtype=torch.int64)),
        ("u8", torch.tensor([0, 7, 255], dtype=torch.uint8)),
        ("flags", torch.tensor([True, False], dtype=torch.bool)),
        ("scalar", torch.tensor(3.5)),
        ("empty", torch.zeros(0, 3)),
        ("empty_inner", torch.zeros(3, 0)),
    ])


def nnunet_like():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 2), torch.nn.InstanceNorm3d(2, affine=True))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    net(torch.randn(1, 1, 3, 3, 3)).square().mean().backward()
    optimizer.step()
    return {
        "network_weights": net.state_dict(),  # an OrderedDict with _metadata
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float64(0.5), np.float64(0.71875)], "train_losses": [np.float32(-0.25)],
                    "epoch_end_timestamps": [1700000000.5, 1700000100.25]},
        "current_epoch": 2,
        "init_args": {"plans": {"plans_name": "nnUNetPlans", "configurations": {"3d_fullres": {
            "patch_size": [64, 64, 64], "spacing": [1.0, 0.75, 0.75], "batch_dice": False}}},
            "configuration": "3d_fullres", "fold": 0, "dataset_json": {"labels": {"background": 0, "tumour": 1}},
            "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
        "extras": {"big": 2**40, "negative": -70000, "one_byte_neg": -7, "raw": b"\x00\xffab", "flag": True,
                   "ratio": 1 / 3, "mask_dims": np.int64(3), "array": np.arange(3), 5: "int key"},
    }


def stored_zip(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            z.writestr(info, data)


class Storage:
    def __init__(self, key, dtype, numel):
        self.pid = ("storage", dtype, key, "cpu", numel)


class Rebuild:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


def pickle_with_storages(obj):
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=2)
    pickler.persistent_id = lambda o: o.pid if isinstance(o, Storage) else None
    pickler.dump(obj)
    return out.getvalue()


def main():
    os.makedirs(GOOD, exist_ok=True)
    os.makedirs(BAD, exist_ok=True)
    expected = {}
    for name, obj in (("state_dict.pth", state_dict()), ("nnunet_like.pth", nnunet_like())):
        torch.save(obj, os.path.join(GOOD, name))
        expected[name] = mirror(obj)
    with open(os.path.join(GOOD, "expected.json"), "w") as f:
        json.dump(expected, f, indent=None, separators=(",", ":"))
        f.write("\n")

    good = open(os.path.join(GOOD, "state_dict.pth"), "rb").read()
    cases = []

    def bad(name, data, reason):
        with open(os.path.join(BAD, name), "wb") as f:
            f.write(data)
        cases.append((name, reason))

    torch.save(state_dict(), os.path.join(BAD, "legacy.pth"), _use_new_zipfile_serialization=False)
    cases.append(("legacy.pth", "legacy (non-zip) PyTorch checkpoint format"))
    bad("empty.pth", b"", "not a PyTorch checkpoint (not a zip archive)")
    bad("text.pth", b"PK\x03\x04 this is not a zip archive\n", "no end of central directory record")
    bad("truncated.pth", good[: len(good) // 2], "no end of central directory record")
    # The end record survives; the last entries' bytes do not.
    end = good.rfind(b"PK\x05\x06")
    cut = good[:end - 300] + b"\0" * 300 + good[end:]
    bad("truncated_inside.pth", cut, "bad central directory")

    z = zipfile.ZipFile(io.BytesIO(good))
    entry = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    name_length, extra_length = struct.unpack_from("<HH", good, entry.header_offset + 26)
    data_at = entry.header_offset + 30 + name_length + extra_length  # the local header pads to 64 bytes
    flipped = bytearray(good)
    flipped[data_at + 3] ^= 0x40
    bad("bad_crc.pth", bytes(flipped), "CRC-32 mismatch")

    broken = bytearray(good)
    struct.pack_into("<I", broken, end + 16, 0x7FFFFFF0)  # central directory offset
    bad("bad_central_directory_offset.pth", bytes(broken), "bad central directory")
    broken = bytearray(good)
    cd = struct.unpack_from("<I", good, end + 16)[0]
    broken[cd:cd + 4] = b"PK\x09\x09"
    bad("bad_central_directory_signature.pth", bytes(broken), "bad central directory (entry 0 has no valid header)")
    broken = bytearray(good)
    struct.pack_into("<H", broken, end + 10, 60000)  # entry count, against the zip64 record's
    bad("bad_central_directory_count.pth", bytes(broken), "zip64 and classic end records disagree")
    broken = bytearray(good)
    struct.pack_into("<H", broken, end + 10, 0xFFFF)
    struct.pack_into("<Q", broken, good.rfind(b"PK\x06\x06") + 32, 60000)
    bad("bad_zip64_count.pth", bytes(broken), "bad central directory (60000 entries cannot fit")
    broken = bytearray(good)
    struct.pack_into("<II", broken, cd + 20, 0xFFFFFFF0, 0xFFFFFFF0)  # first entry's sizes
    bad("huge_entry.pth", bytes(broken), "past the end of the file")

    pickled = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as c:
        c.writestr(zipfile.ZipInfo("archive/data.pkl", date_time=(2024, 1, 1, 0, 0, 0)), pickled,
                   compress_type=zipfile.ZIP_DEFLATED)
    bad("compressed_entry.pth", out.getvalue(), "is compressed (method 8)")

    def pickled_archive(name, pickle_bytes, reason, data=b""):
        path = os.path.join(BAD, name)
        stored_zip(path, [("archive/data.pkl", pickle_bytes), ("archive/data/0", data)])
        cases.append((name, reason))

    pickled_archive("os_system.pth", b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00echoq\x01\x85q\x02Rq\x03.",
                    "refuses global os.system")
    pickled_archive("builtins_eval.pth", b"\x80\x02c__builtin__\neval\nX\x01\x00\x00\x001\x85R.",
                    "refuses global __builtin__.eval")
    pickled_archive("deep_nesting.pth", b"\x80\x02" + b"]" * 5000 + b"a" * 4999 + b".", "nests deeper than 64")
    pickled_archive("self_reference.pth", b"\x80\x02]q\x00h\x00a.", "contains itself")
    pickled_archive("protocol0_int.pth", b"I42\n.", "unsupported pickle opcode 0x49")
    pickled_archive("no_stop.pth", b"\x80\x02]q\x00", "pickle truncated")
    pickled_archive("stack_underflow.pth", b"\x80\x02a.", "stack underflow")
    pickled_archive("no_pickle.pth", b"", "pickle truncated")
    floats = struct.pack("<4f", 1, 2, 3, 4)
    pickled_archive("huge_storage.pth",
                    pickle_with_storages(Rebuild(Storage("0", torch.FloatStorage, 2**40), 0, (2**40,), (1,))),
                    "declares 1099511627776 float32 elements", floats)
    pickled_archive("huge_size.pth",
                    pickle_with_storages(Rebuild(Storage("0", torch.FloatStorage, 4), 0, (2**20, 2**19), (1, 1))),
                    "has more elements than its storage", floats)
    pickled_archive("stride_past_storage.pth",
                    pickle_with_storages(Rebuild(Storage("0", torch.FloatStorage, 4), 1, (2, 2), (2, 1))),
                    "reach past its storage", floats)
    pickled_archive("missing_storage.pth",
                    pickle_with_storages(Rebuild(Storage("7", torch.FloatStorage, 4), 0, (4,), (1,))),
                    "storage 7 has no entry archive/data/7", floats)
    pickled_archive("complex_storage.pth",
                    pickle_with_storages(Rebuild(Storage("0", torch.ComplexFloatStorage, 2), 0, (2,), (1,))),
                    "refuses global torch.ComplexFloatStorage", floats)
    stored_zip(os.path.join(BAD, "big_endian.pth"), [("archive/data.pkl", b"\x80\x02}."), ("archive/byteorder", b"big")])
    cases.append(("big_endian.pth", 'storages in byte order "big" are not supported'))
    stored_zip(os.path.join(BAD, "no_data_pkl.pth"), [("archive/version", b"3\n")])
    cases.append(("no_data_pkl.pth", "a zip archive without data.pkl"))

    os.makedirs(PICKLES, exist_ok=True)
    for name in ("state_dict.pth", "nnunet_like.pth"):
        with zipfile.ZipFile(os.path.join(GOOD, name)) as archive:
            data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
        with open(os.path.join(PICKLES, name.replace(".pth", ".pkl")), "wb") as f:
            f.write(data)
    with open(os.path.join(PICKLES, "scalars.pkl"), "wb") as f:
        f.write(pickle.dumps({"a": [1, -2, 3.5, None, True], "b": ("x", b"\x01"), 300: 2**40, "c": -(2**63)},
                             protocol=2))
    with open(os.path.join(PICKLES, "protocol4.pkl"), "wb") as f:
        f.write(pickle.dumps({"frame": list(range(20)), "text": "\u00e9t\u00e9"}, protocol=4))

    with open(os.path.join(BAD, "manifest.tsv"), "w") as f:
        f.write("# file<TAB>substring the error must contain (made by tools/make_pth_fixtures.py)\n")
        for name, reason in cases:
            f.write(f"{name}\t{reason}\n")


if __name__ == "__main__":
    main()
