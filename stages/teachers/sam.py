"""SAM image-encoder teachers (Kirillov et al., arXiv 2304.02643), features taken before the neck.

timm's `samvit_*_patch16` (a ViTDet-style encoder with windowed + global attention and relative position
biases). AM-RADIO (arXiv 2312.06709) matches SAM's dense features only: SAM has no summary token. We take
the last block's output, before the conv neck that reduces the width to 256 (DESIGN: SAM-H is 1280-d on a
64×64 grid at 1024 px).

Shape legend: B batch, C channels, H/W pixel sides, h/w patch-grid sides.
"""

from __future__ import annotations

import torch
from torch import nn

from stages.teachers.errors import check_spec_matches_model
from stages.teachers.spec import TeacherOutput, TeacherSpec
from stages.teachers.weights import ResolvedWeights, create_timm_model


class SamTeacher(nn.Module):
    """Wraps a timm VisionTransformerSAM: patches = last block output (pre-neck); no summary."""

    def __init__(self, vit: nn.Module, spec: TeacherSpec) -> None:
        super().__init__()
        check_spec_matches_model(spec.name, "summary_dim", spec.summary_dim, 0)
        check_spec_matches_model(spec.name, "num_prefix_tokens", spec.num_prefix_tokens, 0)
        check_spec_matches_model(spec.name, "patch_dim", spec.patch_dim, vit.embed_dim)
        check_spec_matches_model(spec.name, "patch_size", (spec.patch_size,) * 2, tuple(vit.patch_embed.patch_size))
        check_spec_matches_model(spec.name, "grid", spec.grid, tuple(vit.patch_embed.grid_size))
        self.vit = vit
        self.grid = spec.grid
        self.activation_scale = spec.activation_scale

    def forward(self, pixels_BCHW: torch.Tensor) -> TeacherOutput:
        # norm=False: SAM's only "norm" is inside the neck; intermediates_only stops before the neck.
        (feats_BChw,) = self.vit.forward_intermediates(pixels_BCHW, indices=1, norm=False, intermediates_only=True)
        assert tuple(feats_BChw.shape[2:]) == self.grid, (feats_BChw.shape, self.grid)
        patches_BhwC = feats_BChw.permute(0, 2, 3, 1).contiguous() * self.activation_scale
        return TeacherOutput(summary_BC=None, patches_BhwC=patches_BhwC)


def build_sam_teacher(spec: TeacherSpec, weights: ResolvedWeights) -> SamTeacher:
    """Build the timm model for `spec` with `weights` and wrap it."""
    return SamTeacher(create_timm_model(spec, weights), spec)
