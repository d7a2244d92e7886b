"""`pipeline store transcode`: re-encoding a real extracted store on dask (one task per shard), without the
teacher. Same codec -> identical arrays and statistics; pooling by transcode = pooling at extraction within
BitRound noise; codec / keepbits changes; resumable after a kill; provenance and clean errors."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from stages.extract.driver import ExtractConfig, run_extract
from stages.extract.transcode import transcode_store
from stages.extract.verify import verify_store
from store_schema import layout
from store_schema.codecs import decode_from_store
from store_schema.codecs import CodecSpec
from store_schema.layout import teacher_store_path
from store_schema.teacher_store import open_teacher_store

pytest_plugins = ["tests.ray_fixture"]
REPO = Path(__file__).resolve().parents[1]
TEACHER = "tiny_dinov2"  # summary and 8x8 patch grid


def _extract(root: Path, grid=None, teacher: str = TEACHER, shard_size: int = 3) -> None:
    run_extract(root, teacher, ExtractConfig(workers=0, shard_size=shard_size, batch_size=8, storage_grid=grid,
                                             progress=False))


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """A corpus (8 images, 2 bad, 2 views) extracted at the teacher's 8x8 grid and, separately, at 4x4."""
    from tests.ray_fixture import build_corpus

    base = tmp_path_factory.mktemp("transcode")
    native = build_corpus(base, n_ok=6, num_views=2)
    pooled = base / "pooled_at_extraction"
    pooled.mkdir()
    shutil.copyfile(layout.manifest_path(native), layout.manifest_path(pooled))
    _extract(native)
    _extract(pooled, grid=(4, 4))
    return native, pooled


def _open(root: Path, teacher: str = TEACHER):
    return open_teacher_store(teacher_store_path(root, teacher))


def _arrays(store):
    out = [np.asarray(store.patches[:]), np.asarray(store.valid[:])]
    return out + ([] if store.summary is None else [np.asarray(store.summary[:])])


def test_same_codec_gives_identical_arrays_and_statistics(roots, tmp_path):
    native, _ = roots
    report = transcode_store(native, TEACHER, tmp_path / "copy", workers=2)
    src, dst = _open(native), _open(tmp_path / "copy")
    assert report.computed_shards == [0, 1, 2] and report.skipped_shards == []
    assert dst.codec == src.codec and dst.grid == src.grid and dst.manifest_hash == src.manifest_hash
    for a, b in zip(_arrays(src), _arrays(dst)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    for kind in src.kinds:
        for k in range(src.num_shards):
            for split in ("train", "val"):
                assert src.shard_count(k, kind, split) == dst.shard_count(k, kind, split)
            assert dst.shard_count(k, kind) > 0
        for split in (None, "train", "val"):
            s, d = src.stats(kind, split), dst.stats(kind, split)  # folded totals, per split
            assert s.count == d.count > 0
            # recomputed from the (identical) stored values; extraction sums in another order: float64 rounding only
            np.testing.assert_allclose(d.mean_D, s.mean_D, rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(d.m2_DD, s.m2_DD, rtol=1e-10, atol=1e-12)
    assert dst.attrs[layout.TRANSCODED_FROM_ATTR] == {"store": str(src.path), "fingerprint": src.fingerprint()}
    assert verify_store(dst).complete
    again = transcode_store(native, TEACHER, tmp_path / "copy")  # a re-run has nothing to do
    assert again.computed_shards == [] and again.skipped_shards == [0, 1, 2]


def test_pooling_by_transcode_equals_pooling_at_extraction_within_bitround_noise(roots, tmp_path):
    native, pooled = roots
    transcode_store(native, TEACHER, tmp_path / "t", storage_grid=(4, 4))
    at_extraction, by_transcode = _open(pooled), _open(tmp_path / "t")
    assert by_transcode.grid == (4, 4) and at_extraction.grid == (4, 4)
    a, b = (decode_from_store(s.patches[:]).astype(np.float64) for s in (at_extraction, by_transcode))
    assert np.array_equal(np.asarray(at_extraction.valid[:]), np.asarray(by_transcode.valid[:]))
    nmse = float(((a - b) ** 2).sum() / (a ** 2).sum())
    # two roundings to 7 mantissa bits (before and after pooling) vs one: relative MSE ~ 2^-14 / 24 each
    assert 0 < nmse < 4 * 2.0 ** -14 / 24, nmse  # measured 5.0e-6 = about two roundings
    np.testing.assert_array_equal(np.asarray(at_extraction.summary[:]), np.asarray(by_transcode.summary[:]))
    sa, sb = at_extraction.stats("patches"), by_transcode.stats("patches")
    assert sa.count == sb.count == 12 * 16
    np.testing.assert_allclose(sb.mean_D, sa.mean_D, rtol=1e-2, atol=1e-3 * np.abs(sa.mean_D).max())
    assert verify_store(by_transcode).complete


def test_fewer_mantissa_bits_and_another_codec_through_the_cli(roots, tmp_path):
    native, _ = roots
    res = CliRunner().invoke(app, ["store", "transcode", "--teacher", TEACHER, "--root", str(native), "--to",
                                   str(tmp_path / "k3"), "--keepbits", "3", "--codec", "lz4:3"])
    assert res.exit_code == 0, res.output
    assert "3 shards computed, 0 skipped" in res.output and "keepbits 3, lz4:3" in res.output
    src, dst = _open(native), _open(tmp_path / "k3")
    assert dst.codec == CodecSpec(keepbits=3, compressor="lz4", clevel=3)
    a, b = (decode_from_store(s.patches[:]) for s in (src, dst))
    rel = np.abs(a - b)[a != 0] / np.abs(a[a != 0])
    assert 0 < rel.max() <= 2.0 ** -4 * 1.0001  # 3 kept bits: error at most half an ulp of 2^-3
    assert verify_store(dst).complete  # statistics match the new stored values


@pytest.mark.parametrize("args, message", [
    (["--storage-grid", "16x16"], "larger than the teacher's patch grid"),
    (["--keepbits", "30"], "keepbits must be"),
    (["--codec", "snappy"], "unknown compressor"),
])
def test_bad_options_are_clean_errors(roots, tmp_path, args, message):
    native, _ = roots
    res = CliRunner().invoke(app, ["store", "transcode", "-t", TEACHER, "--root", str(native), "--to",
                                   str(tmp_path / "x"), *args], env={"COLUMNS": "300"})
    assert res.exit_code == 2 and message in res.output, res.output
    assert not teacher_store_path(tmp_path / "x", TEACHER).exists()


def test_in_place_and_changed_source_are_refused(roots, tmp_path):
    native, _ = roots
    with pytest.raises(ValueError, match="never re-encoded in place"):
        transcode_store(native, TEACHER, native)
    src_copy = tmp_path / "src"
    shutil.copytree(native, src_copy)
    transcode_store(src_copy, TEACHER, tmp_path / "dst")
    store = open_teacher_store(teacher_store_path(src_copy, TEACHER), mode="r+")
    _, slot = store.ledger.folded()  # the source's targets changed: shift its folded train mean
    mean = store.group[layout.stats_array("patches", "mean", "total")]
    mean[slot, 0] = np.asarray(mean[slot, 0]) + 1.0
    from store_schema.errors import StoreMismatchError

    with pytest.raises(StoreMismatchError, match="transcoded_from"):
        transcode_store(src_copy, TEACHER, tmp_path / "dst")


def _completed(root: Path, teacher: str) -> list[int]:
    try:
        return [int(k) for k in _open(root, teacher).completed_shards()]
    except Exception:  # noqa: BLE001 - the store may not exist yet
        return []


@pytest.mark.slow
def test_killed_transcode_resumes_to_the_uninterrupted_result(tmp_path, make_corpus):
    root = make_corpus(tmp_path / "c", n_ok=30, num_views=2)
    _extract(root, teacher="tiny_sam", shard_size=1)  # 32 shards
    reference = tmp_path / "reference"
    transcode_store(root, "tiny_sam", reference, storage_grid=(4, 4), codec=CodecSpec(keepbits=5))
    cmd = [sys.executable, "-m", "pipeline.cli", "store", "transcode", "-t", "tiny_sam", "--root", str(root),
           "--to", str(tmp_path / "killed"), "--storage-grid", "4x4", "--keepbits", "5", "--workers", "1"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not _completed(tmp_path / "killed", "tiny_sam") and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"finished before it could be killed: {proc.stderr.read()}"
    done = _completed(tmp_path / "killed", "tiny_sam")
    assert 0 < len(done) < 32, done
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    m = re.search(r"(\d+) shards computed, (\d+) skipped", rerun.stdout)
    assert m and int(m.group(2)) >= len(done) and int(m.group(1)) + int(m.group(2)) == 32, rerun.stdout
    a, b = _open(reference, "tiny_sam"), _open(tmp_path / "killed", "tiny_sam")
    assert np.array_equal(np.asarray(a.patches[:]), np.asarray(b.patches[:]))
    assert a.stats("patches").content_hash() == b.stats("patches").content_hash()
    assert verify_store(b).complete


@pytest.mark.slow
def test_on_rays_dask_scheduler_gives_the_same_store(roots, tmp_path, ray_session):
    native, _ = roots
    threads = transcode_store(native, TEACHER, tmp_path / "threads", storage_grid=(2, 2))
    on_ray = transcode_store(native, TEACHER, tmp_path / "ray", storage_grid=(2, 2), scheduler="ray")
    assert on_ray.scheduler == "ray" and on_ray.computed_shards == threads.computed_shards == [0, 1, 2]
    a, b = _open(tmp_path / "threads"), _open(tmp_path / "ray")
    for x, y in zip(_arrays(a), _arrays(b)):
        assert np.array_equal(x, y)
    assert a.stats("patches").content_hash() == b.stats("patches").content_hash()


def test_refuses_a_source_with_a_lost_shard_file(roots, tmp_path):
    """A complete source shard whose patches file is gone reads as zeros in zarr: transcode refuses it before
    creating the destination, naming the store, the array, the shard and its images."""
    from store_schema.errors import StoreCorruptionError

    native, _ = roots
    src = tmp_path / "src"
    shutil.copytree(native, src)
    (teacher_store_path(src, TEACHER) / "patches" / "c" / "1" / "0" / "0" / "0" / "0").unlink()  # images 3..5
    lost = [i for i in (3, 4, 5) if np.asarray(_open(src).valid[i]).any()]
    assert lost
    with pytest.raises(StoreCorruptionError, match=rf"{TEACHER}.zarr: patches of images {re.escape(str(lost))} "
                                                   r"\(shard \[1\]\) have valid views but no stored chunk.*transcoding"):
        transcode_store(src, TEACHER, tmp_path / "dst")
    assert not teacher_store_path(tmp_path / "dst", TEACHER).exists()
