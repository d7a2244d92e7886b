"""Extraction receipts: a small JSON file that stands for a teacher's feature store in DVC.

The store itself stays outside DVC's outputs (docs/SCIENCE.md, toolchain notes: uncached outputs are hashed file by file and
queued experiments re-run stages whose outputs are missing). A receipt names what the store holds: the
manifest, the teacher spec and weights, the codec and grid, the complete shards, and the hash of every
token kind's merged statistics (`Moments.content_hash`, computed from the values as stored). Stage two
depends on the receipts, so it re-runs exactly when a store's content changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from store_schema.errors import DamagedFileError
from store_schema.io_errors import write_guard
from store_schema.layout import teacher_store_path
from store_schema.teacher_store import TeacherStore, open_teacher_store


def store_receipt(store: TeacherStore) -> dict[str, Any]:
    """Describe a complete store; refuses a store with shards not marked complete."""
    pending = [int(k) for k in store.pending_shards()]
    if pending:
        raise ValueError(f"store {store.path} has {len(pending)} incomplete shards {pending[:10]}; "
                         "re-run `pipeline extract` to finish it before writing a receipt")
    return {"teacher": store.key, "store": str(store.path), **store.fingerprint()}


def write_receipt(store: TeacherStore, path: Path) -> Path:
    """Write the receipt as sorted, indented JSON (same store -> same bytes)."""
    path = Path(path)
    text = json.dumps(store_receipt(store), indent=2, sort_keys=True) + "\n"
    tmp = path.with_suffix(path.suffix + ".tmp")
    with write_guard(path, "the receipt", kept="the store is complete; re-run to write the receipt"):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        tmp.replace(path)
    return path


def receipt_path(receipts_dir: Path, teacher: str) -> Path:
    """<receipts_dir>/extract_<teacher>.json, the name dvc.yaml's extract stage writes."""
    return Path(receipts_dir) / f"extract_{teacher}.json"


def check_receipt(path: Path, store: TeacherStore) -> None:
    """Refuse a receipt that is damaged (not JSON, truncated) or does not describe `store` as it is now
    (altered by hand, or the store changed since): DamagedFileError naming the file and how to recover.
    Stage two depends on receipts, so a wrong one would let DVC skip or run stages for the wrong store."""
    path = Path(path)
    recovery = (f"Rewrite it from the store with `pipeline extract --teacher {store.key} --receipt {path}` "
                "where params.yaml is (or with --root ROOT): complete shards are skipped, so this only re-reads "
                "the store")
    try:
        found = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedFileError(path, f"it is not valid JSON ({e})", recovery) from e
    try:
        expected = store_receipt(store)
    except ValueError as e:
        raise DamagedFileError(path, f"its store is not complete ({e})", recovery) from e
    if found != json.loads(json.dumps(expected)):
        keys = sorted(k for k in set(found) | set(expected) if found.get(k) != json.loads(json.dumps(expected.get(k))))
        raise DamagedFileError(path, f"it does not describe {store.path} as it is now (fields {keys} differ)",
                               recovery)


def check_receipts(receipts_dir: Path, root: Path | str, teachers: Sequence[str]) -> None:
    """Every teacher's receipt in `receipts_dir` (what dvc.yaml's extract stages write) exists and describes
    its store under `root` as it is now (`check_receipt`)."""
    for teacher in teachers:
        path = receipt_path(receipts_dir, teacher)
        if not path.is_file():
            raise FileNotFoundError(f"no receipt {path} for teacher {teacher}; run its extract stage "
                                    f"(`pipeline extract --teacher {teacher} --receipt {path}`)")
        check_receipt(path, open_teacher_store(teacher_store_path(root, teacher)))
