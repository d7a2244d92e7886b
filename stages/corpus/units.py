"""One unit of the corpus build: a tar shard, or a batch of image files, turned into manifest rows.

The first stage of offline agglomerative distillation (AM-RADIO, arXiv 2312.06709) decodes every image once
and fixes its content hash, split and views. A unit is what one Ray task (or one in-process step) does:
every image decoded once (stages/corpus/images.py), every member of a shard accounted for (an image row,
a sidecar kept with its image's rows, or a row saying why it is not an image); nothing here raises for
bad data. The split comes from the content hash, so duplicates share a split and adding images never
moves existing ones between splits. An evaluation dataset in a released layout (`--layout`,
stages/corpus/layouts.py) brings each image's split, label and annotation paths along with it; the unit
checks the annotations against the decoded image here, in the worker, and writes them as DATASET_COLUMNS.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from stages.corpus.images import IMAGE_EXTENSIONS, ImageRecord, inspect_bytes, inspect_image, unreadable
from stages.corpus.sources import COMPRESSED, MISSING, TAR, WEB, SourceItem
from stages.corpus.tar_shards import SIDECAR_EXTENSIONS, SIDECAR_LIMIT, Member, scan_members
from stages.corpus.views import draw_views
from store_schema import location
from store_schema.manifest import STATUS_BAD, STATUS_OK, DatasetInfo, ManifestRow, ViewSpec, rows_table

if TYPE_CHECKING:
    from stages.corpus.layouts import Entry

WEB_REASON = ("web URL (http / https): images are not downloaded at build time; fetch them first (img2dataset "
              "writes WebDataset shards, which this command reads) and list those")
COMPRESSED_REASON = ("compressed tar shard: a member of a compressed tar cannot be read with one ranged read; "
                     "repack it as an uncompressed .tar (what img2dataset writes)")
READ_BLOCK = 8 << 20  # fsspec read-ahead while a remote shard is scanned once, in order


@dataclass(frozen=True)
class CorpusOptions:
    """What every row depends on besides the image bytes (typed config of the build)."""

    view_spec: ViewSpec
    pixel_limit: int
    min_side: int
    val_fraction: float
    dataset: DatasetInfo | None = None  # an evaluation dataset (`--layout`): its layout facts

    def to_json(self) -> str:
        d = {"view_spec": self.view_spec.to_dict(), "pixel_limit": int(self.pixel_limit),
             "min_side": int(self.min_side), "val_fraction": float(self.val_fraction)}
        if self.dataset is not None:  # only then: a plain corpus keeps its part keys
            d["dataset"] = self.dataset.to_json()
        return json.dumps(d, sort_keys=True)


@dataclass(frozen=True)
class CorpusUnit:
    """A shard or a batch of files; `key` names its part (sha256 of the options and the items' stamps)."""

    key: str
    base: str  # the source's base folder / URL prefix, as a string
    items: tuple[SourceItem, ...]
    entries: tuple["Entry", ...] = ()  # an evaluation dataset: each item's split / label / annotations


def split_of(sha256: str, *, val_fraction: float) -> str:
    """'val' when the first 64 bits of the hash, as a fraction of 2^64, fall below val_fraction."""
    return "val" if int(sha256[:16], 16) / 2.0**64 < val_fraction else "train"


def resolve(base: str, uri: str) -> location.Location:
    """Where a uri of the source lives: absolute and URL uris as they are, others below the base."""
    if location.is_url(uri) or Path(uri).is_absolute():
        return location.as_location(uri)
    return location.join(location.as_location(base), uri)


def build_unit_rows(unit: CorpusUnit, options: CorpusOptions) -> pa.Table:
    """Every row of the unit (sorted by uri) as a table of the located manifest columns without `id`.

    With DATASET_COLUMNS too for an evaluation dataset. LayoutError (a dataset that does not match its
    layout: a mask of another size, class ids beyond the class list) is raised, not recorded."""
    rows: list[ManifestRow] = []
    entries = {e.uri: e for e in unit.entries}
    for item in unit.items:
        if item.kind in (TAR, MISSING, COMPRESSED):
            rows.extend(_shard_rows(unit.base, item, options))
        elif item.kind == WEB:
            rows.append(_row(item.uri, ImageRecord("", 0, 0, 0, "", None, WEB_REASON), options))
        elif item.uri in entries:
            rows.append(_dataset_row(unit.base, entries[item.uri], options))
        else:
            rec = inspect_image(resolve(unit.base, item.uri), pixel_limit=options.pixel_limit,
                                min_side=options.min_side)
            rows.append(_row(item.uri, rec, options, length=rec.size_bytes))
    rows.sort(key=lambda r: r.uri)
    return rows_table(rows, num_views=options.view_spec.num_views, located=True, dataset=options.dataset is not None)


def _row(uri: str, rec: ImageRecord, options: CorpusOptions, split: str = "", **columns) -> ManifestRow:
    """The row of one image; split "" = from the content hash. columns: located / dataset columns."""
    key = rec.sha256 or hashlib.sha256(uri.encode()).hexdigest()  # unreadable: key on its uri
    boxes_V4, flips_V = draw_views(key, options.view_spec)
    return ManifestRow(uri=uri, sha256=rec.sha256, size_bytes=rec.size_bytes, width=rec.width, height=rec.height,
                       mode=rec.mode, split=split or split_of(key, val_fraction=options.val_fraction),
                       status=STATUS_OK if rec.ok else STATUS_BAD, reason=rec.reason, boxes_V4=boxes_V4,
                       flips_V=flips_V, **columns)


def _dataset_row(base: str, entry: "Entry", options: CorpusOptions) -> ManifestRow:
    """An evaluation dataset's image: decoded, its annotations checked against it (a missing or undecodable
    annotation is the row's reason), split and label from the layout."""
    from stages.corpus.layouts import check_annotations

    rec = inspect_image(resolve(base, entry.uri), pixel_limit=options.pixel_limit, min_side=options.min_side)
    if rec.ok and options.dataset is not None:
        reason = check_annotations(options.dataset, Path(base), entry, (rec.width, rec.height))
        if reason:
            rec = ImageRecord(rec.sha256, rec.size_bytes, rec.width, rec.height, rec.mode, None, reason)
    return _row(entry.uri, rec, options, split=entry.split, length=rec.size_bytes, label=entry.label,
                mask_uri=entry.mask_uri, depth_uri=entry.depth_uri, normals_uri=entry.normals_uri)


def _bad(uri: str, reason: str, size: int = 0) -> ImageRecord:
    return ImageRecord("", size, 0, 0, "", None, reason)


def _shard_rows(base: str, item: SourceItem, options: CorpusOptions) -> list[ManifestRow]:
    """The rows of one shard: its image members, and one row for each member or stretch that is not usable."""
    loc = resolve(base, item.uri)
    shard_row = lambda reason: [_row(f"{item.uri}#", _bad(item.uri, reason), options, shard=item.uri)]  # noqa: E731
    if item.kind == MISSING:
        return shard_row(f"shard not found: {loc} (named by the source's pattern)")
    if item.kind == COMPRESSED:
        return shard_row(COMPRESSED_REASON)
    try:
        f, size = _open(loc)
    except OSError as e:
        return shard_row(f"cannot read shard: {unreadable(e).reason.removeprefix('cannot read file: ')}")
    with f:
        try:
            return _member_rows(f, size, item.uri, options)
        except OSError as e:  # the shard became unreadable half-way (network, disk)
            return shard_row(f"cannot read shard: {type(e).__name__}: {e}")


def _open(loc: location.Location):
    if location.is_url(loc):
        fs, path = location.filesystem(loc)
        f = fs.open(path, "rb", block_size=READ_BLOCK)
        return f, int(f.size)
    f = open(loc, "rb")
    return f, os.fstat(f.fileno()).st_size


def _member_rows(f, size: int, shard: str, options: CorpusOptions) -> list[ManifestRow]:
    members = scan_members(f, size)
    sidecars: dict[str, dict[str, str]] = {}
    rows: list[ManifestRow] = []
    seen: set[str] = set()

    def bad(m: Member, reason: str, uri: str | None = None) -> None:
        rows.append(_row(uri or f"{shard}#{m.name}", _bad(m.name, reason, m.size), options, shard=shard,
                         member=m.name, offset=m.offset, length=m.size))

    usable: list[Member] = []
    kept_sidecars: list[Member] = []
    for m in members:
        if m.kind == "damage":
            bad(m, m.problem, uri=f"{shard}#" if m.offset == 0 else f"{shard}#@{m.offset}")
        elif m.name in seen:
            bad(m, "duplicate member name (an earlier member of the shard has it)", uri=f"{shard}#{m.name}@{m.offset}")
        elif m.problem:
            seen.add(m.name)
            bad(m, m.problem)
        elif m.kind == "special":
            seen.add(m.name)
            bad(m, "not a regular file (a link or device entry in the tar)")
        elif m.kind == "other":
            seen.add(m.name)
            bad(m, f"not an image member (.{m.extension or '(no extension)'}): images are "
                   f"{', '.join(sorted({e.lstrip('.') for e in IMAGE_EXTENSIONS}))}; sidecars "
                   f"{', '.join('.' + e for e in SIDECAR_EXTENSIONS)}")
        elif m.kind == "sidecar" and m.size > SIDECAR_LIMIT:
            seen.add(m.name)
            bad(m, f"sidecar too large: {m.size} bytes > {SIDECAR_LIMIT} (kept out of the manifest)")
        elif m.kind == "sidecar":
            seen.add(m.name)
            f.seek(m.offset)
            text = f.read(m.size).decode("utf-8", errors="replace")
            sidecars.setdefault(m.key, {})[m.extension.lower()] = text
            kept_sidecars.append(m)
        else:
            seen.add(m.name)
            usable.append(m)
    image_keys = {m.key for m in usable}
    for m in usable:
        f.seek(m.offset)
        data = f.read(m.size)
        rec = inspect_bytes(data, pixel_limit=options.pixel_limit, min_side=options.min_side)
        side = sidecars.get(m.key)
        rows.append(_row(f"{shard}#{m.name}", rec, options, shard=shard, member=m.name, offset=m.offset,
                         length=m.size, sidecars=json.dumps(side, sort_keys=True) if side else ""))
    for m in kept_sidecars:
        if m.key not in image_keys:
            bad(m, f"sidecar without an image: no image member with key {m.key!r} in this shard")
    return rows
