"""`pipeline report RUNS... --out DIR` (or `pipeline report --params params.yaml`): the normalization-sweep
table, average ranks (PHI-S paper, arXiv 2410.01680), plots and the store-vs-online cost
(stages/evaluate/report.py). The --params form takes the runs (<distill.runs_dir>/<norm>-seed<seed> for
every distill.norms × distill.seeds), the output folder (report.out) and the store root from params.yaml: DVC cannot put a
list parameter into a command line, so dvc.yaml's report stage uses it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.errors import fail

from pipeline.params import read_params


def report_cmd(
    ctx: typer.Context,
    runs: Annotated[Optional[list[Path]], typer.Argument(help="Evaluated run directories (`pipeline evaluate` first).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for report.md, report.csv, cost.json and PNGs.")] = None,
    root: Annotated[Optional[Path], typer.Option(help="Store root for teacher statistics. Default: the "
                                                      "root recorded in the runs' config.json.")] = None,
    params: Annotated[Optional[Path], typer.Option(help="Take runs, --out and --root from this params.yaml "
                                                        "instead (the sweep of distill.norms × distill.seeds).")] = None,
    allow_stale: Annotated[bool, typer.Option("--allow-stale", help="Report evaluations that do not match their "
                                              "run's last checkpoint (marked) instead of refusing.")] = False,
    allow_incomparable: Annotated[bool, typer.Option("--allow-incomparable", help="Rank runs with different teacher "
                                                     "sets, manifests or eval splits together (noted) instead of "
                                                     "refusing.")] = False,
) -> None:
    """Write one table across RUNS (mean ± std over seeds, ranks by category as in PHI-S, storage
    fidelity per variant, cost) with plots."""
    from stages.evaluate.report import write_report  # matplotlib: imported only when a report is written

    try:
        if params is not None:
            if runs or out or root:
                raise ValueError("give either --params or RUNS... --out DIR, not both")
            p = read_params(params)
            runs, out, root = [p.run_dir(n, s, sl) for n, s, sl in p.sweep_runs()], p.report.out, p.store.root
        else:
            from pipeline.flag_defaults import REPORT, fill_from_params

            v = fill_from_params(ctx, {"runs": runs, "out": out, "root": root}, REPORT, required=("runs", "out"))
            runs, out, root = v["runs"], v["out"], v["root"]
        md = write_report(runs, out, store_root=root, allow_stale=allow_stale, allow_incomparable=allow_incomparable)
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from e
    typer.echo(f"report: {md}")


def register(app: typer.Typer) -> None:
    """Add `report` to the pipeline CLI."""
    app.command("report")(report_cmd)
