"""Where the library's log records go when it runs as the `pipeline` command: stderr, as one line each.

The packages log through the standard `logging` module, one logger per module (`logging.getLogger(__name__)`
under `stages.*` and `store_schema.*`), and configure nothing: a program that imports them routes, filters or
silences their records as it routes any library's. The command line is such a program: it shows the records of
INFO and above on stderr, warnings as `warning: <message>`, notes as the bare message. Only typer and the
standard library are imported here.
"""

from __future__ import annotations

import logging

import typer

PROJECT_LOGGERS = ("stages", "store_schema")


class _StderrLines(logging.Handler):
    """One line per record on the current stderr (looked up per record: typer's CliRunner swaps streams)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.levelno >= logging.WARNING:
                message = f"{record.levelname.lower()}: {message}"
            typer.echo(message, err=True)
        except Exception:  # noqa: BLE001 - logging's contract: a failing handler reports, never raises
            self.handleError(record)


def show_project_logs(level: int = logging.INFO) -> None:
    """Send the project's log records of `level` and above to stderr (once per process)."""
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _StderrLines) for h in logger.handlers):
            logger.addHandler(_StderrLines())
        logger.setLevel(level)
