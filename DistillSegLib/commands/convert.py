"""``distillseg convert``: DICOM CT + PET (+ RTSTRUCT / SEG) to the sts-petct NIfTI case layout."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path

from .options import add_allow_implausible

HELP = "convert DICOM CT/PET series and RTSTRUCT/SEG masks to a NIfTI case folder"
DESCRIPTION = """\
Convert a DICOM PET/CT study to the case-folder layout of ../shared/data/sts-petct:

  OUT/CT_image.nii.gz    CT in HU
  OUT/PET_image.nii.gz   PET in SUVbw on its own grid (BQML converted, GML as is)
  OUT/<name>.nii.gz      one 0/1 mask per RTSTRUCT ROI / SEG segment, on the grid of the
                         series the mask was drawn on (CT or PET)
  OUT/CT_mask.nii.gz     with --label NAME: that ROI as the training label on the CT grid
                         (what `distillseg train` reads; an ROI drawn on the PET is brought
                         onto the CT grid by the IBSI partial-volume rule)

SEG segments whose labels repeat are written as <number>_<label>. A mask from another
study (a different FrameOfReferenceUID), an RTSTRUCT whose contours name an undefined
ROI, or one that covers no voxel is an error; an ROI without contours is a warning.
Everything is read and checked before anything is written; on bad input nothing is
written to OUT. An OUT folder that already holds files is refused unless --overwrite,
which replaces it whole (no file of the previous case stays).

example:
  distillseg convert --ct STS_007/CT/image --pet STS_007/PET/image \\
                     --mask STS_007/CT/mask --mask STS_007/PET/mask --label GTV_Mass_CT --out STS_007_nifti
"""

TRAINING_LABEL = "CT_mask"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ct", required=True, metavar="DIR", help="CT DICOM series folder (or one of its files)")
    parser.add_argument("--pet", required=True, metavar="DIR", help="PET DICOM series folder (or one of its files)")
    parser.add_argument(
        "--mask", action="append", default=[], metavar="FILE",
        help="RTSTRUCT or DICOM SEG file, or a folder holding one (repeatable)",
    )
    parser.add_argument("--label", metavar="NAME",
                        help="ROI/segment (name or output file stem) to write as the training label CT_mask.nii.gz")
    parser.add_argument("--out", required=True, metavar="DIR", help="output case folder (empty or new)")
    parser.add_argument("--overwrite", action="store_true", help="replace an OUT folder that already holds files")
    parser.add_argument("--json", action="store_true", help="print what was written as one JSON object")
    add_allow_implausible(parser)


def mask_file_names(names: list[str], numbers: list[int]) -> list[str]:
    """File stems for the ROIs/segments of one mask file: sanitised; ``<number>_<label>`` when labels repeat."""
    repeated = len(set(names)) < len(names)
    stems = [f"{n}_{name}" if repeated else name for n, name in zip(numbers, names)]
    return [sanitise(stem) for stem in stems]


def sanitise(name: str) -> str:
    """A portable file stem: letters, digits, ``._-``; everything else becomes ``_``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._")
    return stem or "mask"


def check_out_folder(out: Path, overwrite: bool) -> None:
    """Refuse a file, an unwritable place, or a folder already holding files (unless ``overwrite``)."""
    from ..atomic import check_writable_folder
    from ..errors import DistillSegError

    if out.exists() and not out.is_dir():
        raise DistillSegError(f"--out {out} exists and is not a folder")
    check_writable_folder(out.parent, f"--out {out}")
    if out.is_dir() and not overwrite:
        present = sorted(p.name for p in out.iterdir())
        if present:
            shown = ", ".join(present[:5]) + (f" (+{len(present) - 5} more)" if len(present) > 5 else "")
            raise DistillSegError(f"--out {out} already holds files ({shown}): choose a new or empty folder, or pass "
                                  "--overwrite to replace it whole")


def convert(ct_path: str | os.PathLike, pet_path: str | os.PathLike, masks: list, out: str | os.PathLike,
            label: str | None = None, overwrite: bool = False, check: bool = True) -> dict:
    """Read and validate everything, then write the case folder; returns ``{file: facts}``.

    Args:
        label: ROI/segment name (or output stem) to write as ``CT_mask.nii.gz`` on the CT grid.
        overwrite: replace an ``out`` folder that already holds files.
        check: refuse implausible HU/SUV values (:mod:`DistillSegLib.io.plausibility`).

    Raises:
        DistillSegError: any bad input, before anything is written.
    """
    import numpy as np

    from ..io.case import Case, load_volume
    from ..io.dicom_masks import read_dicom_mask_channels
    from ..errors import DistillSegError

    out = Path(out)
    check_out_folder(out, overwrite)
    ct = load_volume(ct_path, "CT")
    pet = load_volume(pet_path, "PT")
    if check:
        from ..io.plausibility import require_plausible

        require_plausible(ct, pet)
    Case(Path(ct_path).name, ct, pet)  # overlap check, frame-of-reference warning
    outputs = {"CT_image": (ct, {"grid": "CT"}), "PET_image": (pet, {"grid": "PET", "suv": pet.meta.get("suv")})}
    for mask_path in masks:
        reference, channels = read_dicom_mask_channels(mask_path, [ct, pet])
        grid = "CT" if reference is ct else "PET"
        stems = mask_file_names([name for _, name, _ in channels], [value for value, _, _ in channels])
        for stem, (value, name, mask) in zip(stems, channels):
            if stem in outputs or stem == TRAINING_LABEL:
                raise DistillSegError(f"two outputs would be named {stem}.nii.gz (mask {mask_path}, {name!r})")
            array = (mask.array > 0).astype(np.uint8)
            facts = {"grid": grid, "name": name, "value": value, "source": str(mask.meta.get("path")),
                     "volume_ml": float(array.sum() * mask.voxel_volume_ml)}
            outputs[stem] = (mask.with_array(array), facts)
    if label is not None:
        outputs[TRAINING_LABEL] = training_label(outputs, label, ct)
    write_case_folder(outputs, out)
    return {f"{stem}.nii.gz": facts for stem, (_, facts) in outputs.items()}


def training_label(outputs: dict, wanted: str, ct) -> tuple:
    """``(CT-grid 0/1 label, facts)`` of the one mask named ``wanted`` (ROI name or file stem)."""
    import numpy as np

    from ..errors import DistillSegError
    from ..io.resample import mask_to_grid

    masks = {stem: entry for stem, entry in outputs.items() if "name" in entry[1]}
    found = [stem for stem, (_, facts) in masks.items() if wanted in (stem, facts["name"])]
    if len(found) != 1:
        available = ", ".join(f"{facts['name']} ({stem}.nii.gz)" for stem, (_, facts) in masks.items()) or "none"
        what = "no" if not found else "more than one"
        raise DistillSegError(f"--label {wanted}: {what} ROI/segment of that name or file stem; the masks "
                              f"are: {available}")
    mask, facts = masks[found[0]]
    on_ct = mask_to_grid(mask, ct)
    array = on_ct.array.astype(np.uint8)
    return ct.with_array(array, label_names={1: facts["name"]}), {
        **facts, "grid": "CT", "training_label": True, "from": f"{found[0]}.nii.gz",
        "volume_ml": float(array.sum() * ct.voxel_volume_ml)}


def write_case_folder(outputs: dict, out: Path) -> None:
    """Write every volume into a hidden temporary folder beside ``out``, then put it in place.

    A new or empty ``out`` receives the files; a folder that held files (``--overwrite``)
    is replaced whole, so nothing of the previous case stays beside the new one.
    """
    from ..io.volume import write_image

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp{os.getpid()}"
    previous = out.parent / f".{out.name}.old{os.getpid()}"
    set_aside = replaced = False
    try:
        staging.mkdir()
        for stem, (volume, _) in outputs.items():
            write_image(volume, staging / f"{stem}.nii.gz")
        if out.is_dir() and any(out.iterdir()):
            os.replace(out, previous)
            set_aside = True
        elif out.is_dir():
            out.rmdir()
        os.replace(staging, out)
        replaced = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if set_aside and not replaced:  # put the previous case back as it was
            os.replace(previous, out)
        elif set_aside:
            shutil.rmtree(previous, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    written = convert(args.ct, args.pet, args.mask, args.out, args.label, args.overwrite,
                      check=not args.allow_implausible)
    if args.json:
        print(json.dumps({"out": str(args.out), "files": written}, default=str))
        return 0
    for name, facts in written.items():
        extra = f", {facts['volume_ml']:.2f} mL" if "volume_ml" in facts else ""
        role = ", training label" if facts.get("training_label") else ""
        print(f"{Path(args.out) / name}  ({facts['grid']} grid{extra}{role})")
    return 0
