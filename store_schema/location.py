"""Where a store root lives: a local folder (a `Path`) or any fsspec URL (`s3://bucket/prefix`, a `str`).

A Ray cluster without a shared filesystem keeps the AM-RADIO feature store (arXiv 2312.06709) on object
storage. Local roots stay `pathlib.Path`s; URL roots stay strings (a `Path` would collapse `s3://` into
`s3:/`). Remote access goes through fsspec, configured the standard way: for S3 the `AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_DEFAULT_REGION`) environment variables that
botocore reads, or an fsspec config file. Object stores have no atomic rename: files written here in one
piece are single PUTs (an object appears whole or not at all), and a store's creation is completed by a
marker object written last (store_schema/teacher_store.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

Location = Union[Path, str]  # str only for URLs


def is_url(loc: Any) -> bool:
    """True for an fsspec URL such as s3://bucket/prefix (file:// counts as local)."""
    return isinstance(loc, str) and "://" in loc and not loc.startswith("file://")


def as_location(loc: Location | os.PathLike) -> Location:
    """A root as typed by a user: URLs stay strings (without a trailing slash), the rest become Paths."""
    if isinstance(loc, str) and loc.startswith("file://"):
        return Path(loc[len("file://"):])
    if is_url(loc):
        return str(loc).rstrip("/")
    return Path(loc)


def absolute(loc: Location | os.PathLike) -> str:
    """The root as a run records it: a local folder as an absolute path (so the run is read the same from
    any working directory), a URL unchanged."""
    loc = as_location(loc)
    return loc if is_url(loc) else os.path.abspath(loc)


def join(root: Location, *parts: str) -> Location:
    """root / part / ... for a Path or a URL."""
    root = as_location(root)
    if is_url(root):
        return "/".join([root, *(p.strip("/") for p in parts)])
    return Path(root).joinpath(*parts)


def name(loc: Location) -> str:
    """Last path component."""
    return str(loc).rstrip("/").rsplit("/", 1)[-1] if is_url(loc) else Path(loc).name


def filesystem(loc: Location) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of a URL or a local path."""
    import fsspec.core

    fs, path = fsspec.core.url_to_fs(str(loc))
    # Other writers (zarr's own async filesystem instance, other processes) change the bucket behind this
    # instance's listing cache: never answer "is it there" from a stale listing.
    fs.invalidate_cache()
    return fs, path


def is_file(loc: Location) -> bool:
    if not is_url(loc):
        return Path(loc).is_file()
    fs, path = filesystem(loc)
    return bool(fs.isfile(path))


def exists(loc: Location) -> bool:
    if not is_url(loc):
        return Path(loc).exists()
    fs, path = filesystem(loc)
    return bool(fs.exists(path))


def read_bytes(loc: Location) -> bytes:
    if not is_url(loc):
        return Path(loc).read_bytes()
    fs, path = filesystem(loc)
    return fs.cat_file(path)


def write_bytes(loc: Location, data: bytes) -> None:
    """Write a whole file so that readers see the old content or the new, never a part: a temporary file
    renamed into place locally; one PUT on an object store."""
    if not is_url(loc):
        path = Path(loc)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(path)
        return
    fs, path = filesystem(loc)
    fs.pipe_file(path, data)


def remove_tree(loc: Location) -> None:
    """Delete a folder / prefix and everything below it (missing is fine)."""
    if not is_url(loc):
        import shutil

        shutil.rmtree(loc, ignore_errors=True)
        return
    fs, path = filesystem(loc)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def list_dir(loc: Location) -> list[str]:
    """Names directly below a folder / prefix (empty when it does not exist)."""
    if not is_url(loc):
        return sorted(p.name for p in Path(loc).iterdir()) if Path(loc).is_dir() else []
    fs, path = filesystem(loc)
    try:
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=False, refresh=True))
    except FileNotFoundError:
        return []


def size_of_tree(loc: Location) -> int:
    """Bytes of every file below a folder / prefix."""
    if not is_url(loc):
        return sum(p.stat().st_size for p in Path(loc).rglob("*") if p.is_file())
    fs, path = filesystem(loc)
    return int(fs.du(path, total=True))
