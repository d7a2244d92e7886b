"""params.yaml reader: the repository's file parses, types are enforced, unknown keys are clear errors."""

from pathlib import Path

import pytest
import yaml

from pipeline.params import Params, parse_params, read_params

REPO = Path(__file__).resolve().parents[1]


def _raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repository_params_yaml_parses_to_typed_sections():
    p = read_params(REPO / "params.yaml")
    assert isinstance(p, Params)
    assert p.store.root == Path("data/store") and isinstance(p.corpus.source, Path)
    assert p.extract.teachers == ["tiny_dinov2", "tiny_clip", "tiny_sam"]
    assert {"phis", "mse", "standardize", "zca"} <= set(p.distill.norms)
    assert isinstance(p.distill.lr, float) and p.evaluate.knn_temperature == pytest.approx(0.07)
    assert p.run_dir("phis", 1) == p.distill.runs_dir / "phis-seed1"
    assert len(p.distill.seeds) >= 2 and p.distill.summary_loss == "cosine" and p.distill.grad_clip == 0.0
    assert p.sweep_runs() == [(n, s, "cosine") for n in p.distill.norms for s in p.distill.seeds]


def test_int_is_accepted_for_float_and_missing_keys_take_defaults():
    raw = _raw()
    raw["distill"]["lr"] = 1
    del raw["distill"]["seeds"]
    p = parse_params(raw)
    assert p.distill.lr == 1.0 and isinstance(p.distill.lr, float) and p.distill.seeds == [0, 1]


def test_yaml_1_1_exponent_strings_are_read_as_floats():
    import yaml

    raw = _raw()
    raw["distill"]["lr"] = yaml.safe_load("lr: 1e-3")["lr"]  # PyYAML (YAML 1.1) gives the string '1e-3'
    assert raw["distill"]["lr"] == "1e-3"
    assert parse_params(raw).distill.lr == 1e-3


@pytest.mark.parametrize("section,key,value,match", [
    ("distill", "stepz", 10, r"unknown key\(s\) \['stepz'\] in params section 'distill'; valid keys: \[.*'steps'"),
    ("distill", "steps", "100", r"distill.steps must be int, got str"),
    ("distill", "steps", True, r"distill.steps must be int, got bool"),
    ("distill", "lr", "fast", r"distill.lr must be a number"),
    ("extract", "teachers", "tiny_sam", r"extract.teachers must be a list"),
    ("extract", "teachers", ["tiny_sam", 3], r"extract.teachers\[1\] must be str"),
    ("distill", "norms", ["phis", "phi-s"], r"unknown distill.norms \['phi-s'\]; valid variants: \[.*'phis'"),
    ("distill", "norms", ["phis", "phis"], r"without repeats"),
    ("distill", "steps", 0, r"distill.steps must be >= 1"),
    ("evaluate", "split", "test", r"evaluate.split must be 'train' or 'val'"),
    ("distill", "ckpt_every", -1, r"distill.ckpt_every must be >= 0"),
    ("distill", "num_workers", -2, r"distill.num_workers must be >= 0"),
    ("distill", "num_summary_tokens", 0, r"distill.num_summary_tokens must be >= 1 or null"),
    ("distill", "num_summary_tokens", "auto", r"distill.num_summary_tokens must be int"),
    ("distill", "seeds", [0, 0], r"distill.seeds must be a non-empty list without repeats"),
    ("distill", "seeds", [], r"distill.seeds must be a non-empty list without repeats"),
    ("distill", "seeds", [-1], r"distill.seeds must be integers >= 0"),
    ("distill", "summary_loss", "mse", r"distill.summary_loss must be one of \['cosine', 'variant'\]"),
    ("distill", "grad_clip", -1.0, r"distill.grad_clip must be >= 0"),
])
def test_bad_values_raise_clear_errors(section, key, value, match):
    raw = _raw()
    raw[section][key] = value
    with pytest.raises(ValueError, match=match):
        parse_params(raw, source="params.yaml")


def test_unknown_and_missing_sections():
    raw = _raw()
    raw["distil"] = {}
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['distil'\]; valid sections"):
        parse_params(raw)
    raw = _raw()
    del raw["report"]
    with pytest.raises(ValueError, match=r"missing section\(s\) \['report'\]"):
        parse_params(raw)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no params file"):
        read_params(tmp_path / "params.yaml")


def test_unknown_teacher_and_student_names_list_the_valid_ones():
    raw = _raw()
    raw["extract"]["teachers"] = ["tiny_dinov2", "tiny_dino"]
    with pytest.raises(ValueError, match=r"unknown extract.teachers \['tiny_dino'\]; valid teachers: \[.*'tiny_sam'"):
        parse_params(raw)
    raw = _raw()
    raw["distill"]["student"] = "vit_tiny"
    with pytest.raises(ValueError, match=r"distill.student: unknown student 'vit_tiny'; valid: \[.*'vit_tiny_test'"):
        parse_params(raw)


@pytest.mark.parametrize("preset", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_parses(preset):
    read_params(preset)


def test_demo_preset_equals_params_yaml():
    assert read_params(REPO / "configs" / "demo.yaml") == read_params(REPO / "params.yaml")
    assert (REPO / "configs" / "demo.yaml").read_text() == (REPO / "params.yaml").read_text()


@pytest.mark.parametrize("preset", [REPO / "params.yaml", *sorted((REPO / "configs").glob("*.yaml"))],
                         ids=lambda p: p.name)
def test_every_preset_spells_the_resume_keys(preset):
    """No preset may leave ckpt_every / num_workers / num_summary_tokens to a silent default."""
    assert {"ckpt_every", "num_workers", "num_summary_tokens"} <= set(yaml.safe_load(preset.read_text())["distill"])


def test_dvc_distill_stage_persists_what_a_resume_needs():
    """DVC removes a stage's outputs before running it unless `persist: true` (DVC 3.x)."""
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["distill"]
    outs = {next(iter(o)).rsplit("/", 1)[-1]: o[next(iter(o))] for o in stage["outs"] + stage.get("plots", [])
            if isinstance(o, dict)}
    for name in ("checkpoint.pt", "config.json", "metrics.jsonl"):
        assert outs[name].get("persist") is True, name
    assert "distill.num_summary_tokens" in stage["params"]


def test_distill_variant_config_resolved_from_params():
    """What `pipeline distill --sweep` (dvc.yaml, `pipeline demo`) trains: every field comes from params.yaml."""
    from pipeline.cmd_distill import resolve_distill

    p = read_params(REPO / "params.yaml")
    c = resolve_distill(["--params", str(REPO / "params.yaml"), "--sweep", "--norm", "zca", "--seed", "1"])
    assert c.norm.value == "zca" and c.out_dir == p.distill.runs_dir / "zca-seed1" and c.root == p.store.root
    assert c.teachers == tuple(p.extract.teachers) and c.student == p.distill.student
    assert (c.steps, c.batch_size, c.img_size, c.lr, c.seed) == (p.distill.steps, p.distill.batch_size,
                                                                 p.distill.img_size, p.distill.lr, 1)
    assert (c.summary_loss, c.grad_clip) == (p.distill.summary_loss, p.distill.grad_clip)
    assert (c.ckpt_every, c.num_workers, c.num_summary_tokens) == (p.distill.ckpt_every, p.distill.num_workers,
                                                                   p.distill.num_summary_tokens)
    assert 0 < c.ckpt_every < c.steps and c.num_summary_tokens is None  # the demo checkpoints mid-run


def test_summary_loss_list_is_a_sweep_axis(tmp_path):
    """distill.summary_loss as a list: every norm and seed once per summary loss, runs named with it
    (`pipeline distill --sweep --summary-loss L`); one loss (a plain string or a one-item list) keeps
    <norm>-seed<seed>; an unknown or repeated loss is refused."""
    from pipeline.cmd_distill import resolve_distill

    raw = _raw()
    raw["distill"]["summary_loss"] = ["cosine", "variant"]
    p = parse_params(raw)
    assert p.summary_losses == ["cosine", "variant"]
    assert len(p.sweep_runs()) == 2 * len(p.distill.norms) * len(p.distill.seeds)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    sweep = ["--params", str(params), "--sweep", "--norm", "zca", "--seed", "1"]
    c = resolve_distill([*sweep, "--summary-loss", "variant"])
    assert c.summary_loss == "variant" and c.out_dir == p.distill.runs_dir / "zca-variant-seed1"
    assert resolve_distill([*sweep, "--summary-loss", "cosine"]).out_dir == p.distill.runs_dir / "zca-cosine-seed1"
    # without --sweep the default is the list's first; a sweep run must say which loss it is
    assert resolve_distill(["--params", str(params), "--norm", "zca"]).summary_loss == "cosine"
    with pytest.raises(ValueError, match=r"distill.summary_loss lists \['cosine', 'variant'\]: give --summary-loss"):
        resolve_distill(sweep)
    with pytest.raises(ValueError, match="not in distill.summary_loss"):
        p.run_dir("zca", 1, "mse")
    for bad in (["cosine", "cosine"], ["cos"], []):
        raw["distill"]["summary_loss"] = bad
        with pytest.raises(ValueError, match="distill.summary_loss must be one of"):
            parse_params(raw)
    for one in ("variant", ["variant"]):
        raw["distill"]["summary_loss"] = one
        assert parse_params(raw).run_dir("zca", 1) == parse_params(raw).distill.runs_dir / "zca-seed1"
        params.write_text(yaml.safe_dump(raw))
        c = resolve_distill(["--params", str(params), "--sweep", "--norm", "zca", "--seed", "1"])
        assert c.summary_loss == "variant" and c.out_dir == p.distill.runs_dir / "zca-seed1"


def test_num_summary_tokens_is_checked_against_the_student():
    raw = _raw()
    raw["distill"].update(student="eradio_tiny_test", num_summary_tokens=2)
    with pytest.raises(ValueError, match="distill.num_summary_tokens 2 exceeds what student 'eradio_tiny_test'"):
        parse_params(raw)
    raw["distill"]["num_summary_tokens"] = None
    assert parse_params(raw).distill.num_summary_tokens is None


def test_distill_variant_cli_refuses_a_norm_outside_the_sweep():
    from typer.testing import CliRunner

    from pipeline.cli import app

    res = CliRunner().invoke(app, ["distill", "--sweep", "--norm", "hca", "--params", str(REPO / "params.yaml")])
    assert res.exit_code == 2 and "not in distill.norms" in " ".join(res.output.replace("│", " ").split())
    res = CliRunner().invoke(app, ["distill", "--sweep", "--norm", "phis", "--seed", "7", "--params",
                                   str(REPO / "params.yaml")])
    assert res.exit_code == 2 and "not in distill.seeds" in " ".join(res.output.replace("│", " ").split())
