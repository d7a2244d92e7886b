"""`pipeline report RUNS... --out DIR`: the normalization-sweep table, average ranks (PHI-S paper, arXiv
2410.01680), plots and the store-vs-online cost (stages/evaluate/report.py). In a folder with a params.yaml
(or with --params FILE, dvc.yaml's report stage) the runs default to the sweep's
(<distill.runs_dir>/<norm>-seed<seed> for every distill.norms × distill.seeds; <norm>-<loss>-seed<seed> when
distill.summary_loss lists several), --out to report.out and
--root to store.root: DVC cannot put a list parameter into a command line. `--add RUN` adds a run made by hand;
evaluated runs beside the reported ones that are left out are named, one line each. Runs that are not
comparable (stages/evaluate/comparability.py) are refused, or ranked per group with --by-group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.defaults import Derived, ParamsOpt, Route, routed

REPORT = Route(sections=("report",), keys={"root": "store.root", "runs": Derived(
    "distill.runs_dir + distill.norms x distill.seeds (x distill.summary_loss)",
    lambda p: [p.run_dir(n, s, sl) for n, s, sl in p.sweep_runs()], file_only=True)},
    required=("runs", "out"))


def report_cmd(
    runs: Annotated[Optional[list[Path]], typer.Argument(help="Evaluated run directories (`pipeline evaluate` first). Default: the sweep's runs.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for report.md, report.csv, cost.json and PNGs. Default: report.out.")] = None,
    root: Annotated[Optional[Path], typer.Option(help="Store root for teacher statistics. Default: store.root, else the "
                                                      "root recorded in the runs' config.json.")] = None,
    allow_stale: Annotated[bool, typer.Option("--allow-stale", help="Report evaluations that do not match their "
                                              "run's last checkpoint (marked) instead of refusing.")] = False,
    allow_incomparable: Annotated[bool, typer.Option("--allow-incomparable", help="Rank runs with different "
                                                     "students, steps, teacher sets, corpora or eval splits together "
                                                     "(noted) instead of refusing.")] = False,
    by_group: Annotated[bool, typer.Option("--by-group", help="Rank each group of comparable runs (same student, "
                                           "steps, teachers, corpus, eval split) on its own.")] = False,
    add: Annotated[Optional[list[Path]], typer.Option("--add", help="Also report this run (repeatable): a run made "
                                                      "by hand beside the sweep's.")] = None,
    dvc_out: Annotated[Optional[Path], typer.Option("--dvc-out", help="Also write the ranks (average and per "
                                                    "category) and ranked seed means per variant to this JSON file: "
                                                    "a DVC metrics file (dvc.yaml: dvc_metrics/ranking.json).")] = None,
    params: ParamsOpt = None,
) -> None:
    """Write one table across RUNS (mean ± std over seeds, ranks by category as in PHI-S, storage
    fidelity per variant, cost) with plots."""
    from stages.evaluate.report import write_report  # matplotlib: imported only when a report is written
    from stages.evaluate.report_runs import left_out_runs
    from store_schema.io_errors import check_writable

    check_writable(out, "the report")  # refused before any of it is written
    if dvc_out is not None:
        check_writable(dvc_out.parent, "the DVC ranking file")
    runs = list(dict.fromkeys([*(runs or []), *(add or [])]))
    md = write_report(runs, out, store_root=root, allow_stale=allow_stale, allow_incomparable=allow_incomparable,
                      by_group=by_group, dvc_out=dvc_out)
    typer.echo(f"report: {md}")
    if dvc_out is not None:
        typer.echo(f"ranking for DVC: {dvc_out} (`dvc metrics show {dvc_out}`)")
    for run in left_out_runs(runs):
        typer.echo(f"not in this report: {run} (evaluated beside its runs; add it with --add {run})")


def register(app: typer.Typer) -> None:
    """Add `report` to the pipeline CLI."""
    app.command("report", cls=routed(REPORT))(report_cmd)
