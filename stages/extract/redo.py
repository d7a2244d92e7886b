"""Redo damaged shards of a teacher store (`pipeline extract --redo-shards 5,7`).

A complete shard whose data was damaged (a flipped byte, a lost chunk file; `pipeline store verify` names
it) is redone by clearing its complete flag and its statistics and extracting it again. The statistics
PHI-S normalizers are fitted from (arXiv 2410.01680) are per-shard float64 partials folded, in shard order,
into bounded totals (`store_schema.stats_ledger`); folded partials are gone, so a folded shard cannot simply
be subtracted. Redoing one unfolds the statistics: every other folded shard's partial is recomputed from
its stored values (no teacher run; one read of the folded shards), the totals are emptied, and folding
starts again from shard 0 in shard order once the redone shards are complete.

Exactness: a redone shard's partial comes from the teacher again, as in the first run. A recomputed
partial is a float64 two-pass over the same stored values as the extraction's device-side accumulation
(`stages.extract.device_stats`), which merges per batch: the two agree to float64 rounding, so the store's
statistics after a redo equal an uninterrupted run's to ~1e-15 relative (tests/test_extract_redo.py
checks 1e-12), not bit for bit. Redoing shards that are not folded yet changes no other partial.
"""

from __future__ import annotations

import numpy as np

from stages.stats import Moments
from store_schema import layout
from store_schema.errors import StoreCorruptionError
from store_schema.teacher_store import TeacherStore


def parse_shards(text: str) -> list[int]:
    """'5,7' / '3-6' / '5, 7-9' -> sorted shard indices; ValueError naming the expected form otherwise."""
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        a, dash, b = part.partition("-")
        if not a.strip().isdigit() or (dash and not b.strip().isdigit()):
            raise ValueError(f"--redo-shards takes shard indices such as 5,7 or 3-6, got {text!r}")
        lo, hi = int(a), int(b) if dash else int(a)
        if hi < lo:
            raise ValueError(f"--redo-shards: range {part!r} is empty")
        out.update(range(lo, hi + 1))
    return sorted(out)


def stored_partials(store: TeacherStore, k: int) -> dict[tuple[str, str], Moments]:
    """{(kind, split): float64 moments of shard k's valid stored values}, as the statistics count them."""
    from stages.extract.transcode import shard_moments

    try:
        summary_SVC, patches_SVhwC, valid_SV = store.read_shard(k)
    except StoreCorruptionError as e:
        raise ValueError(f"shard {k} of {store.path} is damaged too ({e}); redo it as well "
                         f"(`--redo-shards` with {k} added)") from e
    lo, hi = store.shard_range(k)
    split_S = store.image_split()[lo:hi]
    out = {}
    content_SVhw = store.content_mask(np.arange(lo, hi))  # padded tokens are never counted
    for p, split in enumerate(layout.STATS_SPLITS):
        for kind, m in shard_moments(summary_SVC, patches_SVhwC, valid_SV & (split_S == p)[:, None],
                                     content_SVhw).items():
            out[(kind, split)] = m
    return out


def reopen_for_redo(store: TeacherStore, shards: list[int]) -> int:
    """Clear `shards`' complete flags and statistics (unfolding the store's statistics when needed);
    returns how many shards were folded before (0: nothing unfolded). The caller then extracts them."""
    bad = [k for k in shards if not 0 <= k < store.num_shards]
    if bad:
        raise ValueError(f"--redo-shards {bad}: {store.path} has shards 0..{store.num_shards - 1}")
    folded = store.ledger.folded()[0]
    if shards and min(shards) < folded:  # the other folded shards' partials are recomputed from their data:
        others = np.array([i for k in range(folded) if k not in shards for i in range(*store.shard_range(k))])
        lost = sorted({int(i) // store.shard_size for x in store.lost_images(others).values() for i in x})
        if lost:  # a lost chunk reads as zeros, which would pass the count check: refuse before any change
            raise ValueError(f"shards {lost} of {store.path} have lost chunks too (`pipeline store verify` names "
                             f"them); redo them as well: --redo-shards {','.join(map(str, sorted({*shards, *lost})))}")
    return store.reopen_shards(shards, recompute=lambda k: stored_partials(store, k))
