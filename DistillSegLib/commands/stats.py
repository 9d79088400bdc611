"""``distillseg stats``: the lesion table (MTV, SUVmax, SUVmean, SUVpeak, TLG) of any label map."""

from __future__ import annotations

import argparse
import json

from .options import add_allow_implausible, add_min_lesion_ml

HELP = "lesion table of a label map: MTV, SUVmax, SUVmean, SUVpeak, TLG per lesion (SUV from the native PET)"
DESCRIPTION = """\
The lesion table of a label map you made or corrected: one row per connected lesion of
each label value with MTV (mL), SUVmax, SUVmean, SUVpeak (PERCIST 1 mL sphere), TLG and
its centroid (RAS mm). The same table as `distillseg predict --stats` and the Slicer
module's.

LABEL is a label map on the CT or the PET grid (or an RTSTRUCT / DICOM SEG). MTV is
counted on the label's own grid; the SUV figures come from the PET's own voxels: a PET
voxel belongs to a lesion when the lesion mask, trilinearly interpolated at the voxel's
centre, is >= 0.5 (IBSI partial-volume rule); SUVpeak is the highest mean SUV of a 1 mL
sphere of PET voxels centred on a lesion PET voxel. The method is written into the table
(CSV lines starting with '#', JSON "method").

examples:
  distillseg stats --ct STS_001/CT_image.nii.gz --pet STS_001/PET_image.nii.gz \\
                   --label STS_001/CT_mask.nii.gz --out STS_001_lesions.csv
  distillseg stats --ct CT/ --pet PET/ --label corrected.seg.nrrd --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ct", required=True, metavar="PATH", help="CT image file or DICOM folder")
    parser.add_argument("--pet", required=True, metavar="PATH", help="PET image file or DICOM folder (SUV)")
    parser.add_argument("--label", required=True, metavar="LABEL",
                        help="label map on the CT or PET grid, RTSTRUCT or DICOM SEG")
    parser.add_argument("--out", metavar="TABLE", help="also write the table (.csv or .json)")
    parser.add_argument("--json", action="store_true", help="print JSON ({'method': {...}, 'lesions': [...]})")
    add_min_lesion_ml(parser)
    add_allow_implausible(parser)


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_output_path
    from ..io.case import default_label_names, load_case
    from ..metrics.lesions import format_lesion_table, lesion_table, lesion_table_json, write_lesion_table
    from .options import label_grid_name

    if args.out:
        check_output_path(args.out, "--out", (".csv", ".json"), inputs=(args.ct, args.pet, args.label))
    case = load_case(args.ct, args.pet, args.label, check=not args.allow_implausible)
    table = lesion_table(case.label, case.pet, default_label_names(case.label), args.min_lesion_ml,
                         label_grid_name(case.label, case))
    if args.out:
        write_lesion_table(table, args.out)
    print(json.dumps(lesion_table_json(table)) if args.json else format_lesion_table(table))
    return 0
