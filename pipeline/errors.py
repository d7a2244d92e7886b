"""One way the command line reports a user's mistake: `Error: <what, where, how to fix>` on stderr, exit 2.

Commands raise `fail(message)` for mistakes they find; every command runs as a `PipelineCommand`, which
prints a user error the command raised in the same style (so commands need no `except ...: raise fail`
of their own); `run_cli` (the console entry point) prints click's own usage errors (a flag that does not
parse) and any user error raised outside a command, never as a box or a traceback. User errors are the exceptions the stages raise for bad input,
damaged or mismatched files and missing resources (`ValueError`, `FileNotFoundError`, the store's
`StoreError`, missing weights / tokenizers, a package of an optional extra that is not installed, an extraction
that cannot go on, an unreachable Ray cluster) and the OSErrors a user fixes (read-only or full filesystem,
permissions: `store_schema.io_errors.USER_ERRNOS`); anything else is a bug and
keeps its traceback. `PIPELINE_TRACEBACK=1` in the environment lets user errors raise with their
traceback too (a ValueError can also be a bug: this is how to see where it came from). Only typer and the standard library are imported here (`pipeline --help` stays fast).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from typing import Any, Callable

import typer
from typer.core import TyperCommand

EXIT_USER_ERROR = 2
TRACEBACK_ENV = "PIPELINE_TRACEBACK"  # set to 1: user errors keep their traceback
# typer ships its own copy of click: find its ClickException through a public class, by name
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def fail(message: str, *, code: int = EXIT_USER_ERROR) -> typer.Exit:
    """Print `Error: message` on stderr and return the typer.Exit to raise (`raise fail(...) from e`)."""
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code)


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types that mean a user's mistake or a missing / damaged resource (see the module
    docstring). Imported lazily: when one is raised, its module is loaded already."""
    types: list[type[BaseException]] = [ValueError, FileNotFoundError, LookupError]
    for module, name in (("store_schema.errors", "StoreError"), ("stages.teachers.errors", "MissingWeightsError"),
                         ("stages.teachers.text_tower", "MissingTokenizerError"),
                         ("stages.orchestrate.shards", "ShardRunStopped"),
                         ("stages.optional", "MissingExtraError"),
                         ("stages.orchestrate.ray_address", "RayUnreachableError")):
        mod = sys.modules.get(module)
        if mod is not None:
            types.append(getattr(mod, name))
    return tuple(types)


def run_cli(invoke: Callable[..., Any]) -> int:
    """Run `invoke(standalone_mode=False)` (a typer app's call); returns the exit status. Usage errors and
    uncaught user errors print as `Error: ...`."""
    try:
        rv: Any = invoke(standalone_mode=False)
    except _CLICK_EXCEPTION as e:  # a flag that does not parse, a missing argument, ...
        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        typer.echo(f"Error: {e.format_message()}{hint}", err=True)
        return int(getattr(e, "exit_code", EXIT_USER_ERROR))
    except typer.Abort:
        typer.echo("Error: aborted", err=True)
        return 1
    except user_error_types() as e:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        typer.echo(f"Error: {e}", err=True)
        return EXIT_USER_ERROR
    except OSError as e:
        message = os_error_message(e, "pipeline")
        if message is None:
            raise
        typer.echo(f"Error: {message}", err=True)
        return EXIT_USER_ERROR
    return rv if isinstance(rv, int) else 0


def _interrupted_type() -> type[BaseException] | tuple[()]:
    """stages.orchestrate.interrupts.Interrupted once a stage has loaded it (an except clause evaluates this
    when an exception arrives), else nothing."""
    return getattr(sys.modules.get("stages.orchestrate.interrupts"), "Interrupted", ())


def command_line() -> str:
    """The command as the user typed it (re-running it resumes an interrupted extract / views / sweep)."""
    return shlex.join(["pipeline", *sys.argv[1:]])


class PipelineCommand(TyperCommand):
    """A typer command whose user errors (`user_error_types`) print as one `Error: ...` line, exit 2, and whose
    interrupts (stages.orchestrate.interrupts.Interrupted) print what was kept and how to resume, exit 128+signal."""

    def invoke(self, ctx: Any) -> Any:
        previous = _sigterm_interrupts()
        try:
            return super().invoke(ctx)
        except _interrupted_type() as e:
            typer.echo(str(e), err=True)
            raise typer.Exit(e.exit_code) from e
        except KeyboardInterrupt as e:  # a signal outside the stages that stop at a commit point
            signum = getattr(e, "signum", signal.SIGINT)
            typer.echo(f"Interrupted ({signal.Signals(signum).name}) before this step finished; what the command "
                       "had committed is kept (complete shards, checkpoints; a new run without a checkpoint is "
                       f"removed) and re-running `{command_line()}` goes on from there", err=True)
            raise typer.Exit(128 + signum) from e
        except user_error_types() as e:
            if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
                raise
            raise fail(str(e)) from e
        except OSError as e:  # a read-only / full / forbidden output the command wrote without a write_guard
            message = os_error_message(e, f"`{ctx.command_path}`")
            if message is None:
                raise
            raise fail(message) from e
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that it unwinds (leases released, messages printed)."""

    signum = signal.SIGTERM


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


def _sigterm_interrupts() -> Any:
    """Make SIGTERM unwind like Ctrl-C for the command (in the main thread); returns the handler to restore."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def os_error_message(e: OSError, command: str) -> str | None:
    """The one line for an OSError the user fixes (store_schema.io_errors.USER_ERRNOS), None for any other (a
    bug or a failing disk: it keeps its traceback), and None under PIPELINE_TRACEBACK=1."""
    from store_schema.io_errors import USER_ERRNOS, os_error_line

    if e.errno not in USER_ERRNOS or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        return None
    return os_error_line(e, command)
