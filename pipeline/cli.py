"""The `pipeline` command line: one typer app, command groups registered explicitly from their modules.

Stages of offline agglomerative distillation (AM-RADIO, arXiv 2312.06709; PHI-S, arXiv 2410.01680):
corpus -> extract (teacher stores) -> normalize -> distill -> evaluate. Each command group lives in its
own small `pipeline/cmd_*.py` exposing `register(app)`; commands stay thin over importable functions.
"""

from __future__ import annotations

import typer

from pipeline import (
    cmd_corpus,
    cmd_demo,
    cmd_distill,
    cmd_evaluate,
    cmd_export,
    cmd_extract,
    cmd_report,
    cmd_store,
    cmd_teachers,
    cmd_text,
    cmd_views,
)


class PipelineApp(typer.Typer):
    """The typer app; called as a program (the console script calls `app()`), user errors, including click's
    usage errors, print as one `Error: ...` line (pipeline/errors.py), never as a box or a traceback."""

    def __call__(self, *args, **kwargs):
        if "standalone_mode" in kwargs:  # an embedding caller decides itself
            return super().__call__(*args, **kwargs)
        from pipeline.errors import run_cli

        raise SystemExit(run_cli(lambda **kw: super(PipelineApp, self).__call__(*args, **kwargs, **kw)))


app = PipelineApp(
    name="pipeline",
    help="Agglomerative distillation of vision foundation models from an offline Zarr feature store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# ---- command groups, registered explicitly (add new ones here, in pipeline order) -----------------
COMMAND_GROUPS = (
    cmd_corpus,
    cmd_teachers,
    cmd_extract,
    cmd_text,
    cmd_views,
    cmd_store,
    cmd_distill,
    cmd_export,
    cmd_evaluate,
    cmd_report,
    cmd_demo,
)
for _group in COMMAND_GROUPS:
    _group.register(app)
# ----------------------------------------------------------------------------------------------------


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
