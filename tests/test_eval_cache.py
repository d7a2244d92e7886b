"""Block caches of evaluation (store_schema/eval_cache.py): filled block by block, resumed at the first
incomplete block, reused under the same key and refilled under another (a retrained run's fingerprint)."""

from __future__ import annotations

import numpy as np

from store_schema.eval_cache import open_block_cache, read_rows

ARRAYS = {"summary": ((6,), "float32"), "features": ((2, 2, 3), "uint16")}


def _open(path, key):
    return open_block_cache(path, kind="test", key=key, num_images=10, block_size=4, arrays=ARRAYS)


def test_blocks_resume_and_reuse_under_the_same_key(tmp_path):
    cache, what = _open(tmp_path / "c.zarr", {"run_fingerprint": "a", "checkpoint_step": 5})
    assert what == "created" and cache.incomplete_blocks() == [0, 1, 2]
    rng = np.random.default_rng(0)
    s = rng.normal(size=(10, 6)).astype(np.float32)
    cache.write_block(1, {"summary": s[4:8], "features": np.ones((4, 2, 2, 3), np.uint16)})
    cache, what = _open(tmp_path / "c.zarr", {"run_fingerprint": "a", "checkpoint_step": 5})
    assert what == "reused" and cache.incomplete_blocks() == [0, 2]  # an interrupted fill resumes here
    assert np.array_equal(cache.read("summary", np.array([7, 4, 6])), s[[7, 4, 6]])


def test_another_key_invalidates_the_cache(tmp_path):
    cache, _ = _open(tmp_path / "c.zarr", {"run_fingerprint": "a", "checkpoint_step": 5})
    cache.write_block(0, {"summary": np.ones((4, 6), np.float32), "features": np.ones((4, 2, 2, 3), np.uint16)})
    cache, what = _open(tmp_path / "c.zarr", {"run_fingerprint": "a", "checkpoint_step": 9})
    assert what == "invalidated (checkpoint_step changed)"
    assert cache.incomplete_blocks() == [0, 1, 2] and not cache.read("summary", np.array([0])).any()


def test_read_rows_in_any_order_with_runs_and_gaps(tmp_path):
    import zarr

    arr = zarr.create_array(tmp_path / "a.zarr", shape=(20, 2, 3), chunks=(4, 2, 3), dtype="int32")
    values = np.arange(120, dtype=np.int32).reshape(20, 2, 3)
    arr[:] = values
    ids = np.array([9, 3, 4, 5, 17, 0, 3])
    assert np.array_equal(read_rows(arr, ids), values[ids])
    assert np.array_equal(read_rows(arr, ids, 1), values[ids, 1])
    assert read_rows(arr, np.array([], np.int64)).shape == (0, 2, 3)
