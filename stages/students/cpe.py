"""Cropped position embeddings (CPE) and ViTDet-style windowed attention for ViT students (AM-RADIO,
arXiv 2312.06709, §3 and App. C).

CPE: the student holds a learned table of position embeddings larger than any training grid (AM-RADIO:
128×128 tokens, i.e. 2048 px at patch 16). In training, every sample takes a random crop of the table,
of scale s ~ U[√0.1, 1] (a fraction of the table's side, so 10% to all of its area) and aspect
a = exp(U[log ¾, log 4/3]) (crop sides s·a across and s/a down, clipped to the table, at a uniformly random
position), resized bilinearly to the sample's token
grid: the student never learns that a position embedding means one place at one resolution, which is what
lets it run at resolutions it was not trained at. At evaluation the whole table is interpolated to the grid.
Cost: one `grid_sample` of a [C, G, G] table per sample (G = grid side), negligible beside the blocks; the
table is G²·C parameters (128²·1024 = 16.8 M for ViT-L, against 0.2 M for a 14×14 table).

Windowed attention: tokens attend only within non-overlapping w×w windows of the patch grid in every block
but the global ones (every `global_every`-th block and the last); the summary (prefix) tokens skip the
windowed blocks, as in RADIO's ViTDet augmentation. Attention cost per windowed block falls from N² to
N·w² tokens² (N = h·w tokens): at 1024 px (4096 tokens) and w = 16, 16× less. Used as a training
augmentation at high resolution; evaluation runs every block globally.

Shape legend: B batch, C channels, G table side, h/w grid sides, N tokens, K prefix tokens, W windows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CPE_MIN_SCALE = math.sqrt(0.1)
CPE_LOG_ASPECT = math.log(4 / 3)


class CroppedPosEmbed(nn.Module):
    """A learned [1, G·G, C] position table: random crops per sample in training, interpolated at eval."""

    def __init__(self, grid: int, dim: int) -> None:
        super().__init__()
        if grid < 1:
            raise ValueError(f"CPE table side must be >= 1, got {grid}")
        self.grid = grid
        self.table_1NC = nn.Parameter(torch.zeros(1, grid * grid, dim))
        nn.init.trunc_normal_(self.table_1NC, std=0.02)  # timm's position-embedding init

    def forward(self, batch: int, h: int, w: int) -> torch.Tensor:
        """Position embeddings for a batch on an h×w grid: [B, h·w, C] in training, [1, h·w, C] at eval."""
        G, C = self.grid, self.table_1NC.shape[-1]
        table_1CGG = self.table_1NC.reshape(1, G, G, C).permute(0, 3, 1, 2)
        if not self.training:
            return F.interpolate(table_1CGG, size=(h, w), mode="bilinear", align_corners=True).flatten(2).transpose(1, 2)
        dev = table_1CGG.device
        scale_B = torch.rand(batch, device=dev) * (1 - CPE_MIN_SCALE) + CPE_MIN_SCALE
        aspect_B = torch.exp((torch.rand(batch, device=dev) * 2 - 1) * CPE_LOG_ASPECT)
        sides_B2 = torch.stack([scale_B * aspect_B, scale_B / aspect_B], -1).clamp(max=1.0)  # (x, y)
        origin_B2 = torch.rand(batch, 2, device=dev) * (1 - sides_B2)
        lin_x = torch.linspace(0, 1, w, device=dev)
        lin_y = torch.linspace(0, 1, h, device=dev)
        grid_hw2 = torch.stack(torch.meshgrid(lin_x, lin_y, indexing="xy"), -1)  # [h, w, (x, y)] in [0, 1]
        grid_Bhw2 = grid_hw2[None] * sides_B2[:, None, None] + origin_B2[:, None, None]
        pos_BChw = F.grid_sample(table_1CGG.expand(batch, -1, -1, -1), grid_Bhw2 * 2 - 1, mode="bilinear",
                                 padding_mode="border", align_corners=True)
        return pos_BChw.flatten(2).transpose(1, 2)


def global_blocks(depth: int, every: int) -> set[int]:
    """Blocks that attend globally under windowed attention: every `every`-th and the last."""
    return {i for i in range(depth) if (i + 1) % every == 0} | {depth - 1}


def to_windows(x_BhwC: torch.Tensor, window: int) -> torch.Tensor:
    """[B, h, w, C] -> [B·W, window², C], windows in row-major order."""
    B, h, w, C = x_BhwC.shape
    if h % window or w % window:
        raise ValueError(f"windowed attention: the {h}x{w} token grid is not divisible by the window {window}; "
                         "choose a window_size that divides the grid of every windowed partition")
    x = x_BhwC.reshape(B, h // window, window, w // window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, C)


def from_windows(x_WtC: torch.Tensor, batch: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `to_windows`: [B·W, window², C] -> [B, h, w, C]."""
    window = math.isqrt(x_WtC.shape[1])
    C = x_WtC.shape[-1]
    x = x_WtC.reshape(batch, h // window, w // window, window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, h, w, C)
