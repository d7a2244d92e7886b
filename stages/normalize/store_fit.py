"""Fitting a teacher store's normalizers (PHI-S, arXiv 2410.01680) from the statistics stage one wrote.

The one place that picks the fitting statistics (`normalizer_moments`: the train split's, so no held-out
image shapes the targets the student is scored against) and that fits, persists and reuses a store's
normalizers (`fit_store_normalizers`, at store_schema.layout.normalizer_path; `load_or_fit` refuses a stored
fit from other statistics). Stage two's loader, the fidelity check and the report call these; none of them
fits a normalizer itself.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from stages.normalize.normalizer import Normalizer, load_or_fit
from stages.normalize.variants import NormVariant, kind_variant
from stages.stats import Moments
from store_schema.layout import TOKEN_KINDS, hadamard_cache_dir, normalizer_path


def normalizer_moments(store: Any, kind: str) -> tuple[Moments, str]:
    """(moments a normalizer is fitted from, the manifest split they cover) of a TeacherStore.

    Per-split moments come from stage one (``TeacherStore.stats(kind, split="train")``); a store written
    before stage one kept them has only whole-store moments, which are used and recorded as split "all" in
    the normalizer file (the report and ``pipeline store info`` print the split).
    """
    if "split" in inspect.signature(store.stats).parameters:
        return store.stats(kind, split="train"), "train"
    return store.stats(kind), "all"


def fit_store_normalizers(root: Path | str, teacher: str, store: Any, *, norm: NormVariant,
                          summary_loss: str = "cosine") -> dict[str, Normalizer]:
    """{kind: Normalizer} of one teacher's store (TeacherStore) for variant `norm`, loaded when persisted
    under `root`, else fitted and persisted. "summary" is absent for a teacher without summary tokens; it is
    `norm`'s only with summary_loss "variant", else the identity (cosine on raw summaries, AM-RADIO)."""
    fits = {}
    for kind in [k for k in TOKEN_KINDS if k != "summary" or store.summary_dim > 0]:
        variant = kind_variant(norm, kind, summary_loss)
        stats, split = normalizer_moments(store, kind)
        path = normalizer_path(root, teacher, kind, variant.value, stats.content_hash())
        fits[kind] = load_or_fit(path, variant, stats, hadamard_cache=hadamard_cache_dir(root),
                                 keepbits=store.codec.keepbits, split=split)
    return fits
