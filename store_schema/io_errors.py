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
    if e.errno in _FULL:
        advice = "free some space (or point the run at a larger filesystem) and re-run to resume"
    elif e.errno == errno.EROFS:
        advice = "the filesystem is read-only; remount it read-write or use another location, then re-run"
    else:
        advice = "check the disk (dmesg, filesystem health), then re-run to resume"
    keep = f"; {kept}" if kept else ""
    file = f", file {e.filename}" if getattr(e, "filename", None) and str(e.filename) != str(path) else ""
    return StorageWriteError(f"writing {what} failed: {cause} ({path}{file}; {where}){keep}. {advice}",
                             path=path, errno_code=e.errno, free_bytes=space[0] if space else None)


@contextmanager
def write_guard(path: Path, what: str, *, kept: str = "") -> Iterator[None]:
    """Turn an OSError raised inside the block into a StorageWriteError about `what` at `path`."""
    try:
        yield
    except StorageWriteError:
        raise
    except OSError as e:
        raise storage_error(e, path, what, kept=kept) from e
