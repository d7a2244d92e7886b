"""Leases (store_schema/lease.py): one writer per store / run directory, holders named, stale holders
(a dead pid on this host, a heartbeat gone quiet on another host) taken over exactly once, --wait waits,
a lease taken over underneath its holder stops the holder before its next commit point."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from store_schema.layout import lease_path
from store_schema.lease import Lease, LeaseHeldError, LeaseLostError, LeaseOptions, read_holder

REPO = Path(__file__).resolve().parents[1]
FAST = LeaseOptions(heartbeat_s=0.1, stale_after_s=0.5, poll_s=0.05)


def _holder_process(target: Path, *, hold_s: float, heartbeat_s: float = 5.0) -> subprocess.Popen:
    """A separate process that takes the lease on `target`, says so on stdout, holds it for hold_s."""
    code = textwrap.dedent(f"""
        import sys, time
        from store_schema.lease import Lease, LeaseOptions
        with Lease({str(target)!r}, purpose="test holder",
                   options=LeaseOptions(heartbeat_s={heartbeat_s}, stale_after_s={heartbeat_s * 6})):
            print("held", flush=True)
            time.sleep({hold_s})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    target = tmp_path / "alpha.zarr"
    with Lease(target, purpose="extract alpha") as first:
        assert lease_path(target).is_file() and not target.exists()  # beside the target, before it exists
        t = time.monotonic()
        with pytest.raises(LeaseHeldError) as err:
            Lease(target, purpose="extract alpha").acquire()
        assert time.monotonic() - t < 1.0  # one read of the lease file: refused at once
        msg = str(err.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in msg and "extract alpha" in msg
        assert "process started" in msg and str(lease_path(target)) in msg and "--wait" in msg
        first.check()  # still ours
    assert not lease_path(target).exists()
    with Lease(target):  # free again
        pass


def test_lease_of_a_killed_process_on_this_host_is_taken_over(tmp_path: Path) -> None:
    target = tmp_path / "run"
    proc = _holder_process(target, hold_s=60)
    with pytest.raises(LeaseHeldError, match=f"pid {proc.pid} "):
        Lease(target).acquire()  # alive: refused
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert lease_path(target).is_file()  # a SIGKILLed holder leaves its lease behind
    t = time.monotonic()
    with Lease(target) as lease:
        assert time.monotonic() - t < 2  # detected at once on its own host, no heartbeat timeout
        assert lease.took_over["pid"] == proc.pid and "no longer runs" in lease.took_over["reason"]


def _foreign_lease(target: Path, *, age_s: float) -> None:
    """A lease as a run on another host leaves it: its pid means nothing here; only its heartbeat counts."""
    path = lease_path(target)
    path.write_text(json.dumps({"host": "other-node-7", "pid": 4242, "process_started": time.time() - 100,
                                "token": "f" * 32, "acquired_at": time.time() - 100, "purpose": "distill"}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))


def test_other_hosts_lease_counts_until_its_heartbeat_is_stale(tmp_path: Path) -> None:
    target = tmp_path / "shared.zarr"
    _foreign_lease(target, age_s=0.0)
    with pytest.raises(LeaseHeldError, match="pid 4242 on host other-node-7"):
        Lease(target, options=FAST).acquire()
    _foreign_lease(target, age_s=5.0)
    with Lease(target, options=FAST) as lease:
        assert "heartbeat is 5 s old" in lease.took_over["reason"]


def test_heartbeat_keeps_a_live_lease_fresh(tmp_path: Path) -> None:
    target = tmp_path / "busy"
    with Lease(target, options=FAST):
        t0 = read_holder(lease_path(target))[1]
        time.sleep(1.0)  # twice stale_after: only the heartbeat keeps it from going stale
        holder, beat = read_holder(lease_path(target))
        assert beat > t0 and time.time() - beat < FAST.stale_after_s
        with pytest.raises(LeaseHeldError):
            Lease(target, options=FAST).acquire()


def test_wait_takes_the_lease_once_the_holder_finishes(tmp_path: Path) -> None:
    target = tmp_path / "queued.zarr"
    proc = _holder_process(target, hold_s=1.5)
    t = time.monotonic()
    with Lease(target, options=LeaseOptions(wait=True, poll_s=0.05)) as lease:
        assert time.monotonic() - t > 0.5 and lease.took_over is None  # released cleanly, not broken
    proc.wait(timeout=10)
    proc2 = _holder_process(target, hold_s=30)
    try:
        t = time.monotonic()
        with pytest.raises(LeaseHeldError, match="after waiting 0.5 s"):
            Lease(target, options=LeaseOptions(wait=True, timeout_s=0.5, poll_s=0.05)).acquire()
        assert time.monotonic() - t < 5
    finally:
        proc2.kill()
        proc2.wait()


def test_a_lease_taken_over_underneath_its_holder_stops_it(tmp_path: Path) -> None:
    target = tmp_path / "x.zarr"
    lease = Lease(target, options=FAST).acquire()
    try:
        _foreign_lease(target, age_s=0.0)  # e.g. this process was suspended and another run took over
        with pytest.raises(LeaseLostError, match="another run took it over: pid 4242 on host other-node-7"):
            lease.check()
    finally:
        lease.release()
    assert lease_path(target).is_file()  # release never removes someone else's lease


def _race(target: str, barrier, out) -> None:
    barrier.wait()
    try:
        with Lease(target, options=FAST):
            out.put("won")
            time.sleep(0.5)
    except LeaseHeldError:
        out.put("refused")


def test_many_runs_breaking_one_stale_lease_yield_one_holder(tmp_path: Path) -> None:
    target = tmp_path / "contended.zarr"
    _foreign_lease(target, age_s=60.0)
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(target), barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
    results = sorted(out.get(timeout=5) for _ in procs)
    assert results == ["refused", "refused", "refused", "won"]


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="stale_after_s > 2 x heartbeat_s"):
        LeaseOptions(heartbeat_s=5, stale_after_s=6)


def test_second_distill_into_a_run_directory_is_refused_naming_the_holder(tmp_path: Path) -> None:
    from stages.distill.config import DistillConfig
    from stages.distill.train import train

    run = tmp_path / "runs" / "phis"
    config = DistillConfig(student="vit_tiny_test", teachers=("alpha",), root=tmp_path / "no_store", out_dir=run)
    with Lease(run, purpose="distill phis"):
        with pytest.raises(LeaseHeldError, match=rf"{run} is being written by another run: pid {os.getpid()} "):
            train(config)  # refused before it reads a store or writes anything
    assert not run.exists()


def test_transcode_into_a_destination_being_written_is_refused(tmp_path: Path) -> None:
    from stages.extract.transcode import transcode_store
    from store_schema.layout import teacher_store_path

    dst = teacher_store_path(tmp_path / "dst", "tiny_dinov2")
    with Lease(dst, purpose="extract tiny_dinov2"):
        with pytest.raises(LeaseHeldError, match="doing 'extract tiny_dinov2'"):
            transcode_store(tmp_path / "src", "tiny_dinov2", tmp_path / "dst")
