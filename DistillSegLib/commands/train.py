"""``distillseg train``: train a student (supervised or distilled) on a set of cases."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .options import add_allow_implausible, non_negative_int, positive_float, positive_int

HELP = "train a student network on PET/CT cases (supervised baseline or a distillation strategy)"
DESCRIPTION = """\
Train a small 3D student (MONAI U-Net, CT+PET channels) on the cases in DATA.

DATA is an nnU-Net raw dataset (imagesTr/, labelsTr/) or a folder of case folders
(CT_image.nii.gz, PET_image.nii.gz, CT_mask.nii.gz). Case lists are comma-separated ids;
--unlabelled rest takes every case not otherwise used. A checkpoint (a loadable model
plus the optimiser state) is written atomically every --checkpoint-every steps to
MODEL's name with .checkpoint.pt; --resume continues from it. SIGINT/SIGTERM stop
cleanly: the last checkpoint stays usable and an existing MODEL is left untouched.
Under torchrun the run is data-parallel (DDP; gloo on CPU, nccl on CUDA).

Strategies: supervised (the default here: labels only); selftrain (the control: the
distillation schedule with the student's own pseudo-labels, no teacher); knowsam, dualview, tskd
(foundation-model teachers; knowsam is the demo's and the Slicer module's default, chosen by
cross-validation on labelled cases, see docs/methods.md). Their
defaults depart from the papers (teachers asked in rounds, tuned LiteMedSAM teachers, other
loss weights). dualview is MuDuo's dual-view distillation (CT and PET teachers, random
fusion) with defaults close to a dual-view TS-KD, hence its own name; MuDuo as published is
"--strategy dualview --preset paper" (the former name "muduo" is refused with this advice):
docs/methods.md lists every departure and how it was chosen; --preset paper restores what
an option can. Without --init a strategy first warms up supervised (--warmup-steps 200).

example:
  distillseg train --data ../shared/data/sts-petct --labelled STS_001,STS_002,STS_003,STS_004,STS_005 \\
                   --val STS_006,STS_008 --steps 400 --seed 0 --out student.pt
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DATA", help="nnU-Net raw dataset or folder of case folders")
    parser.add_argument("--labelled", metavar="CASES", help="labelled training case ids (default: all labelled cases not in --val)")
    parser.add_argument("--unlabelled", metavar="CASES", help="unlabelled case ids, or 'rest' (labels, if any, are ignored)")
    parser.add_argument("--val", metavar="CASES", help="validation case ids (Dice reported every --val-every steps)")
    parser.add_argument("--strategy", default="supervised", help="training strategy (default: supervised)")
    parser.add_argument("--out", required=True, metavar="MODEL", help="model file to write (.pt)")
    parser.add_argument("--steps", type=positive_int, default=400,
                        help="optimiser steps (default: 400; 800 scored no better on sts-petct, see benchmarks/results)")
    parser.add_argument("--batch-size", type=positive_int, default=2, help="patches per step (default: 2)")
    parser.add_argument("--lr", type=positive_float, default=2e-3, help="initial learning rate, poly decay (default: 2e-3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--val-every", type=positive_int, default=200, metavar="N", help="validate every N steps (default: 200)")
    parser.add_argument("--checkpoint-every", type=positive_int, default=100, metavar="N",
                        help="checkpoint every N steps (default: 100)")
    parser.add_argument("--refresh-every", type=positive_int, default=100, metavar="N",
                        help="round length: distillation strategies refresh teacher pseudo-labels every N steps (default: 100)")
    parser.add_argument("--ema-decay", type=float, default=0.0, metavar="D",
                        help="keep an EMA of the student (decay D) that prompts the teachers at each round (default: 0, off)")
    parser.add_argument("--audit-pseudo-labels", action="store_true",
                        help="unlabelled cases that have labels keep them aside to measure each round's pseudo-labels "
                             "(logged and stored in the model file; training never reads them)")
    parser.add_argument("--checkpoint", metavar="FILE", help="checkpoint file (default: MODEL with .checkpoint.pt)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint (with the arguments it was started with)")
    parser.add_argument("--init", metavar="MODEL",
                        help="start from an existing student's weights (same configuration); with --promptable, a "
                             "prompt-free student becomes promptable, answering as before until trained")
    parser.add_argument("--warmup-steps", type=non_negative_int, metavar="N",
                        help="supervised steps on the labelled cases before a strategy's first round, with their own "
                             "optimiser and schedule; --steps then counts the strategy's steps (default: 200 for "
                             "every strategy but supervised when no --init is given, else 0: a round prompted by "
                             "an untrained student is wasted)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--json-progress", action="store_true", help="JSON progress lines on stdout")
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="CPU threads for torch (default: 0 = all cores; 1 is faster on a busy machine)")
    add_allow_implausible(parser)
    group = parser.add_argument_group("student configuration (ignored with --init: the model's own is used)")
    group.add_argument("--spacing", metavar="X,Y,Z", help="student voxel size in mm (default: 2.5,2.5,3.27)")
    group.add_argument("--patch-size", metavar="X,Y,Z", help="patch size in voxels (default: 64,64,32)")
    group.add_argument("--channels", metavar="C1,C2,...", help="U-Net channels per level (default: 16,32,64,128)")
    group.add_argument("--res-units", type=int, help="residual units per level (default: 2)")
    group.add_argument("--field-of-view", choices=["crop", "whole-body"], help="what the training images cover (default: crop)")
    group.add_argument("--class-name", help="name of the foreground class (default: tumour)")
    from ..distill.options import add_distillation_arguments
    from ..distill.prompt_options import add_prompt_training_arguments

    add_distillation_arguments(parser)
    add_prompt_training_arguments(parser)


def distil_arguments(dataset: str | Path, strategy: str, out: str | Path, init: str | Path | None = None,
                     steps: int | None = None, extra: Sequence[str] = ()) -> list[str]:
    """The ``distillseg train`` arguments of the Slicer module's *Distil* on a training set.

    The module's Logic (``SceneLogic.trainCommand``) and the refinement loop
    (``DistillSegLib/demo/loop.py``) both build their command here. A distillation strategy
    also learns from the training set's unlabelled studies (``--unlabelled rest``, unless
    ``extra`` names them).
    """
    arguments = ["--data", str(dataset), "--strategy", strategy, "--out", str(out), "--json-progress"]
    if init:
        arguments += ["--init", str(init)]
    if strategy != "supervised" and "--unlabelled" not in extra:
        from ..io.dataset import find_cases

        if any(not case.labelled for case in find_cases(dataset)):
            arguments += ["--unlabelled", "rest"]
    if steps is not None:
        arguments += ["--steps", str(int(steps))]
    return arguments + list(extra)


def _ids(text: str | None, option: str = "") -> list[str]:
    """Comma-separated case ids; ``None`` (option not given) is ``[]``, an empty value an error."""
    from ..errors import DistillSegError

    if text is None:
        return []
    ids = [t.strip() for t in text.split(",") if t.strip()]
    if not ids:
        raise DistillSegError(f"{option} is empty: give case ids, or leave the option out")
    return ids


def _numbers(text: str, kind=float) -> tuple:
    from ..errors import DistillSegError

    try:
        return tuple(kind(v) for v in text.split(","))
    except ValueError as exc:
        raise DistillSegError(f"expected comma-separated numbers, got {text!r}") from exc


def made_promptable(args: argparse.Namespace, config, weights, init_from: dict):
    """``(config, weights)`` to start from: a prompt-free ``--init`` given ``--promptable`` (or
    ``--prompt-channels``) becomes the promptable student that answers exactly as it
    (:func:`~DistillSegLib.student.network.promptable_weights_from`); otherwise unchanged."""
    import dataclasses

    from ..distill.prompt_options import prompt_config_values
    from ..student.network import promptable_weights_from

    wanted = prompt_config_values(args)
    if config.takes_prompts or not wanted.get("prompt_channels"):
        return config, weights
    config = dataclasses.replace(config, **wanted)
    init_from["prompt_channels_added"] = list(config.prompt_channels)
    return config, promptable_weights_from(weights, config)


def student_config_from_args(args: argparse.Namespace):
    from ..io.labels import SegmentClass
    from ..student.config import StudentConfig

    values = {}
    if args.spacing:
        values["spacing"] = _numbers(args.spacing)
    if args.patch_size:
        values["patch_size"] = _numbers(args.patch_size, int)
    if args.channels:
        values["channels"] = _numbers(args.channels, int)
        values["strides"] = (2,) * (len(values["channels"]) - 1)
    if args.res_units is not None:
        values["num_res_units"] = args.res_units
    if args.field_of_view:
        values["field_of_view"] = args.field_of_view
    if args.class_name:
        values["classes"] = (SegmentClass(args.class_name),)
    from ..distill.prompt_options import prompt_config_values

    values.update(prompt_config_values(args))
    return StudentConfig(**values)


def select_cases(args: argparse.Namespace):
    """(labelled, unlabelled, validation) CaseSource lists from the id options."""
    from ..io.dataset import find_cases
    from ..errors import DistillSegError

    cases = {c.case_id: c for c in find_cases(args.data)}
    val_ids = _ids(args.val, "--val")
    labelled_ids = _ids(args.labelled, "--labelled") or [
        i for i, c in cases.items() if c.labelled and i not in val_ids]
    if args.unlabelled is not None and args.unlabelled.strip() == "rest":
        unlabelled_ids = [i for i in cases if i not in labelled_ids and i not in val_ids]
    else:
        unlabelled_ids = _ids(args.unlabelled, "--unlabelled")
    for what, ids in (("--labelled", labelled_ids), ("--unlabelled", unlabelled_ids), ("--val", val_ids)):
        missing = [i for i in ids if i not in cases]
        if missing:
            raise DistillSegError(f"{what}: no case {', '.join(missing)} in {args.data}")
    for what, ids in (("--labelled", labelled_ids), ("--val", val_ids)):
        unlabelled = [cases[i] for i in ids if not cases[i].labelled]
        if unlabelled:
            raise DistillSegError(f"{what}: case(s) {', '.join(c.case_id for c in unlabelled)} in {args.data} have "
                                  f"no label{label_hint(unlabelled[0])}")
    overlap = set(val_ids) & (set(labelled_ids) | set(unlabelled_ids))
    if overlap:
        raise DistillSegError(f"validation case(s) {', '.join(sorted(overlap))} are also training cases")
    if not labelled_ids:
        raise DistillSegError(f"no labelled cases to train on in {args.data}")
    return [cases[i] for i in labelled_ids], [cases[i] for i in unlabelled_ids], [cases[i] for i in val_ids]


def label_hint(source) -> str:
    """What the label file of a case folder must be called, and the masks that are there instead."""
    from ..io.case import CASE_FOLDER_FILES
    from ..io.volume import is_image_file

    folder = source.ct.parent
    if folder.name == "imagesTr":  # nnU-Net dataset
        return f" (expected {folder.parent / 'labelsTr' / (source.case_id + '.nii.gz')})"
    taken = {CASE_FOLDER_FILES["ct"], CASE_FOLDER_FILES["pet"]}
    others = sorted(p.name for p in folder.iterdir() if is_image_file(p) and p.name.split(".")[0] not in taken)
    hint = f" ({folder / (CASE_FOLDER_FILES['label'] + '.nii.gz')} is the training label"
    if others:
        hint += (f"; the folder holds {', '.join(others)}: `distillseg convert --label NAME` writes it from an "
                 "RTSTRUCT/SEG ROI, or copy the right mask to that name")
    return hint + ")"


# Arguments a resumed run must share with its checkpoint: (option, metadata lookup).
RESUME_ARGUMENTS = (
    ("--labelled", lambda m: m.get("training_cases", {}).get("labelled")),
    ("--unlabelled", lambda m: m.get("training_cases", {}).get("unlabelled")),
    ("--val", lambda m: m.get("training_cases", {}).get("validation")),
    ("--strategy", lambda m: str(m["strategy"]).removesuffix("+skd") if m.get("strategy") else None),
    ("--skd", lambda m: str(m["strategy"]).endswith("+skd") if m.get("strategy") else None),
    ("--steps", lambda m: m.get("training", {}).get("steps")),
    ("--seed", lambda m: m.get("training", {}).get("seed")),
    ("--batch-size", lambda m: m.get("training", {}).get("batch_size")),
    ("--lr", lambda m: m.get("training", {}).get("learning_rate")),
    ("--refresh-every", lambda m: m.get("training", {}).get("refresh_every")),
)


def check_resume(checkpoint: Path, args: argparse.Namespace, config, labelled, unlabelled, validation) -> None:
    """Refuse a ``--resume`` whose arguments differ from those the checkpoint was started with.

    Its model would otherwise record the new case lists although most steps used the old
    ones. Checked before any case is loaded.

    Raises:
        DistillSegError: naming every differing argument with the checkpoint's and the new value.
    """
    from ..errors import DistillSegError
    from ..student.model_file import model_config, read_payload

    payload = read_payload(checkpoint)
    if not payload.get("training_state"):
        raise DistillSegError(f"--resume: {checkpoint} is a model, not a training checkpoint "
                              "(use --init to start from its weights)")
    metadata = payload["metadata"]
    now = {"--labelled": [c.case_id for c in labelled], "--unlabelled": [c.case_id for c in unlabelled],
           "--val": [c.case_id for c in validation], "--strategy": args.strategy,
           "--skd": bool(args.skd) and args.strategy != "knowsam",  # knowsam has it built in
           "--steps": args.steps, "--seed": args.seed, "--batch-size": args.batch_size, "--lr": args.lr,
           "--refresh-every": args.refresh_every}
    then = {option: lookup(metadata) for option, lookup in RESUME_ARGUMENTS}

    def show(value) -> str:
        return ",".join(value) if isinstance(value, list) else str(value)

    differing = [f"{option} {show(then[option])} (now {show(now[option])})" for option in now
                 if then[option] is not None and _differs(then[option], now[option])]
    if model_config(payload, checkpoint) != config:
        differing.append("the student configuration (--spacing, --patch-size, --channels, --res-units, "
                         "--field-of-view, --class-name or --init)")
    if differing:
        raise DistillSegError(
            f"--resume: the checkpoint {checkpoint} was started with other arguments: {'; '.join(differing)}. "
            "Resume with the same arguments, or start a new run without --resume")


def _differs(then, now) -> bool:
    if isinstance(then, float) or isinstance(now, float):
        return abs(float(then) - float(now)) > 1e-12 * max(abs(float(then)), 1.0)
    return then != now


def default_checkpoint(out: Path) -> Path:
    name = out.name[:-3] if out.name.endswith(".pt") else out.name
    return out.with_name(f"{name}.checkpoint.pt")


def run(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    from ..atomic import check_output_path, exclusive_lock
    from ..errors import DistillSegError

    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise DistillSegError(f"--out {out} is a folder; give a model file name such as student.pt")
    checkpoint = Path(args.checkpoint) if args.checkpoint else default_checkpoint(out)
    check_output_path(out, "--out", inputs=(args.data,))  # --out = --init updates a model in place (atomically)
    check_output_path(checkpoint, "--checkpoint", inputs=(args.init, args.data, out))
    if args.resume and not checkpoint.exists():
        raise DistillSegError(f"--resume: no checkpoint at {checkpoint} to resume from")
    from ..distill.presets import apply_preset

    for caveat in apply_preset(args, args.strategy):  # before any case is loaded
        print(f"note: --preset {args.preset}: {caveat}", file=sys.stderr)
    labelled_src, unlabelled_src, val_src = select_cases(args)
    if args.strategy != "supervised" and not unlabelled_src:  # before a warm-up that would be wasted
        raise DistillSegError(f"strategy {args.strategy!r} learns from unlabelled cases: give --unlabelled CASES "
                              "(or --unlabelled rest)")

    import torch

    from ..student.inference import resolve_device

    device = str(resolve_device(args.device))  # before any loading
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from ..distill.trainer import init_distributed

    distributed = init_distributed()
    rank = torch.distributed.get_rank() if distributed else 0
    with ExitStack() as locks:
        if rank == 0:  # one run at a time writes this model and its checkpoint
            locks.enter_context(exclusive_lock(out, "model"))
            locks.enter_context(exclusive_lock(checkpoint, "checkpoint"))
        return _train(args, out, checkpoint, labelled_src, unlabelled_src, val_src, device, distributed, rank)


def _train(args, out, checkpoint, labelled_src, unlabelled_src, val_src, device, distributed, rank) -> int:
    import torch

    from ..errors import CancelledError
    from ..progress import CancelToken, Progress
    from ..student.model_file import model_config, read_payload, save_model
    from ..student.preprocess import prepare_case
    from ..distill import get_strategy_class
    from ..distill.trainer import Trainer, TrainingOptions
    from ..distill.warmup import warm_up, warmup_steps_for

    strategy_class = get_strategy_class(args.strategy)
    progress = Progress(json_lines=args.json_progress, enabled=rank == 0)
    config = student_config_from_args(args)
    init_weights, metadata = None, {}
    if args.init:
        payload = read_payload(args.init)
        config = model_config(payload, args.init)
        init_weights = payload["weights"]
        # The file name only: a model is shared, and a folder can name a patient or a user.
        metadata["init_from"] = {"path": Path(args.init).name, "weights_sha256": payload["metadata"]["weights_sha256"]}
        config, init_weights = made_promptable(args, config, init_weights, metadata["init_from"])
    if args.resume:
        check_resume(checkpoint, args, config, labelled_src, unlabelled_src, val_src)
    from ..distill.prompt_options import prompt_simulation_from_args

    prompt_simulation = prompt_simulation_from_args(args, config)  # before the (slow) loading of the cases
    options = TrainingOptions(
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
        val_every=args.val_every, checkpoint_every=args.checkpoint_every, refresh_every=args.refresh_every,
        ema_decay=args.ema_decay, device=device,
    )
    cancel = CancelToken()
    with cancel.on_signals():
        sources = [(s, True) for s in labelled_src] + [(s, False) for s in unlabelled_src] + [(s, True) for s in val_src]
        progress.start("prepare", len(sources))
        prepared = []
        for n, (source, with_label) in enumerate(sources, 1):
            cancel.check()
            prepared.append(prepare_case(source.load(check=not args.allow_implausible), config, with_label=with_label,
                                         audit=args.audit_pseudo_labels and not with_label))
            progress.update(n)
        labelled = prepared[: len(labelled_src)]
        unlabelled = prepared[len(labelled_src): len(labelled_src) + len(unlabelled_src)]
        validation = prepared[len(labelled_src) + len(unlabelled_src):]
        warmup = warmup_steps_for(args.strategy, args.warmup_steps, bool(args.init))
        if warmup and not args.resume:  # a resumed run's checkpoint already holds the warmed-up weights
            init_weights, metadata["warmup"] = warm_up(
                config, labelled, warmup, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
                device=device, progress=progress, cancel=cancel, init_weights=init_weights)
        strategy = strategy_class.from_args(args)
        if args.skd:
            from ..distill.skd import with_skd

            strategy = with_skd(strategy, args)
        trainer = Trainer(config, options, strategy, labelled, unlabelled, validation, progress, cancel,
                          checkpoint, init_weights, metadata, prompt_simulation)
        if args.resume:
            trainer.resume()
            progress.message(f"resumed from {checkpoint} at step {trainer.step}")
        try:
            result = trainer.train()
        except CancelledError as exc:
            progress.close()
            where = f"the last checkpoint {checkpoint} is complete (resume with --resume)" if checkpoint.exists() \
                else "no checkpoint was written yet"
            progress.emit(stage="cancelled", step=trainer.step, message=str(exc), checkpoint=str(checkpoint))
            raise CancelledError(f"{exc} at step {trainer.step}; {where}; {out} was not changed") from exc
    if rank == 0:
        metadata = {**result.metadata, "training_seconds": round(result.seconds, 1)}
        save_model(out, trainer.network, config, metadata)
        progress.emit(stage="done", model=str(out), step=result.steps_done, loss=result.losses[-1],
                      metrics=result.validation, seconds=round(result.seconds, 1))
        if not args.json_progress:
            val = result.validation.get("val_dice")
            print(f"wrote {out} ({result.steps_done} steps, {result.seconds:.0f} s"
                  + (f", validation Dice {val:.3f}" if val is not None else "") + ")")
    if distributed:
        torch.distributed.destroy_process_group()
    return 0
