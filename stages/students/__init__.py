"""Student networks and per-teacher heads for agglomerative distillation (AM-RADIO, arXiv 2312.06709).

A student is a trunk (`Student`: a timm ViT or E-RADIO) that maps pixels to K summary tokens and dense
features at stride 16; `TeacherHeads` turns that output into one (summary, patches) prediction per teacher.

Shape legend: B batch, K summary tokens, C channels, h/w feature-map sides (stride 16).
"""

from __future__ import annotations

import torch
from torch import nn

from stages.students.contract import StudentOutput


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


# Defined after `Student` on purpose: the family modules import it from this package.
from stages.students.heads import HeadTarget, TeacherHeads  # noqa: E402
from stages.students.registry import build_student, student_names  # noqa: E402

__all__ = ["HeadTarget", "Student", "StudentOutput", "TeacherHeads", "build_student", "student_names"]
