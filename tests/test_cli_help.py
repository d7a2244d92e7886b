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


def test_help_in_a_project_folder_shows_the_params_yaml_values(tmp_path, monkeypatch):
    """Issue 26: `--help` inside a folder with a params.yaml shows the value each option will take from it
    and the key, not the stage config's built-in default (which it shows where there is no params.yaml)."""
    import re
    from pathlib import Path

    import yaml

    def help_of(*args: str) -> str:
        result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "400", "NO_COLOR": "1"})
        assert result.exit_code == 0, result.output
        return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())

    from stages.distill.config import DistillConfig

    outside = help_of("distill")
    assert f"[default: {DistillConfig.batch_size}]" in outside and ", from params.yaml" not in outside
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text())
    params["distill"]["batch_size"], params["extract"]["shard_size"] = 24, 48  # neither is a built-in default
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    inside = help_of("distill")
    assert "[default: (24, from params.yaml distill.batch_size)]" in inside, inside
    assert "[default: (tiny_dinov2,tiny_clip,tiny_sam, from params.yaml extract.teachers)]" in inside, inside
    assert "[default: (48, from params.yaml extract.shard_size)]" in help_of("extract")
    assert "[default: (24, from other.yaml distill.batch_size)]" not in inside
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({**params, "distill": {**params["distill"], "batch_size": 8}}))
    assert "[default: (8, from other.yaml distill.batch_size)]" in help_of("distill", "--params", "other.yaml")
    assert help_of("distill") == inside  # the help text of the command itself is left as it was
