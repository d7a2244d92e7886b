"""Stage one against a real Ray cluster started apart from the pipeline: two nodes on this machine (two
raylets: `ray start --head --num-cpus 1`, then `ray start --address HEAD --num-cpus 1`), an extraction
with `--ray-address auto --workers 2` runs shards on both nodes, the pipeline leaves the cluster running,
and losing the second node mid-run (its raylet and its workers SIGKILLed, as a crashed machine) lets the
run finish on the head node; a re-run then finds the store complete and equal to an uninterrupted run.
(stages/orchestrate/shards.py node-loss handling; AM-RADIO arXiv 2312.06709 stage one.)

The cluster is this test's own: its own temp dir and ports, torn down by killing exactly its processes
(never `ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest

from stages.extract.driver import ExtractConfig, run_extract
from stages.extract.verify import verify_store
from store_schema.layout import manifest_path, teacher_store_path
from store_schema.teacher_store import open_teacher_store
from tests.ray_fixture import build_corpus

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TEACHER = "tiny_dinov2"
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A two-node local Ray cluster owned by this test."""

    def __init__(self) -> None:
        self.temp_dir = f"/tmp/ri14_{uuid.uuid4().hex[:6]}"  # short: Ray's unix sockets live under it
        self.port, self.worker_nm_port = _free_port(), _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_health_check_period_ms="500",
                        RAY_health_check_failure_threshold="4", RAY_health_check_timeout_ms="1000",
                        PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        self.env.pop("RAY_ADDRESS", None)
        common = ["--num-cpus", "1", "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
        self._run([RAY, "start", "--head", "--port", str(self.port), "--temp-dir", self.temp_dir,
                   "--include-dashboard", "false", *common])
        self._run([RAY, "start", "--address", self.address, "--node-manager-port", str(self.worker_nm_port),
                   *common])

    def _run(self, cmd: list[str]) -> None:
        out = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr

    def processes(self) -> list[psutil.Process]:
        """This cluster's processes: those naming its temp dir, and everything they started (workers)."""
        mine = []
        for p in psutil.process_iter(["cmdline"]):
            if p.pid != os.getpid() and any(self.temp_dir in part for part in (p.info["cmdline"] or [])):
                mine.append(p)
        for p in list(mine):
            try:
                mine.extend(p.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        return list({p.pid: p for p in mine}.values())

    def raylet(self, node_manager_port: int | None) -> psutil.Process:
        for p in self.processes():
            try:
                cmd = " ".join(p.cmdline())
            except psutil.NoSuchProcess:
                continue
            if "raylet/raylet" in cmd and (node_manager_port is None) == (f"--node_manager_port={self.worker_nm_port}" not in cmd):
                return p
        raise AssertionError("raylet not found")

    def kill_worker_node(self) -> None:
        raylet = self.raylet(self.worker_nm_port)
        victims = [raylet, *raylet.children(recursive=True)]
        for p in victims:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(victims, timeout=10)

    def gcs_alive(self) -> bool:
        return any("gcs_server" in " ".join(p.cmdline()) for p in self.processes() if p.is_running())

    def stop(self) -> None:
        procs = self.processes()
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=15)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        yield c
    finally:
        c.stop()
        assert not c.processes()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(base, reference arrays) from an uninterrupted in-process extraction of 40 images in 21 shards."""
    base = tmp_path_factory.mktemp("cluster")
    root = build_corpus(base, n_ok=40, num_views=2)
    run_extract(root, TEACHER, ExtractConfig(workers=0, shard_size=2, batch_size=2, progress=False))
    return base, _arrays(root)


def _arrays(root: Path) -> dict[str, bytes]:
    store = open_teacher_store(teacher_store_path(root, TEACHER))
    return {n: np.asarray(getattr(store, n)[:]).tobytes() for n in ("summary", "patches", "valid")}


def _fresh_root(base: Path, name: str) -> Path:
    root = base / name
    root.mkdir()
    (root / "manifest.parquet").write_bytes(manifest_path(base / "root").read_bytes())
    return root


def _cmd(root: Path, workers: int = 2) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "extract", "--teacher", TEACHER, "--root", str(root),
            "--ray-address", "auto", "--workers", str(workers), "--shard-size", "2", "--batch-size", "2",
            "--no-progress", "--keepbits", "7", "--device", "cpu", "--decode-ahead", "0"]


def _nodes(stdout: str) -> dict[str, list[int]]:
    return {m.group(1): [int(k) for k in m.group(2).split(",") if k.strip()]
            for m in re.finditer(r"node ([0-9a-f]+): shards \[([\d, ]*)\]", stdout)}


def test_extraction_on_a_two_node_cluster_uses_both_nodes_and_leaves_the_cluster_running(cluster, corpus) -> None:
    base, ref = corpus
    root = _fresh_root(base, "both_nodes")
    env = dict(cluster.env, RAY_ADDRESS=cluster.address)  # what `--ray-address auto` finds
    out = subprocess.run(_cmd(root), capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    nodes = _nodes(out.stdout)
    assert len(nodes) == 2, out.stdout  # shards ran on both raylets
    assert sorted(k for ks in nodes.values() for k in ks) == list(range(21))
    assert _arrays(root) == ref
    assert cluster.gcs_alive() and cluster.raylet(cluster.worker_nm_port).is_running()  # not stopped by us


def test_losing_a_node_mid_run_finishes_on_the_head_and_rerun_equals_uninterrupted(cluster, corpus) -> None:
    base, ref = corpus
    root = _fresh_root(base, "node_lost")
    env = dict(cluster.env, RAY_ADDRESS=cluster.address)
    proc = subprocess.Popen(_cmd(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=REPO)
    complete = teacher_store_path(root, TEACHER) / "shards" / "complete" / "c"
    deadline = time.monotonic() + 180
    while not (complete.is_dir() and len(list(complete.iterdir())) >= 2) and proc.poll() is None:
        assert time.monotonic() < deadline, "no shard completed"
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before the node could be stopped"
    cluster.kill_worker_node()
    stdout, stderr = proc.communicate(timeout=240)
    assert "Traceback" not in stderr
    if proc.returncode == 0:  # finished on the head node
        nodes = _nodes(stdout)
        assert sorted(k for ks in nodes.values() for k in ks) == list(range(21)), stdout
    else:  # or stopped with the clear message
        assert proc.returncode == 2 and "every Ray worker was lost" in stderr, stdout + stderr
    assert cluster.gcs_alive()  # the head is still there
    rerun = subprocess.run(_cmd(root, workers=1), capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _arrays(root) == ref
    assert verify_store(open_teacher_store(teacher_store_path(root, TEACHER))).complete
