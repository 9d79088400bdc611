"""Everything that defines a student network and the input it expects, in one dataclass.

Preprocessing (spacing, CT window, PET scaling, patch size) belongs to the model: a model
file stores its :class:`StudentConfig`, and inference rebuilds the exact input from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from ..errors import DistillSegError
from ..io.labels import SegmentClass

FieldOfView = Literal["crop", "whole-body"]


@dataclass(frozen=True)
class StudentConfig:
    """Network and preprocessing of a student.

    Attributes:
        spacing: voxel size (mm, along the CT's i, j, k axes) the network works at. The STS
            CTs are 0.98 x 0.98 x 3.27 mm and their PETs 3.9-5.5 mm in plane, so 2.5 mm in
            plane loses little PET detail and keeps tumour borders.
        ct_window: HU range mapped linearly to [-1, 1] and clipped (soft-tissue window:
            sarcomas differ from muscle by tens of HU).
        pet_suv_scale: SUV divided by this; ``pet_suv_clip`` caps the SUV first (bladder, brain).
        patch_size: training patch and sliding-window ROI, voxels at ``spacing``.
        channels, strides, num_res_units: MONAI ``UNet`` width/depth. The default
            (16, 32, 64, 128) x 2 residual units has 1.19 M parameters, the size of the
            reference supervised student of ``../shared/DESIGN.md``.
        classes: foreground classes (label values 1..N); background is class 0.
        field_of_view: ``"crop"`` (trained on crops around the tumour; run inside an ROI)
            or ``"whole-body"``.
        in_channels: image channels (CT, PET).
        prompt_channels: prompt input channels after the image channels, in this order
            (:mod:`.prompt_channels`): ``box`` (mask of the box), ``box_distance`` (signed
            distance to the box's surface), ``positive`` / ``negative`` (Gaussian maps of the
            clicks), ``previous`` (the mask being corrected). Empty: the student takes no
            prompts (every model file written before prompts existed).
        click_sigma_mm: standard deviation of a click's Gaussian map, mm.
    """

    spacing: tuple[float, float, float] = (2.5, 2.5, 3.27)
    ct_window: tuple[float, float] = (-250.0, 250.0)
    pet_suv_scale: float = 5.0
    pet_suv_clip: float = 30.0
    patch_size: tuple[int, int, int] = (64, 64, 32)
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 2
    dropout: float = 0.0
    classes: tuple[SegmentClass, ...] = field(default_factory=lambda: (SegmentClass("tumour"),))
    field_of_view: FieldOfView = "crop"
    in_channels: int = 2  # CT, PET
    prompt_channels: tuple[str, ...] = ()
    click_sigma_mm: float = 6.0

    def __post_init__(self) -> None:
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise DistillSegError(f"student spacing must be 3 positive mm values, got {self.spacing}")
        if len(self.patch_size) != 3 or min(self.patch_size) < 8:
            raise DistillSegError(f"patch size must be 3 values >= 8, got {self.patch_size}")
        if len(self.strides) != len(self.channels) - 1:
            raise DistillSegError(f"need len(strides) == len(channels) - 1, got {self.strides} / {self.channels}")
        factor = 1
        for s in self.strides:
            factor *= s
        if any(p % factor for p in self.patch_size):
            raise DistillSegError(f"patch size {self.patch_size} must be divisible by {factor} (the strides' product)")
        if self.field_of_view not in ("crop", "whole-body"):
            raise DistillSegError(f"field of view must be 'crop' or 'whole-body', got {self.field_of_view!r}")
        if not self.classes:
            raise DistillSegError("a student needs at least one foreground class")
        from .prompt_channels import check_prompt_channels

        check_prompt_channels(self.prompt_channels, self.click_sigma_mm)

    @property
    def takes_prompts(self) -> bool:
        """Whether the network has prompt input channels (it then also runs without a prompt)."""
        return bool(self.prompt_channels)

    @property
    def num_classes(self) -> int:
        """Output channels, background included."""
        return len(self.classes) + 1

    @property
    def class_names(self) -> dict[int, str]:
        return {i + 1: c.name for i, c in enumerate(self.classes)}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["classes"] = [asdict(c) for c in self.classes]
        if not self.prompt_channels:  # a prompt-free model file stays readable by older DistillSeg
            del data["prompt_channels"], data["click_sigma_mm"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StudentConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise DistillSegError(f"unknown student configuration keys: {sorted(unknown)}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key == "classes":
                values[key] = tuple(SegmentClass.from_dict(c) for c in value)
            elif isinstance(value, list):
                values[key] = tuple(value)
            else:
                values[key] = value
        return cls(**values)
