"""Every command of `pipeline` and every one of its options and arguments carries help text."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from pipeline.cli import app


def walk(group, prefix: tuple[str, ...] = ()):
    """(path, command) for every command below a (typer-vendored) click group."""
    ctx = type(group).context_class(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        yield prefix + (name,), cmd
        if hasattr(cmd, "list_commands"):
            yield from walk(cmd, prefix + (name,))


def test_every_command_and_option_has_help():
    root = typer.main.get_command(app)
    commands = list(walk(root))
    names = {" ".join(path) for path, _ in commands}
    assert {"corpus", "demo-corpus", "teachers", "extract", "store info", "store verify", "distill", "export",
            "evaluate", "report", "demo"} <= names
    missing = []
    for path, cmd in commands:
        if not (cmd.help or "").strip():
            missing.append(f"pipeline {' '.join(path)}: no command help")
        for param in cmd.params:
            if param.name == "help":
                continue
            text = getattr(param, "help", None) or ""
            if not text.strip():
                missing.append(f"pipeline {' '.join(path)} {param.opts}: no help")
    assert not missing, "\n".join(missing)
    for path, _ in commands:
        result = CliRunner().invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
