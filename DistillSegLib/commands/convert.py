"""``distillseg convert``: DICOM CT + PET (+ RTSTRUCT / SEG) to the sts-petct NIfTI case layout."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path

HELP = "convert DICOM CT/PET series and RTSTRUCT/SEG masks to a NIfTI case folder"
DESCRIPTION = """\
Convert a DICOM PET/CT study to the case-folder layout of ../shared/data/sts-petct:

  OUT/CT_image.nii.gz    CT in HU
  OUT/PET_image.nii.gz   PET in SUVbw on its own grid (BQML converted, GML as is)
  OUT/<name>.nii.gz      one 0/1 mask per RTSTRUCT ROI / SEG segment, on the grid of the
                         series the mask was drawn on (CT or PET)

SEG segments whose labels repeat are written as <number>_<label>. Everything is read
and checked before anything is written; on bad input nothing is written to OUT.

example:
  distillseg convert --ct STS_007/CT/image --pet STS_007/PET/image \\
                     --mask STS_007/CT/mask --mask STS_007/PET/mask --out STS_007_nifti
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ct", required=True, metavar="DIR", help="CT DICOM series folder (or one of its files)")
    parser.add_argument("--pet", required=True, metavar="DIR", help="PET DICOM series folder (or one of its files)")
    parser.add_argument(
        "--mask", action="append", default=[], metavar="FILE",
        help="RTSTRUCT or DICOM SEG file, or a folder holding one (repeatable)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output case folder")
    parser.add_argument("--json", action="store_true", help="print what was written as one JSON object")


def mask_file_names(names: list[str], numbers: list[int]) -> list[str]:
    """File stems for the ROIs/segments of one mask file: sanitised; ``<number>_<label>`` when labels repeat."""
    repeated = len(set(names)) < len(names)
    stems = [f"{n}_{name}" if repeated else name for n, name in zip(numbers, names)]
    return [sanitise(stem) for stem in stems]


def sanitise(name: str) -> str:
    """A portable file stem: letters, digits, ``._-``; everything else becomes ``_``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._")
    return stem or "mask"


def convert(ct_path: str | os.PathLike, pet_path: str | os.PathLike, masks: list, out: str | os.PathLike) -> dict:
    """Read and validate everything, then write the case folder; returns ``{file: facts}``.

    Raises:
        DistillSegError: any bad input, before anything is written.
    """
    import numpy as np

    from ..io.case import Case, load_volume
    from ..io.dicom_masks import read_dicom_mask_channels
    from ..errors import DistillSegError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DistillSegError(f"--out {out} exists and is not a folder")
    ct = load_volume(ct_path, "CT")
    pet = load_volume(pet_path, "PT")
    Case(Path(ct_path).name, ct, pet)  # overlap check, frame-of-reference warning
    outputs = {"CT_image": (ct, {"grid": "CT"}), "PET_image": (pet, {"grid": "PET", "suv": pet.meta.get("suv")})}
    for mask_path in masks:
        reference, channels = read_dicom_mask_channels(mask_path, [ct, pet])
        grid = "CT" if reference is ct else "PET"
        stems = mask_file_names([name for _, name, _ in channels], [value for value, _, _ in channels])
        for stem, (value, name, mask) in zip(stems, channels):
            if stem in outputs:
                raise DistillSegError(f"two outputs would be named {stem}.nii.gz (mask {mask_path}, {name!r})")
            array = (mask.array > 0).astype(np.uint8)
            facts = {"grid": grid, "name": name, "value": value, "source": str(mask.meta.get("path")),
                     "volume_ml": float(array.sum() * mask.voxel_volume_ml)}
            outputs[stem] = (mask.with_array(array), facts)
    write_case_folder(outputs, out)
    return {f"{stem}.nii.gz": facts for stem, (_, facts) in outputs.items()}


def write_case_folder(outputs: dict, out: Path) -> None:
    """Write every volume into a hidden temporary folder beside ``out``, then move them in."""
    from ..io.volume import write_image

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp{os.getpid()}"
    try:
        staging.mkdir()
        for stem, (volume, _) in outputs.items():
            write_image(volume, staging / f"{stem}.nii.gz")
        out.mkdir(exist_ok=True)
        for stem in outputs:
            os.replace(staging / f"{stem}.nii.gz", out / f"{stem}.nii.gz")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    written = convert(args.ct, args.pet, args.mask, args.out)
    if args.json:
        print(json.dumps({"out": str(args.out), "files": written}, default=str))
        return 0
    for name, facts in written.items():
        extra = f", {facts['volume_ml']:.2f} mL" if "volume_ml" in facts else ""
        print(f"{Path(args.out) / name}  ({facts['grid']} grid{extra})")
    return 0
