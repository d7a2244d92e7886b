"""A lease's record: who holds it, in words, and how a lost lease is described (store_schema/lease.py for
filesystems, store_schema/lease_object.py for S3: both read and describe the same JSON record).

The record guards the one-writer rule of the feature store (AM-RADIO, arXiv 2312.06709: whole-shard writes
of one store by one run)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any


def iso_time(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe_holder(holder: dict[str, Any], *, heartbeat_age_s: float | None = None) -> str:
    """'pid 123 on host h (started 2026-..., took the lease at ..., doing "extract x")'."""
    text = (f"pid {holder.get('pid')} on host {holder.get('host')} (process started "
            f"{iso_time(float(holder.get('process_started', 0)))}, lease taken {iso_time(float(holder.get('acquired_at', 0)))}")
    if holder.get("purpose"):
        text += f", doing {holder['purpose']!r}"
    if heartbeat_age_s is not None:
        text += f", last heartbeat {heartbeat_age_s:.0f} s ago"
    return text + ")"


def parse_holder(text: str) -> dict[str, Any]:
    """A lease record. One that does not parse (a damaged filesystem; a holder killed while writing is
    impossible: records are put in place complete) is a holder with unknown fields: it still goes stale
    (its heartbeat is the file's time) and is taken over."""
    try:
        holder = json.loads(text)
        if not isinstance(holder, dict):
            raise ValueError
    except ValueError:
        holder = {"host": "?", "pid": None, "token": None, "damaged": True}
    return holder


def lost_reason(found: tuple | None) -> str:
    return ("its lease file was removed" if found is None else
            f"another run took it over: {describe_holder(found[0])}")
