"""Leases on s3:// roots (store_schema/lease_object.py) against a real S3 server (moto): the guarantees of
a filesystem lease, from S3 conditional writes. A second writer is refused within seconds naming the
holder (also `pipeline extract`), a SIGKILLed holder's lease is taken over, a foreign host's lease counts
until its heartbeat is stale, the heartbeat keeps a live lease fresh, a lease taken over underneath its
holder stops it, and roots whose object store offers no conditional writes are refused."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from store_schema.layout import lease_path, manifest_path, teacher_store_path
from store_schema.lease import Lease, LeaseHeldError, LeaseLostError, LeaseOptions, read_holder
from store_schema.lease_object import LeaseUnsupportedError

pytest_plugins = ["tests.s3_fixture", "tests.ray_fixture"]
# Last-Modified has a resolution of one second: heartbeats and stale times a few seconds apart
S3_FAST = LeaseOptions(heartbeat_s=0.5, stale_after_s=3.0, poll_s=0.1)


def _holder_process(target: str, *, hold_s: float) -> subprocess.Popen:
    """A separate process holding the lease on an s3:// target (heartbeat 0.5 s, stale after 3 s)."""
    from tests.test_lease import _holder_process as holder

    return holder(target, hold_s=hold_s, heartbeat_s=0.5)


def _foreign_lease(target: str, *, at: float | None = None) -> None:
    """A lease object as a run on another host leaves it (its pid means nothing here)."""
    import fsspec

    record = {"host": "other-node-7", "pid": 4242, "process_started": time.time() - 100, "token": "f" * 32,
              "acquired_at": time.time() - 100, "purpose": "extract on another node"}
    fsspec.filesystem("s3").pipe_file(lease_path(target)[len("s3://"):], json.dumps(record).encode())


def test_second_writer_on_an_s3_root_is_refused_naming_the_holder(s3):
    target = f"{s3}/leases/alpha.zarr"
    proc = _holder_process(target, hold_s=60)
    try:
        t = time.monotonic()
        with pytest.raises(LeaseHeldError) as err:
            Lease(target, purpose="extract alpha").acquire()
        assert time.monotonic() - t < 5
        msg = str(err.value)
        assert f"pid {proc.pid} on host" in msg and "test holder" in msg and f"lease {target}.lease" in msg
        proc.send_signal(signal.SIGKILL)  # a dead holder on this host: taken over at once
        proc.wait()
        with Lease(target) as lease:
            assert lease.took_over["pid"] == proc.pid and "no longer runs on this host" in lease.took_over["reason"]
        assert read_holder(lease_path(target)) is None  # released: the object is gone
    finally:
        if proc.poll() is None:
            proc.kill()


def test_foreign_lease_on_s3_counts_until_its_heartbeat_is_stale_and_a_live_one_stays_fresh(s3):
    target = f"{s3}/leases/shared.zarr"
    _foreign_lease(target)
    with pytest.raises(LeaseHeldError, match="pid 4242 on host other-node-7"):
        Lease(target, options=S3_FAST).acquire()
    time.sleep(S3_FAST.stale_after_s + 1.5)  # nobody beats it: stale
    with Lease(target, options=S3_FAST) as lease:
        assert "heartbeat is" in lease.took_over["reason"]
        time.sleep(2 * S3_FAST.stale_after_s)  # only the heartbeat keeps it from going stale
        with pytest.raises(LeaseHeldError):
            Lease(target, options=S3_FAST).acquire()
        lease.check()


def test_an_s3_lease_taken_over_underneath_its_holder_stops_it(s3):
    target = f"{s3}/leases/x.zarr"
    lease = Lease(target, options=S3_FAST).acquire()
    try:
        _foreign_lease(target)  # e.g. this process was suspended and another run took over
        with pytest.raises(LeaseLostError, match="another run took it over: pid 4242 on host other-node-7"):
            lease.check()
    finally:
        lease.release()
    assert read_holder(lease_path(target))[0]["host"] == "other-node-7"  # never removes another's lease


def test_second_extraction_into_an_s3_root_fails_fast_naming_the_holder(s3, make_corpus, tmp_path):
    local_root = make_corpus(tmp_path / "c", n_ok=4, num_views=1)
    url = f"{s3}/lease-extract"
    res = CliRunner().invoke(app, ["corpus", str(local_root.parent / "images"), "--out", url, "--no-ray"])
    assert res.exit_code == 0, res.output
    proc = _holder_process(teacher_store_path(url, "tiny_sam"), hold_s=60)
    try:
        res = CliRunner().invoke(app, ["extract", "--teacher", "tiny_sam", "--root", url, "--no-ray",
                                       "--no-progress"], env={"COLUMNS": "300"})
        out = " ".join(res.output.split())
        assert res.exit_code == 2 and f"pid {proc.pid} on host" in out and "is being written by another run" in out
    finally:
        proc.kill()
        proc.wait()
    assert manifest_path(url)  # the root itself is untouched


def test_roots_without_conditional_writes_are_refused(s3):
    with pytest.raises(LeaseUnsupportedError, match=r"no lease on memory:// roots .* writing is refused"):
        Lease("memory://bucket/root/alpha.zarr")
