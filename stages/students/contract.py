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
