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
    # 80 images (21 shards): the first run must outlast the second one's interpreter start-up
    return build_corpus(tmp_path_factory.mktemp("lease_cli"), n_ok=80, num_views=2)


SECOND = """
import sys, time
from pathlib import Path
import torch, zarr  # noqa: F401 - warm imports: the timing below starts once the lease exists
import stages.extract.driver, stages.extract.worker, stages.teachers.registry, stages.teachers.weights  # noqa: F401
from pipeline.cli import app
print("ready", flush=True)
lease = Path(sys.argv[1])
while not lease.exists():
    time.sleep(0.005)
t = time.monotonic()
try:
    app(sys.argv[2:], prog_name="pipeline")
except SystemExit as e:
    print(f"refused after {time.monotonic() - t:.2f} s", file=sys.stderr, flush=True)
    raise
"""


def test_second_extraction_fails_fast_naming_the_holder_and_first_store_verifies(corpus_root: Path) -> None:
    lease = lease_path(teacher_store_path(corpus_root, TEACHER))
    second = subprocess.Popen([sys.executable, "-c", SECOND, str(lease), *_cmd(corpus_root)[3:]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=ENV)
    assert second.stdout.readline().strip() == "ready"  # imports done: from here on only the lease counts
    first = subprocess.Popen(_cmd(corpus_root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=REPO, env=ENV)
    try:
        _wait_for(lambda: lease.is_file() or first.poll() is not None, 120, "the first run's lease")
        first.send_signal(signal.SIGSTOP)  # keep it mid-run (alive, lease held) whatever this machine's speed
        try:
            _, err2 = second.communicate(timeout=300)
        finally:
            first.send_signal(signal.SIGCONT)
        assert first.poll() is None, f"the first run ended before the second one checked the lease: {err2[-1500:]}"
        assert second.returncode == 2, err2
        assert f"pid {first.pid} on host {socket.gethostname()}" in err2
        assert "being written by another run" in err2 and "process started" in err2
        assert "Traceback" not in err2
        elapsed = float(err2.rsplit("refused after ", 1)[1].split(" s")[0])
        print(f"second extraction refused {elapsed:.2f} s after the first run's lease appeared")
        assert elapsed < 25.0  # well under the 30 s stale time (the command's own imports, then one lease read)
        waiter = subprocess.Popen(_cmd(corpus_root, "--wait"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, cwd=REPO, env=ENV)
        out, err = first.communicate(timeout=600)
        assert first.returncode == 0, err
        assert "21 shards computed, 0 skipped" in out
        w_out, w_err = waiter.communicate(timeout=600)
        assert waiter.returncode == 0, w_err
        assert "0 shards computed, 21 skipped" in w_out  # waited (or started after), found the store finished
    finally:
        for p in (first, second):
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
