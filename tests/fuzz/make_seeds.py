#!/usr/bin/env python3
"""Writes the valid seed inputs of the NIfTI fuzz target into tests/fuzz/corpus/.

Small well-formed files for every readable datatype in both byte orders, NIfTI-1 (plain and gzip)
and NIfTI-2, scaled, with qform and sform; gzip in two members; units in metres and micrometres;
plus inputs the target splits into .hdr/.img pairs (its first 348 bytes become the header; an odd
last byte selects the pair path, bit 1 gzip).
Standard library only, deterministic: python3 tests/fuzz/make_seeds.py
"""
import gzip
import os
import struct
import sys

sys.dont_write_bytecode = True  # keep the corpus folder free of __pycache__

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "data", "nifti_malformed"))
import make_corpus as mc  # noqa: E402  (shares the header builders)

TYPES = [(2, 8, "B"), (4, 16, "h"), (8, 32, "i"), (16, 32, "f"), (64, 64, "d"), (256, 8, "b"),
         (512, 16, "H"), (768, 32, "I"), (1024, 64, "q"), (1280, 64, "Q")]


def main():
    out = os.path.join(HERE, "corpus")
    os.makedirs(out, exist_ok=True)

    def write(name, data):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)

    for code, bits, fmt in TYPES:
        for end, tag in (("<", "le"), (">", "be")):
            signed = fmt not in "BHIQ"
            vals = [(i * 37) % 100 - (50 if signed else 0) for i in range(24)]
            data = struct.pack(end + fmt * 24, *vals)
            h = bytearray(mc.nifti1([2, 3, 4], datatype=code, bitpix=bits, endian=end, slope=0.5, inter=1.0))
            struct.pack_into(end + "hh", h, 252, 1, 2)
            struct.pack_into(end + "6f", h, 256, 0.1, 0.2, 0.3, 1, 2, 3)
            struct.pack_into(end + "12f", h, 280, 1, 0, 0, 1, 0, 2, 0, 2, 0, 0, 3, 3)
            write(f"seed_v1_{code}_{tag}.nii", bytes(h) + data)
            write(f"seed_v1_{code}_{tag}.nii.gz", gzip.compress(bytes(h) + data, mtime=0))
            write(f"seed_v2_{code}_{tag}.nii", mc.nifti2([4, 3, 2], datatype=code, bitpix=bits, endian=end) + data)
    # The gzip checks: header and voxels in two members (each member's trailer is verified), and
    # files in metres and micrometres (spacing and affine scaled to mm).
    ramp = bytes(range(64))
    head = mc.nifti1([4, 4, 4])
    write("seed_v1_two_members.nii.gz", gzip.compress(head, mtime=0) + gzip.compress(ramp, mtime=0))
    for units, tag in ((1, "m"), (3, "um")):
        h = bytearray(head)
        h[123] = units | 8
        struct.pack_into("<hh", h, 252, 1, 1)
        struct.pack_into("<6f", h, 256, 0, 0, 0, 0.5, -0.25, 2)
        struct.pack_into("<12f", h, 280, 0.002, 0, 0, 0.5, 0, 0.003, 0, -0.25, 0, 0, 0.004, 2)
        write(f"seed_v1_units_{tag}.nii.gz", gzip.compress(bytes(h) + ramp, mtime=0))
    # Pair-path inputs: ANALYZE with an SPM origin, ANALYZE with a gzip image, a NIfTI-1 pair.
    a = bytearray(mc.nifti1([4, 4, 4], magic=b"\0\0\0\0", vox_offset=0.0)[:348])
    struct.pack_into("<3h", a, 253, 2, 2, 2)
    write("seed_pair_analyze", bytes(a) + bytes(range(63)) + b"\x01")
    write("seed_pair_analyze_gz", bytes(a) + gzip.compress(bytes(range(64)), mtime=0) + b"\x03")
    write("seed_pair_ni1", mc.nifti1([4, 4, 4], magic=b"ni1\0", vox_offset=0.0)[:348] + bytes(63) + b"\x01")


if __name__ == "__main__":
    main()
