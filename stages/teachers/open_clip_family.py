"""open_clip image towers as teachers: DFN CLIP (Fang et al., arXiv 2309.17425), OpenAI CLIP (Radford et
al., arXiv 2103.00020), SigLIP (Zhai et al., arXiv 2303.15343).

AM-RADIO (arXiv 2312.06709) matches the tower's image embedding as the summary and its final-layer patch
tokens as dense features. Both come from one `forward_intermediates` call (open_clip 3.x, for its own
VisionTransformer and for timm-backed towers alike):

* summary = `image_features`: the pooled embedding after the projection when the tower has one (CLIP:
  ln_post(CLS) @ proj, so summary_dim = embed_dim); SigLIP has no CLS: its summary is the attention-pool
  (MAP) output, unprojected (`timm_proj: none`).
* patches = the last block's tokens with the tower's final norm applied (ln_post / trunk.norm), prefix
  tokens removed, before any projection (width = the transformer width).

Shape legend: B batch, C channels, H/W pixel sides, L = h·w patch tokens, h/w patch-grid sides.
"""

from __future__ import annotations

import torch
from torch import nn

from stages.teachers.errors import check_spec_matches_model
from stages.teachers.spec import TeacherOutput, TeacherSpec
from stages.teachers.weights import ResolvedWeights, create_open_clip_visual


def tower_geometry(visual: nn.Module) -> dict[str, object]:
    """Width, prefix-token count, patch size and grid of an open_clip vision tower (dispatch on type)."""
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    if isinstance(visual, VisionTransformer):
        return {"width": visual.conv1.out_channels, "num_prefix_tokens": 1,  # one CLS, always
                "patch_size": tuple(visual.patch_size), "grid": tuple(visual.grid_size)}
    if isinstance(visual, TimmModel):
        trunk = visual.trunk
        return {"width": trunk.embed_dim, "num_prefix_tokens": trunk.num_prefix_tokens,
                "patch_size": tuple(trunk.patch_embed.patch_size), "grid": tuple(trunk.patch_embed.grid_size)}
    raise ValueError(f"unsupported open_clip vision tower {type(visual).__name__}")


class OpenClipTeacher(nn.Module):
    """Wraps an open_clip vision tower: summary = image embedding, patches = final-norm patch tokens."""

    def __init__(self, visual: nn.Module, spec: TeacherSpec) -> None:
        super().__init__()
        geo = tower_geometry(visual)
        check_spec_matches_model(spec.name, "patch_dim", spec.patch_dim, geo["width"])
        check_spec_matches_model(spec.name, "num_prefix_tokens", spec.num_prefix_tokens, geo["num_prefix_tokens"])
        check_spec_matches_model(spec.name, "patch_size", (spec.patch_size,) * 2, geo["patch_size"])
        check_spec_matches_model(spec.name, "grid", spec.grid, geo["grid"])
        if spec.summary_dim <= 0:
            raise ValueError(f"teacher {spec.name!r}: open_clip towers always have a summary (summary_dim > 0)")
        self.visual = visual
        self.grid = spec.grid
        self.summary_dim = spec.summary_dim
        self.activation_scale = spec.activation_scale

    def forward(self, pixels_BCHW: torch.Tensor) -> TeacherOutput:
        out = self.visual.forward_intermediates(
            pixels_BCHW, indices=1, normalize_intermediates=True, output_fmt="NLC")
        (tokens_BLC,) = out["image_intermediates"]  # prefix tokens already split off by open_clip / timm
        summary_BC = out["image_features"]
        B, L, C = tokens_BLC.shape
        h, w = self.grid
        assert L == h * w, (L, self.grid)
        assert summary_BC.shape == (B, self.summary_dim), (summary_BC.shape, self.summary_dim)
        s = self.activation_scale
        return TeacherOutput(summary_BC=summary_BC * s, patches_BhwC=tokens_BLC.reshape(B, h, w, C) * s)


def build_open_clip_teacher(spec: TeacherSpec, weights: ResolvedWeights) -> OpenClipTeacher:
    """Build the open_clip vision tower for `spec` with `weights` and wrap it."""
    return OpenClipTeacher(create_open_clip_visual(spec, weights), spec)
