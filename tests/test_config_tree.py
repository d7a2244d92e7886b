"""One config tree (issue 20): every setting has one default, in its stage's typed config, and every command
reads `--params FILE` (default ./params.yaml) into its option defaults through click's default_map.

Read here without running anything: each command's effective defaults (no params file) against the stage
configs' and the stage functions' own defaults; params.yaml's sections against the stage configs; and the
options a command resolves with an explicit `--params FILE` against those it resolves from ./params.yaml.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import typer
import yaml

from pipeline.cli import app
from pipeline.cmd_distill import resolve_distill
from pipeline.cmd_extract import resolve_configs
from pipeline.params import DistillParams, ExtractParams, Params
from stages.corpus.build_manifest import build_corpus, build_manifest
from stages.corpus.config import CorpusConfig
from stages.distill.config import DistillConfig, SweepConfig
from stages.evaluate.config import EvaluateConfig, ReportConfig
from stages.evaluate.downstream import DownstreamConfig
from stages.evaluate.evaluate import evaluate_run
from stages.extract.config import ExtractConfig
from store_schema.codecs import CodecSpec
from store_schema.manifest import ViewSpec

REPO = Path(__file__).resolve().parents[1]
ROOT = typer.main.get_command(app)


def _command(path: str):
    cmd, ctx = ROOT, ROOT.make_context("pipeline", [], resilient_parsing=True)
    for name in path.split():
        cmd = cmd.get_command(ctx, name)
    return cmd


def _resolved(path: str, args: list[str] = ()) -> dict:
    """The options `pipeline PATH ARGS` would run with (parsed, defaults applied, nothing run)."""
    ctx = _command(path).make_context(path.split()[-1], list(args), resilient_parsing=True)
    return {k: v for k, v in ctx.params.items() if k != "params"}


def _field_default(cls, name):
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _signature_default(fn, name):
    return inspect.signature(fn).parameters[name].default


D, E = DistillConfig, ExtractConfig
# (command, option) -> the default it must have: the stage configs' and stage functions' own
EXPECTED = {
    ("corpus", "views"): ViewSpec().num_views, ("corpus", "view_seed"): ViewSpec().seed,
    ("corpus", "val_fraction"): _signature_default(build_manifest, "val_fraction"),
    ("corpus", "min_side"): _signature_default(build_manifest, "min_side"),
    ("corpus", "pixel_limit"): _signature_default(build_manifest, "pixel_limit"),
    ("corpus", "files_per_task"): _signature_default(build_corpus, "files_per_task"),
    ("extract", "keepbits"): str(CodecSpec().keepbits),
    ("extract", "batch_size"): [str(_field_default(E, "batch_size"))],  # per teacher: N or TEACHER=N
    **{("extract", f): _field_default(E, f) for f in ("shard_size", "workers", "cpus_per_worker",
                                                      "device", "decode_ahead", "stats_fold_every", "progress",
                                                      "fidelity_images")},
    **{("distill", f): _field_default(D, f) for f in (
        "student", "img_size", "seed", "device", "steps", "batch_size", "lr", "weight_decay", "warmup_steps",
        "summary_weight", "feature_weight", "summary_loss", "grad_clip", "num_workers", "shuffle_block",
        "loader_memory", "student_views", "log_every", "ckpt_every", "ckpt_minutes")},
    ("distill", "norm"): D.norm.value, ("distill", "runs_dir"): SweepConfig().runs_dir,
    **{("evaluate", f): _signature_default(evaluate_run, {"probe_labels": "labels_path"}.get(f, f))
       for f in ("split", "batch_size", "probe_labels", "knn_k", "knn_temperature", "knn_feature", "device")},
    **{("evaluate", f): _field_default(DownstreamConfig, f)
       for f in ("zeroshot_classes", "zeroshot_templates", "zeroshot_teacher", "seg_masks", "seg_classes",
                 "seg_templates", "seg_probe_steps")},
    ("views", "size"): [_field_default(D, "img_size")], ("views", "workers"): _field_default(E, "workers"),
    ("extract-text", "templates"): [_field_default(DownstreamConfig, "zeroshot_templates")],
    ("extract-text", "device"): _field_default(E, "device"),
    ("report", "out"): ReportConfig().out,
}


def test_every_command_default_is_its_stage_configs():
    """No params file (the tests run in an empty folder): the commands' defaults are the stages' own."""
    wrong = []
    for (command, option), want in EXPECTED.items():
        got = _resolved(command)[option]
        if isinstance(got, tuple):
            got = list(got)
        if got != want:
            wrong.append(f"pipeline {command} --{option.replace('_', '-')}: {got!r}, the stage's default is {want!r}")
    assert not wrong, "\n".join(wrong)


def test_options_without_a_default_stay_unset_without_a_params_file():
    unset = (None, ())
    assert _resolved("extract")["root"] in unset and _resolved("extract")["teacher"] in unset
    assert _resolved("distill")["teachers"] in unset and _resolved("store verify")["root"] in unset
    assert _resolved("report")["runs"] in unset  # the sweep's runs come only from a params file


def test_params_sections_default_to_the_stage_configs():
    params = Params()
    assert params.corpus == CorpusConfig() and params.evaluate == EvaluateConfig() and params.report == ReportConfig()
    for section, config in ((ExtractParams(), ExtractConfig()), (DistillParams(), DistillConfig(teachers=("t",),
                                                                                              root=Path("r"),
                                                                                              out_dir=Path("o")))):
        shared = {f.name for f in dataclasses.fields(section)} & {f.name for f in dataclasses.fields(config)}
        assert len(shared) > 5
        for name in shared:
            assert getattr(section, name) == getattr(config, name), name
    assert params.extract.keepbits == CodecSpec().keepbits
    assert (tuple(params.distill.norms), tuple(params.distill.seeds)) == (SweepConfig().norms, SweepConfig().seeds)
    assert params.distill.norms[0] == DistillConfig.norm.value and params.distill.seeds[0] == DistillConfig.seed


def _write(folder: Path, **changes: dict) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in changes.items():
        raw[section].update(values)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder / "params.yaml"


COMMANDS = ["corpus", "demo-corpus", "extract", "extract-text", "views", "store info", "store verify",
            "store fidelity", "distill", "evaluate", "report"]


@pytest.mark.parametrize("command", COMMANDS)
def test_explicit_params_resolves_as_the_params_yaml_here(tmp_path, monkeypatch, command):
    params = _write(tmp_path / "project", distill={"steps": 7, "img_size": 32}, extract={"shard_size": 5})
    args = {"evaluate": ["runs/phis-seed0"]}.get(command, [])
    monkeypatch.chdir(params.parent)
    implicit = _resolved(command, args)
    monkeypatch.chdir(tmp_path)
    explicit = _resolved(command, ["--params", str(params), *args])
    assert explicit == implicit
    assert explicit != _resolved(command, args)  # here there is no params.yaml: the stage defaults differ


def test_same_distill_and_extract_config_with_and_without_explicit_params(tmp_path, monkeypatch):
    params = _write(tmp_path / "project", distill={"steps": 7, "lr": 0.02, "seeds": [3, 4]},
                    extract={"shard_size": 5, "storage_grids": {"tiny_sam": "4x4"}})
    run = ["--sweep", "--norm", "zca", "--seed", "4"]
    monkeypatch.chdir(params.parent)
    implicit, implicit_x = resolve_distill(run), resolve_configs([])
    monkeypatch.chdir(tmp_path)
    explicit, explicit_x = resolve_distill(["--params", str(params), *run]), resolve_configs(["--params", str(params)])
    assert explicit == implicit and explicit_x == implicit_x
    assert (explicit.steps, explicit.lr, explicit.seed, explicit.out_dir) == (7, 0.02, 4, Path("runs/zca-seed4"))
    assert explicit_x["tiny_sam"].storage_grid == (4, 4) and explicit_x["tiny_sam"].shard_size == 5
    flag_wins = resolve_distill(["--params", str(params), "--steps", "9", "--run-name", "x"])
    assert flag_wins.steps == 9 and flag_wins.out_dir == Path("runs/x") and flag_wins.seed == 3
