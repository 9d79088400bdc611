"""The module's parameter node (saved with the scene), via ``slicer.parameterNodeWrapper``.

Imported only from the widget: ``slicer.parameterNodeWrapper`` exists in the Slicer
application (5.4+), not in ``slicer-core``. The Logic takes plain arguments instead.
"""

from __future__ import annotations

from typing import Annotated

import slicer
from slicer.parameterNodeWrapper import Choice, Default, WithinRange, parameterNodeWrapper

from .Logic import DEFAULT_STRATEGY, DEVICES, STRATEGIES

# Distillation steps the GUI offers. The parameter-node connector sets a QSpinBox's range from
# WithinRange; without it the range becomes the whole int range, 0 and negatives included
# (QSliderOrSpinBoxToIntConnector, Base/Python/slicer/parameterNodeWrapper/guiConnectors.py,
# Slicer v5.10.0 and main). 10 steps is the least that does anything; 20000 about 1.5 h on a CPU.
MIN_STEPS, MAX_STEPS, DEFAULT_STEPS = 10, 20000, 1200


@parameterNodeWrapper
class DistillSegParameterNode:
    """State of the DistillSeg GUI.

    ctVolume / petVolume: the study (HU / SUVbw). roi: box around the lesion (RAS), required
    by crop models. segmentation: the result, corrected in the Segment Editor.
    device: where the engine runs; strategy / steps: how "Distil" trains.
    Paths (models folder, teacher checkpoint, training set) are per-user settings of their
    ctkPathLineEdits, not scene state.
    """

    ctVolume: slicer.vtkMRMLScalarVolumeNode
    petVolume: slicer.vtkMRMLScalarVolumeNode
    roi: slicer.vtkMRMLMarkupsROINode
    segmentation: slicer.vtkMRMLSegmentationNode
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    strategy: Annotated[str, Choice(list(STRATEGIES))] = DEFAULT_STRATEGY
    steps: Annotated[int, WithinRange(MIN_STEPS, MAX_STEPS), Default(DEFAULT_STEPS)]
