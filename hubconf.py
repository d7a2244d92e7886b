"""torch.hub entry points: a trained agglomerative student (AM-RADIO, arXiv 2312.06709) with its teacher
adaptors in each teacher's own space (PHI-S denormalization folded in, arXiv 2410.01680).

    model = torch.hub.load("<owner>/agglo-distill", "student", path="runs/phis-seed0/export.safetensors",
                           adaptor_names=["tiny_clip"])            # or a local checkout with source="local"
    out = model(model.pixels(images_BHW3_uint8))                   # ExportedOutput
    out.backbone_summary_BKC, out.backbone_features_BhwC, out.adaptors["tiny_clip"].features_BhwC

Like RADIO's `radio_model` entry, but the weights are a file you trained (`pipeline distill` /
`pipeline export`), given by `path`: nothing is downloaded. Loading imports torch, timm, safetensors and
numpy only (no zarr, no Ray, no DVC, no training code): `stages/distill/exported.py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stages.distill.exported import ExportedStudent

# What the loader imports beyond this repository's own packages (torch.hub checks they are installed).
dependencies = ["torch", "timm", "safetensors", "numpy"]


def student(path: str, adaptor_names: list[str] | None = None, device: str = "cpu") -> ExportedStudent:
    """The exported student at `path` (export.safetensors, or the run directory holding it) in eval mode.

    adaptor_names: the teacher adaptors to keep (None: every teacher the run was trained on; []: the backbone
    alone); an unknown name raises ValueError listing the valid ones. Returns
    `stages.distill.exported.ExportedStudent`: `model.pixels(uint8 [B, H, W, 3])` applies the preprocessing
    recorded in the file (`model.preprocessing`: mean, std, input_size, patch_size, interpolation).
    """
    from stages.distill.exported import load_exported

    return load_exported(path, adaptor_names=adaptor_names, device=device)
