"""Schema v2 teacher store: round trip, idempotent create, mismatch refusal, stats merge, crc32c."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from stages.corpus.build_manifest import build_manifest
from stages.stats import Moments
from stages.teachers.spec import Family, TeacherSpec, WeightsSource
from store_schema import layout
from store_schema.codecs import CodecSpec, round_as_stored
from store_schema.errors import (StoreCorruptionError, StoreMismatchError, StoreNotFoundError,
                                 StoreReadOnlyError)
from store_schema.manifest import Manifest, ViewSpec
from store_schema.teacher_store import create_teacher_store, open_teacher_store

GRID = (2, 3)
WEIGHTS = {"source": "random", "id": "", "sha256": None}


def _spec(summary_dim: int = 6, patch_dim: int = 4) -> TeacherSpec:
    return TeacherSpec(name="tiny", family=Family.DINOV2, arch="vit_tiny", weights_id="",
                       weights=WeightsSource.RANDOM, resolution=28, patch_size=14, summary_dim=summary_dim,
                       patch_dim=patch_dim, num_prefix_tokens=1, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                       license="test", arch_kwargs={"depth": 1})


def _manifest(tmp_path: Path, *, n: int = 5, views: int = 2, seed: int = 0, name: str = "m") -> Manifest:
    src = tmp_path / "corpus"
    src.mkdir(exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16 + i, 12), (10 * i, 20, 30)).save(src / f"im{i}.png")
    return build_manifest(src, out_dir=tmp_path / name, view_spec=ViewSpec(num_views=views, seed=seed))


def _create(path: Path, m: Manifest, *, spec: TeacherSpec | None = None, shard_size: int = 2,
            codec: CodecSpec = CodecSpec()):
    return create_teacher_store(path, spec=spec or _spec(), weights_identity=WEIGHTS, manifest=m,
                                shard_size=shard_size, storage_grid=GRID, codec=codec)


def _fake_shard(store, k: int, seed: int):
    start, end = store.shard_range(k)
    rng = np.random.default_rng(seed)
    S, V = end - start, store.num_views
    summary = rng.normal(size=(S, V, store.summary_dim)).astype(np.float32) * 3.0 + 1.0
    patches = rng.normal(size=(S, V, *store.grid, store.patch_dim)).astype(np.float32)
    valid = rng.random((S, V)) > 0.2
    return summary, patches, valid


def _write_with_stats(store, k: int, seed: int):
    summary, patches, valid = _fake_shard(store, k, seed)
    store.write_shard(k, summary_SVC=summary, patches_SVhwC=patches, valid_SV=valid)
    s_stored, p_stored, _ = store.read_shard(k)
    store.write_shard_stats(k, "summary", Moments.from_batch(s_stored.reshape(-1, store.summary_dim)))
    store.write_shard_stats(k, "patches", Moments.from_batch(p_stored.reshape(-1, store.patch_dim)))
    store.mark_complete(k)
    return summary, patches, valid


def test_round_trip_bitround_and_stats_merge(tmp_path):
    m = _manifest(tmp_path)
    path = layout.teacher_store_path(tmp_path / "m", "tiny")
    store = _create(path, m)
    assert (store.num_images, store.num_views, store.num_shards, store.grid) == (5, 2, 3, GRID)
    assert store.shard_range(2) == (4, 5)
    written = {k: _write_with_stats(store, k, seed=k) for k in (0, 2)}

    again = open_teacher_store(path, expect_manifest_hash=m.hash, expect_view_spec=m.view_spec)
    assert again.attrs["manifest_hash"] == m.hash and again.attrs["schema_version"] == 2
    assert again.attrs["teacher"]["name"] == "tiny" and again.spec == _spec()
    assert again.attrs["codec"] == CodecSpec().to_dict() and again.attrs["storage_grid"] == list(GRID)
    assert again.attrs["code_version"].startswith("0.1.0")
    assert "stats/summary/shard/m2" in again.group and "stats/patches/total/count" in again.group
    assert again.patches.dtype == np.uint16 and again.codec.stored_dtype == "uint16"  # bf16 bit patterns
    assert again.summary.metadata.dimension_names == layout.DIMS_SUMMARY
    assert again.patches.shards == (2, 2, *GRID, 4) and again.patches.chunks == (1, 2, *GRID, 4)
    for k, (summary, patches, valid) in written.items():
        s, p, v = again.read_shard(k)
        assert s.dtype == p.dtype == np.float32
        np.testing.assert_array_equal(s, round_as_stored(summary, again.codec))
        np.testing.assert_array_equal(p, round_as_stored(patches, again.codec))
        np.testing.assert_array_equal(v, valid)
        assert not np.array_equal(s, summary)  # BitRound really dropped mantissa bits
        np.testing.assert_allclose(s, summary, rtol=2.0**-7)
    s_img, p_img, v_img = again.read_images(np.array([4, 0]))
    np.testing.assert_array_equal(p_img[0], again.read_shard(2)[1][0])
    np.testing.assert_array_equal(s_img[1], again.read_shard(0)[0][0])
    # Shard 1 was never written: fill values, not complete, and excluded from the statistics.
    assert not again.is_complete(1) and again.read_shard(1)[2].sum() == 0
    np.testing.assert_array_equal(again.completed_shards(), [0, 2])
    np.testing.assert_array_equal(again.pending_shards(), [1])
    s0, s2 = again.read_shard(0)[0], again.read_shard(2)[0]
    whole = Moments.from_batch(np.concatenate([s0, s2]).reshape(-1, 6))
    merged = again.stats("summary")
    assert merged.count == whole.count == 3 * 2
    np.testing.assert_allclose(merged.mean_D, whole.mean_D, rtol=1e-12)
    np.testing.assert_allclose(merged.m2_DD, whole.m2_DD, rtol=1e-10, atol=1e-12)
    assert again.stats("patches").count == 3 * 2 * 6


def test_lossless_codec_is_exact_and_rewrite_clears_complete(tmp_path):
    m = _manifest(tmp_path)
    store = _create(tmp_path / "t.zarr", m, codec=CodecSpec(keepbits=None))
    summary, patches, valid = _write_with_stats(store, 1, seed=3)
    s, p, _ = store.read_shard(1)
    np.testing.assert_array_equal(s, summary)
    np.testing.assert_array_equal(p, patches)
    assert store.is_complete(1)
    store.write_shard(1, summary_SVC=summary, patches_SVhwC=patches, valid_SV=valid)
    assert not store.is_complete(1)  # new data never hides behind an old complete flag


def test_create_is_idempotent_and_refuses_incompatible(tmp_path):
    m = _manifest(tmp_path)
    path = tmp_path / "t.zarr"
    store = _create(path, m)
    _write_with_stats(store, 0, seed=0)
    reopened = _create(path, m)
    np.testing.assert_array_equal(reopened.completed_shards(), [0])
    with pytest.raises(StoreMismatchError, match=r"shard_size.*expected 3.*found 2"):
        _create(path, m, shard_size=3)
    with pytest.raises(StoreMismatchError, match=r"codec.*'keepbits': 8.*'keepbits': 7"):
        _create(path, m, codec=CodecSpec(keepbits=8))
    with pytest.raises(StoreMismatchError, match="teacher"):
        _create(path, m, spec=_spec(patch_dim=5))


def test_open_refuses_other_manifest_and_view_spec(tmp_path):
    m = _manifest(tmp_path)
    other = _manifest(tmp_path, seed=1, name="other")
    path = tmp_path / "t.zarr"
    _create(path, m)
    assert other.hash != m.hash
    with pytest.raises(StoreMismatchError) as err:
        open_teacher_store(path, expect_manifest_hash=other.hash)
    assert other.hash in str(err.value) and m.hash in str(err.value) and "manifest_hash" in str(err.value)
    with pytest.raises(StoreMismatchError) as err:
        open_teacher_store(path, expect_view_spec=other.view_spec)
    assert "'seed': 1" in str(err.value) and "'seed': 0" in str(err.value)
    with pytest.raises(StoreMismatchError, match="manifest_hash"):
        _create(path, other)
    with pytest.raises(StoreNotFoundError):
        open_teacher_store(tmp_path / "absent.zarr")


def test_open_validates_schema_version_and_shapes(tmp_path):
    m = _manifest(tmp_path)
    path = tmp_path / "t.zarr"
    _create(path, m)
    zarr.open_group(path, mode="r+").attrs["schema_version"] = 1
    with pytest.raises(StoreMismatchError, match="schema_version.*expected 2.*found 1"):
        open_teacher_store(path)
    zarr.open_group(path, mode="r+").attrs["schema_version"] = 2
    zarr.open_group(path, mode="r+").attrs["storage_grid"] = [3, 3]
    with pytest.raises(StoreMismatchError, match=r"shape of patches.*expected \(5, 2, 3, 3, 4\)"):
        open_teacher_store(path)


def test_no_summary_teacher_and_write_guards(tmp_path):
    m = _manifest(tmp_path)
    store = _create(tmp_path / "sam.zarr", m, spec=_spec(summary_dim=0))
    assert store.summary is None and store.kinds == ("patches",)
    assert layout.SUMMARY not in store.group and "stats/summary" not in store.group
    patches = np.ones((2, 2, *GRID, 4), np.float32)
    with pytest.raises(ValueError, match="no summary token"):
        store.write_shard(0, summary_SVC=np.ones((2, 2, 6), np.float32), patches_SVhwC=patches,
                          valid_SV=np.ones((2, 2), bool))
    with pytest.raises(ValueError, match=r"patches_SVhwC must have shape \(1, 2, 2, 3, 4\)"):
        store.write_shard(2, summary_SVC=None, patches_SVhwC=patches, valid_SV=np.ones((1, 2), bool))
    with pytest.raises(ValueError, match="valid kinds: patches"):
        store.stats("summary")
    with pytest.raises(ValueError, match="unknown token kind 'cls'"):
        store.stats("cls")
    store.write_shard(0, summary_SVC=None, patches_SVhwC=patches, valid_SV=np.ones((2, 2), bool))
    assert store.read_shard(0)[0] is None
    ro = open_teacher_store(tmp_path / "sam.zarr")
    with pytest.raises(StoreReadOnlyError):
        ro.mark_complete(0)


@pytest.mark.parametrize("where", ["data", "index"])
def test_crc32c_detects_flipped_byte(tmp_path, where):
    m = _manifest(tmp_path)
    path = tmp_path / "t.zarr"
    store = _create(path, m, codec=CodecSpec(keepbits=None))
    for k in range(store.num_shards):
        _write_with_stats(store, k, seed=k)
    shard_file = path / "patches" / "c" / "1" / "0" / "0" / "0" / "0"
    raw = bytearray(shard_file.read_bytes())
    pos = 20 if where == "data" else len(raw) - 6  # the sharding index sits at the end
    raw[pos] ^= 0x01
    shard_file.write_bytes(bytes(raw))
    reopened = open_teacher_store(path)
    with pytest.raises(StoreCorruptionError, match="shard 1"):
        reopened.read_shard(1)
    reopened.read_shard(0)  # other shards stay readable
