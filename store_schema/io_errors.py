"""The one place disk-write failures become a clear error: no space left, quota, read-only or failing disk.

Every writer of the feature store and of a run directory (shard data, per-shard statistics, complete flags,
checkpoints, config / metrics / receipts, normalizers, leases) writes inside `write_guard(path, what)`. An
OSError there becomes a `StorageWriteError` naming what was being written, the path, the errno, the free
and total space of the filesystem holding it, and what is kept: writes are atomic (a temporary file renamed
into place, as zarr's local store does for every chunk and shard), so a failed write leaves the previous
file, a shard is never marked complete and a checkpoint is never replaced by a partial one. After space
is freed a re-run resumes (complete shards are kept; a run resumes from its last checkpoint).
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from store_schema.errors import StorageWriteError

_FULL = {errno.ENOSPC, errno.EDQUOT}


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def free_space(path: Path) -> tuple[int, int, Path] | None:
    """(free bytes, total bytes, the existing folder measured) of the filesystem holding `path`."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        usage = shutil.disk_usage(p)
    except OSError:
        return None
    return usage.free, usage.total, p


def storage_error(e: OSError, path: Path, what: str, *, kept: str = "") -> StorageWriteError:
    """The StorageWriteError for an OSError raised while writing `what` at `path`."""
    space = free_space(path)
    where = (f"{_mib(space[0])} free of {_mib(space[1])} on the filesystem of {space[2]}" if space
             else "free space unknown")
    cause = os.strerror(e.errno) if e.errno else str(e)
    advice = _advice(e.errno)
    keep = f"; {kept}" if kept else ""
    file = f", file {e.filename}" if getattr(e, "filename", None) and str(e.filename) != str(path) else ""
    return StorageWriteError(f"writing {what} failed: {cause} ({path}{file}; {where}){keep}. {advice}",
                             path=path, errno_code=e.errno, free_bytes=space[0] if space else None)


# errno -> what to do; these are the user's to fix (a command prints them as one line, pipeline/errors.py)
_ADVICE = {
    errno.EROFS: "the filesystem is read-only; remount it read-write or use another location, then re-run",
    errno.EACCES: "this user may not write there; change the folder's permissions or use another location",
    errno.EPERM: "this user may not write there; change the folder's permissions or use another location",
    errno.ENOTDIR: "a part of that path is a file, not a folder; use another location",
    errno.EISDIR: "that path is a folder where a file is expected; give a file path",
    errno.ENAMETOOLONG: "the name is longer than the filesystem allows; use a shorter path",
}
USER_ERRNOS = frozenset({*_FULL, *_ADVICE})  # an OSError with one of these is the user's to fix


def _advice(code: int | None) -> str:
    if code in _FULL:
        return "free some space (or point the run at a larger filesystem) and re-run to resume"
    return _ADVICE.get(code, "check the disk (dmesg, filesystem health), then re-run to resume")


def os_error_line(e: OSError, command: str) -> str:
    """One line for an OSError in USER_ERRNOS that reached `command` unguarded: the path, the cause (with the
    free space when the disk is full) and what to do."""
    path = Path(e.filename) if getattr(e, "filename", None) else None
    cause = os.strerror(e.errno) if e.errno else str(e)
    space = free_space(path) if path is not None and e.errno in _FULL else None
    free = f"; {_mib(space[0])} free of {_mib(space[1])} on the filesystem of {space[2]}" if space else ""
    where = f" {path}" if path is not None else ""
    return f"{command} cannot write{where}: {cause}{free}; {_advice(e.errno)}"


def check_writable(folder: Path, what: str) -> None:
    """Raise StorageWriteError unless a file can be created in `folder` (or, when it does not exist yet, in
    its nearest existing parent): a command refuses an output it could not write before doing the work."""
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    probe = p / f".write-check-{os.getpid()}"
    with write_guard(Path(folder), what):
        probe.touch()
        probe.unlink()


@contextmanager
def write_guard(path: Path, what: str, *, kept: str = "") -> Iterator[None]:
    """Turn an OSError raised inside the block into a StorageWriteError about `what` at `path`."""
    try:
        yield
    except StorageWriteError:
        raise
    except OSError as e:
        raise storage_error(e, path, what, kept=kept) from e
