"""WebDataset tar shards: where each member's bytes lie, read from the tar headers once at corpus build time.

The corpora agglomerative distillation learns from (AM-RADIO, arXiv 2312.06709: DataComp-1B; PHI-S, arXiv
2410.01680) are distributed as WebDataset shards, what img2dataset writes: `00000.tar` holding
`<key>.jpg` (or .png / .webp) with sidecars `<key>.json` (url, size, caption, ...), `<key>.txt` (caption)
and `<key>.cls` (label). The tar is read once, in order, with the standard library's `tarfile`; each
member's data offset and size (`TarInfo.offset_data`, `TarInfo.size`) go into the manifest, so later
readers fetch one image with one ranged read (store_schema/image_reader.py).

Nothing here is fatal: a damaged or truncated shard yields the members that are whole plus one entry
saying where and why the rest is lost; a member that is not a regular file, or not an image or a sidecar,
is an entry with a reason. WebDataset's grouping rule: a member's key is its path up to the first `.` of
its file name, the rest is its extension (`a/b.seg.png` -> key `a/b`, extension `seg.png`).
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from typing import BinaryIO

from stages.corpus.images import is_image_name

TAR_SUFFIX = ".tar"
COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
SIDECAR_EXTENSIONS = ("json", "txt", "cls")  # kept in the manifest with their sample's image rows
SIDECAR_LIMIT = 1 << 20  # a sidecar larger than this is recorded as bad, not copied into the manifest
_BLOCK = 512


@dataclass(frozen=True)
class Member:
    """One entry of a shard: a member with its data's byte range, or a problem found at `offset`.

    kind: "image", "sidecar", "other" (a regular file that is neither), "special" (not a regular file),
    or "damage" (the shard is truncated or unreadable from `offset` on; `name` is "" then)."""

    name: str
    kind: str
    offset: int  # of the member's data (damage: where the shard stops being readable)
    size: int
    problem: str = ""

    @property
    def key(self) -> str:
        return split_key(self.name)[0]

    @property
    def extension(self) -> str:
        return split_key(self.name)[1]


def split_key(name: str) -> tuple[str, str]:
    """(key, extension) by WebDataset's rule: the path up to the first '.' of the file name, and the rest."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext if dot else "")


def _kind(info: tarfile.TarInfo) -> str:
    if not info.isfile():
        return "special"
    if is_image_name(info.name):
        return "image"
    if split_key(info.name)[1].lower() in SIDECAR_EXTENSIONS:
        return "sidecar"
    return "other"


def scan_members(f: BinaryIO, size: int) -> list[Member]:
    """Every entry of the tar in `f` (a seekable binary file of `size` bytes), in archive order, with the
    shard's damage (if any) as a last entry of kind "damage". Directories are not entries."""
    members: list[Member] = []
    try:
        tf = tarfile.open(fileobj=f, mode="r:")
    except tarfile.ReadError as e:
        what = "empty file (0 bytes)" if size == 0 else f"not a tar archive ({e})"
        return [Member("", "damage", 0, size, what)]
    while True:
        try:
            info = tf.next()
        except (tarfile.ReadError, OSError, EOFError) as e:  # a header after the first one that cannot be read
            members.append(Member("", "damage", tf.offset, size, f"unreadable tar header at byte {tf.offset}: {e}"))
            return members
        if info is None:
            break
        if info.isdir():
            continue
        end = info.offset_data + info.size
        if info.isfile() and end > size:
            members.append(Member(info.name, _kind(info), info.offset_data, info.size,
                                  f"truncated shard: the member's data ends at byte {end}, the shard has {size}"))
            return members
        members.append(Member(info.name, _kind(info), info.offset_data, info.size))
    end_problem = _end_of_archive_problem(f, tf.offset, size)
    if end_problem:
        members.append(Member("", "damage", tf.offset, size, end_problem))
    return members


def _end_of_archive_problem(f: BinaryIO, offset: int, size: int) -> str:
    """"" when `offset` starts the end-of-archive (zero blocks); otherwise why the archive stops there
    (tarfile itself ends quietly at an unreadable header after the first member)."""
    f.seek(offset)
    block = f.read(_BLOCK)
    if len(block) == _BLOCK and not block.strip(b"\0"):
        return ""
    if not block:
        return (f"truncated shard: no end-of-archive marker after byte {offset} (cut at a member boundary; "
                "members after it, if any, are lost)")
    if len(block) < _BLOCK:
        return f"truncated shard: a tar header cut off at byte {offset} ({len(block)} of {_BLOCK} bytes)"
    return f"damaged shard: unreadable tar header at byte {offset} of {size}; members after it are lost"
