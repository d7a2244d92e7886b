"""Build manifest.parquet from a corpus SOURCE: a folder, a text file of paths, or a Parquet `uri` column.

The first stage of offline agglomerative distillation (AM-RADIO, arXiv 2312.06709): fix the image set,
each image's content hash, train/val split and its V views, so every teacher store is built from the
same rows. Every image is decoded once here (stages/corpus/images.py) and broken files are recorded with
a reason, never fatal. The split comes from the content hash, so duplicates share a split and adding
images never moves existing ones between splits.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow.parquet as pq

import numpy as np

from stages.corpus.images import (DEFAULT_PIXEL_LIMIT, IMAGE_EXTENSIONS, MIN_SIDE, ImageRecord,
                                  inspect_image, is_image_name)
from stages.corpus.layouts import Entry, ParsedDataset, check_annotations, check_layout, parse_dataset
from stages.corpus.views import draw_views
from store_schema import layout
from store_schema.location import as_location, is_file, is_url
from store_schema.manifest import (STATUS_BAD, STATUS_OK, Manifest, ManifestRow, ViewSpec,
                                   read_manifest, write_manifest)

DEFAULT_VAL_FRACTION = 0.2
PARQUET_URI_COLUMN = "uri"


def _to_uri(path: Path, base: Path) -> str:
    """Posix path relative to base when the file lies under it, else the absolute path."""
    rel = os.path.relpath(os.path.normpath(os.path.abspath(path)), os.path.abspath(base))
    if rel == ".." or rel.startswith(".." + os.sep):
        return Path(os.path.normpath(os.path.abspath(path))).as_posix()
    return Path(rel).as_posix()


def _entries_to_uris(entries: list[str], base: Path, what: str) -> list[str]:
    # absolute entries stay absolute (Path join); URLs are kept as written (a Path would fold `//` to `/`)
    uris = [e if is_url(e) else _to_uri(base / e, base) for e in entries]
    seen: set[str] = set()
    dups = sorted({u for u in uris if u in seen or seen.add(u)})
    if dups:
        raise ValueError(f"{what} lists the same image more than once: {dups[:5]}")
    return sorted(uris)


def list_source(source: Path) -> tuple[Path, list[str]]:
    """(base folder, sorted uris) of a SOURCE; uris are relative to the base folder when under it.

    A folder is searched recursively for IMAGE_EXTENSIONS (case-insensitive); a `.parquet` file needs a
    `uri` column; any other file is a text list, one path per line (blank lines and `#` comments
    skipped), relative to the list's folder or absolute.
    """
    source = Path(source)
    if source.is_dir():
        files = [p for p in source.rglob("*") if p.is_file() and is_image_name(p.name)]
        uris = sorted(_to_uri(p, source) for p in files)
        base = source
    elif source.is_file() and source.suffix.lower() == ".parquet":
        table = pq.read_table(source)
        if PARQUET_URI_COLUMN not in table.column_names:
            raise ValueError(f"{source} has no {PARQUET_URI_COLUMN!r} column; columns: {table.column_names}")
        entries = [str(u) for u in table.column(PARQUET_URI_COLUMN).to_pylist() if u]
        base, uris = source.parent, _entries_to_uris(entries, source.parent, str(source))
    elif source.is_file():
        lines = [ln.strip() for ln in source.read_text(encoding="utf-8").splitlines()]
        entries = [ln for ln in lines if ln and not ln.startswith("#")]
        base, uris = source.parent, _entries_to_uris(entries, source.parent, str(source))
    else:
        raise ValueError(f"corpus source {source} does not exist (give a folder, a text list or a .parquet)")
    if not uris:
        raise ValueError(f"corpus source {source} holds no images "
                         f"(a folder is searched for {', '.join(IMAGE_EXTENSIONS)})")
    return base, uris


def split_of(sha256: str, *, val_fraction: float) -> str:
    """'val' when the first 64 bits of the hash, as a fraction of 2^64, fall below val_fraction."""
    return "val" if int(sha256[:16], 16) / 2.0**64 < val_fraction else "train"


def build_manifest(source: Path, *, out_dir: Path, view_spec: ViewSpec = ViewSpec(),
                   pixel_limit: int = DEFAULT_PIXEL_LIMIT, min_side: int = MIN_SIDE,
                   val_fraction: float = DEFAULT_VAL_FRACTION, dataset_layout: str = "files") -> Manifest:
    """Decode every image of SOURCE once and write <out_dir>/manifest.parquet deterministically.

    dataset_layout "files" (default): any folder / list / Parquet of images, splits from the content hash.
    Otherwise SOURCE is an evaluation dataset in that released layout (stages/corpus/layouts.py): splits,
    labels, annotation paths and the class list come from the layout (val_fraction is not used), and each
    image's annotations are checked against it. Returns the manifest as read back (its hash is the sha256
    of the written bytes).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if pixel_limit < 1 or min_side < 1:
        raise ValueError(f"pixel_limit and min_side must be >= 1, got {pixel_limit}, {min_side}")
    out_dir = as_location(out_dir)
    dataset = None
    if check_layout(dataset_layout) == "files":
        base, uris = list_source(Path(source))
        entries = [Entry(u, "") for u in uris]
    else:
        dataset = parse_dataset(dataset_layout, Path(source), name=_dataset_name(out_dir))
        base, entries = dataset.base, dataset.entries
        val_fraction = 0.0  # the layout's own splits
    rows = [_row(base, e, dataset, view_spec, pixel_limit=pixel_limit, min_side=min_side,
                 val_fraction=val_fraction) for e in entries]
    if not is_url(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    path = layout.manifest_path(out_dir)
    write_manifest(path, rows, view_spec=view_spec, source=_portable(Path(source), out_dir),
                   image_root=_portable(base, out_dir), pixel_limit=pixel_limit, min_side=min_side,
                   val_fraction=val_fraction, before_write=lambda new: refuse_orphaning_stores(out_dir, new),
                   dataset=None if dataset is None else dataset.info)
    return read_manifest(path)


def _dataset_name(out_dir) -> str:
    """An evaluation dataset's name (its metrics go under bench/<name>/): the output root's folder name."""
    return str(out_dir).rstrip("/").rsplit("/", 1)[-1]


def _row(base: Path, entry: Entry, dataset: ParsedDataset | None, view_spec: ViewSpec, *, pixel_limit: int,
         min_side: int, val_fraction: float) -> ManifestRow:
    """One image decoded and checked (with its annotations for a dataset layout) as a manifest row."""
    uri = entry.uri
    rec = (_remote(uri) if is_url(uri) else inspect_image(base / uri, pixel_limit=pixel_limit, min_side=min_side))
    reason = rec.reason
    if rec.ok and dataset is not None:
        reason = check_annotations(dataset.info, base, entry, (rec.width, rec.height))
    key = rec.sha256 or hashlib.sha256(uri.encode()).hexdigest()  # unreadable file: key on its uri
    boxes_V4, flips_V = draw_views(key, view_spec)
    return ManifestRow(
        uri=uri, sha256=rec.sha256, size_bytes=rec.size_bytes, width=rec.width, height=rec.height, mode=rec.mode,
        split=entry.split or split_of(key, val_fraction=val_fraction),
        status=STATUS_OK if rec.ok and not reason else STATUS_BAD, reason=reason, boxes_V4=boxes_V4,
        flips_V=flips_V, label=entry.label, mask_uri=entry.mask_uri, depth_uri=entry.depth_uri,
        normals_uri=entry.normals_uri)


REMOTE_REASON = "remote image (URL): corpus images are read from local files; download it and list the local path"


def _remote(uri: str) -> ImageRecord:
    """A URL entry of a text / Parquet list: kept as written in the manifest, recorded as bad (not fetched)."""
    return ImageRecord("", 0, 0, 0, "", None, REMOTE_REASON)


def refuse_orphaning_stores(root, new_hash: str) -> None:
    """ValueError when `root` holds teacher stores built from its current manifest and a manifest with
    another hash is about to replace it: the stores' image ids would then mean other images (extraction
    and training refuse them by hash). The same corpus and options give the same bytes, so re-running
    `pipeline corpus` unchanged is always allowed."""
    import json

    from store_schema.location import read_bytes
    from store_schema.manifest import manifest_hash

    path = layout.manifest_path(root)
    if not is_file(path):
        return
    old_hash = manifest_hash(path)
    if old_hash == new_hash:
        return
    built = []
    for name in layout.list_teacher_stores(root):
        # the store's group attributes, read as JSON: no zarr / torch import in the corpus command (with
        # pyarrow loaded, that import made the process abort at exit now and then)
        try:
            attrs = json.loads(read_bytes(layout.store_file(layout.teacher_store_path(root, name), layout.ZARR_JSON)))
            store_hash = attrs["attributes"]["manifest_hash"]
        except (OSError, ValueError, KeyError, TypeError):  # unreadable: it may still be the user's data, so it counts
            store_hash = old_hash
        if store_hash == old_hash:
            built.append(name)
    if built:
        raise ValueError(
            f"{root} holds teacher stores built from its current manifest ({old_hash[:12]}...): "
            f"{', '.join(built)}. The new corpus gives another manifest ({new_hash[:12]}...), which would orphan "
            f"them (their image ids would mean other images). Write it to a new root (`--out NEW_ROOT`), or "
            f"remove those stores first ({', '.join(str(layout.teacher_store_path(root, n)) for n in built)}); "
            f"the current manifest is kept")


def bad_summary(manifest: Manifest, *, first: int = 3) -> list[str]:
    """Lines summarizing the manifest's bad images: count per reason (the text before its first ':'), most
    frequent first, with the first few uris of each. Empty when every image is ok."""
    groups: dict[str, list[str]] = {}
    for i in np.flatnonzero(~manifest.ok_N):
        groups.setdefault(manifest.reasons[i].split(":")[0].strip() or "unknown", []).append(manifest.uris[i])
    lines = []
    for reason, uris in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        more = f", ... {len(uris) - first} more" if len(uris) > first else ""
        lines.append(f"  {len(uris)} {reason}: {', '.join(uris[:first])}{more}")
    return lines


def _portable(path: Path, out_dir: Path | str) -> str:
    """path relative to out_dir (so a moved corpus + manifest pair keeps its hash), posix separators;
    absolute when the manifest goes to object storage (no common folder)."""
    if is_url(out_dir):
        return Path(os.path.abspath(path)).as_posix()
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir))).as_posix()
