"""The sweep's ranking as a DVC metrics file (`pipeline report --dvc-out FILE`; dvc.yaml's report stage writes
dvc_metrics/ranking.json). The ranks are those of the report (PHI-S arXiv 2410.01680, Table 1: per metric,
averaged inside each category, then over the categories): per variant its average rank, its rank per
category, the seed means of the ranked metrics and its number of seeds, so `dvc metrics show`, `dvc
metrics diff` and `dvc exp show --only-changed` show what the sweep decides (docs/SWEEP.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def ranking_metrics(groups: Sequence[Any]) -> dict[str, Any]:
    """{variant: {"avg_rank", "rank": {category: rank}, "mean": {ranked metric: seed mean}, "seeds"[, "group"]}}
    of the report's ranked groups (``stages.evaluate.report.RankedGroup``); "group" only when the runs were
    ranked in several groups (ranks of different groups do not compare)."""
    out: dict[str, Any] = {}
    for i, g in enumerate(groups, 1):
        for v in g.variants:
            ranks = g.ranking.ranks[v.name]
            entry: dict[str, Any] = {"avg_rank": ranks["avg"],
                                     "rank": {c: ranks[c] for c in g.ranking.categories},
                                     "mean": {m: v.mean[m] for ms in g.ranking.categories.values() for m in ms},
                                     "seeds": len(v.seeds)}
            if len(groups) > 1:
                entry["group"] = i
            out[v.name] = entry
    return out


def write_ranking(path: Path, groups: Sequence[Any]) -> Path:
    """Write ``ranking_metrics`` as JSON to ``path`` (a DVC metrics file); returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(ranking_metrics(groups), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
