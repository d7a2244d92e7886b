"""The exported student as a backbone: `load_exported(path)` -> a module with one adaptor per teacher; the
one loader of `export.safetensors`.

Like RADIO's hub model with ``adaptor_names`` (AM-RADIO, arXiv 2312.06709), the exported student returns
its own backbone features plus, per teacher adaptor, a summary vector and dense features *in that
teacher's space*: ``export.safetensors`` has the inverse of each fitted normalizer folded into the heads'
last Linear (PHI-S, arXiv 2410.01680), so no normalizer file is needed. The file is self-contained: the
run's resolved config and the student's input preprocessing (mean, std, input size, patch size) travel in
its metadata. Nothing here reads a store (no zarr), builds a teacher or imports the training loader.

Exports written before the preprocessing was recorded have only the config: `LEGACY_PREPROCESSING` is what
every such export was trained with (ImageNet mean / std, patch 16; the input size is the config's).

Shape legend: B batch, K summary tokens, C channels, H/W pixel sides, h/w grid sides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from stages.distill.config import DistillConfig
from stages.distill.run_dir import EXPORT_NAME
from stages.students.build import build_models, heads_from_json
from stages.students.preprocess import STUDENT_MEAN, STUDENT_STD, student_pixels

# What an export without a "preprocessing" record was trained with: the student input of every version before
# the record (if the student's normalization ever changes, spell these numbers out here).
LEGACY_PREPROCESSING = {"mean": list(STUDENT_MEAN), "std": list(STUDENT_STD), "patch_size": 16,
                        "interpolation": "bicubic"}


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
    `input_mean` / `input_std` (see `pixels`); sides must be multiples of `patch_size`."""

    def __init__(self, student: nn.Module, heads: nn.Module, config: DistillConfig,
                 preprocessing: dict[str, Any]) -> None:
        super().__init__()
        self.student = student
        self.heads = heads
        self.config = config
        self.preprocessing = dict(preprocessing)  # as recorded in the file (timm's pretrained_cfg keys)
        self.input_mean = tuple(float(x) for x in preprocessing["mean"])
        self.input_std = tuple(float(x) for x in preprocessing["std"])
        self.img_size = int(preprocessing["input_size"])
        self.patch_size = int(preprocessing["patch_size"])
        self.interpolation = str(preprocessing.get("interpolation", "bicubic"))
        self.adaptor_names: list[str] = [t.name for t in heads.targets]

    def pixels(self, images_BHW3_uint8: np.ndarray | torch.Tensor, *, device: str | torch.device = "cpu") -> torch.Tensor:
        """uint8 RGB images [B, H, W, 3] -> the normalized float input [B, 3, H, W]."""
        return student_pixels(torch.as_tensor(np.asarray(images_BHW3_uint8)), device=device, mean=self.input_mean,
                              std=self.input_std)

    def forward(self, pixels_BCHW: torch.Tensor) -> ExportedOutput:
        out = self.student(pixels_BCHW)
        preds = self.heads(out)
        return ExportedOutput(out.summary_BKC, out.features_BhwC,
                              {name: AdaptorOutput(*preds[name]) for name in self.adaptor_names})


def read_preprocessing(meta: dict[str, str], config: DistillConfig) -> dict[str, Any]:
    """The export's preprocessing record, or (an export from before it was recorded) LEGACY_PREPROCESSING
    with the config's input size."""
    if "preprocessing" in meta:
        return json.loads(meta["preprocessing"])
    return {**LEGACY_PREPROCESSING, "input_size": int(config.img_size)}


def load_exported(path: Path | str, *, adaptor_names: list[str] | None = None,
                  device: str | torch.device = "cpu") -> ExportedStudent:
    """Load ``export.safetensors`` (a file, or the run directory holding it) in eval mode.

    adaptor_names: the teacher adaptors to keep, in this order (None: all of them, in training order; []: the
    backbone alone). An unknown name is a ValueError listing the valid ones."""
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
    student, heads = build_models(config, heads_from_json(resolved["heads"]))
    state = load_file(str(path))
    student.load_state_dict({k[len("student."):]: v for k, v in state.items() if k.startswith("student.")})
    heads.load_state_dict({k[len("heads."):]: v for k, v in state.items() if k.startswith("heads.")})
    if adaptor_names is not None:
        heads.keep_only(list(adaptor_names))
    model = ExportedStudent(student, heads, config, read_preprocessing(meta, config))
    return model.to(device).eval().requires_grad_(False)
