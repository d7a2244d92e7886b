"""Student views rendered by stage two's loader (reduced-scale JPEG decode) show what the teachers saw.

Views are fixed crop boxes + flips per image (FKD arXiv 2112.01528; AM-RADIO arXiv 2312.06709). The loader
decodes a JPEG no larger than the student's views need (PIL draft); the crop and flip must be the
teachers' exactly, only the resampling may differ slightly from a full decode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from stages.corpus.build_manifest import build_manifest
from stages.corpus.images import load_rgb
from stages.corpus.samples import draft_size, load_checked_for_views, render_samples, render_student_views
from stages.corpus.views import render_view
from store_schema.manifest import ViewSpec


def _photo(size: tuple[int, int], seed: int) -> Image.Image:
    """A smooth, asymmetric image (gradients + a bright block left of centre), so a wrong crop or flip shows."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    a = rng.uniform(-1, 1, (3, 3))
    img = np.stack([a[c, 0] * xx + a[c, 1] * yy + a[c, 2] for c in range(3)], -1) * 0.4 + 0.5
    x0, y0 = int(w * 0.15), int(h * 0.3)
    img[y0:y0 + h // 5, x0:x0 + w // 6] = (0.95, 0.9, 0.2)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))


def test_draft_rendered_views_match_full_decode_crop_and_flip(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i, size in enumerate(((1600, 1200), (900, 1400), (640, 480))):
        _photo(size, i).save(folder / f"p{i}.jpg", quality=92)
    m = build_manifest(folder, out_dir=tmp_path / "root", view_spec=ViewSpec(num_views=4, seed=3), val_fraction=0.0)
    pairs = np.array([(i, v) for i in range(m.num_images) for v in range(4)], np.int64)
    assert m.view_flips_NV.any()  # some views are flipped
    fast = render_student_views(m, pairs, 64)
    full = render_samples(m, pairs, 64)  # decoded at full size, as the teachers' views are
    err = np.abs(fast.astype(np.int16) - full.astype(np.int16))
    assert err.mean() < 2.0 and np.percentile(err, 99) < 16, (err.mean(), np.percentile(err, 99))
    # a wrong flip or crop would be far off: compare with the mirror image of each view
    mirrored = np.abs(fast.astype(np.int16) - full[:, :, ::-1].astype(np.int16)).mean(axis=(1, 2, 3))
    assert (mirrored > 5 * err.mean(axis=(1, 2, 3)) + 1).all()
    # the teacher-side render of the same view at a larger size, downsampled, agrees as well
    img = load_rgb(m.image_path(0), pixel_limit=m.pixel_limit)
    teacher = render_view(img, m.view_boxes_NV4[0, 1], bool(m.view_flips_NV[0, 1]), 256)
    down = np.asarray(Image.fromarray(teacher).resize((64, 64), Image.Resampling.BICUBIC), np.int16)
    assert np.abs(down - fast[1].astype(np.int16)).mean() < 3.0


def test_draft_decode_decodes_no_larger_than_the_views_need(tmp_path: Path) -> None:
    """A 2000x1500 JPEG whose views are rendered at 64 px is decoded at a reduced DCT scale (1/2, 1/4 or
    1/8), never below what its smallest view box needs; the cost it saves is measured in
    benchmarks/stage_two_cost.py, not timed here."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        _photo((2000, 1500), i).save(folder / f"p{i}.jpg", quality=92)
    m = build_manifest(folder, out_dir=tmp_path / "root", view_spec=ViewSpec(num_views=2, seed=0), val_fraction=0.0)
    for i in range(4):
        boxes = m.view_boxes_NV4[i]
        need_w, need_h = draft_size(boxes, 64)
        img = load_checked_for_views(m, i, boxes, 64)
        assert img.size[0] * img.size[1] <= 2000 * 1500 // 4, img.size  # at least a 1/2 scale each way
        assert img.size[0] >= need_w and img.size[1] >= need_h, (img.size, need_w, need_h)
    full = load_rgb(m.image_path(0), pixel_limit=m.pixel_limit)  # the teachers decode in full
    assert full.size == (2000, 1500)
