"""A broken corpus: every file gets a status and a reason, nothing crashes, converted modes decode to RGB."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.corpus.build_manifest import build_manifest
from stages.corpus.images import BadImage, decode_rgb, load_rgb

PIXEL_LIMIT = 5000  # small, so a 100x100 image is "huge"


def _jpeg_bytes(size=(64, 48), mode="RGB", color=(200, 30, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _broken_corpus(root: Path) -> Path:
    root.mkdir()
    noise = np.random.default_rng(0).integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=95)
    good = buf.getvalue()  # noisy, so most bytes are scan data and a cut lands after the header
    (root / "good.jpg").write_bytes(good)
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "text.png").write_text("this is not a PNG\n")
    (root / "empty.jpg").write_bytes(b"")
    (root / "cmyk.jpg").write_bytes(_jpeg_bytes(mode="CMYK", color=(0, 255, 255, 0)))
    Image.fromarray((np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 64)).save(root / "gray16.png")
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([0, 255, 0] + [255, 0, 0] * 255)  # index 0 green (transparent), others red
    pal.paste(1, (0, 0, 10, 20))
    pal.save(root / "palette_transparent.png", transparency=0)
    Image.new("RGB", (1, 1), (1, 2, 3)).save(root / "one_pixel.png")
    Image.new("RGB", (100, 100), (9, 9, 9)).save(root / "huge.png")
    Image.new("LA", (16, 16), (0, 0)).save(root / "gray_alpha.png")  # fully transparent black
    Image.new("RGBA", (16, 16), (0, 0, 255, 255)).save(root / "rgba.webp", lossless=True)
    Image.new("L", (12, 12), 77).save(root / "gray.bmp")
    return root


EXPECTED = {  # uri -> (status, reason fragment)
    "good.jpg": ("ok", ""),
    "truncated.jpg": ("bad", "decode failed"),
    "text.png": ("bad", "not an image"),
    "empty.jpg": ("bad", "empty file"),
    "cmyk.jpg": ("ok", ""),
    "gray16.png": ("ok", ""),
    "palette_transparent.png": ("ok", ""),
    "one_pixel.png": ("bad", "too small: 1x1"),
    "huge.png": ("bad", "too large: 100x100 = 10000 pixels > pixel limit 5000"),
    "gray_alpha.png": ("ok", ""),
    "rgba.webp": ("ok", ""),
    "gray.bmp": ("ok", ""),
}


def test_every_file_gets_a_status_and_reason(tmp_path):
    src = _broken_corpus(tmp_path / "broken")
    m = build_manifest(src, out_dir=tmp_path / "out", pixel_limit=PIXEL_LIMIT)
    rows = {r["uri"]: r for r in m.table.to_pylist()}
    assert set(rows) == set(EXPECTED)
    for uri, (status, fragment) in EXPECTED.items():
        row = rows[uri]
        assert row["status"] == status, (uri, row["reason"])
        assert fragment in row["reason"], (uri, row["reason"])
        assert (row["reason"] == "") == (status == "ok"), uri
        assert row["size_bytes"] == (src / uri).stat().st_size
        assert len(row["view_boxes"]) == 4 and row["split"] in ("train", "val")
    assert rows["empty.jpg"]["sha256"] == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert (rows["huge.png"]["width"], rows["huge.png"]["mode"]) == (100, "RGB")  # header facts kept
    modes = {u: rows[u]["mode"] for u in ("cmyk.jpg", "gray16.png", "palette_transparent.png", "gray_alpha.png")}
    assert modes == {"cmyk.jpg": "CMYK", "gray16.png": "I;16", "palette_transparent.png": "P",
                     "gray_alpha.png": "LA"}
    assert int(m.ok_N.sum()) == 7


@pytest.mark.parametrize("uri", [u for u, (s, _) in EXPECTED.items() if s == "ok"])
def test_converted_images_decode_to_rgb(tmp_path, uri):
    src = _broken_corpus(tmp_path / "broken")
    img = load_rgb(src / uri, pixel_limit=PIXEL_LIMIT)
    assert img.mode == "RGB"
    assert np.asarray(img).dtype == np.uint8 and np.asarray(img).shape[2] == 3


def test_conversion_values(tmp_path):
    src = _broken_corpus(tmp_path / "broken")
    pal = np.asarray(load_rgb(src / "palette_transparent.png", pixel_limit=PIXEL_LIMIT))
    np.testing.assert_array_equal(pal[5, 2], [255, 0, 0])  # opaque red stays red
    np.testing.assert_array_equal(pal[5, 15], [255, 255, 255])  # transparent green -> white background
    la = np.asarray(load_rgb(src / "gray_alpha.png", pixel_limit=PIXEL_LIMIT))
    assert (la == 255).all()  # fully transparent -> white
    g16 = np.asarray(load_rgb(src / "gray16.png", pixel_limit=PIXEL_LIMIT))
    raw = np.arange(32 * 32).reshape(32, 32) * 64
    np.testing.assert_array_equal(g16[..., 0], np.round(raw / 257).astype(np.uint8))
    cmyk = np.asarray(load_rgb(src / "cmyk.jpg", pixel_limit=PIXEL_LIMIT)).astype(int)
    assert cmyk[..., 0].mean() > 200 and cmyk[..., 1].mean() < 40  # C=0, M=Y=255 -> red


def test_bad_image_exceptions_and_pil_bomb_guard(tmp_path):
    src = _broken_corpus(tmp_path / "broken")
    with pytest.raises(BadImage) as err:
        load_rgb(src / "truncated.jpg", pixel_limit=PIXEL_LIMIT)
    assert "decode failed" in err.value.reason and err.value.width == 64
    with pytest.raises(BadImage, match="cannot read file"):
        load_rgb(src / "missing.png", pixel_limit=PIXEL_LIMIT)
    # PIL's own bomb check (2x its global limit) is caught even when our limit is set higher.
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")
    with pytest.raises(BadImage, match="decompression bomb"):
        decode_rgb(bomb.getvalue(), pixel_limit=10**12)
    assert Image.MAX_IMAGE_PIXELS == 89478485  # never mutated
