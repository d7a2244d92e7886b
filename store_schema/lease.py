"""Leases: one writer at a time for a feature store, a run directory or a transcode target.

Stage one writes whole Zarr shards (AM-RADIO, arXiv 2312.06709's teachers run once into the store) and a
shard write is not atomic across processes: two runs writing the same pending shards lose data. A lease
makes the second run refuse (or wait) instead.

A lease is a small JSON file beside what it guards (`layout.lease_path(target)`) that names its holder:
host, pid, the process's start time, a random token, what it is doing and when it took the lease. The
holder refreshes the file's modification time every `heartbeat_s` seconds from a background thread (a
`utime`, so a full disk never stops the heartbeat). Taking a lease links a private temporary file to the
lease name (`os.link` fails if the name exists): atomic on local and network filesystems alike (NFS
included), so it does not depend on fcntl / flock locks, which several shared filesystems do not honour
across hosts.

A lease is stale when its holder is gone: on the holder's own host, when its pid no longer runs the
process that took the lease (a SIGKILLed run, a crashed node that rebooted); on any host, when its
heartbeat is older than `stale_after_s` (a host that vanished). Clocks of the hosts sharing a filesystem
are assumed to agree to well within `stale_after_s` (NTP). A stale lease is taken over under a short-lived
break lock, so two runs that both find it stale cannot both take it. The holder re-reads its lease on
every heartbeat; `Lease.check()` raises `LeaseLostError` if another run took it over (e.g. this process
was suspended past `stale_after_s`), and writers call it before each commit point (a shard's complete
flag, a checkpoint).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store_schema.errors import StoreError
from store_schema.lease_record import describe_holder, iso_time, lost_reason, parse_holder
from store_schema.layout import lease_path

if TYPE_CHECKING:
    from store_schema.lease_object import ObjectLeaseFile

DEFAULT_HEARTBEAT_S = 5.0
DEFAULT_STALE_AFTER_S = 30.0
BREAK_LOCK_STALE_S = 30.0  # a break lock older than this was left by a process killed while breaking


class LeaseHeldError(StoreError):
    """Another live run holds the lease (the message names it and how to proceed)."""

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


class LeaseLostError(StoreError):
    """This run's lease was taken over by another run; it must stop writing."""


@dataclass(frozen=True)
class LeaseOptions:
    """How to take a lease. wait: poll until the holder is done instead of failing at once; timeout_s:
    give up waiting after this long (None: wait as long as it takes)."""

    wait: bool = False
    timeout_s: float | None = None
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    stale_after_s: float = DEFAULT_STALE_AFTER_S
    poll_s: float = 0.5

    def __post_init__(self) -> None:
        if self.heartbeat_s <= 0 or self.stale_after_s <= 2 * self.heartbeat_s:
            raise ValueError(f"lease needs heartbeat_s > 0 and stale_after_s > 2 x heartbeat_s, got "
                             f"{self.heartbeat_s} and {self.stale_after_s}")
        if self.timeout_s is not None and self.timeout_s < 0:
            raise ValueError(f"lease wait timeout must be >= 0 seconds, got {self.timeout_s}")


def _process_start_time(pid: int) -> float | None:
    """Start time (epoch seconds) of a running pid on this host, None if no such process."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except psutil.Error:
        return None


def read_holder(path: Path | str) -> tuple[dict[str, Any], float] | None:
    """(holder record, heartbeat time) of the lease at `path` (a file, or an s3:// object), or None when
    there is none. A local lease's heartbeat is the file's mtime, an object's its Last-Modified time."""
    found = lease_file_for_path(path).read()
    return None if found is None else (found[0], found[1])


class LocalLeaseFile:
    """A lease file on a local or shared filesystem: created by `os.link` of a complete temporary file
    (atomic on NFS too), heartbeat = mtime (`utime`), stale holders broken under a break lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def prepare(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def read(self) -> tuple[dict[str, Any], float, Any] | None:
        """(holder, heartbeat time, version) or None; the version is what `replace` compares."""
        try:
            st = os.stat(self.path)
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        holder = parse_holder(text)
        return holder, st.st_mtime, (holder.get("token"), st.st_mtime)

    def create(self, record: dict[str, Any]) -> bool:
        """Link a complete temporary record to the lease name; True when this call created the lease."""
        from store_schema.io_errors import write_guard

        tmp = self.path.with_name(f"{self.path.name}.{record['token']}.tmp")
        with write_guard(self.path, "the lease file"):
            try:
                tmp.write_text(json.dumps(record, indent=1))
                try:
                    os.link(tmp, self.path)
                    return True
                except FileExistsError:
                    return False
                except OSError:
                    # Some network filesystems report a failed link whose effect happened: trust the link count.
                    return os.stat(tmp).st_nlink == 2
            finally:
                tmp.unlink(missing_ok=True)

    def replace(self, version: Any, record: dict[str, Any]) -> bool:
        """Replace a stale lease (still at `version`) under the break lock; False if someone else changed
        it first or is breaking it now."""
        from store_schema.io_errors import write_guard

        brk = self.path.with_name(self.path.name + ".break")
        mine = self.path.with_name(f"{brk.name}.{record['token']}.tmp")
        with write_guard(self.path, "the lease file"):
            mine.write_text(record["token"])
            try:
                try:
                    os.link(mine, brk)
                except FileExistsError:
                    try:
                        if time.time() - os.stat(brk).st_mtime > BREAK_LOCK_STALE_S:
                            brk.unlink(missing_ok=True)  # left by a breaker that died mid-way
                    except FileNotFoundError:
                        pass
                    time.sleep(0.05)
                    return False
            finally:
                mine.unlink(missing_ok=True)
            try:
                again = self.read()
                if again is not None and again[2] != version:
                    return False  # renewed or replaced since we looked: not ours to break
                self.path.unlink(missing_ok=True)
                return self.create(record)
            finally:
                brk.unlink(missing_ok=True)

    def beat(self, token: str) -> str | None:
        """Refresh the heartbeat (a `utime`: needs no free space); the reason if the lease is no longer ours."""
        found = self.read()
        if found is None or found[0].get("token") != token:
            return lost_reason(found)
        try:
            now = time.time()
            os.utime(self.path, (now, now))
        except OSError:
            pass  # the next beat tries again; a lease that goes stale is caught by check()
        return None

    def remove(self, token: str) -> None:
        found = self.read()
        if found is not None and found[0].get("token") == token:
            self.path.unlink(missing_ok=True)


def lease_file_for_path(path: Path | str) -> LocalLeaseFile | ObjectLeaseFile:
    """The lease file at `path`: a LocalLeaseFile, or an ObjectLeaseFile for an s3:// URL; a LeaseUnsupported
    error for another object store (no atomic create-if-absent the pipeline can rely on there)."""
    from store_schema.location import is_url

    if not is_url(path):
        return LocalLeaseFile(Path(path))
    from store_schema.lease_object import ObjectLeaseFile

    return ObjectLeaseFile(str(path))


class Lease:
    """An exclusive lease on `target` (a store, a run directory, a transcode destination; a folder or an
    s3:// URL).

    Use as a context manager (`with Lease(target, purpose="extract x", options=...) as lease:`) or with
    acquire() / release(). Not re-entrant: one Lease object per holder."""

    def __init__(self, target: Path | str, *, purpose: str = "", options: LeaseOptions | None = None) -> None:
        from store_schema.location import as_location

        self.target = as_location(target)
        self._file = lease_file_for_path(lease_path(self.target))
        self.path = self._file.path
        self.purpose = purpose
        self.options = options or LeaseOptions()
        self.token = secrets.token_hex(16)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None
        self.took_over: dict[str, Any] | None = None  # the stale holder this lease replaced, if any

    # ---- state ------------------------------------------------------------------------------------
    def _record(self) -> dict[str, Any]:
        pid = os.getpid()
        return {"host": socket.gethostname(), "pid": pid, "process_started": _process_start_time(pid) or time.time(),
                "token": self.token, "acquired_at": time.time(), "purpose": self.purpose,
                "command": " ".join(sys.argv)[:500], "heartbeat_s": self.options.heartbeat_s,
                "stale_after_s": self.options.stale_after_s}

    def stale_reason(self, holder: dict[str, Any], heartbeat_at: float) -> str | None:
        """Why a holder is gone (None: it is alive as far as this host can tell)."""
        age = time.time() - heartbeat_at
        if age > self.options.stale_after_s:
            return f"its heartbeat is {age:.0f} s old (stale after {self.options.stale_after_s:g} s)"
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            started = _process_start_time(holder["pid"])
            if started is None:
                return f"pid {holder['pid']} no longer runs on this host"
            if abs(started - float(holder.get("process_started", started))) > 1.0:
                return f"pid {holder['pid']} now belongs to another process (started {iso_time(started)})"
        return None

    # ---- acquire / release ------------------------------------------------------------------------
    def acquire(self) -> "Lease":
        """Take the lease, taking over a stale one; wait for a live holder when options.wait, else raise
        LeaseHeldError naming it."""
        deadline = None if self.options.timeout_s is None else time.monotonic() + self.options.timeout_s
        self._file.prepare()
        while True:
            if self._file.create(self._record()):
                break
            found = self._file.read()
            if found is None:
                continue  # released between our attempt and the read: try again at once
            holder, heartbeat_at, version = found
            reason = self.stale_reason(holder, heartbeat_at)
            if reason is not None:
                if self._file.replace(version, self._record()):
                    self.took_over = {**holder, "reason": reason}
                    break
                continue
            if not self.options.wait or (deadline is not None and time.monotonic() >= deadline):
                raise LeaseHeldError(self._held_message(holder, heartbeat_at), holder)
            time.sleep(self.options.poll_s)
        self._thread = threading.Thread(target=self._beat, name=f"lease-heartbeat:{self.target}", daemon=True)
        self._thread.start()
        return self

    def _held_message(self, holder: dict[str, Any], heartbeat_at: float) -> str:
        waited = "" if not self.options.wait else f" after waiting {self.options.timeout_s:g} s"
        return (f"{self.target} is being written by another run{waited}: "
                f"{describe_holder(holder, heartbeat_age_s=time.time() - heartbeat_at)}; lease {self.path}. "
                f"Wait for it to finish (--wait), or stop it; if that run is gone, its lease is taken over "
                f"automatically once its heartbeat is older than {self.options.stale_after_s:g} s "
                f"(at once on its own host).")

    def _beat(self) -> None:
        while not self._stop.wait(self.options.heartbeat_s):
            lost = self._file.beat(self.token)
            if lost is not None:
                self._lost = lost
                return

    def check(self) -> None:
        """Raise LeaseLostError if this lease is no longer held (call before each commit point)."""
        if self._lost is None:
            found = self._file.read()
            if found is None or found[0].get("token") != self.token:
                self._lost = lost_reason(found)
        if self._lost is not None:
            raise LeaseLostError(f"this run no longer holds the lease on {self.target} ({self._lost}); it "
                                 f"stopped before writing more. Re-run once the other run is done")

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._file.remove(self.token)

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
