"""Per-teacher summary and feature heads of AM-RADIO (arXiv 2312.06709).

For every teacher the student gets a summary head (matches the teacher's CLS / pooled embedding) and a
feature head (matches its dense patch tokens), each a 2-layer MLP: Linear -> LayerNorm -> GELU -> Linear,
hidden width = the widest teacher by default. Summary heads are numbered over the teachers that have a
summary (summary_dim > 0) in the order given; summary head i reads student summary token min(i, K - 1), so
a K = 1 student (E-RADIO) shares its one summary token and a ViT with one CLS token per teacher gets its own.

Grid matching: the feature MLP runs on the student's own grid, and its output is then resized to the
teacher's grid (`resize_grid`): upsampled bilinearly (align_corners=False) where the teacher's grid is
finer, downsampled by area (adaptive average) pooling where it is coarser, as the store pools a teacher's
grid (stages/extract/pooling.py). Plain bilinear downsampling would read only the 4 nearest student
tokens per teacher cell: 32 -> 8 leaves 768 of 1024 tokens without gradient. The MLP costs the student's
token count, not the teacher's (SAM's 64x64 grid is 4x a 32x32 student grid). Both resizes have weights
that sum to one, so they commute with any affine map applied after the last Linear: denormalization folded
into `last_linears` is exact.

Shape legend: B batch, K summary tokens, C channels, h/w grid sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stages.students.contract import StudentOutput
from stages.teachers.resize import sample_on_frame


def resize_grid(x_BhwC: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h, w, C) -> (B, gh, gw, C): bilinear upsampling along sides that grow, area (adaptive average)
    pooling along sides that shrink (a side that grows and one that shrinks: upsample, then pool)."""
    h, w = x_BhwC.shape[1:3]
    gh, gw = grid
    if (h, w) == (gh, gw):
        return x_BhwC
    x_BChw = x_BhwC.permute(0, 3, 1, 2)
    up = (max(h, gh), max(w, gw))
    if up != (h, w):
        x_BChw = F.interpolate(x_BChw, size=up, mode="bilinear", align_corners=False)
    if up != (gh, gw):
        x_BChw = F.adaptive_avg_pool2d(x_BChw, (gh, gw))
    return x_BChw.permute(0, 2, 3, 1)


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

    def forward(self, out: StudentOutput, frames: dict[str, torch.Tensor] | None = None, *,
                only: tuple[str, ...] | None = None, rows: dict[str, slice] | None = None
                ) -> dict[str, tuple[torch.Tensor | None, torch.Tensor]]:
        """Map a StudentOutput to {teacher: (summary_BC or None, patches_BhwC on the teacher's grid)}.

        frames: {teacher: [B, 4]} for teachers whose input frame is not the student's view (their own
        resize rule, stages/teachers/resize.py): the feature map is sampled over each teacher cell of the
        frame (`sample_on_frame`) instead of resized, so prediction and target cover the same pixels.
        only: the teachers to predict (a resolution partition's stores; default all, in head order);
        rows: per teacher, the batch rows its heads run on (PHI-S's per-teacher batch partitions)."""
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
        for t in self.targets if only is None else [self._target(name) for name in only]:
            take = slice(None) if rows is None else rows[t.name]
            summary_BC = None
            if t.name in self.summary_heads:
                summary_BC = self.summary_heads[t.name](summary_BKC[take, self.summary_token[t.name]])
            mapped_BhwC = self.patch_heads[t.name](features_BhwC[take])
            if frames is not None and t.name in frames:
                patches_BhwC = sample_on_frame(mapped_BhwC, frames[t.name][take], tuple(t.grid))
            else:
                patches_BhwC = resize_grid(mapped_BhwC, tuple(t.grid))
            preds[t.name] = (summary_BC, patches_BhwC)
        return preds

    def _target(self, name: str) -> HeadTarget:
        for t in self.targets:
            if t.name == name:
                return t
        raise ValueError(f"unknown teacher {name!r}; heads exist for {[t.name for t in self.targets]}")

    def keep_only(self, names: list[str]) -> TeacherHeads:
        """Drop every teacher's heads but `names` (in that order), in place; returns self. A summary head keeps
        the summary token it was trained on. ValueError naming the valid teachers for an unknown name."""
        unknown = [n for n in names if n not in self.patch_heads]
        if unknown or len(set(names)) != len(names):
            raise ValueError(f"unknown or repeated adaptor name(s) {unknown or names}; valid: {list(self.patch_heads)}")
        by_name = {t.name: t for t in self.targets}
        self.targets = [by_name[n] for n in names]
        for name in list(self.patch_heads):
            if name not in names:
                del self.patch_heads[name]
                if name in self.summary_heads:
                    del self.summary_heads[name]
                    del self.summary_token[name]
        return self

    def last_linears(self, name: str) -> tuple[nn.Linear | None, nn.Linear]:
        """(summary head's last Linear or None, feature head's last Linear) of teacher `name`."""
        if name not in self.patch_heads:
            raise ValueError(f"unknown teacher {name!r}; heads exist for {list(self.patch_heads)}")
        summary = self.summary_heads[name].last_linear if name in self.summary_heads else None
        return summary, self.patch_heads[name].last_linear
