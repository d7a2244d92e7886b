"""The `pipeline` command line: one typer app, command groups registered explicitly from their modules.

Stages of offline agglomerative distillation (AM-RADIO, arXiv 2312.06709; PHI-S, arXiv 2410.01680):
corpus -> extract (teacher stores) -> normalize -> distill -> evaluate. Each command group lives in its
own small `pipeline/cmd_*.py` exposing `register(app)`; commands stay thin over importable functions.
"""

from __future__ import annotations

from typing import Annotated

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
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
)

DISTRIBUTION = "agglo-distill"


def package_version() -> str:
    """The installed distribution's version (importlib.metadata), or what is known when running from a
    checkout that is not installed."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed: running from a source checkout; `pip install -e .` records the version)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"{DISTRIBUTION} {package_version()}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the package version and exit.")] = False,
) -> None:
    """Agglomerative distillation of vision foundation models from an offline Zarr feature store."""
    from pipeline.log_output import show_project_logs

    show_project_logs()  # the library logs through `logging`; the command line shows its records on stderr

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
    """Console entry point: the command, then an exit that skips the interpreter's teardown.

    Every result is written and every stream flushed before ``os._exit``. The teardown is skipped because
    it can abort a finished command: zarr's I/O threads and the C++ thread pools of torch / pyarrow are
    still alive when Python finalizes, and a thread torn down there inside C++ code ends the process with
    "terminate called without an active exception" (SIGABRT), seen once under `dvc repro` after
    `pipeline extract` had written its store and receipt: DVC then took the stage as failed.
    """
    import logging
    import os
    import sys

    try:
        app()
        code = 0
    except SystemExit as e:  # typer ends every command with SystemExit(code)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):  # sys.exit("message"): Python prints it, so do we
            sys.stderr.write(f"{e.code}\n")
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`pipeline ... | head`): nothing more to say
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
