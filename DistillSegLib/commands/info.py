"""``distillseg info``: what is in a PET/CT study (geometry, HU, SUV, label volumes)."""

from __future__ import annotations

import argparse
import json

import numpy as np

HELP = "describe a PET/CT study: shapes, spacings, orientation, HU and SUV ranges, label volumes"
DESCRIPTION = """\
Describe a PET/CT study.

PATH is an image file (NIfTI/NRRD/MHA) or a folder with a DICOM series. --label takes a
label map file, an RTSTRUCT or a DICOM SEG. Shapes are in each file's own index order;
the PET is described on its native grid. Volumes are in mL, SUV is body-weight SUV.
Positions are RAS (as in Slicer and NIfTI); "axes i->L j->P k->S" says where each index
axis points (the codes of nibabel.aff2axcodes), not a coordinate system. Each ROI of an
RTSTRUCT/SEG gets its own volume, overlaps included. Values that do not look like HU or
SUV are reported ("implausible"), not refused: this command is for looking.

example:
  distillseg info --ct STS_001/CT_image.nii.gz --pet STS_001/PET_image.nii.gz \\
                  --label STS_001/CT_mask.nii.gz
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ct", required=True, metavar="PATH", help="CT image file or DICOM folder")
    parser.add_argument("--pet", required=True, metavar="PATH", help="PET image file or DICOM folder")
    parser.add_argument("--label", metavar="PATH", help="label map, RTSTRUCT or DICOM SEG (optional)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def describe_case(case) -> dict:
    """Nested summary of a :class:`~DistillSegLib.io.case.Case` (JSON-serialisable)."""
    ct, pet = case.ct, case.pet
    from ..io.plausibility import plausibility_report

    summary = {
        "case_id": case.case_id,
        "world_coordinates": "RAS",
        "ct": {
            **_geometry(ct),
            "hu_min": float(ct.array.min()),
            "hu_max": float(ct.array.max()),
        },
        "pet": {
            **_geometry(pet),
            "suv_max": float(pet.array.max()),
            "suv_mean": float(pet.array.mean()),
            "units": pet.meta.get("units", "SUVbw"),
        },
    }
    if case.label is not None:
        label = case.label
        counts = {int(v): int(n) for v, n in zip(*np.unique(label.array, return_counts=True)) if v != 0}
        own = {int(v): float(ml) for v, ml in (label.meta.get("segment_volumes_ml") or {}).items()}
        volumes = own or {v: n * label.voxel_volume_ml for v, n in counts.items()}
        names = case.label_names
        grid = "CT" if label.shape == ct.shape and np.allclose(label.affine, ct.affine, atol=1e-3) else "PET"
        summary["label"] = {
            **_geometry(label),
            "grid": grid,
            "volume_ml": {names.get(v, str(v)): ml for v, ml in sorted(volumes.items())},
            "values": {names.get(v, str(v)): v for v in sorted(volumes)},
        }
    summary["implausible"] = plausibility_report(ct, pet)
    return summary


def _geometry(volume) -> dict:
    return {
        "path": volume.meta.get("path"),
        "shape": list(volume.shape),
        "spacing": [round(s, 6) for s in volume.spacing],
        "index_axes": volume.orientation,
        "origin_ras": [round(float(x), 4) for x in volume.affine[:3, 3]],
    }


def format_text(summary: dict) -> str:
    def fmt(xs):
        return " x ".join(f"{x:g}" for x in xs)

    def axes(codes: str) -> str:
        return "axes " + " ".join(f"{i}->{c}" for i, c in zip("ijk", codes))

    ct, pet = summary["ct"], summary["pet"]
    lines = [
        f"case {summary['case_id']} (positions in RAS mm)",
        f"CT   {fmt(ct['shape'])} voxels, spacing {fmt(ct['spacing'])} mm, {axes(ct['index_axes'])}, "
        f"HU {ct['hu_min']:.0f} .. {ct['hu_max']:.0f}",
        f"PET  {fmt(pet['shape'])} voxels, spacing {fmt(pet['spacing'])} mm, {axes(pet['index_axes'])}, "
        f"SUV max {pet['suv_max']:.2f}, mean {pet['suv_mean']:.3f}",
    ]
    if "label" in summary:
        label = summary["label"]
        lines.append(f"label on the {label['grid']} grid (each ROI's own volume):")
        lines += [f"  {name}: {ml:.2f} mL" for name, ml in label["volume_ml"].items()] or ["  (empty)"]
    lines += [f"implausible: {text}" for text in summary["implausible"]]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..io.case import load_case

    summary = describe_case(load_case(args.ct, args.pet, args.label, check=False))
    print(json.dumps(summary) if args.json else format_text(summary))
    return 0
