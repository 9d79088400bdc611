"""The training set: adding corrected studies to an nnU-Net dataset with their provenance, and
distilling a new student from it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from vtk.util import numpy_support

from . import Prompts
from .Jobs import FinishedCallback, JobResult, ProgressCallback
from .Nodes import DICOM_UIDS_ATTRIBUTE, SERIES_UID_ATTRIBUTE, LogicError, ijkToRasArray

STRATEGIES = ("supervised", "selftrain", "dualview", "knowsam", "tskd")
# Distil's strategy unless the user picks another: the engine's default (DistillSegLib.distill.
# DEFAULT_STRATEGY, chosen by cross-validation on labelled cases), kept equal by a test.
DEFAULT_STRATEGY = "knowsam"


class TrainingSet:
    """Adding studies to a training set and distilling from it (``study``, ``results``, ``jobs``:
    the other rooms of the same scene)."""

    def __init__(self, study, results, jobs) -> None:
        self.study = study
        self.results = results
        self.jobs = jobs

    @staticmethod
    def caseId(ctNode, petNode) -> str:
        """``DS_<12 hex>``: a hash of the DICOM instance UIDs, or of the voxels and geometry.

        Never derived from the patient's name or id; the same study always gets the same id,
        so adding it again replaces it instead of duplicating it.
        """
        digest = hashlib.sha256()
        for node in (ctNode, petNode):
            uids = node.GetAttribute(DICOM_UIDS_ATTRIBUTE) or node.GetAttribute(SERIES_UID_ATTRIBUTE)
            if uids:
                digest.update(uids.encode())
            else:
                image = node.GetImageData()
                digest.update(str(image.GetDimensions()).encode())
                digest.update(np.round(ijkToRasArray(node), 4).tobytes())
                digest.update(numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).tobytes())
            digest.update(b"|")
        return f"DS_{digest.hexdigest()[:12]}"

    def addToTrainingSet(self, dataset: str | os.PathLike, ctNode, petNode, segmentationNode=None) -> str:
        """Write CT, PET on the CT grid and the (corrected) label into an nnU-Net raw dataset.

        Without a segmentation the study is added unlabelled (for the semi-supervised
        strategies). Returns the generated case id; adding the same study again replaces
        its files (each one written atomically by the engine) instead of adding a second
        case. A labelled case is never silently turned into an unlabelled one.
        """
        from DistillSegLib.errors import DistillSegError
        from DistillSegLib.io.case import Case
        from DistillSegLib.io.dataset import write_nnunet_case

        self.study.validateInputs(ctNode, petNode)
        label, names = self.results.labelFromSegmentation(segmentationNode, ctNode) if segmentationNode else (None, None)
        caseId = self.caseId(ctNode, petNode)
        if label is None and (Path(dataset) / "labelsTr" / f"{caseId}.nii.gz").exists():
            raise LogicError(f"case {caseId} is already in {dataset} with a label: select its segmentation "
                             "to replace the label")
        try:
            case = Case(caseId, self.study.nodeVolume(ctNode), self.study.nodeVolume(petNode), label)
            write_nnunet_case(dataset, caseId, case.ct, case.pet_on_ct, label, names)
        except DistillSegError as exc:
            raise LogicError(str(exc)) from exc
        if label is not None:
            self._recordProvenance(Path(dataset) / "labelsTr" / f"{caseId}.nii.gz", segmentationNode)
        return caseId

    @staticmethod
    def _recordProvenance(labelPath: Path, segmentationNode) -> None:
        """``labelsTr/<case>.provenance.json``: where the label came from (the student or the
        teacher and prompt that made the segmentation, when DistillSeg made it), and that it is
        the segmentation as saved from Slicer, with the radiologist's corrections. File names
        at most, never folders or the node's name (both often name the patient)."""
        from DistillSegLib.provenance import for_training_set, write_provenance

        made = json.loads(segmentationNode.GetAttribute(Prompts.PROVENANCE_ATTRIBUTE) or "null")
        record = {"source": "3D Slicer segmentation",
                  "edited_in_slicer": "the label is the segmentation as it was when added, corrections included",
                  "made_by": {k: v for k, v in made.items() if k not in ("format", "created", "inputs", "outputs")}
                  if made else "drawn or imported in Slicer (not made by DistillSeg)"}
        write_provenance(labelPath, for_training_set(record))

    @staticmethod
    def teacherArguments(strategy: str, teacher: str | None, checkpoint: str | os.PathLike | None) -> list[str]:
        """``distillseg train`` options that give ``strategy`` the selected teacher.

        knowsam and tskd take one 2D teacher (litemedsam or sam); dualview takes a CT teacher
        (litemedsam or sam-med3d) and a PET teacher (litemedsam or seganypet), the one not
        selected staying LiteMedSAM (options of ``DistillSegLib/distill/options.py``).
        """
        if strategy in ("supervised", "selftrain") or not teacher or teacher == "litemedsam":
            return []  # selftrain: the control without a teacher
        file = [str(checkpoint)] if checkpoint else []
        if not file:
            raise LogicError(f"teacher {teacher} needs its checkpoint file")
        if strategy in ("knowsam", "tskd") and teacher == "sam":
            return ["--teacher", "sam", "--teacher-checkpoint", *file]
        if strategy == "dualview" and teacher == "sam-med3d":
            return ["--ct-teacher", "sam-med3d", "--ct-teacher-checkpoint", *file]
        if strategy == "dualview" and teacher == "seganypet":
            return ["--pet-teacher", "seganypet", "--pet-teacher-checkpoint", *file]
        raise LogicError(f"strategy {strategy} cannot use teacher {teacher} (knowsam/tskd: litemedsam or sam; "
                         "dualview: litemedsam, sam-med3d or seganypet)")

    def trainCommand(self, dataset: str | os.PathLike, strategy: str, outModel: str | os.PathLike,
                     initModel: str | os.PathLike | None = None, steps: int | None = None,
                     extra: Sequence[str] = ()) -> list[str]:
        """``python -m DistillSegLib train ...``; distillation strategies also learn from the
        training set's unlabelled studies (``--unlabelled rest``). Without ``initModel`` the
        engine first warms the student up supervised (``--warmup-steps``, 200 by default), so
        the first round is not prompted by an untrained network."""
        from DistillSegLib.commands.train import distil_arguments

        if strategy not in STRATEGIES:
            raise LogicError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
        arguments = distil_arguments(dataset, strategy, outModel, initModel, steps, extra)
        if strategy != "supervised" and "--unlabelled" not in arguments:
            raise LogicError(f"{strategy} also learns from studies without a segmentation, and the training set "
                             f"{dataset} has none: add a study to it without a segmentation (in Slicer: 'Add to "
                             "training set' with no segmentation selected; in the browser: 'Add without "
                             "segmentation'), or distil with 'supervised'")
        return self.jobs.engineCommand("train", *arguments)

    def startDistillation(self, dataset: str | os.PathLike, strategy: str, outModel: str | os.PathLike,
                          initModel: str | os.PathLike | None = None, steps: int | None = None,
                          extra: Sequence[str] = (), onProgress: ProgressCallback | None = None,
                          onFinished: FinishedCallback | None = None) -> None:
        """Distil a new student from the training set in a separate process.

        The engine writes ``outModel`` atomically, so a cancelled or failed run leaves no
        model behind; the training set is only read.
        """
        dataset = Path(dataset)
        if not (dataset / "imagesTr").is_dir():
            raise LogicError(f"training set {dataset} is not an nnU-Net dataset (no imagesTr/): "
                             "add corrected cases first")
        if self.jobs.isRunning():
            raise LogicError("another DistillSeg job is running: wait for it or cancel it")
        outModel = Path(outModel)
        # Checkpoints go to a private folder removed at the end: a cancelled run leaves
        # nothing in the models folder (the engine writes the model itself atomically).
        checkpoint = self.jobs.newJobFolder() / "distillation.checkpoint.pt"
        command = self.trainCommand(dataset, strategy, outModel, initModel, steps,
                                    ["--checkpoint", str(checkpoint), *extra])

        def trained() -> JobResult:
            if not outModel.is_file():
                return JobResult(False, message=f"training ended but wrote no model at {outModel}")
            return JobResult(True, message=f"new student {outModel.name}", modelPath=outModel)

        self.jobs.start(command, onProgress, onFinished, trained)
