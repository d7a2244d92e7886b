"""dvc.yaml is the one statement of the pipeline's order (issue 20): it calls only ordinary commands (each
in the README's command table, each with `--params params.yaml`), and `pipeline demo` runs exactly its
stages, in its order, expanded as `dvc repro` expands them (stages/orchestrate/dvc_stages.py)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import typer

from pipeline.cli import app
from pipeline.cmd_demo import _argv
from pipeline.params import read_params
from stages.orchestrate.dvc_stages import stage_commands

REPO = Path(__file__).resolve().parents[1]


def _stages():
    return stage_commands(REPO / "dvc.yaml", asdict(read_params(REPO / "params.yaml")))


def test_stages_expand_in_dvc_order():
    p = read_params(REPO / "params.yaml")
    runs = [f"{n}-{s}" for n, s, _ in p.sweep_runs()]
    assert [s.name for s in _stages()] == (
        ["demo_corpus", "corpus"] + [f"extract@{t}" for t in p.extract.teachers]
        + [f"extract_text@{t}" for t in p.extract.text_teachers] + ["views"]
        + [f"distill@{r}" for r in runs] + [f"bench_corpus@{d}" for d in p.evaluate.bench_datasets]
        + [f"bench_extract@{d}-{t}" for d in p.evaluate.bench_datasets for t in p.extract.teachers]
        + [f"bench_text@{d}-{t}" for d in p.evaluate.bench_text_datasets for t in p.extract.text_teachers]
        + [f"evaluate@{r}" for r in runs] + ["report"])
    distill = next(s for s in _stages() if s.name == "distill@zca-1")
    assert distill.argv[distill.argv.index("--norm") + 1] == "zca" and distill.argv[distill.argv.index("--seed") + 1] == "1"


def test_foreach_stages_expand_with_key_and_item():
    """dvc.yaml's foreach over a mapping (the evaluation datasets: name -> layout), as DVC expands it."""
    corpus = next(s for s in _stages() if s.name == "bench_corpus@shapes_ade")
    assert corpus.argv[corpus.argv.index("--layout") + 1] == "ade20k"
    assert corpus.argv[corpus.argv.index("--out") + 1] == "data/bench/shapes_ade"
    assert "data/demo_corpus/bench/shapes_ade" in corpus.argv


def test_dvc_yaml_calls_only_ordinary_commands_with_params():
    group = typer.main.get_command(app)
    registered = set(group.list_commands(group.make_context("pipeline", [], resilient_parsing=True)))
    readme = (REPO / "README.md").read_text()
    for stage in _stages():
        assert stage.argv[0] == "pipeline" and stage.argv[1] in registered, stage
        assert f"`pipeline {stage.argv[1]}" in readme, f"{stage.argv[1]} is not a documented command"
        assert stage.argv[stage.argv.index("--params") + 1] == "params.yaml", stage
    assert not registered & {"extract-stage", "extract-text-stage", "distill-variant"}


@pytest.mark.parametrize("preset", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_demo_runs_dvc_yamls_commands_with_the_preset(preset):
    for stage in stage_commands(REPO / "dvc.yaml", asdict(read_params(preset))):
        argv = _argv(stage.argv, preset)
        assert argv[argv.index("--params") + 1] == str(preset) and "params.yaml" not in argv
        assert "--replace-conflicting" not in argv  # without DVC's cache a run is refused, never replaced
        assert [a for a in stage.argv[1:] if a not in ("params.yaml", "--replace-conflicting")] == \
               [a for a in argv if a != str(preset)]


def test_a_dvc_yaml_with_the_summary_loss_axis_trains_and_evaluates_the_same_runs(tmp_path):
    """docs/SWEEP.md: a copy of dvc.yaml whose distill / evaluate matrices add the summary loss runs every
    norm x seed x loss of a list-valued distill.summary_loss (`pipeline demo --dvc-yaml FILE`): each distill
    command trains into the run path its evaluate command scores; the stock dvc.yaml refuses such a list."""
    import yaml

    from pipeline.cmd_distill import resolve_distill

    text = (REPO / "dvc.yaml").read_text()
    matrix = "      norm: ${distill.norms}\n      seed: ${distill.seeds}\n"
    assert text.count(matrix) == 2
    copy = (text.replace(matrix, matrix + "      summary_loss: ${distill.summary_loss}\n")
            .replace("--seed ${item.seed}", "--seed ${item.seed} --summary-loss ${item.summary_loss}")
            .replace("${item.norm}-seed${item.seed}", "${item.norm}-${item.summary_loss}-seed${item.seed}"))
    (tmp_path / "dvc.yaml").write_text(copy)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["distill"]["summary_loss"] = ["cosine", "variant"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    p = read_params(tmp_path / "params.yaml")
    stages = stage_commands(tmp_path / "dvc.yaml", asdict(p))
    trained = [resolve_distill(_argv(s.argv, tmp_path / "params.yaml")[1:]) for s in stages
               if s.name.startswith("distill@")]
    evaluated = [Path(next(a for a in s.argv if a.startswith(str(p.distill.runs_dir)))) for s in stages
                 if s.name.startswith("evaluate@")]
    assert [c.out_dir for c in trained] == evaluated == [p.run_dir(*r) for r in p.sweep_runs()]
    assert {(c.norm.value, c.seed, c.summary_loss) for c in trained} == set(p.sweep_runs())
    stock = next(s for s in stage_commands(REPO / "dvc.yaml", asdict(p)) if s.name.startswith("distill@"))
    with pytest.raises(ValueError, match="give --summary-loss"):
        resolve_distill(_argv(stock.argv, tmp_path / "params.yaml")[1:])
