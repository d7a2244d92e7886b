"""Pixels for a teacher: uint8 views -> float32 BCHW normalized with the spec's mean/std.

The spec carries its own preprocessing (timm's `PretrainedCfg` habit), so callers never pick mean/std by
hand. Views are already rendered at `spec.resolution` by the caller (stages.corpus.views.render_view).

Shape legend: B views in the batch, H/W pixel sides, C = 3 colour channels.
"""

from __future__ import annotations

import numpy as np
import torch

from stages.teachers.spec import TeacherSpec


def to_pixels(views_BHW3_uint8: np.ndarray, spec: TeacherSpec) -> torch.Tensor:
    """Convert rendered views to the teacher's normalized input.

    Args:
        views_BHW3_uint8: uint8 array [B, H, W, 3] with H == W == spec.resolution.
        spec: the teacher whose mean/std (on the 0..1 scale) are applied.

    Returns:
        float32 tensor [B, 3, H, W] equal to (x / 255 - mean) / std.
    """
    if views_BHW3_uint8.dtype != np.uint8:
        raise ValueError(f"views must be uint8, got {views_BHW3_uint8.dtype}")
    if views_BHW3_uint8.ndim != 4 or views_BHW3_uint8.shape[-1] != 3:
        raise ValueError(f"views must have shape [B, H, W, 3], got {views_BHW3_uint8.shape}")
    side = spec.resolution
    if views_BHW3_uint8.shape[1:3] != (side, side):
        raise ValueError(
            f"teacher {spec.name!r} takes {side}x{side} views, got {views_BHW3_uint8.shape[1]}x"
            f"{views_BHW3_uint8.shape[2]}; render views at spec.resolution"
        )
    # Channels-first copy first, then in-place arithmetic: one float buffer, no strided permute copy.
    x_BCHW = torch.empty((views_BHW3_uint8.shape[0], 3, side, side), dtype=torch.float32)
    x_BCHW.copy_(torch.from_numpy(np.ascontiguousarray(views_BHW3_uint8)).permute(0, 3, 1, 2))
    mean_13 = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_13 = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
    return x_BCHW.div_(255.0).sub_(mean_13).div_(std_13)


def pixels_on_device(views_BHW3_uint8: torch.Tensor, spec: TeacherSpec) -> torch.Tensor:
    """`to_pixels` for uint8 views already on the teacher's device: the normalization runs there, so the
    host ships 1 byte per pixel instead of 4. Same operations in the same order as `to_pixels`, so on the
    same device the result is bit-identical."""
    if views_BHW3_uint8.dtype != torch.uint8:
        raise ValueError(f"views must be uint8, got {views_BHW3_uint8.dtype}")
    if views_BHW3_uint8.ndim != 4 or views_BHW3_uint8.shape[-1] != 3:
        raise ValueError(f"views must have shape [B, H, W, 3], got {tuple(views_BHW3_uint8.shape)}")
    side = spec.resolution
    if tuple(views_BHW3_uint8.shape[1:3]) != (side, side):
        raise ValueError(f"teacher {spec.name!r} takes {side}x{side} views, got {views_BHW3_uint8.shape[1]}x"
                         f"{views_BHW3_uint8.shape[2]}; render views at spec.resolution")
    dev = views_BHW3_uint8.device
    x_BCHW = torch.empty((views_BHW3_uint8.shape[0], 3, side, side), dtype=torch.float32, device=dev)
    x_BCHW.copy_(views_BHW3_uint8.permute(0, 3, 1, 2))
    mean_13 = torch.tensor(spec.mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    std_13 = torch.tensor(spec.std, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    return x_BCHW.div_(255.0).sub_(mean_13).div_(std_13)


def zero_padding(pixels_BCHW: torch.Tensor, frames_B4, resolution: int) -> torch.Tensor:
    """Normalized pixels with each view's padding (rows / columns beyond its content, longest-side + pad
    frames) set to exactly 0, as SAM pads after normalizing; views without padding are unchanged."""
    from stages.teachers.resize import content_px

    rows_cols = [content_px(f, resolution) for f in frames_B4]
    if all(rc == (resolution, resolution) for rc in rows_cols):
        return pixels_BCHW
    dev = pixels_BCHW.device
    rc_B2 = torch.tensor(rows_cols, device=dev)
    ar = torch.arange(resolution, device=dev)
    keep_BHW = (ar[None, :, None] < rc_B2[:, 0, None, None]) & (ar[None, None, :] < rc_B2[:, 1, None, None])
    return pixels_BCHW * keep_BHW[:, None].to(pixels_BCHW.dtype)
