"""End to end, stage one on real Ray: two tiny teachers, 2 actors, shards of 4, real zarr stores.

The stored statistics (AM-RADIO / PHI-S normalizers are fitted from them) must equal a float64 two-pass
computation over the decoded stored values of the valid views; bad images are masked.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from stages.extract.driver import ExtractConfig, run_extract
from stages.extract.verify import verify_store
from store_schema.codecs import decode_from_store
from store_schema.layout import manifest_path, teacher_store_path
from store_schema.manifest import read_manifest
from store_schema.teacher_store import open_teacher_store

pytest_plugins = ["tests.ray_fixture"]
pytestmark = pytest.mark.slow

TEACHERS = ("tiny_clip", "tiny_sam")  # with and without a summary token; global std 0.03x vs 8x apart


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def _two_pass(x_ND: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x_ND = x_ND.astype(np.float64)
    mean_D = x_ND.sum(axis=0) / x_ND.shape[0]
    dev_ND = x_ND - mean_D
    return mean_D, dev_ND.T @ dev_ND / x_ND.shape[0]


def test_two_teachers_on_ray_match_two_pass_statistics(tmp_path, ray_session, make_corpus):
    root = make_corpus(tmp_path, n_ok=12)
    manifest = read_manifest(manifest_path(root))
    bad_ids = np.flatnonzero(~manifest.ok_N)
    assert bad_ids.tolist() == [4, 11]
    config = ExtractConfig(workers=2, shard_size=4, batch_size=4, progress=False)
    for name in TEACHERS:
        report = run_extract(root, name, config)
        assert sorted(report.computed_shards) == [0, 1, 2, 3] and report.skipped_shards == []
        assert (report.num_images, report.num_views, report.num_bad, report.masked) == (14, 24, 2, [])
        workers = set(report.shard_workers.values())
        assert len(workers) == 2 and not any(w.endswith(f":{os.getpid()}") for w in workers)  # 2 Ray actors
        assert report.bytes_on_disk > 0 and 4.0 < report.bits_per_value < 16.0

        store = open_teacher_store(teacher_store_path(root, name), expect_manifest_hash=manifest.hash,
                                   expect_view_spec=manifest.view_spec)
        assert store.completed_shards().tolist() == [0, 1, 2, 3]
        valid_NV = np.asarray(store.valid[:])
        assert not valid_NV[bad_ids].any() and valid_NV[manifest.ok_N].all()
        patches = decode_from_store(store.patches[:])  # bf16 bit patterns -> float32
        assert not patches[bad_ids].any() and np.isfinite(patches).all()
        tokens = {"patches": patches[valid_NV].reshape(-1, store.patch_dim)}
        if store.summary is not None:
            tokens["summary"] = decode_from_store(store.summary[:])[valid_NV]
        assert set(tokens) == set(store.kinds)
        for kind, x_ND in tokens.items():
            m = store.stats(kind)
            mean_D, cov_DD = _two_pass(x_ND)
            assert m.count == x_ND.shape[0]
            assert _rel_err(m.mean_D, mean_D) <= 1e-9, kind
            assert _rel_err(m.covariance(), cov_DD) <= 1e-9, kind
        assert verify_store(store).ok

    # The two teachers' scales differ as configured (tiny_clip x0.03, tiny_sam x8): stats see it.
    std = {n: np.sqrt(np.trace(open_teacher_store(teacher_store_path(root, n)).stats("patches").covariance()))
           for n in TEACHERS}
    assert std["tiny_sam"] > 20 * std["tiny_clip"]

    # A second run finds every shard complete and computes nothing.
    again = run_extract(root, "tiny_clip", config)
    assert again.computed_shards == [] and again.skipped_shards == [0, 1, 2, 3] and again.num_images == 0
