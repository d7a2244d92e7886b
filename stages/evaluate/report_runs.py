"""Which runs a sweep report covers: the evaluated runs beside the reported ones that it leaves out.

`pipeline report` without arguments reports the sweep's runs (params.yaml's norms x seeds); a run made by
hand in the same runs folder is not one of them. Rather than leave it out silently, the command names each
evaluated run folder beside the reported ones that is not in the report, so the user can add it
(`--add RUN`) or knowingly leave it out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from stages.distill.run_dir import config_path, eval_path


def left_out_runs(run_dirs: Sequence[Path]) -> list[Path]:
    """Evaluated run folders (config.json and eval/metrics.json) in the parent folders of ``run_dirs`` that
    are not among them, sorted."""
    chosen = {Path(r).resolve() for r in run_dirs}
    out = set()
    for parent in {Path(r).parent for r in run_dirs}:
        if not parent.is_dir():
            continue
        for d in parent.iterdir():
            if d.is_dir() and d.resolve() not in chosen and config_path(d).is_file() and eval_path(d).is_file():
                out.add(d)
    return sorted(out)
