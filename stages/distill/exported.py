"""The exported student as a backbone: `load_exported(path)` -> a module with one adaptor per teacher.

Like RADIO's hub model with ``adaptor_names`` (AM-RADIO, arXiv 2312.06709), the exported student returns
its own backbone features plus, per teacher adaptor, a summary vector and dense features *in that
teacher's space*: ``export.safetensors`` has the inverse of each fitted normalizer folded into the heads'
last Linear (PHI-S, arXiv 2410.01680), so no normalizer file is needed. The file is self-contained: the
run's resolved config travels in its metadata, and nothing here reads the store or builds a teacher.

Shape legend: B batch, K summary tokens, C channels, H/W pixel sides, h/w grid sides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from stages.distill.config import DistillConfig
from stages.distill.loader import STUDENT_MEAN, STUDENT_STD, student_pixels
from stages.distill.run import EXPORT_NAME, build_run_models


@dataclass
class AdaptorOutput:
    """One teacher adaptor: summary_BC (None for teachers without one) and features_BhwC on the teacher's
    grid, both in the teacher's own space."""

    summary_BC: torch.Tensor | None
    features_BhwC: torch.Tensor


@dataclass
class ExportedOutput:
    """backbone_summary_BKC / backbone_features_BhwC: the student's own tokens (before any head);
    adaptors: {teacher: AdaptorOutput}."""

    backbone_summary_BKC: torch.Tensor
    backbone_features_BhwC: torch.Tensor
    adaptors: dict[str, AdaptorOutput]


class ExportedStudent(nn.Module):
    """Student + teacher-space adaptors. Input: pixels [B, 3, img_size, img_size] normalized with
    `input_mean` / `input_std` (see `pixels`); sides must suit the student (multiples of its stride)."""

    input_mean = STUDENT_MEAN
    input_std = STUDENT_STD

    def __init__(self, student: nn.Module, heads: nn.Module, config: DistillConfig) -> None:
        super().__init__()
        self.student = student
        self.heads = heads
        self.config = config
        self.img_size = int(config.img_size)
        self.adaptor_names: list[str] = [t.name for t in heads.targets]

    @staticmethod
    def pixels(images_BHW3_uint8: np.ndarray | torch.Tensor, *, device: str | torch.device = "cpu") -> torch.Tensor:
        """uint8 RGB images [B, H, W, 3] -> the normalized float input [B, 3, H, W]."""
        return student_pixels(torch.as_tensor(np.asarray(images_BHW3_uint8)), device=device)

    def forward(self, pixels_BCHW: torch.Tensor) -> ExportedOutput:
        out = self.student(pixels_BCHW)
        preds = self.heads(out)
        return ExportedOutput(out.summary_BKC, out.features_BhwC,
                              {name: AdaptorOutput(*preds[name]) for name in self.adaptor_names})


def load_exported(path: Path, *, device: str | torch.device = "cpu") -> ExportedStudent:
    """Load ``export.safetensors`` (a file, or the run directory holding it) in eval mode."""
    path = Path(path)
    if path.is_dir():
        path = path / EXPORT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no exported student at {path}; run `pipeline export RUN` first")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("outputs") != "teacher_space" or "config" not in meta:
        raise ValueError(f"{path} is not a student export (metadata needs outputs=teacher_space and config)")
    resolved = json.loads(meta["config"])
    config = DistillConfig.from_dict(resolved)
    student, heads = build_run_models(config, resolved)
    state = load_file(str(path))
    student.load_state_dict({k[len("student."):]: v for k, v in state.items() if k.startswith("student.")})
    heads.load_state_dict({k[len("heads."):]: v for k, v in state.items() if k.startswith("heads.")})
    return ExportedStudent(student, heads, config).to(device).eval().requires_grad_(False)
