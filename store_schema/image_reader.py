"""The one reader of corpus image bytes: a whole file, or one byte range of a WebDataset tar shard.

Corpora at the scale of agglomerative distillation (AM-RADIO, arXiv 2312.06709, distils on DataComp-style
image sets) live as WebDataset tar shards (what img2dataset writes) or as objects in S3-compatible
storage. The manifest records each tar member's byte range, so every consumer (stage one's teachers,
`pipeline views`, the stage-two decode path, evaluation) fetches one image with one ranged read: `pread`
on a local shard, an HTTP range request through fsspec on object storage. No tar is ever scanned here,
and nothing is cached between calls (no file handles to leak into forked loader workers).
"""

from __future__ import annotations

import os
from pathlib import Path

from store_schema import location


def read_whole(loc: location.Location) -> bytes:
    """All bytes of a local file or an fsspec URL (OSError when it cannot be read)."""
    if not location.is_url(loc):
        return Path(loc).read_bytes()
    fs, path = _fs(loc)
    return fs.cat_file(path)


def read_range(loc: location.Location, offset: int, length: int) -> bytes:
    """`length` bytes at `offset` of a local file (one pread) or an fsspec URL (one range request).

    OSError when fewer bytes are there (a shard truncated or replaced since the manifest was built)."""
    if offset < 0 or length < 0:
        raise ValueError(f"byte range must be non-negative, got offset {offset}, length {length}")
    if not location.is_url(loc):
        fd = os.open(loc, os.O_RDONLY)
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
    else:
        fs, path = _fs(loc)
        data = fs.cat_file(path, start=offset, end=offset + length)
    if len(data) != length:
        raise OSError(f"{loc}: bytes {offset}..{offset + length} are not all there (got {len(data)} of "
                      f"{length}): the shard is shorter than when the manifest was built")
    return data


def _fs(loc: str):
    """fsspec's filesystem for a URL without `location.filesystem`'s listing-cache reset (reads of one
    object need no listing, and a reset per image would cost a request)."""
    import fsspec.core

    return fsspec.core.url_to_fs(str(loc))
