"""The refinement loop of the module's self-test, as one function both Slicer's ``DistillSegTest``
and the pytest suite run (``Testing/test_slicer_selftest.py``), so every logic call of the
in-Slicer test is exercised on slicer-core too. Only how a job is awaited differs: Slicer
processes Qt events (its timer polls the engine processes), pytest polls the runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .Catalogue import bundledStudent
from .Logic import FinishedCallback, JobResult, SceneLogic

MINIMUM_DICE = 0.6
DISTILLATION_STEPS = 10

# ``wait(start)``: call ``start(onFinished)`` and return the job's result once it has ended.
Waiter = Callable[[Callable[[FinishedCallback], None]], JobResult]


@dataclass
class LoopResult:
    dice: float
    segmentationNode: object
    newModel: Path
    newSegmentationNode: object


def refinementLoop(logic: SceneLogic, ct, pet, reference, folder: Path, wait: Waiter,
                   device: str = "auto") -> LoopResult:
    """Place the ROI around the sample's label, run the bundled student (Dice >= 0.6 against the
    label), correct one slice, add the case to a training set in ``folder``, distil a few steps
    from the bundled student, run the new student.

    Raises:
        AssertionError: a step failed or the Dice is too low (the message says which).
    """
    pet = logic.suvPet(pet)
    roi = logic.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "DistillSeg ROI")
    logic.placeRoiAroundSegmentation(roi, reference, ct)
    first = _succeeded(wait(lambda done: logic.startSegmentation(ct, pet, bundledStudent(), roi, device,
                                                                 onFinished=done)), "Run of the bundled student")
    dice = logic.dice(first.segmentationNode, reference, ct)
    if dice < MINIMUM_DICE:
        raise AssertionError(f"bundled student: Dice {dice:.3f} < {MINIMUM_DICE} against the sample's label")
    logic.eraseSlices(first.segmentationNode, ct)  # the radiologist's correction of one slice
    dataset = folder / "training-set"
    logic.addToTrainingSet(dataset, ct, pet, first.segmentationNode)
    newModel = folder / "models" / "student-selftest.pt"
    _succeeded(wait(lambda done: logic.startDistillation(dataset, "supervised", newModel, initModel=bundledStudent(),
                                                         steps=DISTILLATION_STEPS, extra=["--device", device],
                                                         onFinished=done)), "Distil")
    again = _succeeded(wait(lambda done: logic.startSegmentation(ct, pet, newModel, roi, device, onFinished=done)),
                       "Run of the new student")
    return LoopResult(dice, first.segmentationNode, newModel, again.segmentationNode)


def _succeeded(job: JobResult, what: str) -> JobResult:
    if not job.ok:
        raise AssertionError(f"{what} failed: {job.message}")
    return job
