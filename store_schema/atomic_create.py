"""Create a store folder on a local or shared filesystem all at once: built beside its final name, then renamed.

A run killed while a store's arrays are being created must never leave a half-made store that later runs
refuse to open (or, worse, open). Both the teacher stores and the student-view stores are built in a
sibling folder `<name>.creating-<pid>` and renamed into place; leftovers of killed creations are removed
first. Object stores have no atomic rename; the teacher store handles them with a creation marker.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from store_schema.io_errors import write_guard


def build_then_rename(path: Path, build: Callable[[Path], None], *, what: str) -> None:
    """Run `build(tmp)` on a fresh sibling folder of `path`, then rename it to `path` (which must be absent
    or an empty folder). `what` names the store in a disk-write error; nothing is left behind on one."""
    path = Path(path)
    for stale in path.parent.glob(f"{path.name}.creating-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = path.parent / f"{path.name}.creating-{os.getpid()}"
    with write_guard(path, what, kept="no store was created"):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            build(tmp)
            if path.exists():
                path.rmdir()  # an empty folder (the callers refuse a non-empty one first)
            os.replace(tmp, path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
