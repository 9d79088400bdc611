"""Segment classes and their terminology: what a label value means, for every output format.

Shared by the data layer (segmentation export: .seg.nrrd, DICOM SEG) and the student (its
output classes are recorded in the model file).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SegmentClass:
    """One output class with its DICOM / Slicer terminology.

    Codes are (scheme, value, meaning) triples of SNOMED CT ("SCT"), as in Slicer's
    ``SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json`` and DICOM CID 7150/7151.
    """

    name: str
    category: tuple[str, str, str] = ("SCT", "49755003", "Morphologically Altered Structure")
    type: tuple[str, str, str] = ("SCT", "108369006", "Neoplasm")
    color: tuple[int, int, int] = (216, 101, 79)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SegmentClass":
        return cls(
            name=str(data["name"]),
            category=tuple(data.get("category", cls.category)),  # type: ignore[arg-type]
            type=tuple(data.get("type", cls.type)),  # type: ignore[arg-type]
            color=tuple(int(c) for c in data.get("color", cls.color)),  # type: ignore[arg-type]
        )
