"""Decoding a manifest's images again after the manifest was built, and rendering (image, view) samples.

Stage one (teacher views), stage two (student views) and evaluation all go back to the image files. They
share one rule: a file is used only if it still decodes and its bytes still hash to the manifest's
sha256 — the views were drawn from that hash and the stored targets were computed from those pixels.

Shape legend: B samples, H/W pixel sides.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from stages.corpus.images import inspect_image
from stages.corpus.views import render_view


class ImageChangedError(ValueError):
    """An image's file no longer decodes, or no longer matches the manifest's sha256."""


def decode_checked(manifest: Any, image_id: int) -> tuple[Image.Image | None, str]:
    """(RGB image, "") for a usable manifest image, or (None, reason) when it fails to decode or changed.

    Decoding uses the manifest's own pixel limit and minimum side, as `pipeline corpus` did."""
    rec = inspect_image(manifest.image_path(image_id), pixel_limit=manifest.pixel_limit, min_side=manifest.min_side)
    if not rec.ok:
        return None, rec.reason
    if rec.sha256 != manifest.sha256[image_id]:
        return None, (f"content changed since the manifest (sha256 {rec.sha256[:12]} != "
                      f"{manifest.sha256[image_id][:12]})")
    return rec.rgb, ""


def load_checked(manifest: Any, image_id: int) -> Image.Image:
    """The RGB image, or ImageChangedError naming the file and what is wrong (for consumers of stored targets)."""
    img, reason = decode_checked(manifest, image_id)
    if img is None:
        raise ImageChangedError(f"image {manifest.image_path(image_id)} (id {image_id}) cannot be used: {reason}; "
                                "its stored targets no longer match it: rebuild the manifest and stores")
    return img


def render_samples(manifest: Any, pairs_B2: np.ndarray, size: int) -> np.ndarray:
    """uint8 [B, size, size, 3]: each (image, view) pair rendered per the manifest; each image decoded once."""
    decoded = {int(i): load_checked(manifest, int(i)) for i in np.unique(pairs_B2[:, 0])}
    views = [render_view(decoded[int(i)], manifest.view_boxes_NV4[i, v], bool(manifest.view_flips_NV[i, v]), size)
             for i, v in pairs_B2]
    return np.stack(views)
