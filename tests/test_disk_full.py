"""A full disk during a shard write, a statistics write, a complete flag or a checkpoint: the run stops with
one error naming what it was writing, the path and the free space; no shard is marked complete that is
not, no checkpoint is replaced by a partial one; after space is freed a re-run gives arrays (and weights)
identical to an uninterrupted run. (store_schema/io_errors.py; AM-RADIO arXiv 2312.06709's two stages.)

The disk is a real small tmpfs mounted by the test where it may mount one (root with mount permission,
as on this project's machines); elsewhere the same tests run with OSError(ENOSPC) injected at the two write
boundaries (zarr's local-store file write, the checkpoint's fsync), and say so in their output.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from stages.extract.driver import ExtractConfig, finalize_shard, run_extract
from stages.extract.verify import verify_store
from stages.extract.worker import ShardWorker
from stages.teachers.registry import get_teacher_spec, weights_identity
from store_schema.codecs import CodecSpec
from store_schema.errors import StorageWriteError
from store_schema.layout import manifest_path, teacher_store_path
from store_schema.manifest import read_manifest
from store_schema.teacher_store import create_teacher_store, open_teacher_store
from tests.ray_fixture import build_corpus

pytestmark = pytest.mark.slow
TEACHER = "tiny_dinov2"
CONFIG = ExtractConfig(workers=0, shard_size=2, batch_size=2, progress=False)


class Disk:
    """A small filesystem at `path` that can be filled and freed: a real tmpfs when mounting works, else a
    plain folder whose writes through zarr's local store / the checkpoint's fsync fail with ENOSPC while
    "full" (fault injection at the store's write boundary)."""

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = path
        path.mkdir(parents=True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)],
                                 capture_output=True, text=True)
        self.real = mounted.returncode == 0
        self.budget: int | None = None  # injected mode: bytes that still fit while full
        if not self.real:
            import zarr.storage._local as local

            real_put, real_fsync = local._put, os.fsync

            def put(p, value, exclusive=False):
                n = len(value.as_buffer_like())
                if self.budget is not None:
                    if n > self.budget:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(p))
                    self.budget -= n
                return real_put(p, value, exclusive=exclusive)

            def fsync(fd):
                if self.budget is not None and os.fstat(fd).st_size > self.budget:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real_fsync(fd)

            monkeypatch.setattr(local, "_put", put)
            monkeypatch.setattr(os, "fsync", fsync)
        print(f"disk-full tests: {'a real tmpfs' if self.real else 'injected ENOSPC (mount not permitted: ' + mounted.stderr.strip() + ')'}")

    def fill(self, *, leave: int) -> None:
        """Leave only about `leave` bytes free."""
        if not self.real:
            self.budget = leave
            return
        free = shutil.disk_usage(self.path).free
        with open(self.path / ".filler", "wb") as f:
            f.truncate(0)
            block = b"\0" * (1 << 20)
            todo = max(0, free - leave)
            while todo > 0:
                todo -= f.write(block[: min(len(block), todo)])

    def free(self) -> None:
        if self.real:
            (self.path / ".filler").unlink(missing_ok=True)
        self.budget = None

    def close(self) -> None:
        if self.real:
            subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def make_disk(monkeypatch: pytest.MonkeyPatch):
    """Disk(path) factory; every disk made is unmounted at teardown."""
    made: list[Disk] = []

    def make(path: Path) -> Disk:
        made.append(Disk(path, monkeypatch))
        return made[-1]

    yield make
    for d in made:
        d.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted in-process extraction on the ordinary disk: (base folder, arrays, stats hashes)."""
    base = tmp_path_factory.mktemp("disk_full")
    root = build_corpus(base, n_ok=12, num_views=2)
    run_extract(root, TEACHER, CONFIG)
    return base, _arrays(root), _stats(root)


def _arrays(root: Path) -> dict[str, bytes]:
    store = open_teacher_store(teacher_store_path(root, TEACHER))
    return {name: np.asarray(getattr(store, name)[:]).tobytes() for name in ("summary", "patches", "valid")}


def _stats(root: Path) -> dict[str, str]:
    store = open_teacher_store(teacher_store_path(root, TEACHER))
    return {kind: store.stats(kind).content_hash() for kind in store.kinds}


def _disk_root(reference_base: Path, make_disk) -> tuple[Path, Disk]:
    """A disk mounted as a store root over the reference manifest (at the same depth as the reference
    root, so the manifest's relative image folder resolves to the same images)."""
    disk = make_disk(reference_base / f"disk_{uuid.uuid4().hex[:8]}")
    shutil.copy(manifest_path(reference_base / "root"), manifest_path(disk.path))
    return disk.path, disk


def _extract_cli(root: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["extract", "--teacher", TEACHER, "--root", str(root), "--no-ray",
                                      "--shard-size", "2", "--batch-size", "2", "--no-progress", "--workers", "1",
                                      "--keepbits", "7", "--device", "cpu", "--decode-ahead", "0"],
                                env={"COLUMNS": "300"})
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, " ".join(result.output.split())


def test_disk_full_mid_extraction_then_rerun_equals_uninterrupted(reference, make_disk) -> None:
    base, ref_arrays, ref_stats = reference
    root, disk = _disk_root(base, make_disk)
    disk.fill(leave=450_000)  # about half of what the store needs
    code, out = _extract_cli(root)
    assert code == 2, out
    assert "No space left on device" in out and "Traceback" not in out
    assert str(teacher_store_path(root, TEACHER)) in out and "MiB free of" in out
    assert "not marked complete" in out or "no store was created" in out, out
    store = open_teacher_store(teacher_store_path(root, TEACHER))
    done = store.completed_shards().tolist()
    assert 0 < len(done) < store.num_shards, done  # it stopped part-way, keeping whole shards
    for k in done:  # what is marked complete is exactly the uninterrupted run's data
        a, b = store.shard_range(k)
        ref = open_teacher_store(teacher_store_path(base / "root", TEACHER))
        assert np.array_equal(store.patches[a:b], ref.patches[a:b])
    disk.free()
    code, out = _extract_cli(root)
    assert code == 0, out
    assert f"skipped {done}" in out
    assert _arrays(root) == ref_arrays and _stats(root) == ref_stats
    assert verify_store(open_teacher_store(teacher_store_path(root, TEACHER))).complete


def test_disk_full_during_statistics_and_complete_flag_leaves_the_shard_unmarked(reference, make_disk) -> None:
    base, ref_arrays, ref_stats = reference
    root, disk = _disk_root(base, make_disk)
    spec, manifest = get_teacher_spec(TEACHER), read_manifest(manifest_path(root))
    store = create_teacher_store(teacher_store_path(root, TEACHER), spec=spec, weights_identity=weights_identity(spec),
                                 manifest=manifest, shard_size=CONFIG.shard_size, storage_grid=spec.grid,
                                 codec=CodecSpec())
    worker = ShardWorker(spec, store_path=store.path, manifest_path=manifest.path, batch_size=2)
    result = worker.run_shard(0)  # shard 0's data is on disk; its statistics are not yet
    disk.fill(leave=0)
    with pytest.raises(StorageWriteError, match="writing statistics of shard 0 of .* failed: No space left") as err:
        finalize_shard(store, result)
    assert "MiB free of" in str(err.value) and err.value.errno == errno.ENOSPC
    assert not store.is_complete(0)
    disk.free()
    for kind in store.kinds:  # statistics written, then the disk fills before the complete flag
        store.write_shard_stats(0, kind, getattr(result, kind))
    disk.fill(leave=0)
    with pytest.raises(StorageWriteError, match="complete flag of shard 0"):
        store.mark_complete(0)
    assert not open_teacher_store(store.path).is_complete(0)
    disk.free()
    report = run_extract(root, TEACHER, CONFIG)
    assert sorted(report.computed_shards) == list(range(store.num_shards))  # shard 0 rewritten too
    assert _arrays(root) == ref_arrays and _stats(root) == ref_stats


def test_disk_full_at_a_checkpoint_keeps_the_previous_one_and_resume_equals_uninterrupted(tmp_path: Path,
                                                                                            make_disk) -> None:
    import torch

    from stages.distill.run_dir import checkpoint_path
    from stages.distill.config import DistillConfig
    from stages.distill.train import train
    from test_distill_loader import make_tiny_stores

    root = make_tiny_stores(tmp_path / "store", teachers=("alpha", "beta"))

    def config(out: Path) -> DistillConfig:
        return DistillConfig(student="vit_tiny_test", teachers=("alpha", "beta"), root=root, out_dir=out,
                             img_size=64, steps=8, batch_size=4, warmup_steps=1, log_every=1, ckpt_every=4, seed=3)

    ref = train(config(tmp_path / "ref"))
    disk = make_disk(tmp_path / "disk")
    run = disk.path / "run"
    train(config(run), stop_at=4)
    before = checkpoint_path(run).read_bytes()
    disk.fill(leave=64 * 1024)  # room for metrics lines, not for a checkpoint
    with pytest.raises(StorageWriteError, match="writing the checkpoint failed: No space left on device") as err:
        train(config(run), resume=True)
    assert "the previous checkpoint is kept" in str(err.value) and "MiB free of" in str(err.value)
    assert str(checkpoint_path(run)) in str(err.value)
    assert checkpoint_path(run).read_bytes() == before  # not replaced, not truncated
    assert not list(run.glob("*.tmp"))
    disk.free()
    train(config(run), resume=True)
    a = torch.load(checkpoint_path(ref), weights_only=True)
    b = torch.load(checkpoint_path(run), weights_only=True)
    assert a["step"] == b["step"] == 8
    for k in a["student"]:
        assert torch.equal(a["student"][k], b["student"][k]), k
    losses = [[ln.split('"images_per_s"')[0] for ln in (d / "metrics.jsonl").read_text().splitlines()]
              for d in (ref, run)]
    assert losses[0] == losses[1]
