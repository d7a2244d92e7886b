"""The student contract shared by ViT and E-RADIO students (AM-RADIO, arXiv 2312.06709): the `Student`
base class every trunk derives from and the `StudentOutput` it returns. The family modules import both
from here (never from the package, whose `__init__` imports them back).

Shape legend: B batch, K summary tokens, C channels, h/w feature-map sides (stride 16 / patch grid).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class StudentOutput:
    """summary_BKC: K summary tokens (ViT: its CLS tokens; E-RADIO: K=1, spatial mean of features);
    features_BhwC: dense features at stride 16 (ViT: the patch grid)."""

    summary_BKC: torch.Tensor
    features_BhwC: torch.Tensor


class Student(nn.Module):
    """Base class of every student trunk.

    Attributes: embed_dim (C of the output), num_summary_tokens (K), stride (16: the output grid is
    (H/16, W/16)), img_size (the square side the student was built for).
    """

    embed_dim: int
    num_summary_tokens: int
    stride: int = 16
    img_size: int

    def forward(self, x_BCHW: torch.Tensor) -> StudentOutput:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class StudentOptions:
    """How a student trunk is built beyond its size (AM-RADIO arXiv 2312.06709 §3 / App. C; ViT students only,
    `build_student` refuses them for other families).

    cpe_grid: side of AM-RADIO's cropped position-embedding (CPE) table in tokens (0: timm's own position
    embedding, interpolated to each input); window_size: ViTDet-style windowed attention of this many tokens
    per window side in all blocks but every `window_global_every`-th and the last, applied in training to
    inputs of side >= window_min_size pixels (0: off); grad_checkpointing: recompute each block's activations
    in the backward pass instead of keeping them."""

    cpe_grid: int = 0
    window_size: int = 0
    window_global_every: int = 4
    window_min_size: int = 0
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        for name in ("cpe_grid", "window_size", "window_min_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: off), got {getattr(self, name)}")
        if self.window_global_every < 1:
            raise ValueError(f"window_global_every must be >= 1, got {self.window_global_every}")

    @property
    def is_default(self) -> bool:
        return self == StudentOptions()
