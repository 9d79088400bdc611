"""``distillseg demo``: the whole DistillSeg story on the real ``sts-petct`` cases, with a report.

On the fixed split of :mod:`.split` (5 labelled, a fixed validation subset, the rest
unlabelled), with one seed:

1. the classic SUV-threshold baseline (41% of SUVmax, :mod:`DistillSegLib.metrics.baselines`);
2. the supervised student (``supervised`` strategy, labelled cases only);
3. one or more distilled students (default ``knowsam``, the default strategy since the
   labelled-case cross-validation chose it over ``dualview``; teacher: the embedded LiteMedSAM),
   same split, seed and number of steps;
4. the LiteMedSAM teacher on the validation cases, on CT and on PET, prompted with boxes
   from the (first) distilled student's prediction: the teacher's realistic, prompt-free
   score; and, labelled as an upper bound, with boxes from the ground truth;
5. every method's predictions saved as NIfTI under ``OUT/predictions/<method>/`` with the
   validation ground truth under ``OUT/labels/``, scored by the function behind
   ``distillseg evaluate`` (so a separate ``evaluate`` reproduces the report exactly);
6. ``report.md``, ``report.json`` and PNG figures (overlays, Dice per method, training
   curves) with timings and the student/teacher speed ratio.

Layout of ``OUT``::

    report.md  report.json  figures/{overlays,dice,training_curves}.png
    labels/<case>.nii.gz                 validation ground truth (CT grid, 0/1)
    predictions/<method>/<case>.nii.gz   every method, CT grid
    models/<student>.pt                  the trained students (distillseg predict --model)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import __version__
from ..metrics.baselines import SUVMAX_FRACTION, suv_threshold_segmentation
from ..io.case import Case
from ..distill import DEFAULT_STRATEGY
from ..errors import CancelledError, DistillSegError
from ..progress import CancelToken, Progress
from ..io.volume import Volume, write_image
from .ground_truth import write_labels
from .split import QUICK_UNLABELLED_CASES, QUICK_VALIDATION_CASES, DemoSplit, sts_split

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SUV_METHOD = "suv41"
TEACHER = "litemedsam"


@dataclass(frozen=True)
class DemoSettings:
    """What one demo run does (recorded in the report).

    Attributes:
        steps: optimiser steps of every student (the same for all, for a fair comparison).
        strategies: distillation strategies trained beside ``supervised`` (registry names).
        warmup_steps: the distilled students start from the supervised student after this
            many steps (see :func:`train_students`).
        seed: training seed (the split's seed is :data:`.split.SPLIT_SEED`, fixed).
        max_validation, max_unlabelled: use only the first cases of the split's lists
            (``None``: all of them).
        refresh_every: round length in steps (teachers re-prompted by the student).
        val_every: validation Dice recorded every N steps for the training curves only
            (never used to pick a model).
        teacher: evaluate the LiteMedSAM teacher (off in ``--quick`` and smoke tests: it is the
            slow part; the distilled students still learn from it).
        max_teacher_cases: the teacher runs on the first N validation cases only (``None``: all).
        teacher_upper_bound: also run the teacher with ground-truth boxes (upper bound).
        overlay_cases: validation cases shown in the overlay figure.
        strategy_options: extra ``distillseg train`` options of every distilled strategy
            (e.g. ``("--consistency", "1.0")``).
        ema_decay: the distilled students keep an EMA copy that prompts the teachers (0: off).
        validation_cases, unlabelled_cases: use these cases of the split's roles (``None``:
            the split's lists; then ``max_*`` cut them).
        loop: after the comparison, run the annotation-refinement loop (:mod:`.loop`,
            supervised arm, from the supervised student): ``loop_rounds`` rounds of
            ``loop_round_size`` cases of the split's whole unlabelled pool, ``loop_steps`` steps per
            Distil, scored on the validation cases used here (off by default: it adds minutes).
    """

    steps: int = 600
    warmup_steps: int = 200
    strategies: tuple[str, ...] = (DEFAULT_STRATEGY,)
    seed: int = 0
    max_validation: int | None = None
    max_unlabelled: int | None = 4
    refresh_every: int = 400
    val_every: int = 100
    teacher: bool = True
    max_teacher_cases: int | None = 3
    teacher_upper_bound: bool = True
    overlay_cases: int = 3
    batch_size: int = 2
    strategy_options: tuple[str, ...] = ()
    ema_decay: float = 0.0
    validation_cases: tuple[str, ...] | None = None
    unlabelled_cases: tuple[str, ...] | None = None
    loop: bool = False
    loop_rounds: int = 3
    loop_round_size: int = 5
    loop_steps: int = 200

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["strategies"] = list(self.strategies)
        data["strategy_options"] = list(self.strategy_options)
        for key in ("validation_cases", "unlabelled_cases"):
            data[key] = list(data[key]) if data[key] is not None else None
        return data


# The full demo aims at < 30 min and --quick at < 5 min on 2 CPU cores (a laptop's budget). The
# teacher dominates: LiteMedSAM's encoder costs ~75 GFLOP, about 2.8 s of this CPU, per
# axial slice and modality, whatever the slice size (the decoder ~0.2 s), i.e. minutes per
# case, both in the distillation round (unlabelled cases, student grid) and in the
# teacher's evaluation (CT grid). Budget of the full run on a fresh cache: round 3
# unlabelled cases (90 tumour slices x 2 modalities, ~8.5 min), teacher evaluation 2
# cases (59 slices x 2, ~5.5 min; the ground-truth-box upper bound reuses the embeddings),
# students 600 + 400 steps with validation curves (~9 min). The students and the SUV
# baseline are evaluated on the whole validation list.
# dualview's defaults tune both teachers' decoders on the labelled cases first (200 steps):
# that samples ~400 labelled slices whose embeddings an empty cache must compute first
# (~10 min on 2 cores), which the demo's 30 min cannot hold; with --strategies dualview the demo
# distils with the shipped teachers and dualview's other defaults (the benchmark,
# results/distillation_muduo_weighted.json, measures the defaults, tuning included). knowsam,
# the default, tunes its teacher 25 steps a round whatever this option says: it runs as chosen.
DISTILLATION_OPTIONS = ("--tune-teachers", "0")
FULL_SETTINGS = DemoSettings(max_unlabelled=3, max_teacher_cases=2, strategy_options=DISTILLATION_OPTIONS)
# --quick (measured 394 s with the teacher evaluated on STS_019, of which 121 s were that
# evaluation): the teacher only teaches; its evaluation is left to the full run. With knowsam,
# the default, it took 343 s (its co-student's 200 warm-up steps and a tuned teacher; embeddings
# cached; benchmarks/results/demo_quick), against 270 s with dualview: over the 5-minute aim.
# The full run with knowsam took 38.9 min (the cores shared for part of it; knowsam 1,566 s of
# training against dualview's 1,184 s): over its 30-minute aim too.
QUICK_SETTINGS = DemoSettings(steps=120, warmup_steps=60, validation_cases=QUICK_VALIDATION_CASES,
                              unlabelled_cases=QUICK_UNLABELLED_CASES, refresh_every=1000, val_every=30,
                              teacher=False, teacher_upper_bound=False, max_teacher_cases=1, overlay_cases=3,
                              strategy_options=DISTILLATION_OPTIONS, loop_rounds=2, loop_round_size=2, loop_steps=30)


def default_data_dir() -> Path:
    """``$DISTILLSEG_DATA/sts-petct`` when set, else ``../shared/data/sts-petct`` beside the project."""
    root = os.environ.get("DISTILLSEG_DATA")
    base = Path(root) if root else PROJECT_ROOT.parent / "shared" / "data"
    return base / "sts-petct"


def resolve_data_dir(data: str | os.PathLike | None) -> Path:
    path = Path(data) if data else default_data_dir()
    if not path.is_dir():
        raise DistillSegError(
            f"sts-petct data not found at {path}: give --data DIR (the folder of STS_xxx case folders), "
            "set DISTILLSEG_DATA to the shared data folder, or place it at ../shared/data/sts-petct"
        )
    return path


# ----------------------------------------------------------------------------- steps

def run_suv_baseline(cases: Sequence[Case], folder: Path, progress: Progress, cancel: CancelToken) -> dict[str, Any]:
    """41% of SUVmax on every case (ROI = the whole crop); writes the masks; timings and thresholds."""
    progress.start(SUV_METHOD, len(cases))
    seconds, thresholds = [], {}
    for n, case in enumerate(cases, 1):
        cancel.check()
        start = time.perf_counter()
        result = suv_threshold_segmentation(case)
        seconds.append(time.perf_counter() - start)
        write_image(result.mask, folder / f"{case.case_id}.nii.gz")
        thresholds[case.case_id] = {"suv_max": round(result.suv_max, 4), "threshold": round(result.threshold, 4)}
        progress.update(n)
    progress.close()
    return {"inference_seconds_per_case": float(np.mean(seconds)), "thresholds": thresholds}


def strategy_instance(name: str, options: Sequence[str] = ()):
    """A registered strategy as ``distillseg train --strategy NAME OPTIONS`` builds it
    (embedded LiteMedSAM teachers by default)."""
    from ..distill import get_strategy_class
    from ..distill.options import add_distillation_arguments

    cls = get_strategy_class(name)
    if not hasattr(cls, "from_args"):
        return cls()
    parser = argparse.ArgumentParser(add_help=False, prog=f"strategy {name}", exit_on_error=False)
    add_distillation_arguments(parser)
    try:
        args, unknown = parser.parse_known_args(list(options))
    except (argparse.ArgumentError, SystemExit) as exc:
        raise DistillSegError(f"bad distillation options {' '.join(options)!r}: {exc} "
                              "(see distillseg train --help)") from exc
    if unknown:
        raise DistillSegError(f"bad distillation options {' '.join(options)!r}: unknown {' '.join(unknown)} "
                              "(see distillseg train --help)")
    from ..distill.presets import apply_preset

    apply_preset(args, name)
    return cls.from_args(args)


def check_strategies(strategies: Sequence[str], options: Sequence[str] = ()) -> None:
    """Refuse unknown distillation strategies or options before anything is trained."""
    from ..distill import strategy_names

    unknown = [s for s in strategies if s not in strategy_names() or s == "supervised"]
    if unknown:
        raise DistillSegError(
            f"unknown distillation strategy {', '.join(unknown)}: available {', '.join(strategy_names())}")
    for name in strategies:
        strategy_instance(name, options)


def train_student(
    name: str,
    labelled: Sequence,
    unlabelled: Sequence,
    validation: Sequence,
    config,
    settings: DemoSettings,
    model_path: Path,
    progress: Progress,
    cancel: CancelToken,
    steps: int | None = None,
    init_weights: dict | None = None,
    first_step: int = 1,
    snapshot_step: int | None = None,
) -> dict[str, Any]:
    """Train one student with the trainer of ``distillseg train``; save it to ``model_path``.

    Args:
        steps: optimiser steps of this run (default ``settings.steps``).
        init_weights: start from these student weights (the ``--init`` of ``train``).
        first_step: the step number of this run's first step in the curves (a warm-started
            run continues the numbering of its warm-up).
        snapshot_step: also return a copy of the weights after this step.

    Returns:
        ``{"train_seconds", "history": [{"step", "loss", "val_dice"?}], "validation",
        "strategy_settings", "snapshot": weights or None, "snapshot_seconds"}``.
    """
    from ..student.model_file import save_model
    from ..distill.trainer import Trainer, TrainingOptions

    steps = steps or settings.steps
    options = TrainingOptions(steps=steps, batch_size=settings.batch_size, seed=settings.seed,
                              val_every=settings.val_every, checkpoint_every=steps,
                              refresh_every=settings.refresh_every,
                              ema_decay=settings.ema_decay if name != "supervised" else 0.0, device="cpu")
    strategy = strategy_instance(name, settings.strategy_options if name != "supervised" else ())
    progress.message(f"training {name} ({steps} steps)")
    start = time.perf_counter()
    # The trainer always validates at its last step; with val_every > steps there is no curve to draw.
    validation = validation if settings.val_every <= steps else ()
    trainer = Trainer(config, options, strategy, labelled, unlabelled if name != "supervised" else (),
                      validation, progress, cancel, init_weights=init_weights,
                      metadata={"demo": True, **({"warm_start_steps": first_step - 1} if first_step > 1 else {})})
    validation_by_step: dict[int, float] = {}
    snapshot: dict[str, Any] = {}

    def record(trainer_: Trainer, step: int) -> None:
        if trainer_.validation_metrics.get("step") == step:
            validation_by_step[step] = trainer_.validation_metrics["val_dice"]
        if step == snapshot_step:
            snapshot["weights"] = {k: v.detach().clone() for k, v in trainer_.network.state_dict().items()}
            snapshot["seconds"] = time.perf_counter() - start

    trainer.callbacks.append(record)
    result = trainer.train()
    seconds = time.perf_counter() - start  # includes the setup (teachers) and the teacher rounds
    save_model(model_path, trainer.network, config, {**result.metadata, "training_seconds": round(seconds, 1)})
    history = [{"step": i + first_step, "loss": loss,
                **({"val_dice": validation_by_step[i + 1]} if i + 1 in validation_by_step else {})}
               for i, loss in enumerate(result.losses)]
    return {"train_seconds": seconds, "history": history, "validation": result.validation,
            "strategy_settings": result.metadata.get("strategy_settings", {}),
            "snapshot": snapshot.get("weights"), "snapshot_seconds": snapshot.get("seconds")}


def train_students(
    split: DemoSplit,
    prepared: dict[str, Any],
    config,
    settings: DemoSettings,
    models_dir: Path,
    progress: Progress,
    cancel: CancelToken,
    errors: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """The supervised student and each distilled one, under one protocol, so that the control differs only by the teachers.

    With distillation strategies: a supervised warm-up of ``settings.warmup_steps`` steps
    (its own learning-rate schedule) gives the common starting weights; then *every* arm
    -- ``supervised`` included -- restarts from them with a fresh AdamW and schedule and
    trains ``steps - warmup_steps`` more steps with its strategy. Both arms thus share the
    warm start, the restart, the optimiser and the number of steps, and differ only in the
    strategy. (The warm-up spares the teachers a first round of prompts from an untrained
    student.) Without strategies: one supervised run of ``steps`` steps.

    Returns ``{name: train_student(...) result + "model" path}``; every arm's
    ``train_seconds`` includes the warm-up's. With ``errors`` given, a distilled strategy
    that fails is recorded there (``{name: message}``) and skipped instead of stopping the
    run (benchmarks); cancelling always stops.
    """
    from ..allocator import release_free_memory

    labelled = [prepared[i] for i in split.labelled]
    unlabelled = [prepared[i] for i in split.unlabelled]
    validation = [prepared[i] for i in split.validation]
    if not settings.strategies or settings.warmup_steps <= 0:
        supervised = train_student("supervised", labelled, (), validation, config, settings,
                                   models_dir / "supervised.pt", progress, cancel)
        results = {"supervised": {**supervised, "model": models_dir / "supervised.pt"}}
        arms, warmup = list(settings.strategies), None
    else:
        warmup = train_student("supervised", labelled, (), validation, config, settings,
                               models_dir / "warmup.pt", progress, cancel, steps=settings.warmup_steps,
                               snapshot_step=settings.warmup_steps)
        results, arms = {}, ["supervised", *settings.strategies]
    for name in arms:
        try:
            trained = train_student(name, labelled, unlabelled, validation, config, settings,
                                    models_dir / f"{name}.pt", progress, cancel,
                                    steps=settings.steps - (settings.warmup_steps if warmup else 0),
                                    init_weights=warmup["snapshot"] if warmup else None,
                                    first_step=(settings.warmup_steps if warmup else 0) + 1)
        except CancelledError:
            raise
        except Exception as exc:
            if errors is None or name == "supervised":
                raise
            progress.close()
            errors[name] = f"{type(exc).__name__}: {exc}"
            continue
        if warmup:
            trained["train_seconds"] += warmup["train_seconds"]
            trained["warmup_seconds"] = warmup["train_seconds"]
            trained["history"] = warmup["history"] + trained["history"]
        results[name] = {**trained, "model": models_dir / f"{name}.pt"}
        release_free_memory()  # the arm's trainer, teachers and rounds are gone: hand their memory back
    for result in results.values():
        result.pop("snapshot", None)
    return results


def predict_student(model_path: Path, cases: Sequence[Case], folder: Path, progress: Progress,
                    cancel: CancelToken, stage: str,
                    postprocessed: Path | None = None) -> tuple[dict[str, Volume], dict[str, float]]:
    """Run a saved student (as ``distillseg predict --roi all``) on each case; writes label maps.

    With ``postprocessed``, the masks kept to the components the student is confident of
    (:mod:`DistillSegLib.student.postprocess`) are written there too, beside the raw ones.
    Returns the (raw) label maps and the inference seconds, by case.
    """
    from ..student.inference import predict_case
    from ..student.model_file import load_model
    from ..student.postprocess import keep_confident_components

    model = load_model(model_path)
    progress.start(stage, len(cases))
    labels, seconds = {}, {}
    for n, case in enumerate(cases, 1):
        cancel.check()
        prediction = predict_case(model, case, roi="all", device="cpu", cancel=cancel)
        seconds[case.case_id] = prediction.seconds
        labels[case.case_id] = prediction.label
        write_image(prediction.label, folder / f"{case.case_id}.nii.gz")
        if postprocessed is not None:
            kept = keep_confident_components(prediction.label.array > 0, prediction.probability.array)
            write_image(prediction.label.with_array(np.where(kept, prediction.label.array, 0).astype(np.uint8)),
                        postprocessed / f"{case.case_id}.nii.gz")
        progress.update(n)
    progress.close()
    return labels, seconds


def run_teacher(
    teacher,
    cases: Sequence[Case],
    prompts: dict[str, np.ndarray],
    modality: str,
    folder: Path,
    progress: Progress,
    cancel: CancelToken,
    stage: str,
) -> dict[str, float]:
    """The teacher on each case with per-slice boxes from ``prompts[case_id]`` (a 0/1 mask on
    the CT grid); writes ``probability >= 0.5`` as label maps; seconds per case."""
    from ..teachers import teacher_on_case

    progress.start(stage, len(cases))
    seconds = {}
    for n, case in enumerate(cases, 1):
        cancel.check()
        prompt = case.ct.with_array((prompts[case.case_id] > 0).astype(np.uint8))
        start = time.perf_counter()
        probability = teacher_on_case(teacher, case, prompt, modality, ("box",))
        seconds[case.case_id] = time.perf_counter() - start
        label = (probability >= 0.5).astype(np.uint8)
        write_image(case.ct.with_array(label, label_names={1: "tumour"}), folder / f"{case.case_id}.nii.gz")
        progress.update(n)
    progress.close()
    return seconds


def timing_teacher():
    """LiteMedSAM for the evaluation: slice embeddings kept in this process's memory only (the
    process-wide store's bounded memory, not its folder), so
    its first prompt on a case pays the full encoder cost (an honest time per case, even when
    an earlier run left embeddings on disk); later prompts (the upper bound) reuse them."""
    from ..teachers import load_teacher

    return load_teacher("litemedsam", private_embeddings=True)


# ----------------------------------------------------------------------------- the run

def run_demo(
    out: str | os.PathLike,
    data: str | os.PathLike | None = None,
    settings: DemoSettings = FULL_SETTINGS,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
    command: str = "distillseg demo",
) -> dict[str, Any]:
    """Run the demo into ``out`` and return the report (also written as report.json/.md)."""
    data_dir = resolve_data_dir(data)  # before the heavy imports: a wrong path fails at once
    import torch

    from ..commands.evaluate import evaluate_folders
    from ..io.dataset import find_cases
    from ..student.config import StudentConfig
    from ..student.preprocess import prepare_case
    from .figures import plot_dice, plot_overlays, plot_pseudo_label_curve, plot_training_curves
    from .report import write_report

    progress = progress or Progress(enabled=False)
    cancel = cancel or CancelToken()
    started = time.perf_counter()
    out = Path(out)
    check_strategies(settings.strategies, settings.strategy_options)
    sources = {c.case_id: c for c in find_cases(data_dir)}
    split = sts_split(list(sources)).restrict(settings.validation_cases, settings.unlabelled_cases)
    split = split.subset(settings.max_validation, settings.max_unlabelled)
    notes: list[str] = []

    # -- data
    roles = [("labelled", split.labelled), ("validation", split.validation), ("unlabelled", split.unlabelled)]
    total = sum(len(ids) for _, ids in roles)
    progress.start("load", total)
    cases: dict[str, Case] = {}
    for case_id in (i for _, ids in roles for i in ids):
        cancel.check()
        cases[case_id] = sources[case_id].load()
        progress.update(len(cases))
    progress.close()
    validation = [cases[i] for i in split.validation]
    labels_dir, predictions_dir = out / "labels", out / "predictions"
    write_labels(validation, labels_dir)

    # -- SUV-threshold baseline
    methods: dict[str, dict[str, Any]] = {}
    suv = run_suv_baseline(validation, predictions_dir / SUV_METHOD, progress, cancel)
    methods[SUV_METHOD] = {
        "kind": "baseline", "description": f"{SUVMAX_FRACTION:.0%} of SUVmax inside the ROI (EANM 2015)",
        "train_seconds": None, "inference_seconds_per_case": suv["inference_seconds_per_case"],
        "thresholds": suv["thresholds"],
    }

    # -- students: same config, split, seed and steps
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    config = StudentConfig()
    progress.start("prepare", total)
    prepared = {}
    for n, case_id in enumerate((i for _, ids in roles for i in ids), 1):
        cancel.check()
        unlabelled = case_id in split.unlabelled  # their labels only measure the pseudo-labels (audit)
        prepared[case_id] = prepare_case(cases[case_id], config, with_label=not unlabelled, audit=unlabelled)
        progress.update(n)
    progress.close()
    students = ["supervised", *settings.strategies]
    trained = train_students(split, prepared, config, settings, out / "models", progress, cancel)
    histories = {name: trained[name]["history"] for name in students}
    student_labels: dict[str, dict[str, Volume]] = {}
    student_seconds: dict[str, dict[str, float]] = {}
    for name in students:
        student_labels[name], student_seconds[name] = predict_student(
            trained[name]["model"], validation, predictions_dir / name, progress, cancel, f"predict {name}")
        start = f"from the {settings.warmup_steps}-step supervised warm-up, restarted" if settings.strategies else ""
        description = f"student, {len(split.labelled)} labelled cases only" + (f" ({start})" if start else "") \
            if name == "supervised" else (f"student distilled with {name} from LiteMedSAM ({len(split.unlabelled)} "
                                          f"unlabelled cases; {start})")
        methods[name] = {"kind": "student", "description": description,
                         "train_seconds": trained[name]["train_seconds"],
                         "inference_seconds_per_case": float(np.mean(list(student_seconds[name].values()))),
                         "model": f"models/{name}.pt", "strategy_settings": trained[name]["strategy_settings"]}

    # -- the teacher, prompted by the distilled student (realistic) and by the GT (upper bound)

    prompter = settings.strategies[0] if settings.strategies else "supervised"
    teacher = timing_teacher() if settings.teacher else None
    teacher_cases = validation[: settings.max_teacher_cases]
    prompt_sets = [("student", {i: v.array for i, v in student_labels[prompter].items()})] if teacher else []
    if teacher and settings.teacher_upper_bound:
        prompt_sets.append(("gt-box", {c.case_id: c.label_on_ct.array for c in validation}))
    teacher_seconds: dict[str, dict[str, float]] = {}
    for prompt_name, prompts in prompt_sets:
        for modality in ("CT", "PET"):
            name = f"{TEACHER}-{modality.lower()}-{prompt_name}"
            seconds = run_teacher(teacher, teacher_cases, prompts, modality, predictions_dir / name, progress,
                                  cancel, f"teacher {modality} ({prompt_name} boxes)")
            teacher_seconds[name] = seconds
            source = f"boxes from the `{prompter}` student's mask" if prompt_name == "student" else \
                "boxes from the ground truth: UPPER BOUND, not a prompt-free result"
            methods[name] = {"kind": "teacher" if prompt_name == "student" else "teacher (upper bound)",
                             "description": f"LiteMedSAM on {modality}, {source}",
                             "train_seconds": None, "inference_seconds_per_case": float(np.mean(list(seconds.values()))),
                             "upper_bound": prompt_name != "student"}

    # -- evaluation: the very function behind `distillseg evaluate`
    evaluation = {}
    progress.start("evaluate", len(methods))
    for n, name in enumerate(methods, 1):
        cancel.check()
        scored = teacher_cases if name in teacher_seconds else validation  # the cases the method ran on
        evaluation[name] = evaluate_folders(predictions_dir / name, labels_dir, [c.case_id for c in scored])
        mean = evaluation[name]["mean"]
        methods[name].update(dice=mean["dice"], hd95=mean["hd95_mm"], surface_dice=mean["surface_dice_2mm"],
                             hd95_undefined=mean["hd95_undefined"], cases=mean["cases"])
        progress.update(n)
    progress.close()
    per_case_dice = {name: {c["case_id"]: c["dice"] for c in result["cases"]} for name, result in evaluation.items()}

    # -- speed: student vs teacher on both modalities, per case
    speed = {}
    if teacher is not None:
        ids = [c.case_id for c in teacher_cases]
        student_per_case = float(np.mean([student_seconds[prompter][i] for i in ids]))
        teacher_per_case = float(np.mean([
            teacher_seconds[f"{TEACHER}-ct-student"][i] + teacher_seconds[f"{TEACHER}-pet-student"][i] for i in ids]))
        speed = {"student": prompter, "cases": ids, "student_seconds_per_case": student_per_case,
                 "teacher_seconds_per_case": teacher_per_case, "ratio": teacher_per_case / student_per_case,
                 "note": "teacher = LiteMedSAM on CT + on PET, boxes on the slices the student marks; "
                         "student = whole crop, sliding window; both on this CPU, wall-clock"}
        if len(teacher_cases) < len(validation):
            subset = {name: float(np.mean([per_case_dice[name][i] for i in ids])) for name in (SUV_METHOD, *students)}
            speed["same_cases_dice"] = subset
            notes.append(
                f"The teacher (LiteMedSAM, minutes per case on this CPU) ran on the first {len(ids)} validation "
                f"cases only ({', '.join(ids)}); on those cases: "
                + ", ".join(f"`{k}` Dice {v:.3f}" for k, v in subset.items()) + ".")
    else:
        notes.append("The teacher was not evaluated in this run (--quick or --no-teacher): the distilled student "
                     "learnt from it, but its own accuracy and speed are measured by the full demo.")

    # -- figures
    figures_dir = out / "figures"
    shown = validation[: settings.overlay_cases]
    figure_methods = [SUV_METHOD, *students] + ([f"{TEACHER}-ct-student"] if teacher is not None else [])
    predictions_shown = {m: [_read_prediction(predictions_dir / m, c.case_id) for c in shown] for m in figure_methods}
    predictions_shown = {m: v for m, v in predictions_shown.items() if any(p is not None for p in v)}
    plot_overlays([c.ct for c in shown], [c.pet_on_ct for c in shown], [c.label_on_ct for c in shown],
                  predictions_shown, [c.case_id for c in shown], figures_dir / "overlays.png")
    plot_dice({m: list(per_case_dice[m].values()) for m in methods}, figures_dir / "dice.png",
              title=f"Dice on {len(validation)} validation cases (box: quartiles, diamond/number: mean)")
    plot_training_curves(histories, figures_dir / "training_curves.png")
    figures = {"overlays": "figures/overlays.png", "dice": "figures/dice.png",
               "training_curves": "figures/training_curves.png"}
    pseudo_label_rounds = {name: trained[name]["strategy_settings"].get("pseudo_label_rounds", [])
                           for name in settings.strategies}
    if any("mean" in a for rounds in pseudo_label_rounds.values() for a in rounds):
        plot_pseudo_label_curve(pseudo_label_rounds, figures_dir / "pseudo_labels.png")
        figures["pseudo_labels"] = "figures/pseudo_labels.png"

    for name in settings.strategies:
        gain = methods[name]["dice"] - methods["supervised"]["dice"]
        notes.append(f"`{name}` vs `supervised`: {gain * 100:+.1f} Dice points on {len(validation)} validation "
                     f"cases (one seed; see benchmarks/distillation.py for three seeds).")
    loop = run_demo_loop(data_dir, split, settings, trained["supervised"]["model"], out, progress, cancel) \
        if settings.loop else None
    if loop is not None:
        figures["refinement_loop"] = "figures/refinement_loop.png"
    if replace(settings, loop=False) != FULL_SETTINGS:
        notes.append("This run used reduced settings (--quick or overrides): fewer steps and cases than the full "
                     "demo, so its numbers are a smoke test, not the method's accuracy.")

    report = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "version": __version__,
        "device": f"CPU ({os.cpu_count()} cores, {platform.machine()}), torch {torch.__version__}, "
                  f"{torch.get_num_threads()} threads, load average at the end {os.getloadavg()[0]:.1f} "
                  "(other processes share the cores: timings are wall-clock)",
        "data": str(data_dir),
        "settings": settings.to_dict(),
        "split": {**sts_split(list(sources)).to_dict(), "validation_used": list(split.validation),
                  "unlabelled_used": list(split.unlabelled)},
        "methods": methods,
        "per_case_dice": per_case_dice,
        "evaluation": evaluation,
        "speed": speed,
        "training_history": histories,
        "pseudo_label_rounds": pseudo_label_rounds,
        "figures": figures,
        "loop": loop,
        "notes": notes,
        "total_seconds": time.perf_counter() - started,
        "cpu_seconds": _cpu_seconds(),
    }
    write_report(out, report)
    progress.emit(stage="done", report=str(out / "report.md"), seconds=round(report["total_seconds"], 1))
    return report


def run_demo_loop(data_dir: Path, split: DemoSplit, settings: DemoSettings, initial_model: Path, out: Path,
                  progress: Progress, cancel: CancelToken) -> dict[str, Any]:
    """The ``--loop`` section: the refinement loop's supervised arm (:mod:`.loop`) from the demo's
    supervised student, through the engine functions the Slicer module calls, on the split's
    whole unlabelled pool and the validation cases used here; writes ``figures/refinement_loop.png``."""
    from .figures import plot_refinement_loop
    from .loop import SUPERVISED, EngineWorkbench, LoopSettings, format_table, run_loop, summarise

    from ..io.dataset import find_cases

    pool = sts_split([c.case_id for c in find_cases(data_dir)]).restrict(validation=split.validation)
    loop_settings = LoopSettings(round_size=settings.loop_round_size, rounds=settings.loop_rounds,
                                 initial_steps=settings.steps, round_steps=settings.loop_steps, scratch_arms=(),
                                 threads=max(1, os.cpu_count() or 1))
    progress.message(f"refinement loop: {settings.loop_rounds} rounds of {settings.loop_round_size} cases")
    started = time.perf_counter()
    records = run_loop(EngineWorkbench(loop_settings.roi_margin_mm, cancel=cancel), data_dir, pool, [settings.seed], [SUPERVISED],
                       loop_settings, out / "loop", progress, cancel, initial_model=initial_model)
    summary = summarise(records)
    plot_refinement_loop(summary, out / "figures" / "refinement_loop.png",
                         f"refinement loop, supervised arm, seed {settings.seed}")
    return {"settings": loop_settings.to_dict(), "summary": summary, "table": format_table(summary),
            "records": records, "seconds": time.perf_counter() - started}


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads): a timing that other processes
    competing for the cores do not inflate, unlike the wall-clock seconds."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return float(usage.ru_utime + usage.ru_stime)


def _read_prediction(folder: Path, case_id: str) -> Volume | None:
    """A saved prediction, or None where the method did not run on the case (the teacher's subset)."""
    from ..io.volume import read_image

    path = folder / f"{case_id}.nii.gz"
    return read_image(path) if path.exists() else None


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    """``--quick`` picks :data:`QUICK_SETTINGS`; the advanced overrides replace single fields."""
    settings = QUICK_SETTINGS if args.quick else FULL_SETTINGS
    overrides = {
        "steps": args.steps, "warmup_steps": args.warmup_steps, "max_teacher_cases": args.max_teacher_cases,
        "seed": args.seed, "max_validation": args.max_val_cases,
        "max_unlabelled": args.max_unlabelled_cases, "refresh_every": args.refresh_every,
        "val_every": args.val_every, "loop_rounds": args.loop_rounds, "loop_round_size": args.loop_round_size,
        "loop_steps": args.loop_steps,
        "strategies": tuple(s.strip() for s in args.strategies.split(",") if s.strip())
        if args.strategies is not None else None,
        "strategy_options": tuple(shlex.split(args.strategy_options)) if args.strategy_options else None,
    }
    if args.loop:
        overrides["loop"] = True
    if args.no_upper_bound:
        overrides["teacher_upper_bound"] = False
    if args.max_teacher_cases is not None:
        overrides["teacher"] = True  # asking for teacher cases turns the evaluation on (--quick has it off)
    if args.no_teacher:
        overrides["teacher"] = False
    if args.steps is not None and args.warmup_steps is None:
        # keep the warm-up's share of the steps (200 of 600, 60 of 120)
        overrides["warmup_steps"] = settings.warmup_steps * args.steps // settings.steps
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    if settings.strategies and not 0 <= settings.warmup_steps < settings.steps:
        raise DistillSegError(f"--warmup-steps must be in [0, --steps), got {settings.warmup_steps}")
    minimums = (("--steps", settings.steps, 1), ("--max-teacher-cases", settings.max_teacher_cases, 1),
                ("--refresh-every", settings.refresh_every, 1), ("--val-every", settings.val_every, 1),
                ("--max-val-cases", settings.max_validation, 1),
                ("--max-unlabelled-cases", settings.max_unlabelled, 1 if settings.strategies else 0),
                ("--loop-rounds", settings.loop_rounds, 1), ("--loop-round-size", settings.loop_round_size, 1),
                ("--loop-steps", settings.loop_steps, 1))
    for flag, value, least in minimums:
        if value is not None and value < least:
            raise DistillSegError(f"{flag} must be at least {least}, got {value}")
    return settings
