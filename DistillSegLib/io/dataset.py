"""Collections of cases on disk: a folder of case folders, or an nnU-Net raw dataset.

nnU-Net raw layout (read and written; the training-set format of the Slicer module)::

    DATASET/dataset.json          {"channel_names": {"0": "CT", "1": "PET"},
                                   "labels": {"background": 0, "tumour": 1}, ...}
    DATASET/imagesTr/<case>_0000.nii.gz   CT (HU)
    DATASET/imagesTr/<case>_0001.nii.gz   PET (SUVbw) on the CT grid
    DATASET/labelsTr/<case>.nii.gz        label map on the CT grid (absent = unlabelled)

Layout reference: nnU-Net v2 documentation, ``documentation/dataset_format.md``
(MIC-DKFZ/nnUNet).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .case import CASE_FOLDER_FILES, Case, find_in_folder, load_case
from ..atomic import write_json_atomic
from ..errors import DistillSegError
from .volume import Volume, write_image

CHANNEL_NAMES = {"0": "CT", "1": "PET"}
CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class CaseSource:
    """Where one case's files are; loading is deferred to :meth:`load`."""

    case_id: str
    ct: Path
    pet: Path
    label: Path | None = None

    @property
    def labelled(self) -> bool:
        return self.label is not None

    def load(self, check: bool = True) -> Case:
        """The case; ``check``: refuse implausible HU/SUV values (see :mod:`.plausibility`)."""
        return load_case(self.ct, self.pet, self.label, case_id=self.case_id, check=check)


def is_nnunet_dataset(folder: Path) -> bool:
    return (folder / "imagesTr").is_dir()


def find_cases(data: str | os.PathLike) -> list[CaseSource]:
    """All cases under ``data`` (nnU-Net dataset or folder of case folders), sorted by id."""
    data = Path(data)
    if not data.is_dir():
        raise DistillSegError(f"data folder not found: {data}")
    cases = _nnunet_cases(data) if is_nnunet_dataset(data) else _case_folders(data)
    if not cases:
        raise DistillSegError(
            f"no cases in {data}: expected an nnU-Net dataset (imagesTr/) or folders with "
            f"{CASE_FOLDER_FILES['ct']}.nii.gz and {CASE_FOLDER_FILES['pet']}.nii.gz"
        )
    return sorted(cases, key=lambda c: c.case_id)


def _case_folders(data: Path) -> list[CaseSource]:
    cases = []
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        ct, pet = (find_in_folder(folder, CASE_FOLDER_FILES[k]) for k in ("ct", "pet"))
        if ct and pet:
            cases.append(CaseSource(folder.name, ct, pet, find_in_folder(folder, CASE_FOLDER_FILES["label"])))
    return cases


def _nnunet_cases(data: Path) -> list[CaseSource]:
    ending = read_dataset_json(data).get("file_ending", ".nii.gz")
    cases = []
    for ct in sorted((data / "imagesTr").glob(f"*_0000{ending}")):
        case_id = ct.name[: -len(f"_0000{ending}")]
        pet = ct.with_name(f"{case_id}_0001{ending}")
        if not pet.exists():
            raise DistillSegError(f"nnU-Net dataset {data}: {ct.name} has no PET channel {pet.name}")
        label = data / "labelsTr" / f"{case_id}{ending}"
        cases.append(CaseSource(case_id, ct, pet, label if label.exists() else None))
    return cases


def read_dataset_json(data: Path) -> dict:
    path = data / "dataset.json"
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DistillSegError(f"corrupt {path}: {exc}") from exc
    channels = meta.get("channel_names", CHANNEL_NAMES)
    if [str(v).upper() for _, v in sorted(channels.items())][:2] not in (["CT", "PET"], ["CT", "PT"]):
        raise DistillSegError(f"{path}: channel_names must be 0=CT, 1=PET, got {channels}")
    return meta


def write_nnunet_case(
    dataset: str | os.PathLike,
    case_id: str,
    ct: Volume,
    pet_on_ct: Volume,
    label: Volume | None = None,
    label_names: dict[int, str] | None = None,
) -> CaseSource:
    """Add (or replace) one case in an nnU-Net raw dataset, updating ``dataset.json``.

    PET must already be on the CT grid (nnU-Net needs every channel on one grid). Each
    file is written atomically, so an interrupted export never leaves a half file.
    """
    dataset = Path(dataset)
    if not CASE_ID_PATTERN.match(case_id):
        raise DistillSegError(f"invalid case id {case_id!r}: use letters, digits, '_' and '-'")
    if pet_on_ct.shape != ct.shape or not np.allclose(pet_on_ct.affine, ct.affine, atol=1e-3):
        raise DistillSegError("PET must be resampled onto the CT grid before writing an nnU-Net case")
    if label is not None and (label.shape != ct.shape or not np.allclose(label.affine, ct.affine, atol=1e-3)):
        raise DistillSegError("the label map must lie on the CT grid to be written to an nnU-Net dataset")
    meta = read_dataset_json(dataset) if dataset.exists() else {}
    write_image(ct.with_array(ct.array.astype(np.int16) if _integral(ct.array) else ct.array.astype(np.float32)),
                dataset / "imagesTr" / f"{case_id}_0000.nii.gz")
    write_image(pet_on_ct.with_array(pet_on_ct.array.astype(np.float32)), dataset / "imagesTr" / f"{case_id}_0001.nii.gz")
    label_path = None
    if label is not None:
        label_path = write_image(label.with_array(label.array.astype(np.uint8)), dataset / "labelsTr" / f"{case_id}.nii.gz")
    labels = {"background": 0, **{name: int(v) for v, name in (label_names or {1: "tumour"}).items()}}
    labels.update({k: v for k, v in meta.get("labels", {}).items() if k not in labels and v not in labels.values()})
    n_labelled = len(list((dataset / "labelsTr").glob("*.nii.gz"))) if (dataset / "labelsTr").is_dir() else 0
    write_json_atomic(dataset / "dataset.json", {
        **meta,
        "channel_names": CHANNEL_NAMES,
        "labels": labels,
        "numTraining": n_labelled,
        "file_ending": ".nii.gz",
    })
    return CaseSource(case_id, dataset / "imagesTr" / f"{case_id}_0000.nii.gz",
                      dataset / "imagesTr" / f"{case_id}_0001.nii.gz", label_path)


def _integral(array: np.ndarray) -> bool:
    return bool(np.issubdtype(array.dtype, np.integer)) or bool(
        np.all(np.abs(array) < 32767) and np.allclose(array, np.round(array))
    )
