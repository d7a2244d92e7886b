"""ViT students for AM-RADIO (arXiv 2312.06709), built from timm.

AM-RADIO gives the ViT student one CLS token per teacher summary ("separate CLS tokens" beat pooling).
timm's `reg_tokens` supplies the extra ones: the K summary tokens are [cls, reg_1, ..., reg_{K-1}], and
all prefix tokens are removed from the dense features, which are the patch tokens on the (H/16, W/16) grid.
The model is built with random weights (`pretrained=False`: nothing is downloaded); pretrained timm weights
or a local file are loaded afterwards by stages/students/weights.py (`adapt_timm_state_dict` below maps a
timm checkpoint onto the student). Options (`StudentOptions`): AM-RADIO's cropped position embeddings and
ViTDet-style windowed attention (stages/students/cpe.py), and activation checkpointing of the blocks.

Shape legend: B batch, K summary tokens, N tokens, C channels, H/W pixel sides, h/w patch-grid sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import timm
import torch

from torch import nn
from torch.utils.checkpoint import checkpoint

from stages.students.contract import Student, StudentOptions, StudentOutput
from stages.students.cpe import CroppedPosEmbed, from_windows, global_blocks, to_windows

PATCH_SIZE = 16


@dataclass(frozen=True)
class ViTSize:
    """One row of the size table: a timm architecture name plus constructor overrides, and the timm
    pretrained weights ("<arch>.<tag>") `--student-weights pretrained` loads (None: timm has none for it)."""

    timm_name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None


# Sizes as data. vit_h16 is timm's ViT-H with a 16-pixel patch (the AM-RADIO student), which timm only
# ships at patch 14, hence the override.
VIT_SIZES: dict[str, ViTSize] = {
    "vit_tiny_test": ViTSize("vit_tiny_patch16_224", {"embed_dim": 64, "depth": 2, "num_heads": 2}),
    "vit_b16": ViTSize("vit_base_patch16_224", pretrained="vit_base_patch16_224.augreg2_in21k_ft_in1k"),
    "vit_l16": ViTSize("vit_large_patch16_224", pretrained="vit_large_patch16_224.augreg_in21k_ft_in1k"),
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
        options: StudentOptions = StudentOptions(),
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
        self.options = options
        self.cpe: CroppedPosEmbed | None = None
        if options.cpe_grid:  # the table replaces timm's position embedding; prefix tokens keep their own
            self.prefix_pos_1KC = nn.Parameter(self.model.pos_embed.detach()[:, :num_summary_tokens].clone())
            self.model.pos_embed = None
            self.cpe = CroppedPosEmbed(options.cpe_grid, self.embed_dim)
        self.global_blocks = global_blocks(len(self.model.blocks), options.window_global_every)

    def no_weight_decay(self) -> set[str]:
        """The CPE table and the prefix tokens' position embeddings (as timm exempts its pos_embed)."""
        return {"cpe", "prefix_pos_1KC"} if self.cpe is not None else set()

    def windowed_for(self, side: int) -> bool:
        """Whether a training input of this side runs with windowed attention (StudentOptions)."""
        return bool(self.options.window_size) and side >= self.options.window_min_size

    def forward(self, x_BCHW: torch.Tensor, *, windowed: bool = False) -> StudentOutput:
        """Summary = the K prefix tokens; features = patch tokens reshaped to (h, w). windowed: windowed
        attention (only in training mode; evaluation always attends globally)."""
        B, _, H, W = x_BCHW.shape
        if H % PATCH_SIZE or W % PATCH_SIZE:
            raise ValueError(f"ViT student input sides must be multiples of {PATCH_SIZE}, got {H}x{W}")
        if self.options.is_default:
            tokens_BNC = self.model.forward_features(x_BCHW)  # timm's own path
        else:
            tokens_BNC = self._features(x_BCHW, windowed=windowed and self.training)
        K = self.num_summary_tokens
        h, w = H // PATCH_SIZE, W // PATCH_SIZE
        features_BhwC = tokens_BNC[:, K:].reshape(B, h, w, self.embed_dim)
        return StudentOutput(summary_BKC=tokens_BNC[:, :K], features_BhwC=features_BhwC)

    def _features(self, x_BCHW: torch.Tensor, *, windowed: bool) -> torch.Tensor:
        """timm's forward_features with the options: CPE, windowed attention, checkpointed blocks."""
        m = self.model
        x_BhwC = m.patch_embed(x_BCHW)  # NHWC (dynamic_img_size)
        B, h, w, C = x_BhwC.shape
        if self.cpe is None:
            x_BNC = m._pos_embed(x_BhwC)
        else:
            prefix = [m.cls_token.expand(B, -1, -1)] + ([m.reg_token.expand(B, -1, -1)] if m.reg_token is not None else [])
            patches_BNC = x_BhwC.reshape(B, h * w, C) + self.cpe(B, h, w)
            x_BNC = m.pos_drop(torch.cat([torch.cat(prefix, 1) + self.prefix_pos_1KC, patches_BNC], 1))
        x_BNC = m.norm_pre(m.patch_drop(x_BNC))
        K = self.num_summary_tokens
        for i, block in enumerate(m.blocks):
            if windowed and i not in self.global_blocks:
                win_WtC = self._run(block, to_windows(x_BNC[:, K:].reshape(B, h, w, C), self.options.window_size))
                x_BNC = torch.cat([x_BNC[:, :K], from_windows(win_WtC, B, h, w).reshape(B, h * w, C)], 1)
            else:
                x_BNC = self._run(block, x_BNC)
        return m.norm(x_BNC)

    def _run(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.options.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def optional_init_keys(self) -> set[str]:
        """Keys a loaded checkpoint may lack (they keep their initialization): the extra summary tokens."""
        return {"model.reg_token"} if self.model.reg_token is not None else set()

    def adapt_timm_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A timm ViT state dict (one CLS token, a classifier head) as this student's state dict: the head
        dropped, the position embedding's grid resampled to the build grid (or the CPE table), its prefix
        part given to the first prefix tokens (the others keep their initialization)."""
        from stages.students.weights import resample_grid_embed

        own = self.state_dict()
        sd = {k: v for k, v in sd.items() if not k.startswith(("head.", "fc_norm.")) or f"model.{k}" in own}
        out = {f"model.{k}": v for k, v in sd.items() if k != "pos_embed"}
        if "pos_embed" not in sd:
            return out
        P = 1 + (sd["reg_token"].shape[1] if "reg_token" in sd else 0)  # the checkpoint's prefix positions
        pos_1NC = sd["pos_embed"]
        prefix_1PC, grid_1NC = pos_1NC[:, :P], pos_1NC[:, P:]
        K = self.num_summary_tokens
        if "reg_token" in sd and self.model.reg_token is not None:
            reg = own["model.reg_token"].clone()
            n = min(reg.shape[1], sd["reg_token"].shape[1])
            reg[:, :n] = sd["reg_token"][:, :n]
            out["model.reg_token"] = reg
        elif "reg_token" in sd:
            out.pop("model.reg_token", None)
        prefix_key = "prefix_pos_1KC" if self.cpe is not None else "model.pos_embed"
        prefix = own[prefix_key][:, :K].clone()
        prefix[:, :min(P, K)] = prefix_1PC[:, :min(P, K)]
        if self.cpe is not None:
            out["prefix_pos_1KC"] = prefix
            out["cpe.table_1NC"] = resample_grid_embed(grid_1NC, self.cpe.grid)
        else:
            side = self.model.patch_embed.grid_size[0]
            out["model.pos_embed"] = torch.cat([prefix, resample_grid_embed(grid_1NC, side)], 1)
        return out


def build_vit(size: str, *, img_size: int, num_summary_tokens: int = 1,
              options: StudentOptions = StudentOptions()) -> ViTStudent:
    """Build the ViT student `size` (a key of VIT_SIZES)."""
    if size not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {size!r}; valid: {sorted(VIT_SIZES)}")
    row = VIT_SIZES[size]
    return ViTStudent(
        row.timm_name, img_size=img_size, num_summary_tokens=num_summary_tokens, options=options, **row.overrides
    )
