"""The radiologist's prompts in the scene, as the engine's ``predict --teacher`` options.

A box is the markups ROI the user already draws; clicks are markups control points (RAS mm).
A click is negative (background) when it sits in a second point list chosen as the negative
one, or when its description reads ``-``/``negative``/``background`` or its label ends with
``-`` (e.g. ``F-3-``): what a radiologist can type in the Markups module's point table.
Option syntax: ``DistillSegLib/commands/prompt_options.py``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

NEGATIVE_DESCRIPTIONS = ("-", "negative", "background")
PROVENANCE_ATTRIBUTE = "DistillSeg.Provenance"  # JSON of LABEL.provenance.json on the segmentation node


class Click(NamedTuple):
    """One click in RAS mm; ``positive`` False for background."""
    r: float
    a: float
    s: float
    positive: bool


def isNegative(pointsNode, index: int) -> bool:
    """True when control point ``index`` is marked as a background click (see the module docstring)."""
    description = (pointsNode.GetNthControlPointDescription(index) or "").strip().lower()
    label = (pointsNode.GetNthControlPointLabel(index) or "").strip()
    return description in NEGATIVE_DESCRIPTIONS or label.endswith("-")


def clicksFromMarkups(pointsNode=None, negativePointsNode=None) -> list[Click]:
    """Every placed control point of the two lists (world RAS mm): the first list's are
    positive unless marked negative, the second list's are all negative."""
    clicks = []
    for node, forcedNegative in ((pointsNode, False), (negativePointsNode, True)):
        if node is None:
            continue
        for index in range(node.GetNumberOfControlPoints()):
            if node.GetNthControlPointPositionStatus(index) != node.PositionDefined:
                continue  # a point still being placed (preview) or cleared
            position = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(index, position)
            clicks.append(Click(*position, positive=not (forcedNegative or isNegative(node, index))))
    return clicks


def pointsOption(clicks: Sequence[Click]) -> str:
    """``--prompt-points=R,A,S,+;R,A,S,-`` (one token, so negative coordinates are not read as options)."""
    text = ";".join(f"{c.r:.2f},{c.a:.2f},{c.s:.2f},{'+' if c.positive else '-'}" for c in clicks)
    return f"--prompt-points={text}"
