"""A teacher round: the current student prompts the teachers on every unlabelled case,
and the quality of what comes back is measured.

Two ways of prompting (``RoundSettings.prompts``):

* ``"components"`` (default): the student's foreground is split into 3D
  connected components (:func:`~DistillSegLib.teachers.auto_prompt.component_map`, on
  the student grid, so that every teacher gets the same components); each slice-wise
  teacher answers one box per component and slice, with box refinement and slices past
  the component's ends (:mod:`DistillSegLib.teachers.auto_prompt`). Each component is
  rated by the teachers (their predicted IoU x agreement with the component, averaged
  over the teachers); those rated below ``confirm`` x the best rating are dropped, so
  their voxels become background in the pseudo-label. The best-rated component is
  always kept.
* ``"slice"``: one box per axial slice around all foreground (the first version's prompt;
  3D teachers always take their own prompt kinds this way).

Grids (``RoundSettings.grid``): ``"native"`` shows each teacher its
modality on its own grid (the CT, or the PET on its native grid; DESIGN.md, "Teachers")
and brings only the outputs onto the student grid; ``"student"`` shows them the student's
2.5 mm grid (the first version: LiteMedSAM lost ~4 Dice on CT there).

Quality: when unlabelled cases carry an ``audit_label`` (their label,
which training never reads), :func:`audit_round` scores the student's prediction, every
teacher and the strategy's pseudo-label against it, per case and on average.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ..io.resample import resample_to
from ..io.volume import Volume
from ..student.preprocess import PreparedCase, crop_volume
from ..teachers.auto_prompt import AutoPromptSettings, assemble, component_map, prompt_components

GRIDS = ("native", "student")
PROMPT_MODES = ("components", "slice")


@dataclass(frozen=True)
class RoundSettings:
    """How a round prompts the teachers.

    Attributes:
        grid: ``"native"`` or ``"student"`` (module docstring).
        prompts: ``"components"`` or ``"slice"``.
        auto: box settings of the component prompts.
        min_component_ml: student components smaller than this are not offered (mL).
        confirm: a component is kept when its rating (the mean over teachers of predicted
            IoU x agreement with the component) reaches ``confirm`` x the best component's
            rating; 0 keeps every component, 1 only the best-rated one.
        threshold: the student's foreground threshold.
    """

    grid: str = "native"
    prompts: str = "components"
    auto: AutoPromptSettings = field(default_factory=AutoPromptSettings)
    min_component_ml: float = 0.5
    confirm: float = 0.0
    threshold: float = 0.5

    def __post_init__(self) -> None:
        from ..errors import DistillSegError

        if self.grid not in GRIDS:
            raise DistillSegError(f"teacher grid must be one of {GRIDS}, got {self.grid!r}")
        if self.prompts not in PROMPT_MODES:
            raise DistillSegError(f"teacher prompts must be one of {PROMPT_MODES}, got {self.prompts!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RoundSettings":
        data = dict(data)
        auto = AutoPromptSettings(**data.pop("auto", {}))
        return cls(auto=auto, **data)


@dataclass
class RoundOutputs:
    """What one round produced, every array ``(I, J, K)`` on the student grid of its case.

    Attributes:
        probability: ``{teacher key: {case_id: foreground probability}}``.
        confidence: ``{teacher key: {case_id: predicted IoU of the answer on that voxel's
            slice}}``; 1 where the teacher gives no IoU (3D teachers, slices no component
            reached: the student's own background).
        student: ``{case_id: the prompting student's foreground probability}``.
        has_prompt: ``{case_id: whether the student gave the teachers anything}``.
        components: ``{case_id: [component summaries: volume, per-teacher IoU/agreement, kept]}``.
        component_maps: ``{case_id: (I, J, K) int32}`` the components offered (0 = none).
        seconds: wall time of the round.
    """

    probability: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    confidence: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    student: dict[str, np.ndarray] = field(default_factory=dict)
    has_prompt: dict[str, bool] = field(default_factory=dict)
    components: dict[str, list[dict]] = field(default_factory=dict)
    component_maps: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0


# ----------------------------------------------------------------------------- grids

def student_grid_image(case: PreparedCase, config, modality: str) -> Volume:
    """The prepared case's CT (HU) or PET (SUV) on the student grid (the channels mapped back:
    exact inside the student's CT window and below its SUV clip)."""
    if modality.upper() == "CT":
        low, high = config.ct_window
        return case.grid((case.image[0].astype(np.float32) + 1.0) * 0.5 * (high - low) + low)
    return case.grid(case.image[1].astype(np.float32) * config.pet_suv_scale)


def native_image(case: PreparedCase, modality: str) -> Volume | None:
    """The modality's own image of the case's source (the CT inside the case's box, or the
    native PET), or None when the prepared case does not keep its source."""
    if case.source is None:
        return None
    if modality.upper() == "CT":
        return case.source.ct if case.box is None else crop_volume(case.source.ct, case.box)
    return case.source.pet


def teacher_image(case: PreparedCase, config, modality: str, grid: str) -> Volume:
    """What a teacher of ``modality`` sees of ``case`` on ``grid`` (native falls back to the
    student grid when the source is not kept)."""
    image = native_image(case, modality) if grid == "native" else None
    return image if image is not None else student_grid_image(case, config, modality)


def teacher_label(case: PreparedCase, image: Volume) -> np.ndarray:
    """A labelled case's tumour mask on ``image``'s grid (bool): the CT label itself on the CT,
    the label resampled (linear, >= 0.5) onto a native PET, the student-grid label otherwise.

    Raises:
        DistillSegError: when ``case`` has no training label (an unlabelled case: its
            ``audit_label``, if any, is for scoring pseudo-labels only).
    """
    if case.label is None:
        from ..errors import DistillSegError

        raise DistillSegError(f"case {case.case_id} has no training label: only labelled cases may be read "
                              "as teacher targets (an unlabelled case's audit label is for scoring only)")
    source = case.source
    if source is not None and source.label is not None:
        label = source.label_on_ct if case.box is None else crop_volume(source.label_on_ct, case.box)
        if image.shape == label.shape and np.allclose(image.affine, label.affine, atol=1e-4):
            return label.array > 0
        moved = resample_to(label.with_array((label.array > 0).astype(np.float32)), image, "linear", fill=0.0)
        return moved.array >= 0.5
    return to_image_grid((case.label > 0).astype(np.float32), case, image) >= 0.5


def to_image_grid(array: np.ndarray, case: PreparedCase, image: Volume, nearest: bool = False) -> np.ndarray:
    """A student-grid array on ``image``'s grid (linear, clipped to [0, 1]; or nearest for labels)."""
    if image.shape == case.shape and np.allclose(image.affine, case.affine, atol=1e-4):
        return array
    if nearest:
        return resample_to(case.grid(array.astype(np.int16)), image, "nearest", fill=0).array.astype(array.dtype)
    return np.clip(resample_to(case.grid(array.astype(np.float32)), image, "linear", fill=0.0).array, 0.0, 1.0)


def to_student_grid(array: np.ndarray, image: Volume, case: PreparedCase, fill: float = 0.0) -> np.ndarray:
    """An array on ``image``'s grid brought onto the case's student grid (linear)."""
    if image.shape == case.shape and np.allclose(image.affine, case.affine, atol=1e-4):
        return np.asarray(array, np.float32)
    moved = resample_to(image.with_array(np.asarray(array, np.float32)), case.grid(), "linear", fill=fill).array
    return np.clip(moved, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------- one case

def voxel_ml(case: PreparedCase) -> float:
    return float(abs(np.linalg.det(case.affine[:3, :3]))) / 1000.0


def component_round(case: PreparedCase, foreground: np.ndarray, teachers: Mapping[str, tuple[Any, str]],
                    config, settings: RoundSettings, on_slices=None) -> tuple[dict, dict, list[dict], np.ndarray]:
    """Component prompts for one case: ``({key: probability}, {key: confidence}, summaries,
    component map)``."""
    from ..teachers.slicewise import SliceSession

    min_voxels = max(1, int(round(settings.min_component_ml / voxel_ml(case))))
    components = component_map(foreground, settings.threshold, min_voxels, settings.auto.max_components)
    labels = [int(v) for v in range(1, int(components.max()) + 1)]
    summaries = [{"label": c, "volume_ml": round(float((components == c).sum()) * voxel_ml(case), 2), "teachers": {}}
                 for c in labels]
    sessions, answers = {}, {}
    for key, (teacher, modality) in teachers.items():
        image = teacher_image(case, config, modality, settings.grid)
        sessions[key] = SliceSession(teacher, image, modality)
        answers[key] = prompt_components(sessions[key], to_image_grid(components, case, image, nearest=True),
                                         settings.auto, on_slices)
        for answer in answers[key]:
            summaries[answer.label - 1]["teachers"][key] = answer.summary()
    keep = confirmed_components(summaries, settings.confirm)
    for summary in summaries:
        summary["kept"] = summary["label"] in keep
    probability, confidence = {}, {}
    for key, session in sessions.items():
        p, c, answered = assemble(session, answers[key], keep)
        probability[key] = to_student_grid(p, session.image, case)
        # Slices no kept component reached: the student's own background, fully trusted.
        confidence[key] = to_student_grid(np.where(answered, c, 1.0), session.image, case, fill=1.0)
    return probability, confidence, summaries, components


def component_score(summary: Mapping[str, Any]) -> float:
    """Mean over the teachers that answered of (predicted IoU x agreement with the component)."""
    scores = [t["mean_iou"] * t["agreement"] for t in summary["teachers"].values()]
    return float(np.mean(scores)) if scores else 0.0


def confirmed_components(summaries: list[dict], confirm: float) -> set[int]:
    """Labels of the components rated at least ``confirm`` x the best rating (the best-rated
    one always); each summary gets its ``score``."""
    if not summaries:
        return set()
    for summary in summaries:
        summary["score"] = round(component_score(summary), 4)
    best = max(s["score"] for s in summaries)
    keep = {s["label"] for s in summaries if s["score"] >= confirm * best}
    keep.add(max(summaries, key=lambda s: s["score"])["label"])
    return keep


def slice_round(case: PreparedCase, foreground: np.ndarray, teachers: Mapping[str, tuple[Any, str]], config,
                settings: RoundSettings, cache, prompt_factory: Callable, on_slices=None) -> tuple[dict, dict]:
    """Plain prompts (one box per slice around all foreground, or a 3D teacher's own kinds)."""
    from .teacher_prompting import cached_teacher_output

    probability, confidence = {}, {}
    for key, (teacher, modality) in teachers.items():
        image = teacher_image(case, config, modality, settings.grid)
        prompt = prompt_factory(to_image_grid(foreground, case, image), teacher)
        output = cached_teacher_output(cache, teacher, case.case_id, image, prompt, modality)
        probability[key] = to_student_grid(output, image, case)
        confidence[key] = np.ones(case.shape, np.float32)
        if on_slices is not None:
            on_slices(prompted_slices(foreground, settings.threshold))
    return probability, confidence


def prompted_slices(foreground: np.ndarray, threshold: float = 0.5) -> int:
    """Axial slices (last axis) of the student grid with foreground: the slices a round asks about."""
    return int((np.asarray(foreground) >= threshold).any(axis=(0, 1)).sum())


def is_slicewise(teacher) -> bool:
    return getattr(teacher, "dims", 2) == 2 and hasattr(teacher, "decode")


def run_round(trainer, teachers: Mapping[str, tuple[Any, str]], cache, settings: RoundSettings,
              foregrounds: Mapping[str, np.ndarray] | None = None, network=None,
              prompt_factory: Callable | None = None, cases=None) -> RoundOutputs:
    """One round over this rank's unlabelled cases (or ``cases``).

    Args:
        trainer: the :class:`~DistillSegLib.distill.trainer.Trainer`.
        teachers: ``{key: (teacher, modality)}``.
        cache: the teachers' output cache (plain prompts only).
        settings: grid and prompts.
        foregrounds: ``{case_id: (I, J, K)}`` prompt maps (default: the prompting network's
            foreground probability).
        network: the prompting network (default: the trainer's EMA student when it keeps
            one, else the student).
        cases: other prepared cases to run on (e.g. the labelled ones, KnowSAM); the
            unlabelled sampler is then left alone.
    """
    from .teacher_prompting import make_prompt, student_foreground

    prompt_factory = prompt_factory or make_prompt
    network = network or trainer.prompting_network()
    outputs = RoundOutputs({k: {} for k in teachers}, {k: {} for k in teachers})
    start = time.perf_counter()
    components_ok = settings.prompts == "components" and all(is_slicewise(t) for t, _ in teachers.values())
    unlabelled = cases is None
    cases = list(trainer.unlabelled if unlabelled else cases)
    trainer.progress.message(
        f"round at step {trainer.step + 1}: {len(teachers)} teacher(s) on {len(cases)} case(s), "
        f"{settings.grid} grid, {'component' if components_ok else 'slice'} prompts")
    for case in cases:  # the prompting student first: the round's size in slices is then known
        trainer.cancel.check()
        outputs.student[case.case_id] = (foregrounds[case.case_id] if foregrounds is not None
                                         else student_foreground(trainer, case, network))
    total = len(teachers) * sum(prompted_slices(f, settings.threshold) for f in outputs.student.values())
    done = [0]

    def on_slices(n: int) -> None:
        done[0] += n
        trainer.progress.update(min(done[0], total))

    trainer.progress.start(f"teacher round at step {trainer.step + 1} (slices)", total)
    for index, case in enumerate(cases):
        trainer.cancel.check()
        foreground = outputs.student[case.case_id]
        prompted = bool((foreground >= settings.threshold).any())
        outputs.has_prompt[case.case_id] = prompted
        if not prompted:
            for key in teachers:
                outputs.probability[key][case.case_id] = np.zeros(case.shape, np.float32)
                outputs.confidence[key][case.case_id] = np.ones(case.shape, np.float32)
        elif components_ok:
            probability, confidence, outputs.components[case.case_id], outputs.component_maps[case.case_id] = \
                component_round(case, foreground, teachers, trainer.config, settings, on_slices)
            for key in teachers:
                outputs.probability[key][case.case_id] = probability[key]
                outputs.confidence[key][case.case_id] = confidence[key]
        else:
            probability, confidence = slice_round(case, foreground, teachers, trainer.config, settings, cache,
                                                  prompt_factory, on_slices)
            for key in teachers:
                outputs.probability[key][case.case_id] = probability[key]
                outputs.confidence[key][case.case_id] = confidence[key]
        if unlabelled:
            union = np.zeros(case.shape, bool)
            for key in teachers:
                union |= outputs.probability[key][case.case_id] >= 0.5
            trainer.unlabelled_sampler.set_foreground(index, union if union.any() and not union.all() else None)
    trainer.progress.close()
    outputs.seconds = time.perf_counter() - start
    return outputs


# ----------------------------------------------------------------------------- quality

def dice_score(prediction: np.ndarray, truth: np.ndarray) -> float:
    from ..metrics.segmentation import dice

    return float(dice(prediction, truth))


def audit_round(cases, outputs: RoundOutputs, pseudo_labels: Mapping[str, np.ndarray],
                step: int) -> dict[str, Any] | None:
    """Pseudo-label quality of a round against the unlabelled cases' ``audit_label``.

    Dice on the valid region of the student grid of: the prompting student (``>= 0.5``),
    each teacher (``>= 0.5``) and ``pseudo_labels`` (the strategy's own pseudo-label, bool; or a
    list of equally likely bool maps when the label trained on is drawn at random, as MuDuo's
    fusion: then their mean Dice, and its minimum and maximum).
    Also, per component offered, whether it touches the tumour (for choosing ``confirm``
    on these cases, never on the validation cases). None when no case has an audit label.
    """
    per_case = {}
    for case in cases:
        if case.audit_label is None or case.case_id not in outputs.student:
            continue
        valid = tuple(slice(0, n) for n in case.valid_shape)
        truth = case.audit_label[valid] > 0
        row = {"student": dice_score(outputs.student[case.case_id][valid] >= 0.5, truth)}
        for key, maps in outputs.probability.items():
            row[key] = dice_score(maps[case.case_id][valid] >= 0.5, truth)
        if case.case_id in pseudo_labels:
            label = pseudo_labels[case.case_id]
            if isinstance(label, (list, tuple)):  # equally likely draws (a random fusion): their mean Dice
                draws = [dice_score(np.asarray(d)[valid], truth) for d in label]
                row["pseudo_label"] = float(np.mean(draws))
                row["pseudo_label_min"], row["pseudo_label_max"] = float(np.min(draws)), float(np.max(draws))
            else:
                row["pseudo_label"] = dice_score(np.asarray(label)[valid], truth)
        per_case[case.case_id] = {k: round(v, 4) for k, v in row.items()}
        if case.case_id in outputs.components:
            components = outputs.component_maps[case.case_id]
            for summary in outputs.components[case.case_id]:
                summary["touches_tumour"] = bool((truth & (components[valid] == summary["label"])).any())
    if not per_case:
        return None
    keys = sorted({k for row in per_case.values() for k in row})
    mean = {k: round(float(np.mean([row[k] for row in per_case.values() if k in row])), 4) for k in keys}
    return {"step": step, "mean": mean, "cases": per_case,
            "components": {c: s for c, s in outputs.components.items() if c in per_case},
            "seconds": round(outputs.seconds, 1)}


def evaluated_network_dice(trainer, record: dict[str, Any]) -> None:
    """Add the Dice of the trainer's own student (the network that is evaluated and saved)
    on each audited case to an :func:`audit_round` record, as ``evaluated``."""
    from .teacher_prompting import student_foreground

    for case in trainer.unlabelled:
        row = record["cases"].get(case.case_id)
        if row is None or case.audit_label is None:
            continue
        valid = tuple(slice(0, n) for n in case.valid_shape)
        foreground = student_foreground(trainer, case, trainer.network)
        row["evaluated"] = round(dice_score(foreground[valid] >= 0.5, case.audit_label[valid] > 0), 4)
    scores = [row["evaluated"] for row in record["cases"].values() if "evaluated" in row]
    if scores:
        record["mean"]["evaluated"] = round(float(np.mean(scores)), 4)


def describe_audit(audit: Mapping[str, Any]) -> str:
    """One log line: mean Dice of the student, the teachers and the pseudo-label."""
    parts = [f"{k} {v:.3f}" for k, v in audit["mean"].items()]
    return f"round at step {audit['step']}: pseudo-label quality on {len(audit['cases'])} unlabelled case(s) " \
           f"(Dice vs their held-out labels): " + ", ".join(parts)
