"""Fixed per-image views (crop box + horizontal flip), drawn deterministically, and rendering a view.

An offline feature store can only hold the views it was given, so each image gets V fixed views shared by
all teachers, and stage two samples among them (FKD, Shen & Xing, arXiv 2112.01528; used for the stored
targets of agglomerative distillation, AM-RADIO arXiv 2312.06709). Views follow torchvision's
RandomResizedCrop (Szegedy et al. 2015): area fraction from `scale`, log-uniform aspect from `ratio`,
but in *normalized* image coordinates (the crop is resized to a square anyway), so drawing a view needs
only the image's content hash and the spec: the same bytes get the same views on every machine.

Shape legend: V views; box_4 = (x0, y0, x1, y1) in [0, 1]; H/W pixel sides.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from store_schema.manifest import ViewSpec

_MAX_TRIES = 10
FULL_BOX = (0.0, 0.0, 1.0, 1.0)


def _rng(sha256: str, seed: int) -> np.random.Generator:
    if len(sha256) != 64:
        raise ValueError(f"expected a 64-digit sha256 hex digest, got {sha256!r}")
    words = [int(sha256[i:i + 8], 16) for i in range(0, 64, 8)]
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *words]))


def _draw_box(rng: np.random.Generator, spec: ViewSpec) -> tuple[float, float, float, float]:
    log_lo, log_hi = math.log(spec.ratio[0]), math.log(spec.ratio[1])
    for _ in range(_MAX_TRIES):
        area = rng.uniform(spec.scale[0], spec.scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
        if w <= 1.0 and h <= 1.0:
            x0, y0 = rng.uniform(0.0, 1.0 - w), rng.uniform(0.0, 1.0 - h)
            return x0, y0, x0 + w, y0 + h
    # Fallback as in RandomResizedCrop: centred crop with the aspect clamped to the ratio range.
    aspect = min(max(1.0, spec.ratio[0]), spec.ratio[1])
    w, h = (1.0, 1.0 / aspect) if aspect >= 1.0 else (aspect, 1.0)
    return (1.0 - w) / 2, (1.0 - h) / 2, (1.0 + w) / 2, (1.0 + h) / 2


def draw_views(sha256: str, spec: ViewSpec) -> tuple[np.ndarray, np.ndarray]:
    """boxes_V4 (float64, normalized x0, y0, x1, y1) and flips_V (bool) for one image.

    Deterministic in (spec.seed, sha256). View 0 is always the full image, unflipped.
    """
    rng = _rng(sha256, spec.seed)
    boxes_V4 = np.empty((spec.num_views, 4), np.float64)
    flips_V = np.zeros(spec.num_views, bool)
    boxes_V4[0] = FULL_BOX
    for v in range(1, spec.num_views):
        boxes_V4[v] = _draw_box(rng, spec)
        flips_V[v] = bool(rng.random() < spec.flip_p)
    return boxes_V4, flips_V


def render_view(img: Image.Image, box_4: np.ndarray | tuple[float, ...], flip: bool, size: int) -> np.ndarray:
    """Crop the normalized box from an RGB image, resize to size x size (bicubic), flip; uint8 [size, size, 3]."""
    if img.mode != "RGB":
        raise ValueError(f"render_view needs an RGB image (use stages.corpus.images.load_rgb), got {img.mode}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box_4, np.float64).reshape(4))
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise ValueError(f"box must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {box_4}")
    W, H = img.size
    out = img.resize((size, size), Image.Resampling.BICUBIC, box=(x0 * W, y0 * H, x1 * W, y1 * H))
    if flip:  # in PIL: ~6x faster than copying a reversed numpy view, same pixels
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.ascontiguousarray(np.asarray(out, dtype=np.uint8))


def render_teacher_view(img: Image.Image, box_4, flip: bool, resolution: int, frame_4) -> np.ndarray:
    """A view as a teacher takes it, by its frame (stages/teachers/resize.py): uint8 [R, R, 3].

    The frame (u0, v0, u1, v1) is where the teacher's square input lies in the view's coordinates.
    Inside the view (a squash, or a shortest-side centre crop): the sub-box of the view box it covers,
    resized to R x R. Beyond the view (longest side + padding): the whole view resized to the content
    rows x cols at the top left, the rest 0 here (the worker sets it to 0 after normalization, as SAM)."""
    u0, v0, u1, v1 = (float(x) for x in np.asarray(frame_4, np.float64).reshape(4))
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box_4, np.float64).reshape(4))
    if u1 <= 1.0 and v1 <= 1.0:
        if flip:  # the frame is in the flipped view's coordinates: back to the image's
            u0, u1 = 1.0 - u1, 1.0 - u0
        bw, bh = x1 - x0, y1 - y0
        sub = (x0 + u0 * bw, y0 + v0 * bh, x0 + u1 * bw, y0 + v1 * bh)
        return render_view(img, sub, flip, resolution)
    rows, cols = int(round(resolution / v1)), int(round(resolution / u1))
    if img.mode != "RGB":
        raise ValueError(f"render_teacher_view needs an RGB image, got {img.mode}")
    W, H = img.size
    content = img.resize((cols, rows), Image.Resampling.BICUBIC, box=(x0 * W, y0 * H, x1 * W, y1 * H))
    if flip:
        content = content.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = np.zeros((resolution, resolution, 3), np.uint8)
    out[:rows, :cols] = np.asarray(content, dtype=np.uint8)
    return out
