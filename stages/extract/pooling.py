"""Pool a teacher's patch grid down to the store's storage grid.

AM-RADIO (arXiv 2312.06709) matches teacher and student feature maps of different sizes by resizing one
side to the other; a store that keeps a coarser grid than the teacher emits (to bound storage: SAM-H's
64×64×1280 grid is ≈10 MB per image in bf16) must pool before writing. Adaptive average pooling keeps the
per-cell mean of the tokens it replaces, so pooled statistics stay those of local averages.

Shape legend: B batch, h/w teacher grid sides, gh/gw storage grid sides, C channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_storage_grid(teacher_grid: tuple[int, int], storage_grid: tuple[int, int]) -> None:
    """Raise ValueError unless the storage grid is positive and no larger than the teacher's grid."""
    gh, gw = storage_grid
    h, w = teacher_grid
    if gh <= 0 or gw <= 0:
        raise ValueError(f"storage grid must be positive, got {gh}x{gw}")
    if gh > h or gw > w:
        raise ValueError(
            f"storage grid {gh}x{gw} is larger than the teacher's patch grid {h}x{w}; "
            "the store can only keep the teacher's grid or a pooled (smaller) one"
        )


def pool_patches(patches_BhwC: torch.Tensor, storage_grid: tuple[int, int]) -> torch.Tensor:
    """Adaptive-average-pool patch tokens (B, h, w, C) to (B, gh, gw, C); identity when the grids match."""
    check_storage_grid((patches_BhwC.shape[1], patches_BhwC.shape[2]), storage_grid)
    if tuple(patches_BhwC.shape[1:3]) == tuple(storage_grid):
        return patches_BhwC
    x_BChw = patches_BhwC.permute(0, 3, 1, 2)
    pooled_BCgg = F.adaptive_avg_pool2d(x_BChw, storage_grid)
    return pooled_BCgg.permute(0, 2, 3, 1).contiguous()
