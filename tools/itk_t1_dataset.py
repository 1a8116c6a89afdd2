#!/usr/bin/python3
"""Turns ITK's example T1 MRI and its k-means segmentation (Debian's insighttoolkit5-examples) into a
two-case nnU-Net v2 raw dataset: the volume is split at the middle of z, one half to train on
(imagesTr/labelsTr) and one to predict and score (imagesTs/labelsTs).

Labels are renumbered by decreasing voxel count over the whole volume (ties: the lower value first), so
the largest class, the background, is 0 and the others 1..K. Standard library only: this runs before
anything but the voxgrad binary is built. Prints one JSON line on stdout; errors are one line on
stderr and exit status 1.

Geometry of the second half: each transform whose code is set is moved along its own z axis by z0
voxels, i.e. the new origin is that transform applied to voxel (0, 0, z0). The sform's z axis is
srow_*[2]; the qform's is computed from its quaternion, pixdim[3] and qfac. This is right whether or
not the qform and sform agree (for ITK's files they describe the same grid, so both move by the same
world vector); a transform whose code is 0 is left untouched, as readers ignore it.
"""

import argparse
import array
import collections
import gzip
import json
import math
import os
import struct
import sys
import tempfile
import zlib

DATA = "/usr/share/doc/insighttoolkit5-examples/examples/Data"
DEFAULT_IMAGE = os.path.join(DATA, "KmeansTest_T1UCharRaw.nii.gz")
DEFAULT_LABEL = os.path.join(DATA, "KmeansTest_T1KmeansPrelimSegmentation.nii.gz")
CASES = ("t1_000", "t1_001")

HEADER_BYTES = 348
VOX_OFFSET = 352  # header + the 4-byte extension flag (all zero: no extensions)
# NIfTI datatype code -> (array typecode, bytes per voxel, name)
DATATYPES = {2: ("B", 1, "uint8"), 4: ("h", 2, "int16"), 512: ("H", 2, "uint16"), 8: ("i", 4, "int32")}


class Refused(Exception):
    pass


class Nifti:
    """One single-file NIfTI-1 volume: its header bytes, byte order, dims and raw voxel bytes."""

    def __init__(self, path, header, order, data):
        self.path = path
        self.header = header  # the first 348 bytes, as read
        self.order = order  # "<" or ">"
        self.data = data  # raw voxel bytes, exactly nx * ny * nz * bytes-per-voxel
        self.dims = self.get("8h", 40)[1:4]
        self.datatype = self.get("h", 70)[0]

    def get(self, fmt, offset):
        return struct.unpack_from(self.order + fmt, self.header, offset)

    def values(self):
        """The voxels as an array of Python ints, in the machine's byte order."""
        typecode = DATATYPES[self.datatype][0]
        values = array.array(typecode)
        if values.itemsize != DATATYPES[self.datatype][1]:
            raise Refused(f"{self.path}: this Python's array type '{typecode}' is not {DATATYPES[self.datatype][2]}")
        values.frombytes(self.data)
        if (self.order == "<") != (sys.byteorder == "little"):
            values.byteswap()
        return values


def read_nifti(path, hint_deps):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        hint = " (`tools/deps --real-data` installs insighttoolkit5-examples, which holds it)" if hint_deps else ""
        raise Refused(f"{path}: no such file{hint}") from None
    except OSError as e:
        raise Refused(f"{path}: cannot read: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise Refused(f"{path}: broken gzip stream: {e}") from None
    if len(raw) < HEADER_BYTES:
        raise Refused(f"{path}: {len(raw)} bytes, shorter than a NIfTI-1 header ({HEADER_BYTES})")
    order = next((o for o in "<>" if struct.unpack_from(o + "i", raw, 0)[0] == HEADER_BYTES), None)
    if order is None:
        raise Refused(f"{path}: not a NIfTI-1 file (sizeof_hdr is not {HEADER_BYTES} in either byte order)")
    magic = raw[344:348]
    if magic != b"n+1\0":
        kind = "a header/image pair (magic ni1), not a single file" if magic == b"ni1\0" else f"magic {magic!r}"
        raise Refused(f"{path}: not a single-file NIfTI-1 volume: {kind}")
    header = raw[:HEADER_BYTES]
    dim = struct.unpack_from(order + "8h", header, 40)
    if not 3 <= dim[0] <= 7 or any(d < 1 for d in dim[1:4]) or any(d != 1 for d in dim[4:dim[0] + 1]):
        raise Refused(f"{path}: dims {list(dim[:dim[0] + 1 if 0 <= dim[0] <= 7 else 8])} are not one 3-D volume")
    datatype, bitpix = struct.unpack_from(order + "2h", header, 70)
    if datatype not in DATATYPES:
        names = ", ".join(f"{v[2]} ({k})" for k, v in DATATYPES.items())
        raise Refused(f"{path}: datatype {datatype} is not one of {names}")
    if bitpix != 8 * DATATYPES[datatype][1]:
        raise Refused(f"{path}: bitpix {bitpix} does not match datatype {DATATYPES[datatype][2]}")
    vox_offset = struct.unpack_from(order + "f", header, 108)[0]
    if not math.isfinite(vox_offset) or vox_offset < VOX_OFFSET or vox_offset != int(vox_offset):
        raise Refused(f"{path}: vox_offset {vox_offset} is not a whole number >= {VOX_OFFSET}")
    start = int(vox_offset)
    size = dim[1] * dim[2] * dim[3] * DATATYPES[datatype][1]
    if len(raw) < start + size:
        raise Refused(f"{path}: {len(raw) - start} bytes of voxels after vox_offset {start}, the dims need {size}")
    return Nifti(path, header, order, raw[start:start + size])


def quaternion_z_axis(n):
    """The qform's world vector for one step along voxel z: R[:, 2] * pixdim[3] * qfac."""
    b, c, d = n.get("3f", 256)
    # As nifti1_io's nifti_quatern_to_mat44: a float32 quaternion a hair short of unit length has a = 0
    # (sqrt of the rounding error would tilt the axis by ~1e-4 rad); b, c, d are renormalised.
    a = 1.0 - (b * b + c * c + d * d)
    if a < 1e-7:
        norm = math.sqrt(b * b + c * c + d * d)
        b, c, d, a = b / norm, c / norm, d / norm, 0.0
    else:
        a = math.sqrt(a)
    pixdim = n.get("8f", 76)
    qfac = -1.0 if pixdim[0] < 0 else 1.0
    column = (2 * (b * d + a * c), 2 * (c * d - a * b), a * a + d * d - b * b - c * c)
    return [v * pixdim[3] * qfac for v in column]


def half_header(n, nz, z_start, label):
    """n's header for slices [z_start, z_start + nz): dims, vox_offset, origin and (for labels) the type."""
    o = n.order
    h = bytearray(n.header)
    struct.pack_into(o + "h", h, 46, nz)  # dim[3]
    struct.pack_into(o + "f", h, 108, float(VOX_OFFSET))
    if label:
        struct.pack_into(o + "2h", h, 70, 2, 8)  # uint8
        struct.pack_into(o + "2f", h, 112, 1.0, 0.0)  # scl_slope, scl_inter: the values are the labels
        struct.pack_into(o + "2f", h, 124, 0.0, 0.0)  # cal_max, cal_min of the old values no longer apply
    if z_start:
        qform_code, sform_code = n.get("2h", 252)
        if qform_code > 0:
            step = quaternion_z_axis(n)
            offsets = n.get("3f", 268)
            struct.pack_into(o + "3f", h, 268, *(q + s * z_start for q, s in zip(offsets, step)))
        if sform_code > 0:
            for row in range(3):
                offset = 280 + 16 * row
                srow = n.get("4f", offset)
                struct.pack_into(o + "f", h, offset + 12, srow[3] + srow[2] * z_start)
    return bytes(h) + b"\0\0\0\0"


def write_atomically(path, payload, compress):
    """Writes path through a temporary file in the same folder, so a reader never sees half a file."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if compress:
                # No file name and mtime 0 in the gzip header: the same input gives the same bytes.
                with gzip.GzipFile(filename="", mode="wb", compresslevel=1, fileobj=f, mtime=0) as gz:
                    gz.write(payload)
            else:
                f.write(payload)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def make_dataset(out, image_path, label_path):
    image = read_nifti(image_path, image_path == DEFAULT_IMAGE)
    label = read_nifti(label_path, label_path == DEFAULT_LABEL)
    if image.dims != label.dims:
        raise Refused(f"{label_path}: dims {list(label.dims)} differ from the image's "
                      f"{list(image.dims)} ({image_path})")
    slope, inter = label.get("2f", 112)
    if slope not in (0.0, 1.0) or (slope != 0.0 and inter != 0.0):
        raise Refused(f"{label_path}: a label volume must not be scaled (scl_slope {slope}, scl_inter {inter})")
    nx, ny, nz = image.dims
    if nz < 2:
        raise Refused(f"{image_path}: {nz} slice along z; splitting into two cases needs at least 2")

    values = label.values()
    counts = collections.Counter(values)
    ordered = sorted(counts, key=lambda v: (-counts[v], v))
    if len(ordered) > 256:
        raise Refused(f"{label_path}: {len(ordered)} distinct label values; uint8 labels hold at most 256")
    label_map = {old: new for new, old in enumerate(ordered)}
    if label.datatype == 2:
        table = bytearray(256)
        for old, new in label_map.items():
            table[old] = new
        remapped = label.data.translate(table)
    else:
        remapped = bytes(label_map[v] for v in values)

    z0 = nz // 2
    spans = ((0, z0), (z0, nz))
    folders = {name: os.path.join(out, name) for name in ("imagesTr", "labelsTr", "imagesTs", "labelsTs")}
    files = {
        "imagesTr": [CASES[0] + "_0000.nii.gz"], "labelsTr": [CASES[0] + ".nii.gz"],
        "imagesTs": [CASES[1] + "_0000.nii.gz"], "labelsTs": [CASES[1] + ".nii.gz"],
    }
    for name, folder in folders.items():
        os.makedirs(folder, exist_ok=True)
        # A case left over from something else would silently join this dataset.
        strangers = sorted(f for f in os.listdir(folder) if f.endswith((".nii.gz", ".nii")) and f not in files[name])
        if strangers:
            raise Refused(f"{folder}: holds {strangers[0]}, which is not part of this dataset; use an empty --out")

    image_slice = nx * ny * DATATYPES[image.datatype][1]
    label_slice = nx * ny
    per_case = {}
    for case, (z_start, z_end), test in zip(CASES, spans, (False, True)):
        depth = z_end - z_start
        image_file = os.path.join(folders["imagesTs" if test else "imagesTr"], case + "_0000.nii.gz")
        label_file = os.path.join(folders["labelsTs" if test else "labelsTr"], case + ".nii.gz")
        labels = remapped[z_start * label_slice:z_end * label_slice]
        voxels = image.data[z_start * image_slice:z_end * image_slice]
        write_atomically(image_file, half_header(image, depth, z_start, False) + voxels, True)
        write_atomically(label_file, half_header(label, depth, z_start, True) + labels, True)
        case_counts = collections.Counter(labels)
        per_case[case] = {str(k): case_counts.get(k, 0) for k in range(len(ordered))}

    base = os.path.basename
    dataset = {
        "channel_names": {"0": "T1"},
        "labels": {"background": 0, **{f"class_{k}": k for k in range(1, len(ordered))}},
        "numTraining": 1,
        "file_ending": ".nii.gz",
        "name": "ITK-T1-kmeans",
        "description": (f"{base(image_path)} and its k-means segmentation {base(label_path)} (ITK's examples), "
                        f"split at z = {z0} of {nz}: {CASES[0]} is slices [0, {z0}), {CASES[1]} is [{z0}, {nz}). "
                        "Labels renumbered by decreasing voxel count: "
                        + ", ".join(f"{old} -> {new}" for old, new in label_map.items()) + "."),
    }
    write_atomically(os.path.join(out, "dataset.json"), (json.dumps(dataset, indent=2) + "\n").encode(), False)

    total = collections.Counter(remapped)
    return {
        "out": out,
        "cases": list(CASES),
        "shape_per_case": [[nx, ny, z_end - z_start] for z_start, z_end in spans],
        "label_map": {str(old): new for old, new in label_map.items()},
        "voxels_per_label": {str(k): total[k] for k in range(len(ordered))},
        "voxels_per_label_per_case": per_case,
    }


def main():
    parser = argparse.ArgumentParser(
        description="Make a two-case nnU-Net v2 dataset from ITK's example T1 MRI and its k-means segmentation.")
    parser.add_argument("--out", required=True, help="dataset folder to write (dataset.json, imagesTr, ...)")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="T1 volume, NIfTI-1 (default: %(default)s)")
    parser.add_argument("--label", default=DEFAULT_LABEL, help="its segmentation, NIfTI-1 (default: %(default)s)")
    args = parser.parse_args()
    try:
        result = make_dataset(args.out, args.image, args.label)
    except Refused as e:
        print(f"itk_t1_dataset.py: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"itk_t1_dataset.py: error: {e.filename or args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
