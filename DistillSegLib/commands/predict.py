"""``distillseg predict``: segment a PET/CT study with a student model."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_allow_implausible, add_min_lesion_ml, non_negative_float
from .prompt_options import PROMPT_HELP, add_prompt_arguments

HELP = "segment a PET/CT study with a student or a teacher (label map on the CT grid, lesion statistics)"
DESCRIPTION = """\
Segment a PET/CT study with a student model: sliding-window inference at the model's
spacing, result resampled onto the CT grid (same shape and affine as the CT).

MODEL is a student file or the name of a student bundled with DistillSeg
(Resources/ModelCatalogue.json; e.g. sts-petct-crop, trained on the sts-petct crops).

A model trained on crops around the tumour (field of view 'crop', e.g. on sts-petct) runs
only inside a region of interest: --roi x0,y0,z0,x1,y1,z1 (RAS mm), --roi-from MASK (its
bounding box plus --roi-margin mm), or --roi all when the input is itself such a crop.
Outside the ROI the label is background.

--out: .nii.gz, .nii, .nrrd (label map), .seg.nrrd (3D Slicer segmentation with names
and terminology) or .dcm (DICOM SEG referencing the CT series; the CT must be DICOM).
--stats: one row per connected lesion (MTV mL, SUVmax, SUVmean, SUVpeak, TLG, centroid), the
table of `distillseg stats`: SUV figures from the PET's own voxels, lesions under
--min-lesion-ml left out. All outputs are checked before the work and written together:
a failure leaves none of them.

Teachers (--teacher NAME, see `distillseg teachers`) are prompted automatically from
--prompt-from, either a student model (its prediction inside the ROI) or a label map (with
--roi/--roi-from the teacher is prompted and answers only inside that region), or by the
radiologist's box and clicks (below). ROI coordinates may be negative: write --roi=-10,... .

Beside the label map, LABEL.provenance.json records where it came from (the student, or the
teacher with its prompt), written together with the other outputs.

examples:
  distillseg predict --model sts-petct-crop --ct STS_010/CT_image.nii.gz --pet STS_010/PET_image.nii.gz \\
                     --roi all --out STS_010.nii.gz
  distillseg predict --model student.pt --ct STS_010/CT_image.nii.gz --pet STS_010/PET_image.nii.gz \\
                     --roi all --out STS_010.nii.gz --stats STS_010.csv
  distillseg predict --teacher litemedsam --prompt-from student.pt --roi all \
                     --ct STS_010/CT_image.nii.gz --pet STS_010/PET_image.nii.gz --out STS_010_teacher.nii.gz
  distillseg predict --teacher litemedsam --prompt-box=-60,-20,-950,10,40,-880 \
                     --ct STS_010/CT_image.nii.gz --pet STS_010/PET_image.nii.gz --out box.nii.gz
  distillseg predict --teacher litemedsam --prompt-mask box.nii.gz --prompt-points="-30,10,-910,-" \
                     --ct STS_010/CT_image.nii.gz --pet STS_010/PET_image.nii.gz --out corrected.nii.gz

""" + PROMPT_HELP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="MODEL",
                        help="student model file (.pt) or the name of a bundled student (e.g. sts-petct-crop)")
    source.add_argument("--teacher", metavar="NAME", help="run a teacher instead (litemedsam, sam, sam-med3d, seganypet)")
    parser.add_argument("--checkpoint", metavar="FILE", help="teacher weights (default: embedded or $DISTILLSEG_WEIGHTS)")
    parser.add_argument("--prompt-from", metavar="MODEL|LABEL",
                        help="with --teacher: a student model (.pt) or a label map whose mask prompts the teacher")
    parser.add_argument("--modality", choices=("CT", "PET"), help="with --teacher: the image it sees (default: its own)")
    parser.add_argument("--ct", required=True, metavar="PATH", help="CT image file or DICOM folder")
    parser.add_argument("--pet", required=True, metavar="PATH", help="PET image file or DICOM folder")
    parser.add_argument("--out", required=True, metavar="FILE", help="label map to write (.nii.gz/.nii/.nrrd/.seg.nrrd/.dcm)")
    parser.add_argument("--prob", metavar="FILE", help="also write the foreground probability map (float, CT grid; "
                                                       ".nii.gz/.nii/.nrrd/.mha)")
    roi = parser.add_mutually_exclusive_group()
    roi.add_argument("--roi", metavar="BOX", help="x0,y0,z0,x1,y1,z1 in RAS mm, or 'all' (the input is the region)")
    roi.add_argument("--roi-from", metavar="MASK", help="label map whose bounding box (+ margin) is the region")
    parser.add_argument("--roi-margin", type=non_negative_float, default=10.0, metavar="MM",
                        help="margin around --roi-from (default: 10)")
    parser.add_argument("--stats", metavar="FILE", help="lesion statistics table (.csv or .json)")
    add_min_lesion_ml(parser)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--json-progress", action="store_true", help="JSON progress lines on stdout")
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="CPU threads for torch (default: 0 = all cores; 1 is faster on a busy machine)")
    add_allow_implausible(parser)
    add_prompt_arguments(parser)


PROBABILITY_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def resolve_roi(args: argparse.Namespace, case):
    """The ROI from --roi / --roi-from (None when neither is given)."""
    from ..io.case import load_label, warn_if_region_outside_pet
    from ..student.inference import parse_roi, roi_from_mask, roi_to_index_box

    roi = None
    if args.roi:
        roi = parse_roi(args.roi)
    elif args.roi_from:
        roi = roi_from_mask(load_label(args.roi_from, case.ct, case.pet), args.roi_margin)
    if isinstance(roi, tuple):
        warn_if_region_outside_pet(case.ct, case.pet, roi_to_index_box(roi, case.ct), "the region of interest")
    return roi


def check_arguments(args: argparse.Namespace) -> list:
    """Everything that needs no model and no image, before any loading: the output paths
    (suffix, writable, not an input, distinct), a DICOM CT for a .dcm output, the ROI's
    syntax, the device. Returns the output paths ``[out, prob?, stats?]``."""
    from ..atomic import check_name_length, check_output_path, same_file
    from ..errors import DistillSegError
    from ..provenance import provenance_path
    from ..io.segmentation_export import LABEL_SUFFIXES
    from ..student.inference import parse_roi, resolve_device
    from .prompt_options import check_prompt_arguments

    check_prompt_arguments(args)
    inputs = (args.ct, args.pet, args.model, args.prompt_from, args.roi_from, args.checkpoint, args.prompt_mask)
    outputs = [check_output_path(args.out, "--out", LABEL_SUFFIXES, inputs)]
    check_name_length(provenance_path(outputs[0]), "--out (its .provenance.json sidecar)")
    if args.prob:
        outputs.append(check_output_path(args.prob, "--prob", PROBABILITY_SUFFIXES, inputs))
    if args.stats:
        outputs.append(check_output_path(args.stats, "--stats", (".csv", ".json"), inputs))
    for n, path in enumerate(outputs):
        for other in outputs[n + 1:]:
            if same_file(path, other):
                raise DistillSegError(f"two outputs are the same file {path}: give --out, --prob and --stats "
                                      "different names")
    if args.out.lower().endswith(".dcm") and not (Path(args.ct).is_dir() or args.ct.lower().endswith(".dcm")):
        raise DistillSegError(
            f"--out {args.out}: a DICOM SEG must reference a DICOM CT series, but --ct {args.ct} is not a DICOM "
            "folder; write .nii.gz or .seg.nrrd instead")
    if args.roi:
        parse_roi(args.roi)
    resolve_device(args.device)
    return outputs


def run(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    from ..atomic import exclusive_lock
    from ..progress import CancelToken, Progress

    outputs = check_arguments(args)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    progress = Progress(json_lines=args.json_progress)
    cancel = CancelToken()
    with ExitStack() as locks, cancel.on_signals():
        # Two runs writing one --out would each replace it atomically, and the label map of
        # one could end up beside the other's provenance or table: the second run is refused.
        for path in outputs:
            locks.enter_context(exclusive_lock(path, "output"))
        label, probability, case, classes, seconds = (
            _predict_teacher(args, progress, cancel) if args.teacher else _predict_student(args, progress, cancel)
        )
        progress.update(2)
        table = _write_outputs(args, outputs, label, probability, case, classes)
        progress.update(3)
        progress.close()
    out = outputs[0]
    volume_ml = int((label.array > 0).sum()) * case.ct.voxel_volume_ml
    lesions = len(table.rows) if table is not None else None
    progress.emit(stage="done", output=str(out), seconds=round(seconds, 2), foreground_ml=round(volume_ml, 2),
                  lesions=lesions)
    if not args.json_progress:
        print(f"wrote {out}: {volume_ml:.1f} mL foreground in {seconds:.1f} s"
              + (f", {lesions} lesion(s) in {args.stats}" if table is not None else ""))
    return 0


def _load_case(args):
    from ..io.case import load_case

    return load_case(args.ct, args.pet, check=not args.allow_implausible)


def _predict_student(args, progress, cancel):
    """Student inference: ``(label, probability, case, classes, seconds)``."""
    from ..provenance import student_record
    from ..student.catalogue import resolve_model
    from ..student.inference import predict_case, require_a_volume, require_roi_for_crop_model, roi_to_index_box
    from ..student.model_file import load_model

    model = load_model(resolve_model(args.model))
    from .prompt_options import has_user_prompt

    if has_user_prompt(args):
        return _predict_student_with_prompt(args, model, progress, cancel)
    if not (args.roi or args.roi_from):
        require_roi_for_crop_model(model, None)  # before the (slow) loading of the study
    case = _load_case(args)
    roi = resolve_roi(args, case)
    require_roi_for_crop_model(model, roi)
    require_a_volume(case.ct, None if roi in (None, "all") else roi_to_index_box(roi, case.ct))
    progress.start("predict", 3)  # only now: an input error stays the one line on stderr
    progress.update(1)
    prediction = predict_case(model, case, roi, args.device, cancel)
    prediction.label.meta["provenance"] = {"source": "student", "student": student_record(model)}
    return prediction.label, prediction.probability, case, model.config.classes, prediction.seconds


def _predict_student_with_prompt(args, model, progress, cancel):
    """A promptable student guided by the radiologist's box/clicks (and previous mask)."""
    from ..io.labels import SegmentClass
    from ..provenance import student_record
    from ..student.prompt_inference import predict_with_prompt, require_promptable
    from .prompt_options import user_prompt_from_args

    require_promptable(model)  # before the (slow) loading of the study
    case = _load_case(args)
    prompt = user_prompt_from_args(args, case)
    prompt.on_grid(case.ct, "CT")  # a box or click outside the CT: one error line, before any progress
    progress.start("predict", 3)
    progress.update(1)
    prediction = predict_with_prompt(model, case, prompt, args.device, cancel)
    prediction.label.meta["provenance"] = {"source": "student", "student": student_record(model),
                                           "prompt": prompt.describe(), "segment": int(prompt.segment)}
    names = prediction.label.meta["label_names"]
    classes = tuple(SegmentClass(names.get(v, f"label {v}")) for v in range(1, max(names) + 1))
    return prediction.label, prediction.probability, case, classes, prediction.seconds


def _predict_teacher(args, progress, cancel):
    """Teacher inference prompted by a student's prediction or a label map, inside the ROI if one is given."""
    import time

    from ..io.case import load_label
    from ..io.labels import SegmentClass
    from ..student.inference import roi_to_index_box
    from ..teachers.run import prompt_on_grid, segment_with_teacher
    from .prompt_options import has_user_prompt

    case = _load_case(args)
    started = time.perf_counter()
    if has_user_prompt(args):
        return _predict_teacher_interactively(args, case, progress, cancel, started)
    roi = resolve_roi(args, case)
    box = None if roi is None or isinstance(roi, str) else roi_to_index_box(roi, case.ct)
    if args.prompt_from.lower().endswith(".pt"):
        from ..student.inference import predict_case, require_roi_for_crop_model
        from ..student.model_file import load_model

        student = load_model(args.prompt_from)
        require_roi_for_crop_model(student, roi)
        prompt = predict_case(student, case, roi, args.device, cancel).probability
    else:
        prompt = load_label(args.prompt_from, case.ct, case.pet)
    if box is not None:  # the teacher is prompted, and answers, only inside the ROI
        prompt = inside_box(case.ct.with_array(prompt_on_grid(prompt, case.ct), path=f"{args.prompt_from} inside the ROI"), box)
    progress.start("predict", 3)
    progress.update(1)
    cancel.check()
    label, probability = segment_with_teacher(case, args.teacher, args.checkpoint, prompt, args.modality)
    if box is not None:
        label, probability = inside_box(label, box), inside_box(probability, box)
    label.meta["provenance"] = {
        "source": "teacher", "prompt": {"kind": "automatic", "prompt_from": args.prompt_from},
        "teacher": {"name": label.meta.get("teacher"), "weights_sha256": label.meta.get("weights_sha256"),
                    "modality": label.meta.get("modality")}}
    return label, probability, case, (SegmentClass("tumour"),), time.perf_counter() - started


def _predict_teacher_interactively(args, case, progress, cancel, started):
    """A teacher prompted by the radiologist's box/clicks (and the previous mask for a correction)."""
    import time

    from ..io.labels import SegmentClass
    from ..teachers.interactive import prepare_interactive, segment_interactively
    from .prompt_options import user_prompt_from_args

    request = prepare_interactive(case, args.teacher, args.checkpoint, user_prompt_from_args(args, case), args.modality)
    progress.start("predict", 3)
    progress.update(1)
    result, provenance = segment_interactively(request, cancel=cancel)
    result.label.meta["provenance"] = {"source": "teacher", **provenance}
    names = result.label.meta["label_names"]
    classes = tuple(SegmentClass(names.get(v, f"label {v}")) for v in range(1, max(names) + 1))
    return result.label, result.probability, case, classes, time.perf_counter() - started


def inside_box(volume, box):
    """``volume`` with every voxel outside the index ``box`` set to 0."""
    import numpy as np

    array = np.zeros_like(volume.array)
    array[box] = volume.array[box]
    return volume.with_array(array)


def _write_outputs(args, outputs, label, probability, case, classes):
    """Write the label map, probability map, lesion table and provenance all or none; return the table."""
    import json

    from ..atomic import atomic_outputs
    from ..provenance import provenance_path, provenance_payload
    from ..io.segmentation_export import write_label_map
    from ..io.volume import write_image
    from ..metrics.lesions import lesion_table, write_lesion_table

    table = None
    if args.stats:  # computed before anything is written
        table = lesion_table(label, case.pet, {i + 1: c.name for i, c in enumerate(classes)},
                             args.min_lesion_ml, "CT")
    provenance = provenance_payload({**label.meta.get("provenance", {}), "inputs": {"ct": args.ct, "pet": args.pet}})
    with atomic_outputs([*outputs, provenance_path(outputs[0])]) as temporary:
        write_label_map(label, temporary[0], classes, case.ct)
        if args.prob:
            write_image(probability, temporary[1])
        if table is not None:
            write_lesion_table(table, temporary[len(outputs) - 1])
        temporary[-1].write_text(json.dumps(provenance, indent=2))
    return table
