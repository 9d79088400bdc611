"""Do the images hold what they claim: a CT in Hounsfield units, a PET in SUV?

A swapped CT/PET pair, a PET still in Bq/mL or a CT without its rescale intercept loads
without complaint and gives figures that look like numbers ("SUV mean -676"). The value
ranges that define the modalities catch them before any work is done:

CT (HU): water is 0 HU and air -1000 HU by definition; a study of a body region holds air,
lung or fat (at or below -100 HU) beside soft tissue, and no value outside the range
scanners write (-1024 for air, down to -3024 as padding outside the reconstruction circle;
up to 3071, or about 30 000 on extended scales for metal).

PET (SUVbw, g/mL): an activity ratio, so never negative beyond reconstruction noise, with
a plausible maximum (physiological FDG maxima in the bladder and kidneys stay well below
100; the shared whole-body study peaks at 89.9, sts-petct at 45.7). A PET in Bq/mL reaches
thousands.

The limits below are deliberately generous: every case in ``../shared/data`` passes with a
wide margin (Testing/test_plausibility.py). A user who knows better passes
``--allow-implausible``.
"""

from __future__ import annotations

import numpy as np

from ..errors import DistillSegError
from .volume import Volume

CT_MIN_HU = -3100.0         # below any value a scanner writes (-3024 padding)
CT_MAX_HU = 31000.0         # above the extended CT scale (about 30 710 HU)
CT_LOW_HU = -100.0          # air, lung and fat lie at or below this
CT_MIN_LOW_FRACTION = 0.001  # ... in at least 0.1% of the voxels
SUV_MAX = 200.0             # no tracer uptake reaches this SUV
SUV_NEGATIVE = -0.5         # below reconstruction noise
SUV_MAX_NEGATIVE_FRACTION = 0.01  # at most 1% of the voxels may lie below SUV_NEGATIVE

OVERRIDE = "--allow-implausible"


def ct_problems(ct: Volume) -> list[str]:
    """What makes ``ct`` implausible as a CT in HU (empty list: nothing)."""
    values = ct.array
    low, high = float(values.min()), float(values.max())
    problems = []
    if low < CT_MIN_HU or high > CT_MAX_HU:
        problems.append(f"values {low:g} .. {high:g} lie outside the HU range of any CT ({CT_MIN_HU:g} .. {CT_MAX_HU:g})")
    if np.count_nonzero(values <= CT_LOW_HU) < CT_MIN_LOW_FRACTION * values.size:
        problems.append(
            f"no air, lung or fat: fewer than {CT_MIN_LOW_FRACTION:.1%} of the voxels lie at or below "
            f"{CT_LOW_HU:g} HU (values {low:g} .. {high:g}; is it a PET, or a CT without its rescale intercept?)")
    return problems


def pet_problems(pet: Volume) -> list[str]:
    """What makes ``pet`` implausible as a PET in SUVbw (empty list: nothing)."""
    values = pet.array
    low, high = float(values.min()), float(values.max())
    problems = []
    if high > SUV_MAX:
        problems.append(f"SUV up to {high:g}: above {SUV_MAX:g}, no tracer uptake reaches that "
                        "(an activity concentration in Bq/mL rather than SUV?)")
    if high <= 0:
        problems.append(f"no uptake anywhere (maximum {high:g})")
    negative = np.count_nonzero(values < SUV_NEGATIVE)
    if negative > SUV_MAX_NEGATIVE_FRACTION * values.size:
        problems.append(f"{negative / values.size:.0%} of the voxels are below SUV {SUV_NEGATIVE:g} (down to {low:g}); "
                        "SUV is never negative (is it a CT?)")
    return problems


def plausibility_report(ct: Volume, pet: Volume) -> list[str]:
    """One sentence per implausible image, naming its file and what looks wrong."""
    report = []
    for volume, problems, what in ((ct, ct_problems(ct), "a CT in HU"), (pet, pet_problems(pet), "a PET in SUV")):
        if problems:
            report.append(f"{volume.describe()} does not look like {what}: {'; '.join(problems)}")
    return report


def require_plausible(ct: Volume, pet: Volume) -> None:
    """Raise one error naming every implausible image (override: ``--allow-implausible``)."""
    report = plausibility_report(ct, pet)
    if report:
        raise DistillSegError(f"{' | '.join(report)}. If the values are right, pass {OVERRIDE}")
