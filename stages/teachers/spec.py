"""Teacher specification and the one output contract every teacher honours.

A `TeacherSpec` is frozen data that travels with the store (timm's `PretrainedCfg` habit): callers never
pick preprocessing by hand. Every teacher adapter maps normalized pixels to a `TeacherOutput`.

Shape legend: B batch, C channels, H/W pixel sides, h/w patch-grid sides.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from stages.teachers.resize import ResizeRule


class Family(str, Enum):
    """Which model library builds the teacher; adapters dispatch on this, never on name substrings."""

    DINOV2 = "dinov2"  # timm vit_*_patch14_dinov2 / *_reg4_dinov2
    OPEN_CLIP = "open_clip"  # open_clip create_model(arch, pretrained=tag)
    SAM = "sam"  # timm samvit_*_patch16, features before the neck


class WeightsSource(str, Enum):
    PRETRAINED = "pretrained"  # hub cache or a local checkpoint; absent weights are an error
    RANDOM = "random"  # explicit random initialisation (tests, the offline demo)


@dataclass(frozen=True)
class TeacherSpec:
    """Everything needed to build a teacher and to interpret what it stored."""

    name: str
    family: Family
    arch: str  # timm model name or open_clip model name
    weights_id: str  # timm pretrained tag (".lvd142m") / open_clip pretrained tag ("dfn5b"); "" if none
    weights: WeightsSource
    resolution: int  # square input side in pixels
    patch_size: int
    summary_dim: int  # 0 when the teacher has no summary token (SAM)
    patch_dim: int
    num_prefix_tokens: int  # CLS + registers removed from the patch sequence
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    license: str
    # Small-size overrides passed to the model constructor (tiny teachers only; empty for real ones).
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    # Fixed multiplier on outputs of *tiny* random teachers, so the demo's teachers differ in scale by
    # orders of magnitude as real ones do (DFN CLIP global std 0.029, SAM-H 5.47). 1.0 for real teachers.
    activation_scale: float = 1.0
    description: str = ""
    # How a view becomes the square input (stages/teachers/resize.py): the teacher's own preprocessing.
    # Stores recorded before the field existed were squashed, and their spec (without it) reads as SQUASH.
    resize: ResizeRule = ResizeRule.SQUASH

    def __post_init__(self) -> None:
        # Canonical JSON form (tuples -> lists) so a spec read back from a store's attributes compares
        # equal to the registry's.
        object.__setattr__(self, "arch_kwargs", json.loads(json.dumps(self.arch_kwargs)))

    @property
    def grid(self) -> tuple[int, int]:
        side = self.resolution // self.patch_size
        return side, side

    @property
    def has_summary(self) -> bool:
        return self.summary_dim > 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["family"] = self.family.value
        d["weights"] = self.weights.value
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if self.resize == ResizeRule.SQUASH:  # the rule every store recorded before the field existed:
            del d["resize"]  # left out, so a squash teacher's spec equals the one its existing stores hold
        else:
            d["resize"] = self.resize.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TeacherSpec":
        d = dict(d)
        d["family"] = Family(d["family"])
        d["weights"] = WeightsSource(d["weights"])
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        d["resize"] = ResizeRule(d.get("resize", ResizeRule.SQUASH.value))
        return cls(**d)


@dataclass
class TeacherOutput:
    """summary_BC: CLS / pooled embedding (None if the teacher has none);
    patches_BhwC: dense patch tokens on the teacher's grid, prefix tokens removed."""

    summary_BC: torch.Tensor | None
    patches_BhwC: torch.Tensor
