#!/usr/bin/env python3
"""Regenerates the malformed-NIfTI corpus that tests/nifti_malformed_test.cpp replays.

Each file has one defect; manifest.tsv maps it to a substring the reader's error must contain
("-" marks files that must read successfully). Standard library only, deterministic output
(gzip mtime 0), so re-running it reproduces the committed bytes:
    python3 tests/data/nifti_malformed/make_corpus.py
"""
import gzip
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))

UINT8, INT16, INT32, FLOAT32, COMPLEX64, RGB24 = 2, 4, 8, 16, 32, 128


def nifti1(dims, datatype=UINT8, bitpix=8, vox_offset=352.0, magic=b"n+1\0", endian="<",
           sizeof_hdr=348, dim0=None, slope=0.0, inter=0.0):
    """A NIfTI-1 header (348 bytes) plus the 4 zero extension bytes when vox_offset >= 352."""
    h = bytearray(348)
    struct.pack_into(endian + "i", h, 0, sizeof_hdr)
    dim = [len(dims) if dim0 is None else dim0] + list(dims) + [1] * (7 - len(dims))
    struct.pack_into(endian + "8h", h, 40, *dim[:8])
    struct.pack_into(endian + "h", h, 70, datatype)
    struct.pack_into(endian + "h", h, 72, bitpix)
    struct.pack_into(endian + "8f", h, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into(endian + "f", h, 108, vox_offset)
    struct.pack_into(endian + "f", h, 112, slope)
    struct.pack_into(endian + "f", h, 116, inter)
    h[344:348] = magic
    return bytes(h) + b"\0\0\0\0"


def nifti2(dims, datatype=UINT8, bitpix=8, vox_offset=544, magic=b"n+2\0\r\n\x1a\n", endian="<"):
    h = bytearray(540)
    struct.pack_into(endian + "i", h, 0, 540)
    h[4:12] = magic
    struct.pack_into(endian + "h", h, 12, datatype)
    struct.pack_into(endian + "h", h, 14, bitpix)
    dim = [len(dims)] + list(dims) + [1] * (7 - len(dims))
    struct.pack_into(endian + "8q", h, 16, *dim)
    struct.pack_into(endian + "8d", h, 104, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into(endian + "q", h, 168, vox_offset)
    return bytes(h) + b"\0\0\0\0"


def gz(data, level=6):
    return gzip.compress(data, compresslevel=level, mtime=0)


def ramp(n):
    return bytes(i % 251 for i in range(n))


def main():
    files = {}   # name -> bytes
    expect = []  # (name, substring)

    def add(name, data, reason):
        files[name] = data
        expect.append((name, reason))

    good = nifti1([4, 4, 4]) + ramp(64)

    add("empty.nii", b"", "NIfTI header: expected 4 bytes, got 0")
    add("truncated_header.nii", good[:200], "NIfTI header: expected 344 bytes, got 196 (file truncated)")
    add("truncated_header.nii.gz", gz(good[:200]), "NIfTI header: expected 344 bytes, got 196 (the gzip data end there")
    add("truncated_data.nii", good[:352 + 30], "file has only 30")
    add("truncated_data.nii.gz", gz(good[:352 + 30]), "voxel data: expected 64 bytes, got 30 (the gzip data end there")
    whole = gz(good, level=0)
    add("truncated_stream.nii.gz", whole[:len(whole) - 40], "(file truncated: it ends inside its gzip data)")
    # The gzip trailer (CRC32 and ISIZE, 8 bytes) is all that is wrong: every voxel inflates.
    member = bytearray(gz(good))
    member[-8] ^= 0x01
    add("crc_mismatch.nii.gz", bytes(member), "corrupt gzip data (CRC mismatch)")
    member = bytearray(gz(good))
    member[-4:] = struct.pack("<I", len(good) + 1)
    add("isize_mismatch.nii.gz", bytes(member), "corrupt gzip data (length mismatch)")
    add("truncated_trailer.nii.gz", gz(good)[:-3], "file truncated: it ends inside its gzip data")
    # Header and voxels in one good member, then a second member whose CRC is wrong: every member
    # is checked, not only those the voxels came from.
    second = bytearray(gz(b"padding" * 10))
    second[-8] ^= 0x80
    add("crc_mismatch_second_member.nii.gz", gz(good) + bytes(second), "corrupt gzip data (CRC mismatch)")
    add("wrong_sizeof_hdr.nii", struct.pack("<i", 349) + good[4:], "sizeof_hdr is 349")
    add("wrong_sizeof_hdr_nifti2.nii", struct.pack("<i", 541) + nifti2([2, 2])[4:] + ramp(4), "sizeof_hdr is 541")
    add("bad_magic.nii", nifti1([4, 4, 4], magic=b"abc\0") + ramp(64), "bad magic")
    add("bad_magic_version.nii", nifti1([4, 4, 4], magic=b"n+2\0") + ramp(64), "says NIfTI-2")
    add("bad_magic_nifti2.nii", nifti2([4, 4], magic=b"n+3\0\r\n\x1a\n") + ramp(16), "bad magic")
    add("bad_signature_nifti2.nii", nifti2([4, 4], magic=b"n+2\0\n\x1a\n\0") + ramp(16), "signature")
    add("pair_magic_in_nii.nii", nifti1([4, 4, 4], magic=b"ni1\0") + ramp(64), "pair")
    add("dim0_zero.nii", nifti1([4, 4, 4], dim0=0) + ramp(64), "dim[0] is 0")
    add("dim0_eight.nii", nifti1([4, 4, 4], dim0=8) + ramp(64), "dim[0] is 8")
    add("dim0_negative_big_endian.nii", nifti1([4, 4, 4], dim0=-2, endian=">") + ramp(64), "dim[0] is -2")
    add("negative_dim.nii", nifti1([4, -3, 4]) + ramp(64), "dim[2] is -3")
    add("negative_dim_big_endian.nii", nifti1([-1, 4, 4], endian=">") + ramp(64), "dim[1] is -1")
    add("zero_dim.nii", nifti1([4, 4, 0]) + ramp(64), "dim[3] is 0")
    add("dims_overflow.nii", nifti1([32767] * 7) + ramp(64), "overflows 64 bits")
    add("dims_overflow_nifti2.nii", nifti2([1 << 62, 4]) + ramp(64), "overflows 64 bits")
    add("bytes_overflow_nifti2.nii", nifti2([1 << 61, 2], datatype=FLOAT32, bitpix=32) + ramp(64),
        "overflows 64 bits")
    # 1024^4 uint8 = 2^40 bytes declared over 64 real ones: refused before any allocation.
    huge = nifti1([1024, 1024, 1024, 1024]) + ramp(64)
    add("huge_declared.nii", huge, "file has only 64")
    add("huge_declared.nii.gz", gz(huge), "compressed bytes can inflate to")
    add("huge_declared_nifti2.nii", nifti2([1 << 20, 1 << 20, 1 << 12]) + ramp(64), "file has only 64")
    add("vox_offset_past_end.nii", nifti1([4, 4, 4], vox_offset=100000.0) + ramp(64), "past the end")
    add("vox_offset_past_end.nii.gz", gz(nifti1([4, 4, 4], vox_offset=100000.0) + ramp(64)),
        "extensions before vox_offset: expected")
    add("vox_offset_in_header.nii", nifti1([4, 4, 4], vox_offset=100.0) + ramp(64), "inside the 348-byte header")
    add("vox_offset_nan.nii", nifti1([4, 4, 4], vox_offset=float("nan")) + ramp(64), "not a valid byte offset")
    add("vox_offset_negative_nifti2.nii", nifti2([4, 4], vox_offset=-8) + ramp(16), "not a valid byte offset")
    # gzip header with an unknown compression method (8 is deflate).
    add("corrupt_gzip_header.nii.gz", b"\x1f\x8b\x09\x00" + bytes(6) + zlib.compress(good)[2:], "corrupt gzip data")
    # A deflate block of the reserved type 3.
    add("corrupt_gzip_block.nii.gz", b"\x1f\x8b\x08\x00" + bytes(6) + b"\x07" + bytes(40), "corrupt gzip data")
    # The header in a good member, the voxels in a stored (level 0) member whose block length and
    # its complement disagree: the error comes from inside the voxel data.
    stored = bytearray(gz(good[352:], level=0))
    stored[11:15] = struct.pack("<HH", 64, 64)
    add("corrupt_gzip_stored.nii.gz", gz(good[:352]) + bytes(stored), "corrupt gzip data at uncompressed offset 352")
    add("unknown_datatype.nii", nifti1([4, 4, 4], datatype=999, bitpix=8) + ramp(64), "unknown datatype code 999")
    add("datatype_zero.nii", nifti1([4, 4, 4], datatype=0, bitpix=0) + ramp(64), "unknown datatype code 0")
    add("rgb24.nii", nifti1([4, 4, 4], datatype=RGB24, bitpix=24) + ramp(192), "datatype rgb24 (code 128)")
    add("complex64.nii", nifti1([4, 4, 4], datatype=COMPLEX64, bitpix=64) + ramp(512), "datatype complex64 (code 32)")
    add("binary.nii", nifti1([4, 4, 4], datatype=1, bitpix=1) + ramp(8), "datatype binary (code 1)")
    # Pairs: a NIfTI header whose .img is missing, and one whose .img is too short.
    add("missing_image.hdr", nifti1([4, 4, 4], vox_offset=0.0, magic=b"ni1\0")[:348], ".img pair is missing")
    files["short_image.img"] = ramp(10)
    add("short_image.hdr", nifti1([4, 4, 4], vox_offset=0.0, magic=b"ni1\0")[:348], "file has only 10")

    # Must read: the declared 64 voxels come from a member that inflates to about 2 MiB; the rest
    # is inflated only to check the member's trailer (well inside the bound on what may follow the
    # image), and is not an error.
    bomb = good + bytes(2 << 20)
    add("gzip_bomb.nii.gz", gzip.compress(bomb, compresslevel=9, mtime=0), "-")
    # Must read: header and voxels in two concatenated members, then non-gzip trailing bytes.
    add("two_members_trailing.nii.gz", gz(good[:100]) + gz(good[100:]) + b"trailing junk", "-")
    # Must read: data past the declared size in a plain file.
    add("trailing_bytes.nii", good + b"x" * 100, "-")

    for name, data in files.items():
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(data)
    with open(os.path.join(HERE, "manifest.tsv"), "w") as f:
        f.write("# file<TAB>substring the error must contain (\"-\": must read without error)\n")
        for name, reason in expect:
            f.write(f"{name}\t{reason}\n")


if __name__ == "__main__":
    main()
