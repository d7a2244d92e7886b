"""The report's teacher section: what each teacher's outputs look like, and what each variant asks of the
student (PHI-S arXiv 2410.01680: teachers' scales and ranks, its Tables 2 and 6).

Per teacher and token kind, from the store's merged float64 moments (``stages.extract.inspect``): tokens,
width, global std, RankMe (Garrido et al. 2023, exact from the moments, ``stages.rankme``) and the
eigenvalue entropy rank beside it. Per sweep variant, teacher and token kind: the variance of each channel
of the targets the student trains against, diag(W Σ Wᵀ) with W the run's fitted normalizer and Σ the
statistics it was fitted from, as min / mean / max over channels. A paper-exact whitening gives 1 in every
channel; a noise-floored one less than 1 on the directions it floors; PHI-S exactly 1 everywhere;
raw-target variants the teacher's own spread (summaries under the default cosine summary loss are raw).

Plain functions from already-read data to Markdown lines; ``teacher_lines`` opens the stores and runs.

Shape legend: D channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


def target_variance(W_DD: np.ndarray, cov_DD: np.ndarray) -> np.ndarray:
    """Per-channel variance of W (y − μ) for y of covariance Σ: diag(W Σ Wᵀ) [D]."""
    return np.einsum("ij,jk,ik->i", W_DD, cov_DD, W_DD)


def _stats_rows(store_root: Path, teachers: Sequence[str]) -> list[str]:
    from stages.extract.inspect import kind_stats
    from store_schema.layout import teacher_store_path
    from store_schema.teacher_store import open_teacher_store

    rows = []
    for t in teachers:
        store = open_teacher_store(teacher_store_path(store_root, t))
        for kind in store.kinds:
            k = kind_stats(store, kind)
            rows.append(f"| {t} | {kind} | {k.count:,} | {k.dim} | {k.global_std:.4g} | {k.rankme:.1f} | "
                        f"{k.eigen_entropy_rank:.1f} |")
    return rows


def _variance_rows(store_root: Path, variants: Sequence[Any], configs: dict[str, dict[str, Any]]) -> list[str]:
    """One row per variant, teacher and kind (its first run's normalizers)."""
    from stages.distill.config import DistillConfig
    from stages.normalize.store_fit import normalizer_moments
    from stages.distill.run import load_normalizers
    from store_schema.layout import teacher_store_path
    from store_schema.teacher_store import open_teacher_store

    rows, stores = [], {}
    for v in variants:
        cfg = configs[v.runs[0]]
        try:
            normalizers = load_normalizers(DistillConfig.from_dict({**cfg, "root": str(store_root)}), cfg)
        except (FileNotFoundError, ValueError) as e:
            rows.append(f"| {v.name} | n/a | n/a | {str(e).splitlines()[0][:120]} | | | |")
            continue
        for t, kinds in normalizers.items():
            if t not in stores:
                stores[t] = open_teacher_store(teacher_store_path(store_root, t))
            for kind, norm in kinds.items():
                var_D = target_variance(norm.W_DD, normalizer_moments(stores[t], kind)[0].covariance())
                rows.append(f"| {v.name} | {t} | {kind} | {norm.variant.value} | {var_D.min():.3g} | "
                            f"{var_D.mean():.3g} | {var_D.max():.3g} |")
    return rows


def teacher_lines(store_root: Path, teachers: Sequence[str], variants: Sequence[Any],
                  configs: dict[str, dict[str, Any]]) -> list[str]:
    """The report's "Teachers" section (module docstring)."""
    lines = ["## Teachers", "",
             "From each store's merged statistics. RankMe (Garrido et al. 2023; the PHI-S paper's rank measure): "
             "exp of the entropy of the normalized singular values of the token matrix as stored, exact from "
             "the moments; the eigenvalue entropy rank (exp entropy of the normalized covariance eigenvalues) is "
             "a different, smaller number.", "",
             "| teacher | kind | tokens | channels | global std | RankMe | eigenvalue entropy rank |",
             "|---|---|---|---|---|---|---|", *_stats_rows(store_root, teachers), "",
             "What each variant asks of the student: the variance of each channel of its targets, diag(W Σ Wᵀ) "
             "over the statistics the normalizer was fitted from (min / mean / max over channels). The paper's "
             "whitenings and PHI-S give 1 in every channel; a noise-floored variant (`*_nf`, this project's "
             "extension) less than 1 where it floors; raw targets (loss-side variants, and summaries under the "
             "cosine summary loss) keep the teacher's spread.", "",
             "| variant | teacher | kind | target space | min | mean | max |", "|---|---|---|---|---|---|---|",
             *_variance_rows(store_root, variants, configs)]
    return lines
