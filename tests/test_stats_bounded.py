"""Statistics of stage one: on the teacher's device, per split, folded into bounded totals.

- `DeviceMoments` (torch, float64, batch by batch) equals a float64 two-pass over the stored values to
  1e-9 relative, also for features far from zero (where a naive sum of squares would cancel).
- The store's statistics are a fixed function of its complete shards: whatever the order in which shards
  complete and whenever folds happen, they are bit-identical, and equal to merging every shard's
  partial in shard order; the partials on disk stay bounded by the fold period.
- Per split: train and val are kept apart, and "all" is train merged with val.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stages.corpus.build_manifest import build_manifest
from stages.extract.device_stats import DeviceMoments
from stages.stats import Moments
from stages.teachers.spec import Family, TeacherSpec, WeightsSource
from store_schema import layout
from store_schema.codecs import CodecSpec
from store_schema.manifest import ViewSpec
from store_schema.teacher_store import create_teacher_store, open_teacher_store

C = 8


def _spec() -> TeacherSpec:
    return TeacherSpec(name="tiny", family=Family.DINOV2, arch="vit_tiny", weights_id="",
                       weights=WeightsSource.RANDOM, resolution=28, patch_size=14, summary_dim=C,
                       patch_dim=C, num_prefix_tokens=1, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                       license="test", arch_kwargs={"depth": 1})


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    base = tmp_path_factory.mktemp("m")
    src = base / "corpus"
    src.mkdir()
    for i in range(40):
        Image.new("RGB", (16 + i, 12), (i, 20, 30)).save(src / f"im{i:02d}.png")
    return build_manifest(src, out_dir=base / "root", view_spec=ViewSpec(num_views=1), val_fraction=0.3)


def _partial(k: int, split: str) -> Moments:
    rng = np.random.default_rng(1000 * k + (split == "val"))
    return Moments.from_batch(rng.normal(3.0, 2.0, size=(5 + k % 3, C)))


def _store(path: Path, manifest, fold_every: int):
    return create_teacher_store(path, spec=_spec(), weights_identity={"source": "random", "id": "", "sha256": None},
                                manifest=manifest, shard_size=2, storage_grid=(2, 2), codec=CodecSpec(),
                                stats_fold_every=fold_every)


def _finish(store, k: int) -> None:
    for kind in store.kinds:
        for split in layout.STATS_SPLITS:
            store.write_shard_stats(k, kind, _partial(k, split), split=split)
    store.mark_complete(k)


def _m2_files(store) -> int:
    chunks = store.path / "stats" / "patches" / "shard" / "m2" / "c"
    return sum(1 for p in chunks.rglob("*") if p.is_file()) if chunks.is_dir() else 0


def test_device_moments_match_float64_two_pass():
    rng = np.random.default_rng(0)
    stored = (rng.standard_normal((1000, 16)) * np.exp(rng.normal(0, 2, 16)) + 1e4).astype(np.float32)
    acc = DeviceMoments(16, torch.device("cpu"))
    for a in range(0, 1000, 96):  # batches of uneven size, as the forward loop sees them
        acc.update(torch.from_numpy(stored[a:a + 96]))
    acc.update(torch.zeros((0, 16)))
    got, ref = acc.to_moments(), Moments.from_batch(stored)
    assert got.count == ref.count == 1000
    np.testing.assert_allclose(got.mean_D, ref.mean_D, rtol=1e-12)
    assert np.abs(got.m2_DD - ref.m2_DD).max() <= 1e-9 * np.abs(ref.m2_DD).max()
    np.testing.assert_allclose(np.diag(got.m2_DD), np.diag(ref.m2_DD), rtol=1e-9)
    assert DeviceMoments(4, torch.device("cpu")).to_moments().count == 0
    with pytest.raises(ValueError, match=r"expected a \[N, 16\] batch"):
        acc.update(torch.zeros((3, 4)))


def test_statistics_are_independent_of_completion_order_and_bounded(tmp_path, manifest):
    n = manifest.num_images // 2  # 20 shards
    ref = _store(tmp_path / "ref.zarr", manifest, fold_every=1000)  # never folds before the end
    for k in range(n):
        _finish(ref, k)  # the last one folds everything (store complete)
    order = np.random.default_rng(3).permutation(n)
    store = _store(tmp_path / "shuffled.zarr", manifest, fold_every=3)
    most_partials = 0
    for i, k in enumerate(order):
        _finish(store, int(k))
        most_partials = max(most_partials, _m2_files(store))
        if i == n // 2:  # mid-way: the merged statistics equal the shard-order merge of the complete shards
            done = sorted(int(j) for j in order[: i + 1])
            expect = Moments.merge_all((_partial(j, "val") for j in done), dim=C)
            assert store.stats("patches", "val").content_hash() == expect.content_hash()
            reopened = open_teacher_store(store.path)  # another reader, streaming from disk
            assert reopened.stats("patches", "val").content_hash() == expect.content_hash()
    assert store.ledger.folded()[0] == n and _m2_files(store) == 0  # all folded, partials cleared
    for kind in ("summary", "patches"):
        for split in ("train", "val"):
            expect = Moments.merge_all((_partial(k, split) for k in range(n)), dim=C)
            assert store.stats(kind, split).content_hash() == expect.content_hash()
            assert ref.stats(kind, split).content_hash() == expect.content_hash()
        both = store.stats(kind, "train").merge(store.stats(kind, "val"))
        assert store.stats(kind).content_hash() == both.content_hash() == ref.stats(kind).content_hash()
    assert most_partials < n * 2  # bounded by the fold period and the shards completed out of order
    with pytest.raises(ValueError, match="folded into the store's totals"):
        store.shard_stats(0, "patches")
    assert store.shard_count(0, "patches", "val") == _partial(0, "val").count  # counts are kept
    with pytest.raises(ValueError, match="unknown split 'test'"):
        store.stats("patches", "test")


def test_in_order_completion_keeps_at_most_fold_every_partials(tmp_path, manifest):
    store = _store(tmp_path / "s.zarr", manifest, fold_every=4)
    counts = []
    for k in range(manifest.num_images // 2):
        _finish(store, k)
        counts.append(_m2_files(store))
    assert max(counts) <= 2 * (4 - 1)  # train + val partials of at most fold_every - 1 shards
    assert counts[-1] == 0


def test_image_split_follows_the_manifest(tmp_path, manifest):
    store = _store(tmp_path / "s.zarr", manifest, fold_every=4)
    split = store.image_split()
    assert [layout.STATS_SPLITS[i] for i in split] == list(manifest.split)
    assert 0 < split.sum() < len(split)  # both splits present
    assert layout.STATS_SPLITS == tuple(("train", "val"))
