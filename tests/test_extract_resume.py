"""Resume of stage one: a run killed with SIGKILL mid-way, then re-run, gives exactly the bytes of an
uninterrupted run and recomputes no completed shard; a shard written but not marked complete is redone.

(The completion protocol of docs/ARCHITECTURE.md: data, then statistics, then the complete flag.)
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from stages.extract.driver import ExtractConfig, finalize_shard, run_extract
from stages.extract.worker import ShardWorker
from stages.teachers.registry import get_teacher_spec, weights_identity
from store_schema.errors import StoreError
from store_schema.layout import manifest_path, teacher_store_path
from store_schema.manifest import read_manifest
from store_schema.teacher_store import create_teacher_store, open_teacher_store

pytest_plugins = ["tests.ray_fixture"]
pytestmark = pytest.mark.slow

TEACHER = "tiny_dinov2"
# The CLI's extract command in a fresh interpreter (independent of which groups pipeline/cli.py lists).
_CLI = ("import sys, torch, typer; torch.set_num_threads(1)\n"
        "from pipeline import cmd_extract\n"
        "app = typer.Typer(); cmd_extract.register(app)\n"
        "app.callback()(lambda: None)\n"
        "app(sys.argv[1:])\n")


def _cli_args(root) -> list[str]:
    return [sys.executable, "-c", _CLI, "extract", "--teacher", TEACHER, "--root", str(root), "--no-ray",
            "--shard-size", "2", "--batch-size", "1", "--stats-fold-every", "2", "--no-progress"]


def _computed(stdout: str) -> list[int]:
    m = re.search(r"computed shards \[([\d, ]*)\]", stdout)
    assert m, stdout
    return [int(v) for v in m.group(1).split(",") if v.strip()]


def _arrays(root) -> dict[str, bytes]:
    store = open_teacher_store(teacher_store_path(root, TEACHER))
    return {name: np.asarray(arr[:]).tobytes()
            for name, arr in (("summary", store.summary), ("patches", store.patches), ("valid", store.valid))}


def _two_roots(base, make_corpus):
    """Two store roots over the same images and the same manifest bytes (same manifest hash)."""
    root_a = make_corpus(base)
    root_b = base / "root_b"
    root_b.mkdir()
    shutil.copy(manifest_path(root_a), manifest_path(root_b))
    return root_a, root_b


def test_sigkill_then_rerun_equals_uninterrupted_run(tmp_path, make_corpus):
    root_ref, root = _two_roots(tmp_path, make_corpus)
    ref = subprocess.run(_cli_args(root_ref), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    n_shards = 7  # 14 images, shards of 2
    assert _computed(ref.stdout) == list(range(n_shards))

    proc = subprocess.Popen(_cli_args(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done_at_kill: list[int] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done_at_kill = open_teacher_store(teacher_store_path(root, TEACHER)).completed_shards().tolist()
        except StoreError:  # not created yet, or its arrays are being created right now
            done_at_kill = []
        if done_at_kill:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done_after_kill = open_teacher_store(teacher_store_path(root, TEACHER)).completed_shards().tolist()
    assert done_at_kill and len(done_after_kill) < n_shards  # interrupted part-way

    rerun = subprocess.run(_cli_args(root), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    computed = _computed(rerun.stdout)
    assert sorted(computed) == sorted(set(range(n_shards)) - set(done_after_kill))  # none recomputed
    assert f"skipped {done_after_kill}" in rerun.stdout
    assert _arrays(root) == _arrays(root_ref)
    store, store_ref = (open_teacher_store(teacher_store_path(r, TEACHER)) for r in (root, root_ref))
    for kind in store.kinds:
        for split in (None, "train", "val"):
            assert store.stats(kind, split).content_hash() == store_ref.stats(kind, split).content_hash()


def test_shard_written_but_not_marked_complete_is_recomputed(tmp_path, make_corpus):
    root_ref, root = _two_roots(tmp_path, make_corpus)  # 14 images, shards of 4
    config = ExtractConfig(workers=0, shard_size=4, batch_size=4, progress=False)
    ref = run_extract(root_ref, TEACHER, config)
    assert ref.computed_shards == [0, 1, 2, 3]
    store_ref = open_teacher_store(teacher_store_path(root_ref, TEACHER))

    # A run that finalized shard 0, then died after shard 1's write but before the driver finalized it.
    spec = get_teacher_spec(TEACHER)
    store = create_teacher_store(teacher_store_path(root, TEACHER), spec=spec,
                                 weights_identity=weights_identity(spec), manifest=read_manifest(manifest_path(root)),
                                 shard_size=4, storage_grid=spec.grid, codec=config.codec)
    worker = ShardWorker(spec, store_path=store.path, manifest_path=manifest_path(root), batch_size=4)
    finalize_shard(store, worker.run_shard(0))
    worker.run_shard(1)
    assert store.completed_shards().tolist() == [0]
    assert store.stats("patches").count == store.shard_stats(0, "patches").count  # shard 1 not counted

    again = run_extract(root, TEACHER, config)
    assert again.computed_shards == [1, 2, 3] and again.skipped_shards == [0]
    assert _arrays(root) == _arrays(root_ref)
    for kind in store.kinds:
        for split in (None, "train", "val"):
            assert store.stats(kind, split).content_hash() == store_ref.stats(kind, split).content_hash()
    assert store.ledger.folded()[0] == 4  # every shard folded into the totals at the end of the run
