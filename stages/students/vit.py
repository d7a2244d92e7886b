"""ViT students for AM-RADIO (arXiv 2312.06709), built from timm with random initialization.

AM-RADIO gives the ViT student one CLS token per teacher summary ("separate CLS tokens" beat pooling).
timm's `reg_tokens` supplies the extra ones: the K summary tokens are [cls, reg_1, ..., reg_{K-1}], and
all prefix tokens are removed from the dense features, which are the patch tokens on the (H/16, W/16) grid.
Students are trained from scratch here, so weights are never downloaded (`pretrained=False`).

Shape legend: B batch, K summary tokens, N tokens, C channels, H/W pixel sides, h/w patch-grid sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import timm
import torch

from stages.students.contract import Student, StudentOutput

PATCH_SIZE = 16


@dataclass(frozen=True)
class ViTSize:
    """One row of the size table: a timm architecture name plus constructor overrides."""

    timm_name: str
    overrides: dict[str, Any] = field(default_factory=dict)


# Sizes as data. vit_h16 is timm's ViT-H with a 16-pixel patch (the AM-RADIO student), which timm only
# ships at patch 14, hence the override.
VIT_SIZES: dict[str, ViTSize] = {
    "vit_tiny_test": ViTSize("vit_tiny_patch16_224", {"embed_dim": 64, "depth": 2, "num_heads": 2}),
    "vit_b16": ViTSize("vit_base_patch16_224"),
    "vit_l16": ViTSize("vit_large_patch16_224"),
    "vit_h16": ViTSize("vit_huge_patch14_224", {"patch_size": PATCH_SIZE}),
}


class ViTStudent(Student):
    """Any timm VisionTransformer with patch 16 as a student with K CLS-like summary tokens."""

    def __init__(
        self,
        timm_name: str,
        *,
        img_size: int,
        num_summary_tokens: int = 1,
        **overrides: Any,
    ) -> None:
        """Build `timm_name` with random weights at `img_size`; `overrides` go to timm.create_model."""
        super().__init__()
        if num_summary_tokens < 1:
            raise ValueError(f"num_summary_tokens must be >= 1, got {num_summary_tokens}")
        if img_size % PATCH_SIZE:
            raise ValueError(f"ViT student img_size must be a multiple of {PATCH_SIZE}, got {img_size}")
        self.model = timm.create_model(
            timm_name,
            pretrained=False,
            num_classes=0,
            img_size=img_size,
            class_token=True,
            reg_tokens=num_summary_tokens - 1,
            dynamic_img_size=True,
            **overrides,
        )
        patch = tuple(self.model.patch_embed.patch_size)
        if patch != (PATCH_SIZE, PATCH_SIZE):
            raise ValueError(
                f"timm model {timm_name!r} has patch size {patch}; students need stride {PATCH_SIZE} "
                f"(pass patch_size={PATCH_SIZE} as an override)"
            )
        assert self.model.num_prefix_tokens == num_summary_tokens
        self.embed_dim = int(self.model.embed_dim)
        self.num_summary_tokens = num_summary_tokens
        self.img_size = img_size

    def forward(self, x_BCHW: torch.Tensor) -> StudentOutput:
        """Summary = the K prefix tokens; features = patch tokens reshaped to (h, w)."""
        B, _, H, W = x_BCHW.shape
        if H % PATCH_SIZE or W % PATCH_SIZE:
            raise ValueError(f"ViT student input sides must be multiples of {PATCH_SIZE}, got {H}x{W}")
        tokens_BNC = self.model.forward_features(x_BCHW)
        K = self.num_summary_tokens
        h, w = H // PATCH_SIZE, W // PATCH_SIZE
        features_BhwC = tokens_BNC[:, K:].reshape(B, h, w, self.embed_dim)
        return StudentOutput(summary_BKC=tokens_BNC[:, :K], features_BhwC=features_BhwC)


def build_vit(size: str, *, img_size: int, num_summary_tokens: int = 1) -> ViTStudent:
    """Build the ViT student `size` (a key of VIT_SIZES)."""
    if size not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {size!r}; valid: {sorted(VIT_SIZES)}")
    row = VIT_SIZES[size]
    return ViTStudent(
        row.timm_name, img_size=img_size, num_summary_tokens=num_summary_tokens, **row.overrides
    )
