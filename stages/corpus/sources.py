"""Listing a corpus SOURCE: what images and WebDataset shards it names, local or on any fsspec URL.

The first stage of offline agglomerative distillation (AM-RADIO, arXiv 2312.06709) fixes the image set.
At that scale images come as WebDataset tar shards (img2dataset's output) or as objects in S3-compatible
storage. A SOURCE is one of:

- a folder (or an fsspec URL prefix such as `s3://bucket/images/`), searched recursively for image files
  (IMAGE_EXTENSIONS) and `.tar` shards;
- a glob (`shards/*.tar`, `s3://bucket/shards/0000*.tar`) or brace notation (`shards/{00000..00123}.tar`),
  naming shards or images; a name a brace pattern gives that does not exist is recorded (its rows say
  so), a pattern that matches nothing is an error;
- a single `.tar` shard, a `.parquet` file with a `uri` column, or a text list (one path or URL per line).

Listing only: nothing is read here but names, sizes and modification stamps (which key the resumable
build's parts, stages/corpus/build_runner.py). A source that cannot be reached or listed is one error
naming it and its fsspec protocol.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from stages.corpus.images import IMAGE_EXTENSIONS, is_image_name
from stages.corpus.walk import matching_files
from stages.corpus.tar_shards import COMPRESSED_TAR_SUFFIXES, TAR_SUFFIX
from store_schema import location
from store_schema.location import Location, is_url

PARQUET_URI_COLUMN = "uri"
FILE, TAR, MISSING, COMPRESSED, WEB = "file", "tar", "missing", "compressed", "web"
SHARD_KINDS = (TAR, MISSING, COMPRESSED)  # items whose manifest rows are `<shard>#<member>`
WEB_PROTOCOLS = ("http://", "https://")
_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class SourceItem:
    """One image file or one tar shard of a source. uri: relative to the source's base (posix), or
    absolute, or a URL. stamp: size and modification time (or ETag) where the listing gives them."""

    uri: str
    kind: str
    stamp: str = ""

    @property
    def sort_key(self) -> str:
        """Rows of a shard are `<shard>#<member>`: the shard sorts where its rows do."""
        return self.uri + "#" if self.kind in SHARD_KINDS else self.uri


@dataclass(frozen=True)
class CorpusSource:
    """A listed source: the folder / URL prefix relative uris resolve against, and its items sorted."""

    text: str  # the SOURCE as given
    base: Location
    items: tuple[SourceItem, ...]
    entries: tuple = ()  # an evaluation dataset (stages/corpus/layouts.py): one layouts.Entry per item

    @property
    def uris(self) -> list[str]:
        return [it.uri for it in self.items]

    @property
    def has_shards(self) -> bool:
        return any(it.kind in SHARD_KINDS for it in self.items)


def kind_of_name(name: str) -> str | None:
    """FILE, TAR or COMPRESSED for a name a corpus uses; None for anything else."""
    low = name.lower()
    if low.endswith(TAR_SUFFIX):
        return TAR
    if low.endswith(COMPRESSED_TAR_SUFFIXES):
        return COMPRESSED
    return FILE if is_image_name(name) else None


def list_source(source: str | Path) -> CorpusSource:
    """The items of a SOURCE (see the module docstring), sorted as their manifest rows will be.

    ValueError: a source that does not exist, cannot be listed, names no images or shards, lists the same
    image twice, or (a glob or brace pattern) matches nothing."""
    text = str(source)
    try:
        if "{" in text and "}" in text:
            base, items = _brace(text)
        elif any(c in text for c in _GLOB_CHARS):
            base, items = _glob(text)
        else:
            base, items = _single(location.as_location(source), text)
    except ValueError:
        raise
    except (OSError, ImportError, RuntimeError) as e:  # the network, credentials, a missing backend
        raise ValueError(unreachable(text, e)) from None
    if not items:
        raise ValueError(f"corpus source {text} holds no images or shards (a folder is searched for "
                         f"{', '.join(IMAGE_EXTENSIONS)} and {TAR_SUFFIX})")
    items = sorted(items, key=lambda it: it.sort_key)
    dups = sorted({a.uri for a, b in zip(items, items[1:]) if a.uri == b.uri})
    if dups:
        raise ValueError(f"{text} lists the same image more than once: {dups[:5]}")
    return CorpusSource(text, base, tuple(items))


def protocol_of(text: str) -> str:
    return text.split("://", 1)[0] if "://" in text else "file"


def unreachable(text: str, e: BaseException) -> str:
    """One line: which source could not be reached or listed, through which fsspec protocol, and why."""
    proto = protocol_of(text)
    hint = (" (for s3://: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, the bucket name)"
            if proto in ("s3", "s3a") else "")
    if isinstance(e, ImportError) or "Protocol not known" in str(e) or "not available" in str(e):
        return (f"cannot list corpus source {text}: fsspec has no backend for protocol {proto!r} here ({e}); "
                f"install it (s3fs for s3://, gcsfs for gs://, adlfs for az://)")
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return (f"cannot reach or list corpus source {text} (fsspec protocol {proto!r}): {type(e).__name__}: "
            f"{first}. Check the URL, the network and the credentials{hint}")


def _fs(text: str):
    """(fsspec filesystem, path inside it), with fsspec's own errors for an unknown protocol kept."""
    try:
        return location.filesystem(text)
    except ValueError as e:
        raise RuntimeError(str(e)) from None


def _stamp(info: dict) -> str:
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return f"{info.get('size', '')}:{str(tag).strip(chr(34))}"


def _local_stamp(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return ""
    return f"{st.st_size}:{st.st_mtime_ns}"


def _rel(path: str, base: str) -> str:
    """path relative to the folder `base` when it lies below it (posix), else path unchanged."""
    head = base.rstrip("/") + "/"
    return path[len(head):] if base and path.startswith(head) else path


def _single(loc: Location, text: str) -> tuple[Location, list[SourceItem]]:
    """A folder / prefix, one shard, a Parquet list or a text list."""
    if is_url(loc):
        fs, path = _fs(loc)
        if not fs.exists(path):
            raise ValueError(f"corpus source {text} does not exist (fsspec protocol {protocol_of(text)!r}; give a "
                             "prefix of images or shards, a .tar, a glob, a brace pattern, a text list or a .parquet)")
        if fs.isdir(path):
            found = fs.find(path, detail=True)
            items = [SourceItem(_rel(p, path), k, _stamp(info)) for p, info in sorted(found.items())
                     if (k := kind_of_name(p))]
            return loc, items
        parent = loc.rsplit("/", 1)[0]
        if kind_of_name(path) == TAR or kind_of_name(path) == COMPRESSED:
            return parent, [SourceItem(location.name(loc), kind_of_name(path), _stamp(fs.info(path)))]
        return parent, _entries(_read_list(loc, fs.cat_file(path)), parent, text)
    source = Path(loc)
    if source.is_dir():
        # symlinked folders and files followed, broken links kept (recorded bad): stages/corpus/walk.py
        items = [SourceItem(Path(os.path.relpath(p, source)).as_posix(), k, _local_stamp(p))
                 for p in matching_files(source, kind_of_name) if (k := kind_of_name(p.name))]
        return source, items
    if source.is_file() and kind_of_name(source.name) in (TAR, COMPRESSED):
        return source.parent, [SourceItem(source.name, kind_of_name(source.name), _local_stamp(source))]
    if source.is_file():
        return source.parent, _entries(_read_list(source, source.read_bytes()), source.parent, text)
    raise ValueError(f"corpus source {source} does not exist (give a folder, shards as a glob or brace pattern, "
                     "a .tar, a text list or a .parquet)")


def _read_list(loc: Location, data: bytes) -> list[str]:
    """Entries of a Parquet `uri` column or of a text list (blank lines and `#` comments skipped)."""
    if str(loc).lower().endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(pa.BufferReader(data))
        if PARQUET_URI_COLUMN not in table.column_names:
            raise ValueError(f"{loc} has no {PARQUET_URI_COLUMN!r} column; columns: {table.column_names}")
        return [str(u) for u in table.column(PARQUET_URI_COLUMN).to_pylist() if u]
    lines = [ln.strip() for ln in data.decode("utf-8").splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _to_uri(path: Path, base: Path) -> str:
    """Posix path relative to base when the file lies under it, else the absolute path."""
    rel = os.path.relpath(os.path.normpath(os.path.abspath(path)), os.path.abspath(base))
    if rel == ".." or rel.startswith(".." + os.sep):
        return Path(os.path.normpath(os.path.abspath(path))).as_posix()
    return Path(rel).as_posix()


def _entries(entries: list[str], base: Location, what: str) -> list[SourceItem]:
    """Items of a list: URLs kept as written (a Path would fold `//` to `/`), paths relative to the list's
    folder (or absolute); web URLs (http / https) become WEB items, recorded as bad (not downloaded)."""
    items = []
    for e in entries:
        if e.startswith(WEB_PROTOCOLS):
            items.append(SourceItem(e, WEB))
        elif is_url(e) or is_url(base):  # a URL as written, or a path relative to the list's URL prefix
            items.append(SourceItem(e, kind_of_name(e) or FILE))
        else:
            uri = _to_uri(Path(base) / e, Path(base))
            items.append(SourceItem(uri, kind_of_name(e) or FILE, _local_stamp(Path(base) / uri)))
    return items


def _pattern_base(text: str, stop_chars: str) -> str:
    """The folder part of a pattern before its first special character ("" when there is none)."""
    cut = min((text.index(c) for c in stop_chars if c in text), default=len(text))
    head = text[:cut]
    return head.rsplit("/", 1)[0] if "/" in head else ""


def _glob(text: str) -> tuple[Location, list[SourceItem]]:
    base_text = _pattern_base(text, _GLOB_CHARS)
    if is_url(text):
        fs, _ = _fs(text)
        found = fs.glob(fs._strip_protocol(text), detail=True)
        prefix = fs._strip_protocol(base_text) if base_text else ""
        items = [SourceItem(_rel(p, prefix), k, _stamp(info)) for p, info in sorted(found.items())
                 if (k := kind_of_name(p)) and info.get("type") != "directory"]
        base: Location = base_text
    else:
        import glob

        base = Path(base_text or ".")
        matches = [Path(p) for p in glob.glob(text, recursive=True)]
        items = [SourceItem(_to_uri(p, base), k, _local_stamp(p)) for p in matches
                 if p.is_file() and (k := kind_of_name(p.name))]
        if not matches:
            raise ValueError(f"glob pattern {text} matches nothing")
    if not items:
        raise ValueError(f"glob pattern {text} matches no images or {TAR_SUFFIX} shards")
    return base, items


def _brace(text: str) -> tuple[Location, list[SourceItem]]:
    """Every name the brace pattern gives; one that does not exist is a MISSING item (its row says so)."""
    from braceexpand import braceexpand

    names = list(braceexpand(text))
    base_text = _pattern_base(text, "{")
    if is_url(text):
        fs, _ = _fs(text)
        present: dict[str, dict] = {}
        for folder in sorted({n.rsplit("/", 1)[0] for n in names}):
            try:
                present.update({p: info for p, info in fs.find(fs._strip_protocol(folder), detail=True).items()})
            except FileNotFoundError:
                continue
        prefix = fs._strip_protocol(base_text)
        items = []
        for n in names:
            info = present.get(fs._strip_protocol(n))
            k = kind_of_name(n) or FILE
            items.append(SourceItem(_rel(fs._strip_protocol(n), prefix), k if info else _missing(k),
                                    _stamp(info) if info else ""))
        base: Location = base_text
        found = [it for it in items if it.kind != MISSING and it.stamp]
    else:
        base = Path(base_text or ".")
        items = []
        for n in names:
            p, k = Path(n), kind_of_name(n) or FILE
            items.append(SourceItem(_to_uri(p, base), k if p.is_file() else _missing(k), _local_stamp(p)))
        found = [it for it in items if it.stamp]
    if not found:
        raise ValueError(f"brace pattern {text} matches nothing: none of its {len(names)} names exists "
                         f"(first: {names[0]}, last: {names[-1]})")
    return base, items


def _missing(kind: str) -> str:
    """A named shard that does not exist is a MISSING item; a named image that does not exist stays a FILE
    (reading it fails and its row records why, as for a list entry)."""
    return MISSING if kind in (TAR, COMPRESSED) else kind
