"""Going back to the image files after the manifest: one rule for extraction, training and evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from PIL import Image

from stages.corpus.build_manifest import build_manifest
from stages.corpus.samples import ImageChangedError, decode_checked, load_checked, render_samples
from stages.distill.loader import StoreSet
from stages.normalize import NormVariant
from store_schema.layout import SHARDS_COMPLETE, teacher_store_path
from store_schema.manifest import ViewSpec
from tests.test_distill_loader import make_tiny_stores


def small_images(folder, sides):
    folder.mkdir()
    for i, side in enumerate(sides):
        arr = (np.arange(side * side * 3).reshape(side, side, 3) * (7 + i) % 256).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"im{i}.png")
    return folder


def test_decode_uses_the_manifests_own_min_side(tmp_path):
    images = small_images(tmp_path / "images", [5, 6, 40])
    m = build_manifest(images, out_dir=tmp_path / "root", view_spec=ViewSpec(num_views=2), min_side=4)
    assert m.ok_N.all()
    pairs = np.array([[0, 0], [1, 1], [2, 0]])
    out = render_samples(m, pairs, 16)  # 5 px and 6 px images are fine under this manifest's rule
    assert out.shape == (3, 16, 16, 3) and out.dtype == np.uint8


def test_changed_or_vanished_file_is_refused_with_a_reason(tmp_path):
    images = small_images(tmp_path / "images", [20, 24])
    m = build_manifest(images, out_dir=tmp_path / "root")
    assert decode_checked(m, 0)[1] == ""
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(images / "im0.png")
    img, reason = decode_checked(m, 0)
    assert img is None and "content changed since the manifest" in reason
    (images / "im1.png").unlink()
    with pytest.raises(ImageChangedError, match=r"im1\.png \(id 1\) cannot be used"):
        load_checked(m, 1)


def test_training_refuses_a_store_with_unfinished_shards(tmp_path):
    root = make_tiny_stores(tmp_path / "root", n_images=8, shard_size=4)
    store_path = teacher_store_path(root, "alpha")
    zarr.open_array(store_path / SHARDS_COMPLETE, mode="r+")[1] = 0  # as if the run died before marking it
    with pytest.raises(ValueError, match=r"alpha\.zarr is not complete: shards \[1\] of \d+ are not marked complete"):
        StoreSet(root, ["alpha", "beta"], norm=NormVariant.PHIS)
