"""The command line's habits: `--version`, shell completion, DVC-only commands hidden from `--help`, the
library's warnings through `logging` (shown by the CLI on stderr as before), `py.typed`."""

from __future__ import annotations

import logging
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.log_output import show_project_logs

REPO = Path(__file__).resolve().parents[1]
DVC_ONLY = ("extract-stage", "extract-text-stage", "distill-variant")


def test_version_prints_the_package_version():
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "--version"], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert res.returncode == 0 and res.stdout == f"agglo-distill {metadata.version('agglo-distill')}\n", res
    assert CliRunner().invoke(app, ["--version"]).output.strip() == f"agglo-distill {metadata.version('agglo-distill')}"


def test_shell_completion_is_available(monkeypatch):
    # typer's own test switch: the completion options take the shell's name instead of detecting the shell
    # from the parent processes (which fails under nohup or a CI runner without a shell above pytest)
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    res = CliRunner().invoke(app, ["--show-completion", "bash"])
    assert res.exit_code == 0 and "complete " in res.output and "_COMPLETE=complete_bash" in res.output
    assert "--install-completion" in CliRunner().invoke(app, ["--help"]).output


def test_every_command_dvc_yaml_runs_is_a_user_command_listed_in_help():
    """Since #20 dvc.yaml runs the ordinary commands (no hidden DVC twins): each is listed in --help."""
    import yaml

    listing = CliRunner().invoke(app, ["--help"]).output
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    called = {s.get("do", s)["cmd"].split()[1] for s in stages.values()}
    assert called and all(f" {name} " in listing for name in called), (called, listing)
    for name in DVC_ONLY:  # the twin commands of before #20 are gone, not hidden
        assert f" {name} " not in listing
        assert CliRunner().invoke(app, [name, "--help"]).exit_code == 2
    assert " export " in listing and " distill " in listing


def test_library_warnings_are_log_records_and_the_cli_prints_them(caplog, capsys):
    logger = logging.getLogger("stages.distill.train")
    with caplog.at_level(logging.INFO, logger="stages"):
        logger.warning("warmup_steps=%d >= steps=%d", 2, 2)
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("stages.distill.train", "WARNING", "warmup_steps=2 >= steps=2")]
    capsys.readouterr()
    show_project_logs()
    show_project_logs()  # once per process, however often a command runs
    logger.warning("a warning")
    logging.getLogger("store_schema.lease").info("a note")
    assert capsys.readouterr().err == "warning: a warning\na note\n"


def test_a_library_user_can_silence_the_project(capsys):
    logging.getLogger("stages").setLevel(logging.ERROR)
    try:
        logging.getLogger("stages.distill.train").warning("not shown")
    finally:
        logging.getLogger("stages").setLevel(logging.NOTSET)
    assert "not shown" not in capsys.readouterr().err


@pytest.mark.parametrize("package", ["stages", "store_schema", "pipeline"])
def test_packages_are_typed(package):
    assert (REPO / package / "py.typed").is_file()
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in data["*"]


def test_the_console_entry_keeps_the_output_and_the_exit_code():
    """`main` ends with os._exit (no interpreter teardown to abort a finished command): a command's output to a
    pipe is all there, and its exit code is kept (0, a refusal's 2)."""
    listed = subprocess.run([sys.executable, "-m", "pipeline.cli", "teachers", "--format", "json"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert listed.returncode == 0, listed.stderr
    import json

    assert "tiny_clip" in {row["name"] for row in json.loads(listed.stdout)}  # the whole JSON
    refused = subprocess.run([sys.executable, "-m", "pipeline.cli", "teachers", "nope"],
                             capture_output=True, text=True, cwd=REPO, timeout=120)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith("Error: unknown teacher")
    entry = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["pipeline"]
    assert entry == "pipeline.cli:main"
