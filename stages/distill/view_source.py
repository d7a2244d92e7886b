"""Where stage two's student views come from: a student-view store rendered once, or the image files.

Both give the same pixels (store_schema/view_store.py renders with the loader's own decode and render),
so the choice changes the loader's CPU, never a result; the loader says which it uses (`views_note`).

distill.student_views (`pipeline distill --student-views`):
  auto    the store <root>/student_views/<img_size>px.zarr when it is complete, else decode (and say why)
  store   the store, or an error naming the command that renders it
  decode  always decode the image files (one decode per image per epoch)
A store rendered from another manifest is refused in both auto and store (remove it, then render again).
"""

from __future__ import annotations

from typing import Any

from stages.distill.config import check_student_views
from store_schema.errors import StoreNotFoundError
from store_schema.layout import student_views_path
from store_schema.view_store import ViewStore, open_view_store

def resolve_view_store(root: Any, manifest: Any, size: int, mode: str) -> tuple[ViewStore | None, str]:
    """(the view store to read, or None to decode; one line saying which and why)."""
    check_student_views(mode)
    render = f"`pipeline views --root {root} --size {size}`"
    if mode == "decode":
        return None, "student views: decoded from the image files (student_views: decode)"
    path = student_views_path(root, size)
    try:
        store = open_view_store(path, expect_manifest_hash=manifest.hash)
    except StoreNotFoundError:
        if mode == "store":
            raise ValueError(f"student_views is 'store' but there is no student-view store at {path}; render it "
                             f"with {render}, or use student_views auto / decode") from None
        return None, (f"student views: decoded from the image files (no pre-rendered store at {path}; {render} "
                      "renders one and takes the decode off the loader)")
    pending = store.pending_shards()
    if len(pending):
        msg = (f"{path} has {len(pending)} of {store.num_shards} shards not rendered yet; finish it with {render}")
        if mode == "store":
            raise ValueError(f"student_views is 'store' but {msg}")
        return None, f"student views: decoded from the image files ({msg})"
    return store, f"student views: read from {path} (pre-rendered at {size} px)"
