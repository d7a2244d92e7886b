"""Per-teacher summary and feature heads of AM-RADIO (arXiv 2312.06709).

For every teacher the student gets a summary head (matches the teacher's CLS / pooled embedding) and a
feature head (matches its dense patch tokens), each a 2-layer MLP: Linear -> LayerNorm -> GELU -> Linear,
hidden width = the widest teacher by default. Summary heads are numbered over the teachers that have a
summary (summary_dim > 0) in the order given; summary head i reads student summary token min(i, K - 1), so
a K = 1 student (E-RADIO) shares its one summary token and a ViT with one CLS token per teacher gets its own.

Grid matching: the feature MLP runs on the student's own grid, and its output is then bilinearly resized
(align_corners=False) to the teacher's grid. The MLP therefore costs the student's token count, not the
teacher's (SAM's 64x64 grid is 4x a 32x32 student grid). Bilinear weights sum to one, so resizing commutes
with any affine map applied after the last Linear: denormalization folded into `last_linears` is exact.

Shape legend: B batch, K summary tokens, C channels, h/w grid sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stages.students.contract import StudentOutput


@dataclass(frozen=True)
class HeadTarget:
    """What one teacher's heads predict: summary width (0: the teacher has none), patch width, patch grid."""

    name: str
    summary_dim: int
    patch_dim: int
    grid: tuple[int, int]


class MLPHead(nn.Sequential):
    """Linear -> LayerNorm -> GELU -> Linear, applied to the last dimension."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, out_dim)
        )

    @property
    def last_linear(self) -> nn.Linear:
        """The output Linear (where a denormalization can be folded in)."""
        return self[-1]


def _check_targets(targets: list[HeadTarget]) -> None:
    if not targets:
        raise ValueError("TeacherHeads needs at least one HeadTarget")
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate teacher names in head targets: {names}")
    for t in targets:
        if not t.name or "." in t.name:
            raise ValueError(f"teacher name {t.name!r} must be non-empty and contain no '.' (module key)")
        if t.summary_dim < 0 or t.patch_dim < 1 or len(t.grid) != 2 or min(t.grid) < 1:
            raise ValueError(
                f"invalid head target {t}: need summary_dim >= 0, patch_dim >= 1 and a grid of two sides >= 1"
            )


class TeacherHeads(nn.Module):
    """One summary head (if the teacher has a summary) and one feature head per teacher."""

    def __init__(
        self,
        student_dim: int,
        targets: list[HeadTarget],
        *,
        hidden: int | None = None,
        num_summary_tokens: int = 1,
    ) -> None:
        """student_dim: C of the student output; hidden defaults to the widest teacher output;
        num_summary_tokens: K of the student (summary head i reads token min(i, K - 1))."""
        super().__init__()
        _check_targets(targets)
        if num_summary_tokens < 1:
            raise ValueError(f"num_summary_tokens must be >= 1, got {num_summary_tokens}")
        if hidden is None:
            hidden = max(max(t.summary_dim, t.patch_dim) for t in targets)
        self.student_dim = student_dim
        self.hidden = hidden
        self.num_summary_tokens = num_summary_tokens
        self.targets = list(targets)
        self.summary_heads = nn.ModuleDict()
        self.patch_heads = nn.ModuleDict()
        self.summary_token: dict[str, int] = {}
        for t in self.targets:
            if t.summary_dim > 0:
                self.summary_token[t.name] = min(len(self.summary_heads), num_summary_tokens - 1)
                self.summary_heads[t.name] = MLPHead(student_dim, hidden, t.summary_dim)
            self.patch_heads[t.name] = MLPHead(student_dim, hidden, t.patch_dim)

    def forward(self, out: StudentOutput) -> dict[str, tuple[torch.Tensor | None, torch.Tensor]]:
        """Map a StudentOutput to {teacher: (summary_BC or None, patches_BhwC on the teacher's grid)}."""
        summary_BKC, features_BhwC = out.summary_BKC, out.features_BhwC
        if features_BhwC.shape[-1] != self.student_dim or summary_BKC.shape[-1] != self.student_dim:
            raise ValueError(
                f"student output has {features_BhwC.shape[-1]} feature / {summary_BKC.shape[-1]} summary "
                f"channels; heads were built for {self.student_dim}"
            )
        if summary_BKC.shape[1] != self.num_summary_tokens:
            raise ValueError(
                f"student output has {summary_BKC.shape[1]} summary tokens; heads were built for "
                f"{self.num_summary_tokens}"
            )
        preds: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}
        for t in self.targets:
            summary_BC = None
            if t.name in self.summary_heads:
                summary_BC = self.summary_heads[t.name](summary_BKC[:, self.summary_token[t.name]])
            patches_BhwC = self.patch_heads[t.name](features_BhwC)
            if tuple(patches_BhwC.shape[1:3]) != tuple(t.grid):
                patches_BChw = F.interpolate(
                    patches_BhwC.permute(0, 3, 1, 2), size=tuple(t.grid), mode="bilinear", align_corners=False
                )
                patches_BhwC = patches_BChw.permute(0, 2, 3, 1)
            preds[t.name] = (summary_BC, patches_BhwC)
        return preds

    def last_linears(self, name: str) -> tuple[nn.Linear | None, nn.Linear]:
        """(summary head's last Linear or None, feature head's last Linear) of teacher `name`."""
        if name not in self.patch_heads:
            raise ValueError(f"unknown teacher {name!r}; heads exist for {list(self.patch_heads)}")
        summary = self.summary_heads[name].last_linear if name in self.summary_heads else None
        return summary, self.patch_heads[name].last_linear
