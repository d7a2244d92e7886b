"""The image files of a corpus folder, symbolic links followed (the first stage of AM-RADIO's offline recipe,
arXiv 2312.06709, starts from the user's image folder as it looks to them).

Python's ``Path.rglob`` (before 3.13) does not descend into symlinked folders and skips broken links, so a
folder assembled from links to other disks would silently lose images. Here:

- a symlinked **folder** is followed like a real one, its files listed under the link's path; a link that
  leads back into a folder already being walked (a cycle) is not entered again: its files are listed once,
  under their first path;
- a symlinked **file** is listed under the link's path and read through it;
- a **broken** link with an accepted name is listed too, so the manifest records it as bad with its reason
  (``stages.corpus.images.inspect_image``), never dropped.
"""

from __future__ import annotations

import os
from pathlib import Path

from collections.abc import Callable
from typing import Any


def matching_files(folder: Path, accept: Callable[[str], Any]) -> list[Path]:
    """Every file under ``folder`` whose name ``accept`` takes (truthy): an image, a tar shard, ... (symlinks
    as the module docstring says)."""
    folder = Path(folder)
    out: list[Path] = []
    seen: set[str] = set()

    def walk(d: Path) -> None:
        real = os.path.realpath(d)
        if real in seen:  # a cycle, or a second link to a folder already listed
            return
        seen.add(real)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            return  # an unreadable folder: nothing to list (its files cannot be read either)
        for e in entries:
            p = Path(e.path)
            if e.is_dir(follow_symlinks=True):
                walk(p)
            elif accept(e.name) and (e.is_file(follow_symlinks=True) or e.is_symlink()):
                out.append(p)

    walk(folder)
    return out
