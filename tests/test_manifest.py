"""Manifest: deterministic bytes, sources (folder / list / Parquet), splits and views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from stages.corpus.build_manifest import build_manifest, list_source
from stages.corpus.images import load_rgb
from stages.corpus.views import draw_views, render_view
from store_schema.manifest import ViewSpec, manifest_hash, read_manifest


def _corpus(root: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(0)
    (root / "sub" / "deeper").mkdir(parents=True)
    for i in range(n):
        folder = root if i % 3 == 0 else root / "sub" if i % 3 == 1 else root / "sub" / "deeper"
        ext = (".png", ".JPG", ".bmp", ".webp")[i % 4]
        arr = rng.integers(0, 255, size=(20 + i, 30 + 2 * i, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img_{i:02d}{ext}")
    (root / "notes.txt").write_text("not an image, and not listed by a folder search")
    return root


def test_same_folder_gives_identical_bytes_and_views(tmp_path):
    src = _corpus(tmp_path / "corpus")
    spec = ViewSpec(num_views=4, seed=7)
    a = build_manifest(src, out_dir=tmp_path / "a", view_spec=spec)
    b = build_manifest(src, out_dir=tmp_path / "b", view_spec=spec)
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.hash == b.hash == manifest_hash(b.path)
    np.testing.assert_array_equal(a.view_boxes_NV4, b.view_boxes_NV4)
    np.testing.assert_array_equal(a.view_flips_NV, b.view_flips_NV)
    c = build_manifest(src, out_dir=tmp_path / "a", view_spec=ViewSpec(num_views=4, seed=8))
    assert c.hash != a.hash and not np.array_equal(c.view_boxes_NV4, a.view_boxes_NV4)


def test_columns_ids_metadata(tmp_path):
    src = _corpus(tmp_path / "corpus")
    m = build_manifest(src, out_dir=tmp_path / "out", view_spec=ViewSpec(num_views=3), val_fraction=0.5)
    assert m.num_images == 12 and m.ok_N.all()
    assert m.uris == sorted(m.uris) and "sub/deeper/img_02.bmp" in m.uris and "sub/img_01.JPG" in m.uris and "notes.txt" not in m.uris
    np.testing.assert_array_equal(m.ids, np.arange(12))
    assert m.table.schema.field("view_boxes").type == pa.list_(pa.float64(), 12)
    assert m.table.schema.field("width").type == pa.int32()
    assert m.view_spec == ViewSpec(num_views=3) and m.pixel_limit > 0 and m.source == "../corpus"
    i = m.uris.index("img_00.png")
    assert (m.table.column("width")[i].as_py(), m.table.column("height")[i].as_py()) == (30, 20)
    assert load_rgb(m.image_path(i), pixel_limit=m.pixel_limit).size == (30, 20)
    assert set(m.split) == {"train", "val"}  # 12 hashes at fraction 0.5 land on both sides
    assert len(m.split_ids("train")) + len(m.split_ids("val")) == 12
    sha = m.table.column("sha256").to_pylist()
    again = build_manifest(src, out_dir=tmp_path / "out2", val_fraction=0.5)
    assert list(again.split) == list(m.split) and again.sha256 == sha  # split depends on content only


def test_list_and_parquet_sources_match_folder(tmp_path):
    src = _corpus(tmp_path / "corpus")
    folder_uris = list_source(src).uris
    listing = src / "list.txt"
    listing.write_text("# comment\n\n" + "\n".join(reversed(folder_uris[:-1]))
                       + f"\n{(src / folder_uris[-1]).resolve()}\n")
    listed = list_source(listing)
    assert listed.base == src and listed.uris == folder_uris  # absolute paths under the base become relative
    pq.write_table(pa.table({"uri": folder_uris}), src / "uris.parquet")
    assert list_source(src / "uris.parquet").uris == folder_uris
    m_list = build_manifest(listing, out_dir=tmp_path / "l")
    m_folder = build_manifest(src, out_dir=tmp_path / "f")
    assert m_list.sha256 == m_folder.sha256
    listing.write_text(folder_uris[0] + "\n" + folder_uris[0] + "\n")
    with pytest.raises(ValueError, match="more than once"):
        list_source(listing)
    pq.write_table(pa.table({"path": folder_uris}), src / "bad.parquet")
    with pytest.raises(ValueError, match="no 'uri' column"):
        list_source(src / "bad.parquet")
    with pytest.raises(ValueError, match="does not exist"):
        list_source(tmp_path / "nowhere")


def test_draw_views_properties():
    spec = ViewSpec(num_views=64, seed=3, scale=(0.2, 0.6), ratio=(0.5, 2.0), flip_p=0.5)
    sha = "ab" * 32
    boxes_V4, flips_V = draw_views(sha, spec)
    np.testing.assert_array_equal(boxes_V4[0], [0, 0, 1, 1])
    assert not flips_V[0] and 10 < flips_V[1:].sum() < 53
    w, h = boxes_V4[1:, 2] - boxes_V4[1:, 0], boxes_V4[1:, 3] - boxes_V4[1:, 1]
    assert (boxes_V4 >= 0).all() and (boxes_V4 <= 1).all()
    assert np.all((w * h >= 0.2 - 1e-12) & (w * h <= 0.6 + 1e-12))
    assert np.all((w / h >= 0.5 - 1e-12) & (w / h <= 2.0 + 1e-12))
    again_V4, again_V = draw_views(sha, spec)
    np.testing.assert_array_equal(again_V4, boxes_V4)
    np.testing.assert_array_equal(again_V, flips_V)
    assert not np.array_equal(draw_views("cd" * 32, spec)[0], boxes_V4)
    one_V4, one_V = draw_views(sha, ViewSpec())
    assert one_V4.shape == (1, 4) and one_V.shape == (1,)


def test_view_spec_validation_and_round_trip():
    spec = ViewSpec(num_views=2, seed=5, scale=(0.3, 0.9))
    assert ViewSpec.from_dict(spec.to_dict()) == spec
    for bad in (dict(num_views=0), dict(scale=(0.5, 0.2)), dict(ratio=(0.0, 1.0)), dict(flip_p=1.5)):
        with pytest.raises(ValueError):
            ViewSpec(**bad)


def test_render_view_crops_resizes_and_flips():
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:, :30] = (255, 0, 0)  # left half red, right half blue
    arr[:, 30:] = (0, 0, 255)
    img = Image.fromarray(arr)
    full = render_view(img, (0, 0, 1, 1), False, 16)
    assert full.shape == (16, 16, 3) and full.dtype == np.uint8
    assert full[8, 0, 0] == 255 and full[8, 15, 2] == 255
    flipped = render_view(img, (0, 0, 1, 1), True, 16)
    np.testing.assert_array_equal(flipped, full[:, ::-1])
    left = render_view(img, (0.0, 0.0, 0.4, 1.0), False, 8)
    assert (left[..., 0] == 255).all() and (left[..., 2] == 0).all()
    with pytest.raises(ValueError, match="box must satisfy"):
        render_view(img, (0.5, 0, 0.4, 1), False, 8)
    with pytest.raises(ValueError, match="RGB"):
        render_view(img.convert("L"), (0, 0, 1, 1), False, 8)


def test_read_manifest_rejects_foreign_parquet(tmp_path):
    pq.write_table(pa.table({"uri": ["a.png"]}), tmp_path / "manifest.parquet")
    with pytest.raises(ValueError, match="missing key-value metadata"):
        read_manifest(tmp_path / "manifest.parquet")
