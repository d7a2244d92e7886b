"""Decoding and validating corpus images: every file decoded once, to RGB or to a recorded reason.

A web-scale corpus (the DataComp-style image sets AM-RADIO, arXiv 2312.06709, distils on) always holds
broken files: truncated, mislabelled, empty, enormous, tiny, or in unusual modes. Nothing here is fatal:
an image either decodes to RGB (alpha composited on white, 16-bit scaled to 8-bit, CMYK / palette / gray
converted) or raises `BadImage` with a reason the manifest records.

Limits are explicit arguments: the pixel limit is checked from the header *before* decoding, and PIL's
own DecompressionBombError is caught; PIL's global MAX_IMAGE_PIXELS is never touched.
"""

from __future__ import annotations

import hashlib
import os
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DEFAULT_PIXEL_LIMIT = 100_000_000  # 10k x 10k; larger images are recorded as bad, never decoded
MIN_SIDE = 8  # images with a side below this many pixels are recorded as bad ("too small")

_GRAY_MODES = ("1", "L")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_CONVERTIBLE = ("CMYK", "YCbCr", "HSV")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class BadImage(Exception):
    """An image that cannot be used; `reason` says why. Header facts are kept when they were readable."""

    def __init__(self, reason: str, *, width: int = 0, height: int = 0, mode: str = "") -> None:
        super().__init__(reason)
        self.reason, self.width, self.height, self.mode = reason, width, height, mode


@dataclass(frozen=True)
class ImageRecord:
    """What the manifest records about one file, plus the decoded RGB image when it is usable."""

    sha256: str  # of the file bytes; "" when the file could not be read
    size_bytes: int
    width: int  # after EXIF orientation, 0 when unknown
    height: int
    mode: str  # original PIL mode, "" when unknown
    rgb: Image.Image | None
    reason: str  # "" when ok

    @property
    def ok(self) -> bool:
        return self.rgb is not None


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert a loaded PIL image of any supported mode to RGB; BadImage for unsupported modes.

    Alpha (LA, RGBA, P with transparency, ...) is composited on white; 16-bit gray (I;16*, and I read as
    values in [0, 65535]) is scaled to 8 bits by /257; CMYK, YCbCr, HSV use PIL's conversion.
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _GRAY_MODES or mode in _CONVERTIBLE or (mode == "P" and "transparency" not in im.info):
        return im.convert("RGB")
    if mode in _ALPHA_MODES or mode == "P":
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _SIXTEEN_BIT:
        arr = np.clip(np.asarray(im, dtype=np.int64), 0, 65535)
        gray = ((arr * 255 + 32767) // 65535).astype(np.uint8)  # round(v / 257)
        return Image.fromarray(gray, mode="L").convert("RGB")
    raise BadImage(f"unsupported mode {mode}", width=im.width, height=im.height, mode=mode)


_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def decode_rgb(data: bytes, *, pixel_limit: int, min_side: int = MIN_SIDE,
               draft: tuple[int, int] | None = None) -> tuple[Image.Image, str]:
    """Decode image bytes to (RGB image, original mode), or raise BadImage(reason).

    draft=(w, h): JPEGs may be decoded at a reduced scale (1/2, 1/4, 1/8, in the DCT, PIL's `draft`) as
    long as the upright result is still at least w x h; other formats decode in full. The checks on the
    pixel limit and the minimum side always use the full size."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage("not an image (unrecognized format)") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"decompression bomb refused by PIL: {e}") from None
    except Exception as e:  # noqa: BLE001 - untrusted bytes: any header parser error means "bad image", never a crash
        raise BadImage(f"unreadable header: {type(e).__name__}: {e}") from None
    w, h, mode = im.width, im.height, im.mode
    if w * h > pixel_limit:
        raise BadImage(f"too large: {w}x{h} = {w * h} pixels > pixel limit {pixel_limit}",
                       width=w, height=h, mode=mode)
    if min(w, h) < min_side:
        raise BadImage(f"too small: {w}x{h}, a side is below {min_side} px", width=w, height=h, mode=mode)
    try:
        if draft is not None and im.format == "JPEG":
            want = draft
            if im.getexif().get(0x0112, 1) in _TRANSPOSED_ORIENTATIONS:
                want = (draft[1], draft[0])  # the stored pixels are rotated against the upright image
            im.draft("RGB", (max(1, int(want[0])), max(1, int(want[1]))))
        im.load()  # first frame of multi-frame files (GIF, TIFF)
        ImageOps.exif_transpose(im, in_place=True)  # no copy of the whole image when already upright
        rgb = to_rgb(im)
    except BadImage:
        raise
    except Image.DecompressionBombError as e:
        raise BadImage(f"decompression bomb refused by PIL: {e}", width=w, height=h, mode=mode) from None
    except Exception as e:  # noqa: BLE001 - truncated / corrupt data surfaces as OSError, SyntaxError, ValueError, ...
        raise BadImage(f"decode failed: {type(e).__name__}: {e}", width=w, height=h, mode=mode) from None
    return rgb, mode


def inspect_bytes(data: bytes, *, pixel_limit: int, min_side: int = MIN_SIDE) -> ImageRecord:
    """One image's bytes, decoded once: content hash, size, header facts, and the RGB image or the reason
    it is bad."""
    sha = hashlib.sha256(data).hexdigest()
    try:
        rgb, mode = decode_rgb(data, pixel_limit=pixel_limit, min_side=min_side)
    except BadImage as bad:
        return ImageRecord(sha, len(data), bad.width, bad.height, bad.mode, None, bad.reason)
    return ImageRecord(sha, len(data), rgb.width, rgb.height, mode, rgb, "")


def unreadable(e: OSError) -> ImageRecord:
    """The record of an image whose bytes could not be read."""
    return ImageRecord("", 0, 0, 0, "", None, f"cannot read file: {type(e).__name__}: {e.strerror or e}")


def inspect_image(path: Path | str, *, pixel_limit: int, min_side: int = MIN_SIDE) -> ImageRecord:
    """Read a file (a local path or an fsspec URL) once: `inspect_bytes` of its bytes."""
    from store_schema.image_reader import read_whole

    try:
        data = read_whole(path)
    except OSError as e:
        if isinstance(path, Path) and path.is_symlink() and not path.exists():
            return ImageRecord("", 0, 0, 0, "", None, f"broken symbolic link: its target {os.readlink(path)} "
                               "does not exist (fix or remove the link)")
        return unreadable(e)
    return inspect_bytes(data, pixel_limit=pixel_limit, min_side=min_side)


def load_rgb(uri: str | Path, *, pixel_limit: int, min_side: int = MIN_SIDE) -> Image.Image:
    """Decode one image file to RGB, or raise BadImage(reason)."""
    rec = inspect_image(Path(uri), pixel_limit=pixel_limit, min_side=min_side)
    if rec.rgb is None:
        raise BadImage(rec.reason, width=rec.width, height=rec.height, mode=rec.mode)
    return rec.rgb


def is_image_name(name: str) -> bool:
    """True when a file name has one of IMAGE_EXTENSIONS (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)
