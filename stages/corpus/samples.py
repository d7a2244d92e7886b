"""Decoding a manifest's images again after the manifest was built, and rendering (image, view) samples.

Stage one (teacher views), stage two (student views) and evaluation all go back to the image files. They
share one rule: a file is used only if it still decodes and its bytes still hash to the manifest's
sha256 — the views were drawn from that hash and the stored targets were computed from those pixels.

Shape legend: B samples, H/W pixel sides.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
from PIL import Image

from stages.corpus.images import BadImage, decode_rgb
from stages.corpus.views import render_view


class ImageChangedError(ValueError):
    """An image's file no longer decodes, or no longer matches the manifest's sha256."""


def _bytes_or_reason(manifest: Any, image_id: int) -> tuple[bytes | None, str]:
    """(bytes, "") read through the manifest's one reader (a whole file, or one ranged read of its tar
    shard), or (None, reason) when they cannot be read or no longer hash to the manifest's sha256."""
    try:
        data = manifest.read_image_bytes(image_id)
    except OSError as e:
        return None, f"cannot read file: {type(e).__name__}: {e.strerror or e}"
    sha = hashlib.sha256(data).hexdigest()
    if sha != manifest.sha256[image_id]:
        return None, (f"content changed since the manifest (sha256 {sha[:12]} != "
                      f"{manifest.sha256[image_id][:12]})")
    return data, ""


def checked_bytes(manifest: Any, image_id: int) -> bytes:
    """The image's bytes as `_bytes_or_reason` reads them, or ImageChangedError naming it and the reason."""
    data, reason = _bytes_or_reason(manifest, image_id)
    if data is None:
        raise _changed(manifest, image_id, reason)
    return data


def _changed(manifest: Any, image_id: int, reason: str) -> ImageChangedError:
    """The error of a manifest image whose stored targets no longer match it."""
    return ImageChangedError(f"image {manifest.image_location(image_id)} (id {image_id}) cannot be used: {reason}; "
                             "its stored targets no longer match it: rebuild the manifest and stores")


def decode_checked(manifest: Any, image_id: int) -> tuple[Image.Image | None, str]:
    """(RGB image, "") for a usable manifest image, or (None, reason) when it fails to decode or changed.

    Decoding uses the manifest's own pixel limit and minimum side, as `pipeline corpus` did."""
    data, reason = _bytes_or_reason(manifest, image_id)
    if data is None:
        return None, reason
    try:
        img, _ = decode_rgb(data, pixel_limit=manifest.pixel_limit, min_side=manifest.min_side)
    except BadImage as bad:
        return None, bad.reason
    return img, ""


def load_checked(manifest: Any, image_id: int) -> Image.Image:
    """The RGB image, or ImageChangedError naming the file and what is wrong (for consumers of stored targets)."""
    img, reason = decode_checked(manifest, image_id)
    if img is None:
        raise _changed(manifest, image_id, reason)
    return img


def render_samples(manifest: Any, pairs_B2: np.ndarray, size: int) -> np.ndarray:
    """uint8 [B, size, size, 3]: each (image, view) pair rendered per the manifest; each image decoded once."""
    decoded = {int(i): load_checked(manifest, int(i)) for i in np.unique(pairs_B2[:, 0])}
    views = [render_view(decoded[int(i)], manifest.view_boxes_NV4[i, v], bool(manifest.view_flips_NV[i, v]), size)
             for i, v in pairs_B2]
    return np.stack(views)


def draft_size(boxes_K4: np.ndarray, size: int) -> tuple[int, int]:
    """The smallest upright image size at which every box (normalized x0, y0, x1, y1) still spans at least
    `size` pixels each way (what a reduced-scale JPEG decode may go down to; never above the full size)."""
    boxes_K4 = np.asarray(boxes_K4, np.float64).reshape(-1, 4)
    bw = float(np.min(boxes_K4[:, 2] - boxes_K4[:, 0]))
    bh = float(np.min(boxes_K4[:, 3] - boxes_K4[:, 1]))
    return math.ceil(size / bw), math.ceil(size / bh)


def load_checked_for_views(manifest: Any, image_id: int, boxes_K4: np.ndarray, size: int) -> Image.Image:
    """The RGB image for rendering the given view boxes at `size`, decoded at reduced scale when it is a JPEG
    much larger than the views need (PIL draft, DCT-domain scaling); ImageChangedError when the file no
    longer decodes or its bytes no longer hash to the manifest's sha256.

    The crop box and flip of a view are applied to the image exactly as for the teachers (normalized
    coordinates, so the same region of the scene); only the resampling of the student-size pixels differs
    slightly from a full decode (measured in tests/test_student_views.py)."""
    data = checked_bytes(manifest, image_id)
    try:
        img, _ = decode_rgb(data, pixel_limit=manifest.pixel_limit, min_side=manifest.min_side,
                            draft=draft_size(boxes_K4, size))
    except BadImage as bad:
        raise ImageChangedError(f"image {manifest.image_location(image_id)} (id {image_id}) cannot be used: "
                                f"{bad.reason}") from None
    return img


def render_student_views(manifest: Any, pairs_B2: np.ndarray, size: int) -> np.ndarray:
    """uint8 [B, size, size, 3]: the (image, view) pairs at the student's size, each image decoded once and
    no larger than its views need (`load_checked_for_views`); same crop boxes and flips as the teachers'."""
    out = np.empty((len(pairs_B2), size, size, 3), np.uint8)
    images = np.unique(pairs_B2[:, 0]) if len(pairs_B2) else []
    for i in images:
        rows = np.flatnonzero(pairs_B2[:, 0] == i)
        views = pairs_B2[rows, 1]
        img = load_checked_for_views(manifest, int(i), manifest.view_boxes_NV4[i, views], size)
        for r, v in zip(rows, views):
            out[r] = render_view(img, manifest.view_boxes_NV4[i, v], bool(manifest.view_flips_NV[i, v]), size)
    return out
