"""`pipeline demo [--params PRESET]`: dvc.yaml's stages, in dvc.yaml's order, in one process.

dvc.yaml is the one statement of the pipeline's order (demo-corpus → corpus → extract (each teacher once
into the store) → extract_text (CLIP teachers) → views → distill (one run per normalization variant and
seed, PHI-S arXiv 2410.01680) → evaluate → report); `stages/orchestrate/dvc_stages.py` expands it as `dvc
repro` does and this command runs each stage's command line, with `--params PRESET` for the file dvc.yaml
names. Every stage is resumable: complete shards are skipped, finished runs with the same config are
reused, interrupted runs resume from their checkpoint. One difference from `dvc repro`: a run that cannot be
resumed with the preset's config is refused (delete it or change distill.runs_dir), never replaced, since no
DVC cache keeps the old run (the distill stage's `--replace-conflicting` is left out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.errors import PipelineCommand, command_line

DVC_YAML = Path("dvc.yaml")
NOT_WITHOUT_DVC = ("--replace-conflicting",)  # flags only dvc repro may pass (its cache keeps what they replace)


def _dvc_yaml(given: Path | None) -> Path:
    """The dvc.yaml to run: the one given, ./dvc.yaml, or the source checkout's."""
    for path in (given, DVC_YAML, Path(__file__).resolve().parents[1] / DVC_YAML):
        if path is not None and path.is_file():
            return path
    raise FileNotFoundError(f"{given or DVC_YAML} not found: `pipeline demo` runs dvc.yaml's stages; run it in the "
                            "project folder or give --dvc-yaml")


def _argv(argv: list[str], params: Path) -> list[str]:
    """A stage's command line as this process runs it: `--params` set to the preset, `pipeline` dropped."""
    out = []
    for i, arg in enumerate(argv[1:], start=1):
        if arg in NOT_WITHOUT_DVC or argv[i - 1] == "--params":
            continue
        out += [arg, str(params)] if arg == "--params" else [arg]
    return out


def demo_cmd(
    ctx: typer.Context,
    params: Annotated[Path, typer.Option(help="params.yaml to run (see configs/ for presets).")] = Path("params.yaml"),
    dvc_yaml: Annotated[Optional[Path], typer.Option(help="The pipeline to run (default: ./dvc.yaml, else the "
                                                          "source checkout's).")] = None,
) -> None:
    """Run the whole offline demo (corpus, extract, distill sweep, evaluate, report) from PARAMS: the stages
    of dvc.yaml, in its order."""
    from dataclasses import asdict

    from pipeline.params import read_params
    from stages.orchestrate.dvc_stages import stage_commands
    from stages.orchestrate.ray_session import ray_session

    p = read_params(params)
    commands = stage_commands(_dvc_yaml(dvc_yaml), asdict(p))  # keys the preset leaves out: their defaults
    root = ctx.find_root().command
    with ray_session(p.extract.ray_address, needed=p.extract.workers > 0, connect_timeout=p.extract.ray_timeout):  # one Ray for every stage
        for stage in commands:
            argv = _argv(stage.argv, params)
            typer.echo(f"stage {stage.name}: pipeline {' '.join(argv)}")
            code = root.main(args=argv, prog_name="pipeline", standalone_mode=False)
            if isinstance(code, int) and code > 128:  # a signal: the stage said what it kept
                typer.echo(f"stage {stage.name} interrupted; `{command_line()}` resumes the demo there", err=True)
                raise typer.Exit(code)
            if code == 2:  # a user's mistake: the stage's one `Error:` line (what, where, how to fix) is the last word
                raise typer.Exit(code)
            if isinstance(code, int) and code != 0:
                typer.echo(f"Error: stage {stage.name} failed (exit {code}); fix it and run `pipeline demo` again "
                           "(finished work is kept)", err=True)
                raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add `demo` to the pipeline CLI."""
    app.command("demo", cls=PipelineCommand)(demo_cmd)
