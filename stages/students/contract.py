"""The student contract shared by ViT and E-RADIO students.

Shape legend: B batch, K summary tokens, C channels, h/w feature-map sides (stride 16 / patch grid).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StudentOutput:
    """summary_BKC: K summary tokens (ViT: its CLS tokens; E-RADIO: K=1, spatial mean of features);
    features_BhwC: dense features at stride 16 (ViT: the patch grid)."""

    summary_BKC: torch.Tensor
    features_BhwC: torch.Tensor
