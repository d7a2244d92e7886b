"""Two `pipeline extract` runs on one store: the second fails within seconds naming the first (host, pid,
start time), or with --wait waits and then finds every shard complete; the first run's store verifies.
A run killed with SIGKILL leaves its lease, and the next run takes it over at once and resumes.
(store_schema/lease.py; the store is AM-RADIO arXiv 2312.06709's stage-one output.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from store_schema.layout import lease_path, teacher_store_path
from tests.ray_fixture import build_corpus

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TEACHER = "tiny_dinov2"
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def _cmd(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "extract", "--teacher", TEACHER, "--root", str(root), "--no-ray",
            "--shard-size", "4", "--batch-size", "4", "--no-progress", *extra]


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("lease_cli"), n_ok=40, num_views=2)


def test_second_extraction_fails_fast_naming_the_holder_and_first_store_verifies(corpus_root: Path) -> None:
    lease = lease_path(teacher_store_path(corpus_root, TEACHER))
    first = subprocess.Popen(_cmd(corpus_root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=REPO, env=ENV)
    try:
        _wait_for(lambda: lease.is_file() or first.poll() is not None, 60, "the first run's lease")
        waiter = subprocess.Popen(_cmd(corpus_root, "--wait"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, cwd=REPO, env=ENV)
        t = time.monotonic()
        second = subprocess.run(_cmd(corpus_root), capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)
        elapsed = time.monotonic() - t
        assert first.poll() is None, "the first run ended before the second one checked the lease"
        assert second.returncode == 2, second.stderr
        assert f"pid {first.pid} on host {socket.gethostname()}" in second.stderr
        assert "being written by another run" in second.stderr and "process started" in second.stderr
        assert "Traceback" not in second.stderr
        # It refused at once instead of waiting (the first run is still going): the time is the interpreter
        # and imports (a few seconds on an idle machine), then one read of the lease file.
        print(f"second extraction refused after {elapsed:.1f} s (process start to exit)")
        out, err = first.communicate(timeout=600)
        assert first.returncode == 0, err
        assert "11 shards computed, 0 skipped" in out
        w_out, w_err = waiter.communicate(timeout=600)
        assert waiter.returncode == 0, w_err
        assert "0 shards computed, 11 skipped" in w_out  # waited, then found the store finished
    finally:
        for p in (first,):
            if p.poll() is None:
                p.kill()
    assert not lease.exists()
    verify = subprocess.run([sys.executable, "-m", "pipeline.cli", "store", "verify", "--root", str(corpus_root)],
                            capture_output=True, text=True, cwd=REPO, env=ENV, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_killed_runs_lease_is_taken_over_and_the_run_resumes(tmp_path: Path) -> None:
    root = build_corpus(tmp_path, n_ok=40, num_views=2)
    store = teacher_store_path(root, TEACHER)
    first = subprocess.Popen(_cmd(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                             env=ENV)
    try:
        _wait_for(lambda: (store / "shards" / "complete" / "c" / "1").exists() or first.poll() is not None, 90,
                  "a complete shard")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL and lease_path(store).is_file()
    rerun = subprocess.run(_cmd(root), capture_output=True, text=True, cwd=REPO, env=ENV, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"took over a stale lease on {store}" in rerun.stderr and f"pid {first.pid} no longer runs" in rerun.stderr
    assert " 0 skipped" not in rerun.stdout  # resumed: the killed run's complete shards were kept
