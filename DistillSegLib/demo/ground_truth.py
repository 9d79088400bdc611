"""The validation cases' ground truth on disk, shared by the demo and its refinement loop.

Both score their students with ``distillseg evaluate`` on the same label files; this module
sits below both so that neither imports the other for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DistillSegError
from ..io.case import Case
from ..io.volume import write_image


def write_labels(cases: Sequence[Case], folder: Path) -> dict[str, Path]:
    """Ground truth of ``cases`` on their CT grid as ``folder/<case>.nii.gz`` (0/1 uint8)."""
    paths = {}
    for case in cases:
        label = case.label_on_ct
        if label is None:
            raise DistillSegError(f"validation case {case.case_id} has no label")
        paths[case.case_id] = write_image(label.with_array((label.array > 0).astype(np.uint8)),
                                          folder / f"{case.case_id}.nii.gz")
    return paths
