"""``distillseg embed``: encode a study's slices for a 2D teacher ahead of any prompt."""

from __future__ import annotations

import argparse

HELP = "embed a study's CT/PET slices for a 2D teacher ahead of prompts (later prompts cost only the decoder)"
DESCRIPTION = """\
Run a 2D teacher's image encoder (LiteMedSAM, SAM) on every axial slice of the CT (on its
grid) and of the PET (on its native grid) and keep the embeddings: in memory in the warm
engine (`distillseg serve`, where this runs in the background while a study is open) and
on disk under $DISTILLSEG_CACHE/embeddings, so that a later box or click (predict --teacher
--prompt-box ...) or distillation round on this study runs only the prompt decoder.
Slices already embedded are skipped, so a cancelled run resumes where it stopped.

example:
  distillseg embed --teacher litemedsam --ct STS_010/CT_image.nii.gz --pet STS_010/PET_image.nii.gz
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", default="litemedsam", metavar="NAME", help="2D teacher (default: litemedsam)")
    parser.add_argument("--checkpoint", metavar="FILE", help="teacher weights (default: embedded or $DISTILLSEG_WEIGHTS)")
    parser.add_argument("--ct", required=True, metavar="PATH", help="CT image file or DICOM folder")
    parser.add_argument("--pet", required=True, metavar="PATH", help="PET image file or DICOM folder")
    parser.add_argument("--modality", default="CT,PET", metavar="LIST", help="CT, PET or CT,PET (default: CT,PET)")
    parser.add_argument("--batch-size", type=int, default=2, metavar="N",
                        help="slices per encoder batch; a cancel waits for the batch (default: 2)")
    parser.add_argument("--json-progress", action="store_true", help="JSON progress lines on stdout")
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="CPU threads for torch (default: 0 = all cores; 1 is faster on a busy machine)")


def run(args: argparse.Namespace) -> int:
    import time

    from ..errors import DistillSegError
    from ..io.case import load_case
    from ..progress import CancelToken, Progress
    from ..teachers.base import normalise_modality
    from ..teachers.registry import load_teacher, teacher_info
    from ..teachers.run import modality_image

    info = teacher_info(args.teacher)
    if info.dims != 2:
        raise DistillSegError(f"teacher {info.name} is 3D: it encodes a region around each prompt, so there is "
                              "nothing to embed ahead (only 2D teachers, e.g. litemedsam, embed slices)")
    modalities = [normalise_modality(m.strip()) for m in args.modality.split(",") if m.strip()]
    if args.batch_size < 1:
        raise DistillSegError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    case = load_case(args.ct, args.pet)
    teacher = load_teacher(info.name, args.checkpoint)
    progress = Progress(json_lines=args.json_progress)
    cancel = CancelToken()
    started = time.perf_counter()
    images = [(m, modality_image(case, m)) for m in modalities]
    total = sum(axial_slices(image) for _, image in images)
    done = 0
    store = teacher.store()
    misses = store.misses if store is not None else 0
    with cancel.on_signals():
        progress.start("embed", total)
        for modality, image in images:
            def on_batch(count: int, _total: int, offset: int = done) -> None:
                progress.update(offset + count)
                cancel.check()

            cancel.check()
            done += teacher.embed_volume(image, modality, on_batch, batch_size=args.batch_size)
        progress.close()
    encoded = (store.misses - misses) if store is not None else done
    seconds = time.perf_counter() - started
    progress.emit(stage="done", slices=done, encoded=encoded, seconds=round(seconds, 2))
    if not args.json_progress:
        print(f"embedded {done} slices ({encoded} encoded, {done - encoded} already stored) in {seconds:.1f} s")
    return 0


def axial_slices(image) -> int:
    """Number of axial slices of a volume: its extent along the grid axis nearest to S."""
    import nibabel.orientations as nio

    axes = nio.io_orientation(image.affine)[:, 0]
    return int(image.shape[int(list(axes).index(2))])
