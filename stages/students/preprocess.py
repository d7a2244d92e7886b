"""The student's input: uint8 RGB views -> normalized float pixels (ImageNet mean / std, the convention of
timm's ViTs and of RADIO, AM-RADIO arXiv 2312.06709).

`preprocessing(student)` is the record of it that travels inside `export.safetensors` (mean, std, input
size, patch size), so the exported student is usable with nothing but that file.

Shape legend: B batch, H/W pixel sides.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

STUDENT_MEAN = (0.485, 0.456, 0.406)
STUDENT_STD = (0.229, 0.224, 0.225)


def student_pixels(image_BHW3: torch.Tensor, *, device: torch.device | str, mean: Sequence[float] = STUDENT_MEAN,
                   std: Sequence[float] = STUDENT_STD) -> torch.Tensor:
    """uint8 views [B, H, W, 3] -> normalized float pixels [B, 3, H, W] on `device` (done there, so loader
    workers ship 4x fewer bytes)."""
    x_BCHW = image_BHW3.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(tuple(mean), device=x_BCHW.device).view(1, 3, 1, 1)
    std_t = torch.tensor(tuple(std), device=x_BCHW.device).view(1, 3, 1, 1)
    return (x_BCHW - mean_t) / std_t


def preprocessing(*, img_size: int, patch_size: int) -> dict[str, Any]:
    """What a user of the trained student must do to an image: the record stored in the export's metadata."""
    return {"mean": list(STUDENT_MEAN), "std": list(STUDENT_STD), "input_size": int(img_size),
            "patch_size": int(patch_size), "interpolation": "bicubic"}  # views are resized bicubic (corpus/views.py)
