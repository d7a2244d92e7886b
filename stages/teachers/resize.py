"""Each teacher's own resize rule, and where its input frame lies in the student's view.

The teachers of agglomerative distillation were trained with different preprocessing (AM-RADIO, arXiv
2312.06709; PHI-S, arXiv 2410.01680 §3 pads and crops SAM's input because downsampling degrades it):

- SQUASH: the view is resized to the square input (DFN CLIP, SigLIP: their own preprocessing);
- SHORTEST_CROP: shortest side to the input side, then the centre square (OpenAI CLIP's `Resize` +
  `CenterCrop`): the teacher sees the middle of a non-square view;
- LONGEST_PAD: longest side to the input side, the content at the top left, the rest zero after
  normalization (SAM's `ResizeLongestSide` + pad): part of the teacher's grid is padding.

Every view is rendered from the same view box for every teacher; what differs is the teacher's *frame*:
the rectangle its input covers, in the coordinates of the view as the student sees it (u to the right, v
down, the view spanning [0, 1]^2; a flipped view is flipped for both). SQUASH: (0, 0, 1, 1); SHORTEST_CROP:
a centred sub-rectangle; LONGEST_PAD: (0, 0, a, b) with a, b >= 1 (the part beyond 1 is padding). A teacher
token (cell of its grid) is *content* when its whole cell lies inside the view; padded tokens (cells that
hold padding, wholly or in part) are excluded
from the loss, the statistics and the evaluation, and the student's prediction for a teacher token is its
own feature map sampled over that token's cell of the frame (`sample_on_frame`), so targets stay aligned
with the student's view.

Shape legend: N images, V views, B samples, h/w grid sides, C channels.
"""

from __future__ import annotations

import math
from enum import Enum

import numpy as np
import torch
import torch.nn.functional as F

SQUASH_FRAME = (0.0, 0.0, 1.0, 1.0)


class ResizeRule(str, Enum):
    """How a teacher resizes a view to its square input (stored in its TeacherSpec)."""

    SQUASH = "squash"
    SHORTEST_CROP = "shortest_side_center_crop"
    LONGEST_PAD = "longest_side_pad"


def pad_content_side(side_px: float, longest_px: float, resolution: int) -> int:
    """Pixels of a view side after its longest side is scaled to `resolution` (at least 1)."""
    return max(1, min(resolution, int(round(side_px * resolution / longest_px))))


def teacher_frames(rule: ResizeRule, resolution: int, boxes_NV4: np.ndarray, width_N: np.ndarray,
                   height_N: np.ndarray) -> np.ndarray:
    """float64 [N, V, 4]: each view's teacher frame (u0, v0, u1, v1) in view coordinates, from the view
    boxes (normalized on the image) and the images' pixel sizes. Images of unknown size get SQUASH_FRAME."""
    boxes_NV4 = np.asarray(boxes_NV4, np.float64)
    N, V = boxes_NV4.shape[:2]
    frames = np.tile(np.asarray(SQUASH_FRAME), (N, V, 1))
    rule = ResizeRule(rule)
    if rule == ResizeRule.SQUASH:
        return frames
    w_NV = (boxes_NV4[..., 2] - boxes_NV4[..., 0]) * np.asarray(width_N, np.float64)[:, None]
    h_NV = (boxes_NV4[..., 3] - boxes_NV4[..., 1]) * np.asarray(height_N, np.float64)[:, None]
    known = (w_NV > 0) & (h_NV > 0)
    for n, v in zip(*np.nonzero(known)):
        frames[n, v] = frame_of(rule, resolution, float(w_NV[n, v]), float(h_NV[n, v]))
    return frames


def frame_of(rule: ResizeRule, resolution: int, w_px: float, h_px: float) -> tuple[float, float, float, float]:
    """The teacher frame of one view of w_px x h_px pixels (see the module docstring)."""
    rule = ResizeRule(rule)
    if rule == ResizeRule.SQUASH:
        return SQUASH_FRAME
    if rule == ResizeRule.SHORTEST_CROP:
        if w_px >= h_px:
            half = 0.5 * h_px / w_px
            return (0.5 - half, 0.0, 0.5 + half, 1.0)
        half = 0.5 * w_px / h_px
        return (0.0, 0.5 - half, 1.0, 0.5 + half)
    longest = max(w_px, h_px)
    cw = pad_content_side(w_px, longest, resolution)
    ch = pad_content_side(h_px, longest, resolution)
    return (0.0, 0.0, resolution / cw, resolution / ch)


def content_px(frame_4, resolution: int) -> tuple[int, int]:
    """(rows, cols) of the teacher input that hold the view (the rest is padding) for a LONGEST_PAD frame;
    the whole input for the other rules."""
    u0, v0, u1, v1 = (float(x) for x in frame_4)
    if u0 != 0.0 or v0 != 0.0 or (u1 <= 1.0 and v1 <= 1.0):
        return resolution, resolution
    return int(round(resolution / v1)), int(round(resolution / u1))


def _cell_edges(frames_B4: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """(u_lo, u_hi [B, w], v_lo, v_hi [B, h]): the view coordinates of the teacher cells' edges."""
    gh, gw = grid
    f = frames_B4.to(torch.float64)
    cols = torch.arange(gw + 1, dtype=torch.float64, device=f.device) / gw
    rows = torch.arange(gh + 1, dtype=torch.float64, device=f.device) / gh
    u_Bw1 = f[:, 0:1] + cols[None] * (f[:, 2:3] - f[:, 0:1])
    v_Bh1 = f[:, 1:2] + rows[None] * (f[:, 3:4] - f[:, 1:2])
    return u_Bw1[:, :-1], u_Bw1[:, 1:], v_Bh1[:, :-1], v_Bh1[:, 1:]


def content_tokens(frames_B4: torch.Tensor | np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """bool [B, h, w]: the teacher tokens whose whole cell lies inside the view. False: a cell that holds
    padding, wholly or in part (its features mix in the padding, so it is neither a target nor counted)."""
    frames_B4 = torch.as_tensor(np.asarray(frames_B4) if isinstance(frames_B4, np.ndarray) else frames_B4)
    u_lo, u_hi, v_lo, v_hi = _cell_edges(frames_B4, grid)
    eps = 1e-9
    cols_Bw = (u_lo >= -eps) & (u_hi <= 1.0 + eps)
    rows_Bh = (v_lo >= -eps) & (v_hi <= 1.0 + eps)
    return rows_Bh[:, :, None] & cols_Bw[:, None, :]


def content_mask_NVhw(frames_NV4: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """numpy bool [N, V, h, w] of `content_tokens` for every view of N images."""
    N, V = frames_NV4.shape[:2]
    if N * V == 0:
        return np.zeros((N, V, *grid), bool)
    return content_tokens(frames_NV4.reshape(-1, 4), grid).numpy().reshape(N, V, *grid)


def sample_on_frame(x_BhwC: torch.Tensor, frames_B4: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[B, gh, gw, C]: the student's map x (spanning its view) averaged over each teacher cell of the frame.

    Each cell is supersampled with s x s bilinear samples (align_corners=False, border padding), s = the
    student tokens a cell spans (at least 1), so a cell coarser than the student's grid averages the
    tokens it covers, as the area pooling of the squash path does, and every student token inside the
    frame gets a gradient. Cells outside the view (padding) read the border: their loss is masked."""
    B, h, w, C = x_BhwC.shape
    gh, gw = grid
    f = frames_B4.to(device=x_BhwC.device, dtype=torch.float32)
    span_u = float((f[:, 2] - f[:, 0]).max()) if B else 1.0
    span_v = float((f[:, 3] - f[:, 1]).max()) if B else 1.0
    s = max(1, math.ceil(max(w * span_u / gw, h * span_v / gh)))
    sub = (torch.arange(s, device=x_BhwC.device, dtype=torch.float32) + 0.5) / s
    cols = ((torch.arange(gw, device=x_BhwC.device, dtype=torch.float32)[:, None] + sub[None]) / gw).reshape(-1)
    rows = ((torch.arange(gh, device=x_BhwC.device, dtype=torch.float32)[:, None] + sub[None]) / gh).reshape(-1)
    u_BW = f[:, 0:1] + cols[None] * (f[:, 2:3] - f[:, 0:1])
    v_BH = f[:, 1:2] + rows[None] * (f[:, 3:4] - f[:, 1:2])
    H, W = rows.numel(), cols.numel()
    grid_BHW2 = torch.stack([(2 * u_BW - 1)[:, None, :].expand(B, H, W), (2 * v_BH - 1)[:, :, None].expand(B, H, W)], -1)
    out_BCHW = F.grid_sample(x_BhwC.permute(0, 3, 1, 2), grid_BHW2.to(x_BhwC.dtype), mode="bilinear",
                             padding_mode="border", align_corners=False)
    out_BCHW = F.avg_pool2d(out_BCHW, kernel_size=s) if s > 1 else out_BCHW
    return out_BCHW.permute(0, 2, 3, 1)


def batch_frames(frames: dict[str, np.ndarray] | None, image_B, view_B, device: torch.device | str
                 ) -> dict[str, torch.Tensor]:
    """{teacher: float32 [B, 4]} on `device`: the frames (StoreSet.frames, [N, V, 4] per teacher) of a
    batch's (image, view) pairs."""
    if not frames:
        return {}
    i, v = np.asarray(image_B), np.asarray(view_B)
    return {t: torch.from_numpy(f[i, v].astype(np.float32)).to(device) for t, f in frames.items()}


def teacher_map_in_view(x_BhwC: torch.Tensor, frames_B4: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[B, gh, gw, C]: a teacher's map (spanning its frame) resampled onto a grid spanning the view, the
    inverse of `sample_on_frame` (bilinear at each view cell's centre, border padding): how stored targets of
    a teacher with its own resize rule line up with per-view references (segmentation masks). View cells
    the teacher never saw (beside a centre crop) read its nearest border tokens."""
    B = x_BhwC.shape[0]
    gh, gw = grid
    f = frames_B4.to(device=x_BhwC.device, dtype=torch.float32)
    u_w = (torch.arange(gw, device=x_BhwC.device, dtype=torch.float32) + 0.5) / gw
    v_h = (torch.arange(gh, device=x_BhwC.device, dtype=torch.float32) + 0.5) / gh
    t_Bw = (u_w[None] - f[:, 0:1]) / (f[:, 2:3] - f[:, 0:1])
    s_Bh = (v_h[None] - f[:, 1:2]) / (f[:, 3:4] - f[:, 1:2])
    grid_BHW2 = torch.stack([(2 * t_Bw - 1)[:, None, :].expand(B, gh, gw), (2 * s_Bh - 1)[:, :, None].expand(B, gh, gw)], -1)
    out_BCHW = F.grid_sample(x_BhwC.permute(0, 3, 1, 2), grid_BHW2.to(x_BhwC.dtype), mode="bilinear",
                             padding_mode="border", align_corners=False)
    return out_BCHW.permute(0, 2, 3, 1)
