"""The annotation-refinement loop, measured: does each round of corrected cases make the next cheaper?

The loop the Slicer module offers a radiologist, simulated on the demo's split
(:mod:`.split`):

* start: the *initial student*, trained from scratch on the split's labelled cases;
* each round: the current student segments the next ``round_size`` cases of a seeded
  order of the unlabelled pool (:func:`plan_rounds`; never a validation case); a simulated
  radiologist corrects each segmentation to the case's reference label, and the effort is
  recorded (:mod:`DistillSegLib.metrics.correction`: mL added + removed, the fraction of the
  tumour that had to be drawn, axial slices touched); the corrected cases join the training
  set; a new student is distilled starting from the previous one (``train --init``, the
  module's *Distil*); it is scored on the validation cases (Dice, HD95, lesion F1, and the
  effort its segmentations would need: a yardstick on the same cases every round).
* two arms: ``supervised``, and ``distillation`` with a strategy (default ``knowsam``) that
  also learns from the pool's cases not yet corrected (added to the training set without a
  label, as the module's *Add to training set* does for a study without segmentation).
  Its first student is distilled from the initial one before round 1; when the pool is
  used up the arm has no unlabelled study left and trains ``supervised`` (recorded).
* beside each round, the same training cases trained from scratch (time and Dice): does
  ``--init`` keep up at a fraction of the time?

The module's actions go through a :class:`Workbench`: :class:`EngineWorkbench` calls the
engine functions the module's Logic calls (``predict_case`` for *Run*, ``write_nnunet_case``
for *Add to training set*, ``python -m DistillSegLib train`` with the Logic's arguments,
:func:`DistillSegLib.commands.train.distil_arguments`, for *Distil*); the benchmark
``benchmarks/refinement_loop.py`` drives the module's own ``SceneLogic`` on a slicer-core
MRML scene. The simulated radiologist's region of interest follows the module's rule: the
tumour's box plus :data:`ROI_MARGIN_MM` (``DistillSegModuleLib/Pet.py``).

A seed sets both the order of the pool and the training seed of every Distil. Every arm of
every seed keeps its record in ``OUT/seed<S>/<arm>/loop.json``, rewritten after
each round: a run that stops is continued by running it again with the same settings
(finished rounds are kept, the unfinished one is redone).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from itertools import takewhile
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from ..atomic import write_json_atomic
from ..distill import DEFAULT_STRATEGY
from ..errors import DistillSegError
from ..io.case import Case
from ..io.volume import Volume, write_image
from ..metrics.correction import correction_effort, mean_effort
from ..progress import CancelToken, Progress
from .split import DemoSplit

# The Slicer module's ROI margin around a lesion (DistillSegModuleLib/Pet.py, ROI_MARGIN_MM): crop
# students need ~5 cm of context (benchmarks/results/bundled_student.json). The engine cannot import
# the module; Testing/test_refinement_loop.py checks that the two agree.
ROI_MARGIN_MM = 50.0
SUPERVISED = "supervised"
DISTILLATION = "distillation"
ARMS = (SUPERVISED, DISTILLATION)
TUMOUR_NAMES = {1: "tumour"}


@dataclass(frozen=True)
class LoopSettings:
    """What a loop run does (recorded with every result).

    Attributes:
        round_size: cases corrected per round.
        rounds: rounds after the initial student (``rounds * round_size`` pool cases are used).
        initial_steps: steps of the initial student (from scratch) and of every from-scratch
            comparison.
        round_steps: steps of each round's Distil (``--init`` from the previous student).
        scratch_arms: arms whose rounds are also trained from scratch (``()``: none).
        strategy: the distillation arm's strategy; ``strategy_options`` its extra
            ``distillseg train`` options; ``refresh_every`` its teacher-round length.
        roi_margin_mm: margin of the simulated radiologist's ROI around the tumour.
        threads: torch threads of each Distil (``--threads``).
    """

    round_size: int = 5
    rounds: int = 3
    initial_steps: int = 1200
    round_steps: int = 400
    scratch_arms: tuple[str, ...] = (SUPERVISED,)
    strategy: str = DEFAULT_STRATEGY
    strategy_options: tuple[str, ...] = ()
    refresh_every: int = 400
    roi_margin_mm: float = ROI_MARGIN_MM
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("round_size", "rounds", "initial_steps", "round_steps", "refresh_every", "threads"):
            if int(getattr(self, name)) < 1:
                raise DistillSegError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        unknown = [arm for arm in self.scratch_arms if arm not in ARMS]
        if unknown:
            raise DistillSegError(f"unknown arm {', '.join(unknown)}: use {' or '.join(ARMS)}")
        if self.strategy == SUPERVISED:
            raise DistillSegError("the distillation arm needs a distillation strategy, not 'supervised'")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scratch_arms"] = list(self.scratch_arms)
        data["strategy_options"] = list(self.strategy_options)
        return data


# ----------------------------------------------------------------------------- the plan

def pool_order(pool: Sequence[str], seed: int) -> tuple[str, ...]:
    """The pool's cases in the seeded order they come to the radiologist
    (``numpy.random.default_rng(seed).permutation`` of the sorted ids)."""
    ids = sorted(pool)
    return tuple(ids[i] for i in np.random.default_rng(seed).permutation(len(ids)))


def plan_rounds(split: DemoSplit, seed: int, round_size: int, rounds: int) -> list[tuple[str, ...]]:
    """The cases of each round: consecutive blocks of ``round_size`` of :func:`pool_order`.

    Raises:
        DistillSegError: the pool holds a labelled or validation case, or too few cases for
            ``rounds * round_size`` (validation cases are never added instead).
    """
    reserved = set(split.validation) | set(split.labelled)
    wrong = sorted(set(split.unlabelled) & reserved)
    if wrong:
        raise DistillSegError(f"the unlabelled pool holds labelled or validation case(s) {', '.join(wrong)}")
    if round_size < 1 or rounds < 1:
        raise DistillSegError(f"rounds and round size must be at least 1, got {rounds} and {round_size}")
    if rounds * round_size > len(split.unlabelled):
        raise DistillSegError(
            f"the unlabelled pool has {len(split.unlabelled)} cases: {rounds} rounds of {round_size} need "
            f"{rounds * round_size} (validation cases are never added); at most "
            f"{len(split.unlabelled) // round_size} rounds of {round_size}")
    order = pool_order(split.unlabelled, seed)
    return [order[r * round_size:(r + 1) * round_size] for r in range(rounds)]


# ----------------------------------------------------------------------------- the module's actions

def reference_label(case: Case) -> Volume:
    """The case's reference (the radiologist's corrected mask): 0/1 on the CT grid."""
    label = case.label_on_ct
    if label is None:
        raise DistillSegError(f"case {case.case_id} has no reference label to correct to")
    return label.with_array((label.array > 0).astype(np.uint8), label_names=TUMOUR_NAMES)


def roi_around_reference(case: Case, margin_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The simulated radiologist's region of interest: the tumour's box + ``margin_mm`` (RAS mm)."""
    from ..student.inference import roi_from_mask

    return roi_from_mask(reference_label(case), margin_mm)


def segment(model, case: Case, margin_mm: float) -> Volume:
    """*Run* in the radiologist's ROI, the tumour's box + ``margin_mm`` (:func:`run_in_roi`)."""
    return run_in_roi(model, case, roi_around_reference(case, margin_mm))


def run_in_roi(model, case: Case, roi: tuple[np.ndarray, np.ndarray]) -> Volume:
    """*Run*: the student's label map on the CT grid inside ``roi`` (RAS mm corners, as
    ``predict``); a student that takes prompts gets the ROI as its box, as the module's *Run*
    gives it."""
    from ..student.inference import predict_case

    if model.takes_prompts:
        from ..student.prompt_inference import predict_with_prompt
        from ..teachers import UserPrompt

        return predict_with_prompt(model, case, UserPrompt(box=roi)).label
    return predict_case(model, case, roi, device="cpu").label


class Workbench(Protocol):
    """The module's actions the loop needs (engine: :class:`EngineWorkbench`; module:
    ``SceneWorkbench`` in ``benchmarks/refinement_loop.py``)."""

    def add(self, dataset: Path, case: Case, labelled: bool) -> str:
        """*Add to training set*: the case with its reference label, or unlabelled; returns
        its id in the training set."""

    def segment_and_correct(self, dataset: Path, case: Case, model: Path) -> tuple[Volume, str]:
        """*Run* ``model`` on the case, correct the result to the reference label, *Add to
        training set*. Returns the student's label map (before the correction, CT grid) and
        the case's id in the training set."""

    def distil(self, dataset: Path, strategy: str, out: Path, init: Path | None, steps: int,
               extra: Sequence[str]) -> None:
        """*Distil* a student from the training set into ``out`` (``--init`` from ``init``)."""


class EngineWorkbench:
    """The module's actions through the engine functions its Logic calls: ``predict_case``
    (*Run*, in this process), ``write_nnunet_case`` (*Add to training set*; the case's own
    id) and ``python -m DistillSegLib train`` with :func:`distil_arguments` (*Distil*, in a
    child process, as the module runs it)."""

    def __init__(self, roi_margin_mm: float = ROI_MARGIN_MM, python: str = sys.executable,
                 cancel: CancelToken | None = None) -> None:
        self.roi_margin_mm = roi_margin_mm
        self.python = python
        self.cancel = cancel or CancelToken()

    def add(self, dataset: Path, case: Case, labelled: bool) -> str:
        from ..io.dataset import write_nnunet_case

        write_nnunet_case(dataset, case.case_id, case.ct, case.pet_on_ct,
                          reference_label(case) if labelled else None, TUMOUR_NAMES)
        return case.case_id

    def segment_and_correct(self, dataset: Path, case: Case, model: Path) -> tuple[Volume, str]:
        from ..student.model_file import load_model

        prediction = segment(load_model(model), case, self.roi_margin_mm)
        return prediction, self.add(dataset, case, labelled=True)

    def distil(self, dataset: Path, strategy: str, out: Path, init: Path | None, steps: int,
               extra: Sequence[str]) -> None:
        from ..commands.train import distil_arguments

        with tempfile.TemporaryDirectory(prefix="distillseg-loop-") as work:
            checkpoint = Path(work) / "distil.checkpoint.pt"  # as the module: never beside the model
            status, message = self.run_train(
                distil_arguments(dataset, strategy, out, init, steps, ["--checkpoint", str(checkpoint), *extra]))
        if status != 0 or not out.is_file():
            raise DistillSegError(f"Distil ({strategy}, {steps} steps) failed with status {status}: {message}")

    def run_train(self, arguments: Sequence[str]) -> tuple[int, str]:
        """``python -m DistillSegLib train ARGUMENTS`` in a child process (as the module runs it);
        returns its exit status and last line on stderr. A cancel request stops the child
        (SIGTERM: the engine writes no model) and raises ``CancelledError``."""
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        with tempfile.TemporaryFile("w+") as stderr:
            child = subprocess.Popen([self.python, "-m", "DistillSegLib", "train", *arguments], env=env,
                                     stdout=subprocess.DEVNULL, stderr=stderr, text=True)
            while child.poll() is None:
                if self.cancel.cancelled:
                    child.terminate()
                    child.wait()
                    self.cancel.check()
                time.sleep(0.2)
            stderr.seek(0)
            lines = [line for line in stderr.read().splitlines() if line.strip()]
        return child.returncode, lines[-1] if lines else "no message"


# ----------------------------------------------------------------------------- scoring

def score_student(model_path: Path, validation: Sequence[Case], labels_dir: Path, folder: Path,
                  margin_mm: float) -> dict[str, Any]:
    """A student on the validation cases (ROI rule of the loop): Dice, HD95, surface Dice and
    lesion F1 from the function behind ``distillseg evaluate``, and the correction effort its
    segmentations would need (the same cases every round: a yardstick free of case mix)."""
    from ..commands.evaluate import evaluate_folders
    from ..student.model_file import load_model

    model = load_model(model_path)
    efforts = {}
    for case in validation:
        label = segment(model, case, margin_mm)
        write_image(label, folder / f"{case.case_id}.nii.gz")
        efforts[case.case_id] = correction_effort(label, reference_label(case)).to_dict()
    evaluation = evaluate_folders(folder, labels_dir, [c.case_id for c in validation])
    mean = evaluation["mean"]
    return {"dice": mean["dice"], "hd95_mm": mean["hd95_mm"], "hd95_undefined": mean["hd95_undefined"],
            "surface_dice_2mm": mean["surface_dice_2mm"], "lesion_f1": mean["lesions"]["f1"],
            "lesions": mean["lesions"], "per_case_dice": {c["case_id"]: c["dice"] for c in evaluation["cases"]},
            "effort_mean": mean_effort(list(efforts.values())), "effort": efforts}


@dataclass
class Timed:
    """Wall-clock and child-process CPU seconds of a block, with the load average around it
    (``None``/``[]`` where the platform has no such counters: Windows)."""

    seconds: float = 0.0
    cpu_seconds: float | None = None
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 1),
                "cpu_seconds": None if self.cpu_seconds is None else round(self.cpu_seconds, 1),
                "load_average_before": self.load_before, "load_average_after": self.load_after}


def _children_cpu_seconds() -> float | None:
    try:
        import resource  # Unix only
    except ImportError:
        return None
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []


def timed(work: Callable[[], None]) -> Timed:
    """Run ``work``; the CPU seconds are those of the child processes it waited for (the
    Distil's engine process): unlike wall-clock time, other users of the cores do not inflate them."""
    result = Timed(load_before=_load_average())
    cpu, start = _children_cpu_seconds(), time.perf_counter()
    work()
    result.seconds = time.perf_counter() - start
    after = _children_cpu_seconds()
    result.cpu_seconds = None if cpu is None or after is None else after - cpu
    result.load_after = _load_average()
    return result


# ----------------------------------------------------------------------------- one arm of one seed

@dataclass
class LoopContext:
    """What every arm of a run shares."""

    workbench: Workbench
    cases: Mapping[str, Case]          # labelled, pool and validation cases, by id
    split: DemoSplit
    settings: LoopSettings
    out: Path
    labels_dir: Path                   # validation references (evaluate's ground truth)
    progress: Progress
    cancel: CancelToken
    initial_model: Path | None = None  # a student already trained on the labelled cases (the demo's)

    @property
    def validation(self) -> list[Case]:
        return [self.cases[i] for i in self.split.validation]


def distil_options(ctx: LoopContext, strategy: str, seed: int) -> list[str]:
    """The Distil's options besides data/strategy/out/init/steps."""
    options = ["--seed", str(seed), "--threads", str(ctx.settings.threads), "--device", "cpu"]
    if strategy != SUPERVISED:
        options += ["--refresh-every", str(ctx.settings.refresh_every), *ctx.settings.strategy_options]
    return options


def model_training_cases(model: Path) -> dict[str, list[str]]:
    """The training cases a model file records (``labelled``, ``unlabelled``)."""
    from ..student.model_file import read_payload

    recorded = read_payload(model)["metadata"].get("training_cases", {})
    return {"labelled": list(recorded.get("labelled", [])), "unlabelled": list(recorded.get("unlabelled", []))}


def train_round(ctx: LoopContext, dataset: Path, strategy: str, out: Path, init: Path | None, steps: int,
                seed: int, expect_labelled: Sequence[str], extra: Sequence[str] = ()) -> dict[str, Any]:
    """One Distil, timed, then scored on the validation cases; checks the model was trained on
    exactly the expected labelled cases (training-set ids)."""
    ctx.cancel.check()
    ctx.progress.message(f"distil {strategy} {'--init ' + init.name if init else 'from scratch'} ({steps} steps) "
                         f"-> {out}")
    timing = timed(lambda: ctx.workbench.distil(dataset, strategy, out, init, steps,
                                                [*extra, *distil_options(ctx, strategy, seed)]))
    trained_on = model_training_cases(out)
    if sorted(trained_on["labelled"]) != sorted(expect_labelled):
        raise DistillSegError(f"{out} was trained on labelled cases {trained_on['labelled']}, expected "
                              f"{sorted(expect_labelled)}")
    ctx.cancel.check()
    score = score_student(out, ctx.validation, ctx.labels_dir, out.parent / f"{out.stem}-validation",
                          ctx.settings.roi_margin_mm)
    return {"model": str(out), "init": str(init) if init else None, "strategy": strategy, "steps": steps,
            "distil": timing.to_dict(), "training_cases": trained_on, "validation": score}


def initial_student(ctx: LoopContext, seed: int) -> dict[str, Any]:
    """The student trained from scratch on the split's labelled cases (``OUT/seed<S>/initial``),
    shared by both arms; trained once, then read from its record."""
    folder = ctx.out / f"seed{seed}" / "initial"
    record_path = folder / "initial.json"
    expected = {"settings": _training_settings(ctx.settings), "labelled": list(ctx.split.labelled), "seed": seed,
                "given": str(ctx.initial_model) if ctx.initial_model else None}
    record = _read_record(record_path, expected)
    if record.get("result") and Path(record["result"]["model"]).is_file():
        return record["result"]
    if ctx.initial_model is not None:
        score = score_student(ctx.initial_model, ctx.validation, ctx.labels_dir, folder / "validation",
                              ctx.settings.roi_margin_mm)
        result = {"model": str(ctx.initial_model), "init": None, "strategy": SUPERVISED, "steps": None,
                  "distil": None, "training_cases": model_training_cases(ctx.initial_model), "validation": score}
    else:
        dataset = folder / "training-set"
        ids = [ctx.workbench.add(dataset, ctx.cases[i], labelled=True) for i in ctx.split.labelled]
        result = train_round(ctx, dataset, SUPERVISED, folder / "student.pt", None, ctx.settings.initial_steps,
                             seed, ids)
    write_json_atomic(record_path, {**expected, "result": result})
    return result


def run_arm(ctx: LoopContext, arm: str, seed: int, on_round: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Every round of one arm for one seed; the record is rewritten after each round and
    each from-scratch comparison (the loop's rounds come first, the comparisons after)."""
    if arm not in ARMS:
        raise DistillSegError(f"unknown arm {arm!r}: use {' or '.join(ARMS)}")
    plan = plan_rounds(ctx.split, seed, ctx.settings.round_size, ctx.settings.rounds)
    folder = ctx.out / f"seed{seed}" / arm
    dataset = folder / "training-set"
    expected = {"arm": arm, "seed": seed, "settings": arm_settings(ctx.settings, arm), "split": ctx.split.to_dict(),
                "plan": [list(r) for r in plan]}
    record = {**expected, "rounds": [], **_read_record(folder / "loop.json", expected)}
    record["rounds"] = list(takewhile(lambda r: Path(r["model"]).is_file(), record["rounds"]))

    def save() -> None:
        write_json_atomic(folder / "loop.json", record)
        if on_round is not None:
            on_round(record)

    initial = initial_student(ctx, seed)
    if not (record.get("training_set_ids") and dataset.is_dir()):
        # The training set as the radiologist starts it: the labelled cases, and for the
        # distillation arm the pool's studies without a label (added again once corrected).
        ids = {i: ctx.workbench.add(dataset, ctx.cases[i], labelled=True) for i in ctx.split.labelled}
        if arm == DISTILLATION:
            ids |= {i: ctx.workbench.add(dataset, ctx.cases[i], labelled=False) for i in ctx.split.unlabelled}
        record["training_set_ids"], record["rounds"] = ids, []
        save()
    ids = record["training_set_ids"]

    for number in range(len(record["rounds"]), len(plan) + 1):
        labelled = list(ctx.split.labelled) + [c for r in plan[:number] for c in r]
        unlabelled = [c for c in ctx.split.unlabelled if c not in labelled] if arm == DISTILLATION else []
        round_record: dict[str, Any] = {"round": number, "labelled": labelled, "unlabelled": unlabelled,
                                        "new_cases": list(plan[number - 1]) if number else [], "effort": {}}
        previous = Path(record["rounds"][-1]["model"]) if record["rounds"] else Path(initial["model"])
        for case_id in round_record["new_cases"]:
            if case_id in ctx.split.validation:
                raise DistillSegError(f"validation case {case_id} must never join the training set")
            ctx.cancel.check()
            prediction, ids[case_id] = ctx.workbench.segment_and_correct(dataset, ctx.cases[case_id], previous)
            effort = correction_effort(prediction, reference_label(ctx.cases[case_id])).to_dict()
            round_record["effort"][case_id] = effort
            ctx.progress.message(f"{arm} seed {seed} round {number}: {case_id} corrected, "
                                 f"{effort['edited_ml']:.1f} mL edited, {effort['slices_touched']} slices")
        round_record["effort_mean"] = mean_effort(list(round_record["effort"].values()))
        round_record["predicted_by"] = str(previous) if number else None
        if arm == SUPERVISED and number == 0:
            trained = {**initial}
        else:
            strategy = ctx.settings.strategy if arm == DISTILLATION and unlabelled else SUPERVISED
            trained = train_round(ctx, dataset, strategy, folder / f"round{number}.pt", previous,
                                  ctx.settings.round_steps, seed, [ids[i] for i in labelled])
            if arm == DISTILLATION and not unlabelled:
                trained["note"] = "the pool is used up: no unlabelled study left, trained supervised"
        record["rounds"].append({**round_record, **trained, "scratch": None})
        ctx.progress.message(f"{arm} seed {seed} round {number}: {len(labelled)} labelled, validation Dice "
                             f"{trained['validation']['dice']:.3f}")
        save()

    if arm in ctx.settings.scratch_arms:
        for round_record in record["rounds"]:
            if round_record["scratch"] is not None:
                continue
            if round_record["init"] is None:  # the initial student is itself trained from scratch
                round_record["scratch"] = {"same_as_loop": True}
                continue
            labelled = [ids[i] for i in round_record["labelled"]]
            cases = ["--labelled", ",".join(labelled)]
            if round_record["strategy"] != SUPERVISED:
                cases += ["--unlabelled", ",".join(ids[i] for i in round_record["unlabelled"])]
            round_record["scratch"] = train_round(
                ctx, dataset, round_record["strategy"], folder / f"scratch{round_record['round']}.pt", None,
                ctx.settings.initial_steps, seed, labelled, cases)
            save()
    save()
    return record


def arm_settings(settings: LoopSettings, arm: str) -> dict[str, Any]:
    """The settings that decide an arm's rounds (a record is continued only with these): all but
    ``scratch_arms`` (comparisons are added to finished rounds), and the strategy's only for the
    distillation arm."""
    data = settings.to_dict()
    data.pop("scratch_arms")
    if arm != DISTILLATION:
        for key in ("strategy", "strategy_options", "refresh_every"):
            data.pop(key)
    return data


def _training_settings(settings: LoopSettings) -> dict[str, Any]:
    return {"initial_steps": settings.initial_steps, "threads": settings.threads,
            "roi_margin_mm": settings.roi_margin_mm}


def _read_record(path: Path, expected: Mapping[str, Any]) -> dict[str, Any]:
    """A previous record at ``path`` (to continue it), or ``{}``.

    Raises:
        DistillSegError: the record was made with other settings (another run's folder).
    """
    import json

    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    differing = [key for key, value in expected.items() if json.loads(json.dumps(value)) != record.get(key)]
    if differing:
        raise DistillSegError(f"{path} belongs to a run with other {', '.join(differing)}: use another output "
                              "folder, or remove it to start again")
    return record


# ----------------------------------------------------------------------------- a whole run

class LoopCases(dict):
    """The split's cases by id, each loaded from its files the first time it is needed."""

    def __init__(self, sources: Mapping[str, Any]) -> None:
        super().__init__()
        self.sources = sources

    def __missing__(self, case_id: str) -> Case:
        case = self[case_id] = self.sources[case_id].load()
        return case


def loop_cases(data_dir: Path, split: DemoSplit) -> LoopCases:
    """The labelled, pool and validation cases (loaded on first use).

    Raises:
        DistillSegError: a case is missing or has no reference label (the loop corrects to it).
    """
    from ..io.dataset import find_cases

    sources = {c.case_id: c for c in find_cases(data_dir)}
    wanted = [*split.labelled, *split.unlabelled, *split.validation]
    missing = [i for i in wanted if i not in sources or not sources[i].labelled]
    if missing:
        raise DistillSegError(f"{data_dir}: no labelled case {', '.join(missing)} (the loop corrects to the reference)")
    return LoopCases({i: sources[i] for i in wanted})


def run_loop(workbench: Workbench, data_dir: Path, split: DemoSplit, seeds: Sequence[int], arms: Sequence[str],
             settings: LoopSettings, out: Path, progress: Progress | None = None, cancel: CancelToken | None = None,
             on_round: Callable[[dict], None] | None = None,
             initial_model: Path | None = None) -> list[dict[str, Any]]:
    """Every arm of every seed; returns their records (see :func:`run_arm`). ``initial_model``:
    start from this student (trained on the split's labelled cases) instead of training one."""
    from .ground_truth import write_labels

    progress = progress or Progress(enabled=False)
    cancel = cancel or CancelToken()
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown or not arms:
        raise DistillSegError(f"unknown arm {', '.join(unknown) or '(none)'}: use {', '.join(ARMS)}")
    for seed in seeds:
        plan_rounds(split, seed, settings.round_size, settings.rounds)  # bad settings fail before any loading
    cases = loop_cases(Path(data_dir), split)
    labels_dir = out / "labels"
    write_labels([cases[i] for i in split.validation], labels_dir)
    ctx = LoopContext(workbench, cases, split, settings, out, labels_dir, progress, cancel, initial_model)
    return [run_arm(ctx, arm, seed, on_round) for seed in seeds for arm in arms]


# ----------------------------------------------------------------------------- summary

def summarise(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per arm and round, means over the seeds finished so far, and the loop's targets.

    Returns ``{"arms": {arm: [{"round", "labelled_cases", "seeds", "effort_ml", "drawn_fraction",
    "slices_touched", "validation_dice", "validation_hd95_mm", "validation_lesion_f1",
    "validation_effort_ml", "distil_seconds", "distil_cpu_seconds", "scratch_dice",
    "scratch_seconds", "strategy"}]}, "targets": {...}}``.
    """
    arms: dict[str, list[dict[str, Any]]] = {}
    for arm in ARMS:
        mine = [r for r in records if r["arm"] == arm and r["rounds"]]
        if not mine:
            continue
        rows = []
        for number in range(max(len(r["rounds"]) for r in mine)):
            rounds = [r["rounds"][number] for r in mine if len(r["rounds"]) > number]
            # The initial student is itself trained from scratch: it counts as that round's comparison.
            scratch = [r["scratch"] for r in rounds if r.get("scratch") and "validation" in r["scratch"]] + \
                [r for r in rounds if r.get("distil") and not r.get("init")]
            distilled = [r for r in rounds if r.get("distil") and r.get("init")]
            rows.append({
                "round": number, "labelled_cases": len(rounds[0]["labelled"]), "seeds": len(rounds),
                "strategy": sorted({r["strategy"] for r in rounds}),
                "effort_ml": _mean([r["effort_mean"]["edited_ml"] for r in rounds if r["effort"]]),
                "drawn_fraction": _mean([r["effort_mean"]["drawn_fraction"] for r in rounds if r["effort"]]),
                "slices_touched": _mean([r["effort_mean"]["slices_touched"] for r in rounds if r["effort"]]),
                "validation_dice": _mean([r["validation"]["dice"] for r in rounds]),
                "validation_dice_sd": _sd([r["validation"]["dice"] for r in rounds]),
                "validation_hd95_mm": _mean([r["validation"]["hd95_mm"] for r in rounds]),
                "validation_lesion_f1": _mean([r["validation"]["lesion_f1"] for r in rounds]),
                "validation_effort_ml": _mean([r["validation"]["effort_mean"]["edited_ml"] for r in rounds]),
                "distil_seconds": _mean([r["distil"]["seconds"] for r in distilled]),
                "distil_seconds_max": max((r["distil"]["seconds"] for r in distilled), default=None),
                "distil_cpu_seconds": _mean([r["distil"]["cpu_seconds"] for r in distilled]),
                "distil_load_average": _mean([(r["distil"]["load_average_after"] or [None])[0] for r in distilled]),
                "scratch_dice": _mean([s["validation"]["dice"] for s in scratch]),
                "scratch_seconds": _mean([s["distil"]["seconds"] for s in scratch]),
                "scratch_cpu_seconds": _mean([s["distil"]["cpu_seconds"] for s in scratch]),
                "scratch_seeds": len(scratch),
            })
        arms[arm] = rows
    return {"arms": arms, "targets": {arm: targets(rows) for arm, rows in arms.items()}}


def targets(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The loop's targets on one arm's rows: effort per case falls >= 40 % from the first to
    the last round; validation Dice after the last round >= 0.80; every Distil ``--init`` (the
    distillation arm's first one included) <= 10 min."""
    with_effort = [r for r in rows if r["effort_ml"] is not None]
    fall = None
    if len(with_effort) >= 2 and with_effort[0]["effort_ml"]:
        fall = 1.0 - with_effort[-1]["effort_ml"] / with_effort[0]["effort_ml"]
    yardstick = [r["validation_effort_ml"] for r in rows if r["validation_effort_ml"] is not None]
    yardstick_fall = 1.0 - yardstick[-1] / yardstick[0] if len(yardstick) >= 2 and yardstick[0] else None
    longest = max((r["distil_seconds_max"] for r in rows if r["distil_seconds_max"] is not None), default=None)
    last = rows[-1] if rows else {}
    return {
        "effort_fall_first_to_last_round": fall, "effort_target_met": None if fall is None else fall >= 0.40,
        "effort_rounds_compared": [with_effort[0]["round"], with_effort[-1]["round"]] if len(with_effort) >= 2 else [],
        "validation_effort_fall_first_to_last_student": yardstick_fall,
        "last_round": last.get("round"), "last_validation_dice": last.get("validation_dice"),
        "dice_target_met": None if last.get("validation_dice") is None else last["validation_dice"] >= 0.80,
        "longest_round_distil_seconds": longest,
        "distil_time_target_met": None if longest is None else longest <= 600.0,
    }


def _mean(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _sd(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def format_table(summary: Mapping[str, Any]) -> str:
    """The summary as a Markdown table (one row per arm and round)."""
    def f(value, digits=3):
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = ["| arm | round | labelled | seeds | effort mL/case | drawn fraction | slices touched | val Dice | "
             "val HD95 mm | val lesion F1 | val effort mL/case | Distil s (load) | scratch Dice | scratch s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, rows in summary["arms"].items():
        for r in rows:
            strategy = "/".join(r["strategy"])
            lines.append(
                f"| {arm} ({strategy}) | {r['round']} | {r['labelled_cases']} | {r['seeds']} | {f(r['effort_ml'], 1)} | "
                f"{f(r['drawn_fraction'], 2)} | {f(r['slices_touched'], 1)} | {f(r['validation_dice'])} | "
                f"{f(r['validation_hd95_mm'], 1)} | {f(r['validation_lesion_f1'], 2)} | "
                f"{f(r['validation_effort_ml'], 1)} | {f(r['distil_seconds'], 0)} ({f(r['distil_load_average'], 1)}) | "
                f"{f(r['scratch_dice'])} | {f(r['scratch_seconds'], 0)} |")
    return "\n".join(lines)
