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
from typing import Any

from store_schema.teacher_store import TeacherStore


def store_receipt(store: TeacherStore) -> dict[str, Any]:
    """Describe a complete store; refuses a store with shards not marked complete."""
    pending = [int(k) for k in store.pending_shards()]
    if pending:
        raise ValueError(f"store {store.path} has {len(pending)} incomplete shards {pending[:10]}; "
                         "re-run `pipeline extract` to finish it before writing a receipt")
    return {"teacher": store.spec.name, "store": str(store.path), **store.fingerprint()}


def write_receipt(store: TeacherStore, path: Path) -> Path:
    """Write the receipt as sorted, indented JSON (same store -> same bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(store_receipt(store), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
