"""`--teacher` (repeatable) and `--teachers` (comma list) are accepted by both `pipeline extract` and
`pipeline distill`, in either form."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.cmd_distill import resolve_config


def test_resolve_config_takes_repeated_options_and_comma_lists(tmp_path):
    for given in ("a,b,c", ["a", "b,c"], ["a", "b", "c", "a"]):
        config = resolve_config(norm="phis", student="vit_tiny_test", teachers=given, root=tmp_path, out=tmp_path,
                                run_name=None, teacher_weights=None)
        assert config.teachers == ("a", "b", "c"), given


@pytest.mark.parametrize("flags", [["--teacher", "nope_a", "--teacher", "nope_b"], ["--teachers", "nope_a,nope_b"],
                                   ["-t", "nope_a,nope_b"]])
def test_distill_takes_both_forms(tmp_path, flags):
    res = CliRunner().invoke(app, ["distill", *flags, "--root", str(tmp_path), "--out", str(tmp_path / "runs"),
                                   "--steps", "1", "--warmup-steps", "0"])
    assert res.exit_code == 2, res.output
    assert f"no teacher store at {Path(tmp_path) / 'nope_a.zarr'}" in res.output  # the first name, parsed


@pytest.mark.parametrize("flags", [["--teachers", "nope_a,tiny_sam"], ["--teacher", "nope_a", "--teacher", "tiny_sam"]])
def test_extract_takes_both_forms(tmp_path, flags):
    res = CliRunner().invoke(app, ["extract", *flags, "--root", str(tmp_path), "--no-ray"])
    assert res.exit_code == 2 and "unknown teacher 'nope_a'; valid teachers:" in res.output, res.output
