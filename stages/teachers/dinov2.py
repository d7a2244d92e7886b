"""DINOv2 teachers (Oquab et al., arXiv 2304.07193; with registers: Darcet et al., arXiv 2309.16588).

timm's `vit_*_patch14_dinov2` / `vit_*_patch14_reg4_dinov2` models. AM-RADIO (arXiv 2312.06709) distils
the CLS token as the summary and the final-norm patch tokens as dense features; the prefix tokens (CLS and
the 4 registers) are removed from the patch grid.

Shape legend: B batch, C channels, H/W pixel sides, N tokens (prefix + h·w), h/w patch-grid sides.
"""

from __future__ import annotations

import torch
from torch import nn

from stages.teachers.errors import check_spec_matches_model
from stages.teachers.spec import TeacherOutput, TeacherSpec
from stages.teachers.weights import ResolvedWeights, create_timm_model


class DinoV2Teacher(nn.Module):
    """Wraps a timm VisionTransformer: summary = normed CLS, patches = normed patch tokens on the grid."""

    def __init__(self, vit: nn.Module, spec: TeacherSpec) -> None:
        super().__init__()
        check_spec_matches_model(spec.name, "num_prefix_tokens", spec.num_prefix_tokens, vit.num_prefix_tokens)
        check_spec_matches_model(spec.name, "patch_dim", spec.patch_dim, vit.embed_dim)
        check_spec_matches_model(spec.name, "summary_dim", spec.summary_dim, vit.embed_dim)
        check_spec_matches_model(spec.name, "patch_size", (spec.patch_size,) * 2, tuple(vit.patch_embed.patch_size))
        check_spec_matches_model(spec.name, "grid", spec.grid, tuple(vit.patch_embed.grid_size))
        self.vit = vit
        self.grid = spec.grid
        self.num_prefix_tokens = spec.num_prefix_tokens
        self.activation_scale = spec.activation_scale

    def forward(self, pixels_BCHW: torch.Tensor) -> TeacherOutput:
        tokens_BNC = self.vit.forward_features(pixels_BCHW)  # after the final norm
        B, N, C = tokens_BNC.shape
        h, w = self.grid
        assert N == self.num_prefix_tokens + h * w, (N, self.num_prefix_tokens, self.grid)
        summary_BC = tokens_BNC[:, 0]
        patches_BhwC = tokens_BNC[:, self.num_prefix_tokens:].reshape(B, h, w, C)
        s = self.activation_scale
        return TeacherOutput(summary_BC=summary_BC * s, patches_BhwC=patches_BhwC * s)


def build_dinov2_teacher(spec: TeacherSpec, weights: ResolvedWeights) -> DinoV2Teacher:
    """Build the timm model for `spec` with `weights` and wrap it."""
    return DinoV2Teacher(create_timm_model(spec, weights), spec)
