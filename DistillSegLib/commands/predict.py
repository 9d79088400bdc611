"""``distillseg predict``: segment a PET/CT study with a student model."""

from __future__ import annotations

import argparse

HELP = "segment a PET/CT study with a student or a teacher (label map on the CT grid, lesion statistics)"
DESCRIPTION = """\
Segment a PET/CT study with a student model: sliding-window inference at the model's
spacing, result resampled onto the CT grid (same shape and affine as the CT).

A model trained on crops around the tumour (field of view 'crop', e.g. on sts-petct) runs
only inside a region of interest: --roi x0,y0,z0,x1,y1,z1 (RAS mm), --roi-from MASK (its
bounding box plus --roi-margin mm), or --roi all when the input is itself such a crop.
Outside the ROI the label is background.

--out: .nii.gz, .nii, .nrrd (label map), .seg.nrrd (3D Slicer segmentation with names
and terminology) or .dcm (DICOM SEG referencing the CT series; the CT must be DICOM).
--stats: one row per connected lesion (MTV mL, SUVmax, SUVmean, SUVpeak, TLG, centroid).

Teachers (--teacher NAME, see `distillseg teachers`) need no radiologist prompt: they are
prompted automatically from --prompt-from, either a student model (its prediction inside
the ROI) or a label map. ROI coordinates may be negative: write --roi=-10,... .

examples:
  distillseg predict --model student.pt --ct STS_010/CT_image.nii.gz --pet STS_010/PET_image.nii.gz \\
                     --roi all --out STS_010.nii.gz --stats STS_010.csv
  distillseg predict --teacher litemedsam --prompt-from student.pt --roi all \
                     --ct STS_010/CT_image.nii.gz --pet STS_010/PET_image.nii.gz --out STS_010_teacher.nii.gz
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="MODEL", help="student model file (.pt)")
    source.add_argument("--teacher", metavar="NAME", help="run a teacher instead (litemedsam, sam, sam-med3d, seganypet)")
    parser.add_argument("--checkpoint", metavar="FILE", help="teacher weights (default: embedded or $DISTILLSEG_WEIGHTS)")
    parser.add_argument("--prompt-from", metavar="MODEL|LABEL",
                        help="with --teacher: a student model (.pt) or a label map whose mask prompts the teacher")
    parser.add_argument("--modality", choices=("CT", "PET"), help="with --teacher: the image it sees (default: its own)")
    parser.add_argument("--ct", required=True, metavar="PATH", help="CT image file or DICOM folder")
    parser.add_argument("--pet", required=True, metavar="PATH", help="PET image file or DICOM folder")
    parser.add_argument("--out", required=True, metavar="FILE", help="label map to write (.nii.gz/.nii/.nrrd/.seg.nrrd/.dcm)")
    parser.add_argument("--prob", metavar="FILE", help="also write the foreground probability map (float, CT grid)")
    roi = parser.add_mutually_exclusive_group()
    roi.add_argument("--roi", metavar="BOX", help="x0,y0,z0,x1,y1,z1 in RAS mm, or 'all' (the input is the region)")
    roi.add_argument("--roi-from", metavar="MASK", help="label map whose bounding box (+ margin) is the region")
    parser.add_argument("--roi-margin", type=float, default=10.0, metavar="MM", help="margin around --roi-from (default: 10)")
    parser.add_argument("--stats", metavar="FILE", help="lesion statistics table (.csv or .json)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--json-progress", action="store_true", help="JSON progress lines on stdout")
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="CPU threads for torch (default: 0 = all cores; 1 is faster on a busy machine)")


def resolve_roi(args: argparse.Namespace, case):
    """The ROI from --roi / --roi-from (None when neither is given)."""
    from ..student.inference import parse_roi, roi_from_mask

    if args.roi:
        return parse_roi(args.roi)
    if args.roi_from:
        from ..io.case import load_label

        return roi_from_mask(load_label(args.roi_from, case.ct, case.pet), args.roi_margin)
    return None


def run(args: argparse.Namespace) -> int:
    from ..errors import DistillSegError
    from ..progress import CancelToken, Progress
    from ..io.segmentation_export import check_label_path

    out = check_label_path(args.out)
    if args.stats and not args.stats.lower().endswith((".csv", ".json")):
        raise DistillSegError(f"--stats must end in .csv or .json, got {args.stats}")
    if args.teacher and not args.prompt_from:
        raise DistillSegError("--teacher needs --prompt-from MODEL|LABEL: teachers are prompted automatically from it")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    progress = Progress(json_lines=args.json_progress)
    cancel = CancelToken()
    with cancel.on_signals():
        label, probability, case, classes, seconds = (
            _predict_teacher(args, progress, cancel) if args.teacher else _predict_student(args, progress, cancel)
        )
        progress.update(2)
        rows = _write_outputs(args, out, label, probability, case, classes)
        progress.update(3)
        progress.close()
    volume_ml = int((label.array > 0).sum()) * case.ct.voxel_volume_ml
    progress.emit(stage="done", output=str(out), seconds=round(seconds, 2),
                  foreground_ml=round(volume_ml, 2), lesions=len(rows) if rows is not None else None)
    if not args.json_progress:
        print(f"wrote {out}: {volume_ml:.1f} mL foreground in {seconds:.1f} s"
              + (f", {len(rows)} lesion(s) in {args.stats}" if rows is not None else ""))
    return 0


def _predict_student(args, progress, cancel):
    """Student inference: ``(label, probability, case, classes, seconds)``."""
    from ..io.case import load_case
    from ..student.inference import predict_case, require_roi_for_crop_model
    from ..student.model_file import load_model

    model = load_model(args.model)
    if not (args.roi or args.roi_from):
        require_roi_for_crop_model(model, None)  # before the (slow) loading of the study
    case = load_case(args.ct, args.pet)
    roi = resolve_roi(args, case)
    require_roi_for_crop_model(model, roi)
    progress.start("predict", 3)  # only now: an input error stays the one line on stderr
    progress.update(1)
    prediction = predict_case(model, case, roi, args.device, cancel)
    return prediction.label, prediction.probability, case, model.config.classes, prediction.seconds


def _predict_teacher(args, progress, cancel):
    """Teacher inference prompted by a student's prediction or a label map."""
    import time

    from ..io.case import load_case, load_label
    from ..io.labels import SegmentClass
    from ..teachers.run import segment_with_teacher

    case = load_case(args.ct, args.pet)
    started = time.perf_counter()
    if args.prompt_from.lower().endswith(".pt"):
        from ..student.inference import predict_case, require_roi_for_crop_model
        from ..student.model_file import load_model

        student = load_model(args.prompt_from)
        roi = resolve_roi(args, case)
        require_roi_for_crop_model(student, roi)
        prompt = predict_case(student, case, roi, args.device, cancel).probability
    else:
        prompt = load_label(args.prompt_from, case.ct, case.pet)
    progress.start("predict", 3)
    progress.update(1)
    cancel.check()
    label, probability = segment_with_teacher(case, args.teacher, args.checkpoint, prompt, args.modality)
    return label, probability, case, (SegmentClass("tumour"),), time.perf_counter() - started


def _write_outputs(args, out, label, probability, case, classes):
    """Write the label map, the optional probability map and lesion table; return the rows."""
    from ..metrics.lesions import lesion_statistics, write_lesion_table
    from ..io.segmentation_export import write_label_map
    from ..io.volume import write_image

    write_label_map(label, out, classes, case.ct)
    if args.prob:
        write_image(probability, args.prob)
    if not args.stats:
        return None
    rows = lesion_statistics(label, case.pet, {i + 1: c.name for i, c in enumerate(classes)})
    write_lesion_table(rows, args.stats)
    return rows
