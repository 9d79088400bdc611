"""Jobs: the engine's commands, starting, cancelling and following a job, and importing its result.

Long work (inference, distillation) runs as ``python -m DistillSegLib ...`` through a
:class:`~DistillSegModuleLib.ProcessRunner.ProcessRunner` that reports JSON progress lines
(``DistillSegLib/progress.py``). A failed or cancelled run changes nothing in the scene or the
training set: results are imported only when the process succeeded, always into a new
segmentation node (a segmentation the radiologist corrected is never overwritten).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import Catalogue, Prompts
from .Nodes import LogicError
from .ProcessRunner import ProcessResult, ProcessRunner
from .Results import DEFAULT_CLASSES

DEVICES = ("auto", "cpu", "cuda")

@dataclass
class Progress:
    """One JSON progress line of the engine (see ``DistillSegLib/progress.py``)."""

    stage: str
    step: int = 0
    total: int = 0
    loss: float | None = None
    eta: float | None = None
    message: str = ""
    metrics: dict = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        return self.step / self.total if self.total else None

    @classmethod
    def parse(cls, line: str) -> "Progress | None":
        """Parse one stdout line; ``None`` for anything that is not a JSON object."""
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return None
        if not isinstance(record, dict) or "stage" not in record:
            return None
        return cls(
            stage=str(record["stage"]), step=int(record.get("step") or 0), total=int(record.get("total") or 0),
            loss=record.get("loss"), eta=record.get("eta"), message=str(record.get("message") or ""),
            metrics=record.get("metrics") or {},
        )

@dataclass
class JobResult:
    """How a segmentation or distillation job ended (passed to ``on_finished``)."""

    ok: bool
    cancelled: bool = False
    message: str = ""
    segmentationNode: Any = None
    modelPath: Path | None = None
    statistics: list[dict] | None = None

ProgressCallback = Callable[[Progress], None]

FinishedCallback = Callable[[JobResult], None]


class Jobs:
    """One engine job at a time on a study.

    Args:
        scene: the MRML scene.
        study, results: the :class:`~DistillSegModuleLib.Study.Study` and
            :class:`~DistillSegModuleLib.Results.Results` of the same scene.
        runner, python, baseEnvironment: as :class:`~DistillSegModuleLib.Logic.SceneLogic` takes them.
    """

    def __init__(self, scene, study, results, runner: ProcessRunner, python: str,
                 baseEnvironment: Callable[[], Mapping[str, str]]) -> None:
        self.scene = scene
        self.study = study
        self.results = results
        self.runner = runner
        self.python = python
        self.baseEnvironment = baseEnvironment
        self._tempDir: Path | None = None
        self._sceneClosed = False

    def cancelForClosedScene(self) -> None:
        """The scene is closing under a running job: cancel it, and report it as such."""
        self._sceneClosed = True
        self.cancel()

    def engineCommand(self, *args: str) -> list[str]:
        return [self.python, "-m", "DistillSegLib", *args]

    def engineEnvironment(self) -> dict[str, str]:
        """Environment for the engine process: DistillSegLib importable wherever it lives."""
        import importlib.util

        env = dict(self.baseEnvironment())
        spec = importlib.util.find_spec("DistillSegLib")
        if spec is not None and spec.origin:
            root = str(Path(spec.origin).resolve().parent.parent)
            env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def predictCommand(self, model: str | os.PathLike, ctPath: Path, petPath: Path, outPath: Path,
                       roi: Sequence[float] | None = None, device: str = "auto",
                       statsPath: Path | None = None) -> list[str]:
        """``python -m DistillSegLib predict ...`` for one study (ROI in RAS mm)."""
        if device not in DEVICES:
            raise LogicError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
        command = self.engineCommand("predict", "--model", str(model), "--ct", str(ctPath), "--pet", str(petPath),
                                     "--out", str(outPath), "--json-progress", "--device", device)
        if roi is not None:
            command.append(f"--roi={formatRoi(roi)}")  # one token: argparse reads "-9.0,..." as an option
        if statsPath is not None:
            command += ["--stats", str(statsPath)]
        return command

    def warmUpEngine(self) -> bool:
        """Start the warm engine now (when the runner is an ``EngineRunner``), so the first Run
        does not wait for torch and MONAI to import. False when the runner has no engine."""
        warmUp = getattr(self.runner, "warmUp", None)
        if warmUp is None:
            return False
        warmUp(self.python, self.engineEnvironment())
        return True

    def embedStudyInBackground(self, ctNode, petNode, teacher: str = "litemedsam") -> bool:
        """Queue the teacher's slice embeddings of the study in the warm engine, behind any Run
        or click, so that a box or a click later costs only the prompt decoder. False when the
        runner has no engine. The exported volumes stay until the scene or the module closes."""
        embed = getattr(self.runner, "embedStudy", None)
        if embed is None:
            return False
        self.study.validateInputs(ctNode, petNode)
        ctPath, petPath = self.study.exportedVolume(ctNode), self.study.exportedVolume(petNode)
        embed(self.python, str(ctPath), str(petPath), teacher, env=self.engineEnvironment())
        return True

    def isRunning(self) -> bool:
        """True while a job's process (or any process it started) is alive."""
        return self.runner.is_running()

    def cancel(self) -> None:
        """Stop the running job; its ``on_finished`` reports ``cancelled`` and nothing changes."""
        self.runner.cancel()

    def jobFolder(self) -> Path | None:
        """The running job's temporary folder (removed once no process of the job is left)."""
        return self._tempDir

    def startSegmentation(self, ctNode, petNode, model: str | os.PathLike, roiNode=None, device: str = "auto",
                          onProgress: ProgressCallback | None = None,
                          onFinished: FinishedCallback | None = None) -> None:
        """Segment the selected study with a student model in a separate process.

        Inputs are validated first (``LogicError``, nothing started). The result is imported
        into a new segmentation node only when the process succeeds; existing segmentations
        (a corrected one included) are never modified.
        """
        self.study.validateInputs(ctNode, petNode)
        info = modelInfo(model)
        if info["metadata"].get("takes_prompts") and roiNode is not None:  # the ROI is the student's box
            self.startStudentPromptSegmentation(ctNode, petNode, model, roiNode=roiNode, device=device,
                                                onProgress=onProgress, onFinished=onFinished)
            return
        if info.get("field_of_view") == "crop" and roiNode is None:
            raise LogicError(f"model {Path(model).name} was trained on crops around the tumour: draw a region "
                             "of interest (markups ROI) around the lesion and select it")
        roi = self.study.requireUsableRoi(roiNode, ctNode) if roiNode is not None else None
        work, ctPath, petPath, _ = self._exportJobInputs(ctNode, petNode)
        outPath, statsPath = work / "label.nii.gz", work / "stats.json"
        command = self.predictCommand(model, ctPath, petPath, outPath, roi, device, statsPath)
        classes = info.get("classes") or DEFAULT_CLASSES

        def imported() -> JobResult:
            name = self.scene.GenerateUniqueName(f"{ctNode.GetName()} DistillSeg")
            node = self.results.importLabelmap(outPath, ctNode, classes, name=name)
            _keepProvenance(node, outPath)
            stats = json.loads(statsPath.read_text())["lesions"] if statsPath.exists() else None
            return JobResult(True, message="segmentation done", segmentationNode=node, statistics=stats)

        self.start(command, onProgress, onFinished, imported)

    def startTeacherSegmentation(self, ctNode, petNode, teacher: str, roiNode=None, pointsNode=None,
                                 negativePointsNode=None, modality: str | None = None,
                                 checkpoint: str | os.PathLike | None = None, correct=None, segmentIndex: int = 0,
                                 device: str = "auto", onProgress: ProgressCallback | None = None,
                                 onFinished: FinishedCallback | None = None) -> None:
        """Segment with a teacher prompted by the radiologist: the ROI as a box, the point
        lists as clicks (:mod:`.Prompts`), on the warm engine when the runner is an ``EngineRunner``.

        Without ``correct`` the result goes into a new segmentation. With ``correct`` (a
        segmentation) the clicks correct its segment ``segmentIndex``: the teacher re-runs with
        that segment as the mask prompt and only that segment is replaced. Either way the
        result's provenance (teacher, prompt) is kept on the node for :meth:`addToTrainingSet`.
        """
        self.study.validateInputs(ctNode, petNode)
        clicks, box, (work, ctPath, petPath, previous) = self._promptedJobInputs(
            ctNode, petNode, roiNode, pointsNode, negativePointsNode, correct)
        outPath = work / "label.nii.gz"
        command = self.engineCommand("predict", "--teacher", teacher, "--ct", str(ctPath), "--pet", str(petPath),
                                     "--out", str(outPath), "--json-progress", "--device", device)
        command += ["--modality", modality] if modality else []
        checkpoint = Catalogue.teacherCheckpoint(teacher, checkpoint)
        command += ["--checkpoint", checkpoint] if checkpoint else []
        command += _promptOptions(box, clicks, previous, segmentIndex)

        imported = self._promptedResultImporter(outPath, ctNode, DEFAULT_CLASSES, f"{ctNode.GetName()} {teacher}",
                                                correct, segmentIndex, f"{teacher} done")
        self.start(command, onProgress, onFinished, imported)

    def startStudentPromptSegmentation(self, ctNode, petNode, model: str | os.PathLike, roiNode=None,
                                       pointsNode=None, negativePointsNode=None, correct=None,
                                       segmentIndex: int = 0, device: str = "auto",
                                       onProgress: ProgressCallback | None = None,
                                       onFinished: FinishedCallback | None = None) -> None:
        """Segment with a promptable student (``distillseg train --promptable``) guided by the
        radiologist: the ROI as its box, the point lists as clicks, on the warm engine when the
        runner is an ``EngineRunner``. With ``correct`` (a segmentation) the clicks re-run the
        student with that segment as its previous mask and only that segment is replaced; the
        clicks given are all the clicks of the correction so far (the student takes them all).

        Raises:
            LogicError: a student that takes no prompts, or no box and no click.
        """
        self.study.validateInputs(ctNode, petNode)
        info = modelInfo(model)
        if not info["metadata"].get("takes_prompts"):
            raise LogicError(f"model {Path(model).name} takes no prompts: run it on the ROI (Run), or use a teacher "
                             "for clicks")
        clicks, box, (work, ctPath, petPath, previous) = self._promptedJobInputs(
            ctNode, petNode, roiNode, pointsNode, negativePointsNode, correct)
        outPath = work / "label.nii.gz"
        command = self.engineCommand("predict", "--model", str(model), "--ct", str(ctPath), "--pet", str(petPath),
                                     "--out", str(outPath), "--json-progress", "--device", device)
        command += _promptOptions(box, clicks, previous, segmentIndex)
        classes = info.get("classes") or DEFAULT_CLASSES

        imported = self._promptedResultImporter(outPath, ctNode, classes, f"{ctNode.GetName()} DistillSeg",
                                                correct, segmentIndex, "segmentation done")
        self.start(command, onProgress, onFinished, imported)

    def _promptedJobInputs(self, ctNode, petNode, roiNode, pointsNode, negativePointsNode, correct):
        """The clicks, the ROI box (RAS mm) and the exported job inputs of a prompted job.

        Raises:
            LogicError: no box and no click, or a correction without clicks.
        """
        clicks = Prompts.clicksFromMarkups(pointsNode, negativePointsNode)
        if roiNode is None and not clicks:
            raise LogicError("draw a box (markups ROI) around the lesion or click on it (markups points) first")
        if correct is not None and not clicks:
            raise LogicError("a correction needs clicks: place points on what was missed (positive) "
                             "or wrongly included (negative)")
        box = self.study.requireUsableRoi(roiNode, ctNode) if roiNode is not None else None
        work, ctPath, petPath, previous = self._exportJobInputs(ctNode, petNode, correct)
        return clicks, box, (work, ctPath, petPath, previous)

    def _promptedResultImporter(self, outPath: Path, ctNode, classes, name: str, correct, segmentIndex: int,
                                message: str) -> Callable[[], JobResult]:
        """What a prompted job (teacher or promptable student) does with its label when it ends:
        a new segmentation named ``name``, or, for a correction, only segment ``segmentIndex``
        of ``correct`` replaced; the label's provenance is kept on the node."""

        def imported() -> JobResult:
            if correct is None:
                node = self.results.importLabelmap(outPath, ctNode, classes, name=self.scene.GenerateUniqueName(name))
            else:
                from DistillSegLib.io.volume import read_image

                node, label = correct, read_image(outPath)
                self.results.setSegmentMask(node, label.with_array(label.array == segmentIndex + 1), segmentIndex)
            _keepProvenance(node, outPath)
            return JobResult(True, message=message, segmentationNode=node)

        return imported

    def _exportJobInputs(self, ctNode, petNode, segmentationNode=None) -> tuple[Path, Path, Path, Path | None]:
        """A new job folder with the CT, the PET (and a segmentation as a label map) exported
        for the engine: ``(folder, ct, pet, label or None)``; nothing is left when it fails."""
        if self.isRunning():
            raise LogicError("another DistillSeg job is running: wait for it or cancel it")
        work = self.newJobFolder()
        try:
            ctPath, petPath = self.study.exportedVolume(ctNode), self.study.exportedVolume(petNode)
            label = (self._exportSegmentation(segmentationNode, ctNode, work / "previous.nii.gz")
                     if segmentationNode is not None else None)
        except Exception:
            self._cleanTempDir()
            raise
        return work, ctPath, petPath, label

    def _exportSegmentation(self, segmentationNode, ctNode, path: Path) -> Path:
        """The segmentation as a label-map file on the CT grid (segment n -> label n+1)."""
        from DistillSegLib.io.volume import write_image

        label, _ = self.results.labelFromSegmentation(segmentationNode, ctNode)
        return write_image(label, path)

    def start(self, command: list[str], onProgress: ProgressCallback | None, onFinished: FinishedCallback | None,
               succeeded: Callable[[], JobResult]) -> None:
        """Run ``command``; when every process of it has ended: ``succeeded()`` on success,
        remove the job's temporary folder, then report to ``onFinished``."""
        self._sceneClosed = False

        def finished(result: ProcessResult) -> None:
            try:
                if self._sceneClosed:
                    job = JobResult(False, True, "cancelled: the scene was closed")
                elif not result.ok:
                    job = JobResult(False, result.cancelled, "cancelled" if result.cancelled else result.error_message())
                else:
                    job = succeeded()
            except Exception as exc:  # report, never leave the caller waiting
                job = JobResult(False, message=str(exc))
            finally:
                self._cleanTempDir()
            if onFinished is not None:
                onFinished(job)

        try:
            self.runner.start(command, self._progressHandler(onProgress), finished, env=self.engineEnvironment())
        except OSError as exc:  # e.g. the interpreter is missing: no process, no "finished"
            self._cleanTempDir()
            raise LogicError(f"cannot start {command[0]}: {exc}") from exc

    def _progressHandler(self, onProgress: ProgressCallback | None) -> Callable[[str], None]:
        def handle(line: str) -> None:
            progress = Progress.parse(line)
            if progress is not None and onProgress is not None:
                onProgress(progress)
        return handle

    def newJobFolder(self) -> Path:
        self._cleanTempDir()
        self._tempDir = Path(tempfile.mkdtemp(prefix="DistillSeg-"))
        return self._tempDir

    def _cleanTempDir(self) -> None:
        if self._tempDir is not None:
            shutil.rmtree(self._tempDir, ignore_errors=True)
            self._tempDir = None


def _promptOptions(box, clicks, previous, segmentIndex: int) -> list[str]:
    """``predict``'s prompt options: the ROI box (RAS mm), the clicks, and the previous label
    whose segment ``segmentIndex`` (0-based) is corrected."""
    options = [f"--prompt-box={formatRoi(box)}"] if box is not None else []
    options += [Prompts.pointsOption(clicks)] if clicks else []
    options += ["--prompt-mask", str(previous), "--prompt-segment", str(segmentIndex + 1)] if previous else []
    return options

def _keepProvenance(segmentationNode, labelPath: Path) -> None:
    """Keep the engine's ``LABEL.provenance.json`` on the node (for Add to training set)."""
    from DistillSegLib.provenance import read_provenance

    record = read_provenance(labelPath)
    if record is not None:
        segmentationNode.SetAttribute(Prompts.PROVENANCE_ATTRIBUTE, json.dumps(record))

def formatRoi(bounds: Sequence[float]) -> str:
    """``x0,y0,z0,x1,y1,z1`` (RAS mm, 0.001 mm precision): the engine's ``--roi`` syntax."""
    return ",".join(f"{float(v):.3f}" for v in bounds)

def modelInfo(model: str | os.PathLike) -> dict:
    """``{"field_of_view": ..., "classes": {value: spec}}`` from a student model file's metadata.

    Raises:
        LogicError: the file is missing or not a DistillSeg student model.
    """
    from DistillSegLib.errors import DistillSegError
    from DistillSegLib.student.model_file import read_payload

    try:
        metadata = read_payload(model)["metadata"]
    except DistillSegError as exc:
        raise LogicError(str(exc)) from exc
    classes = {int(k): v for k, v in (metadata.get("classes") or {}).items()}
    return {"field_of_view": metadata.get("field_of_view"), "classes": classes or DEFAULT_CLASSES,
            "metadata": metadata}


def modelTakesPrompts(model: str | os.PathLike | None) -> bool:
    """Whether a student model file takes a box and clicks (trained with ``--promptable``);
    False for no model and for a file that is not a DistillSeg student model."""
    if not model:
        return False
    try:
        return bool(modelInfo(model)["metadata"].get("takes_prompts"))
    except LogicError:
        return False
