"""Commands as typed: flags not given come from ./params.yaml (flags win, the sources are printed); without
a params.yaml the error names the missing flag and the key that would supply it. Real extraction (tiny
teacher, no Ray), real training for two steps, through typer's CliRunner in a folder holding params.yaml."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from store_schema.layout import teacher_store_path
from store_schema.teacher_store import open_teacher_store

REPO = Path(__file__).resolve().parents[1]
TEACHER = "tiny_sam"
pytest_plugins = ["tests.ray_fixture"]


def _invoke(args: list[str]) -> tuple[int, str, str]:
    res = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300", "NO_COLOR": "1"})
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res.exit_code, _clean(res.stdout), _clean(res.stderr)


def _clean(t: str) -> str:
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", re.sub(r"\x1b\[[0-9;]*m", "", t)).split())


def _write_params(folder: Path, root: Path, **sections: dict) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["store"]["root"] = str(root)
    raw["extract"].update(teachers=[TEACHER], shard_size=3, batch_size=4, workers=0, text_teachers=[])
    raw["distill"].update(img_size=32, batch_size=4, warmup_steps=1, log_every=1, ckpt_every=0, num_workers=0,
                          runs_dir="runs")
    for name, values in sections.items():
        raw[name].update(values)
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder / "params.yaml"


@pytest.mark.parametrize("args, flag, key", [
    (["extract", "--teacher", TEACHER], "--root", "store.root"),
    (["extract", "--root", "somewhere"], "--teacher", "extract.teachers"),
    (["distill", "--norm", "phis"], "--teachers", "extract.teachers"),
    (["store", "verify"], "--root", "store.root"),
    (["corpus", "--out", "x"], "SOURCE", "corpus.source"),
])
def test_without_params_yaml_the_error_names_the_flag_and_the_key(args, flag, key):
    code, out, err = _invoke(args)
    assert code == 2, (out, err)
    assert f"missing {'option' if flag.startswith('-') else 'argument'} {flag}" in err
    assert f"params.yaml sets {key}" in err and "there is no params.yaml in" in err
    assert "Traceback" not in out + err


def test_extract_and_distill_as_typed_take_the_rest_from_params_yaml(tmp_path, make_corpus, monkeypatch):
    root = make_corpus(tmp_path / "corpus", n_ok=6, num_views=1)  # 8 images, shards of 3
    work = tmp_path / "work"
    work.mkdir()
    params = _write_params(work, root)
    monkeypatch.chdir(work)

    code, out, err = _invoke(["extract", "--teacher", TEACHER, "--no-progress"])
    assert code == 0, (out, err)
    assert f"from {params}:" in err and f"--root {root} (store.root)" in err
    assert "--shard-size 3 (extract.shard_size)" in err and "--workers 0 (extract.workers)" in err
    assert "--teacher" not in err  # given on the command line: not taken from the file
    store = open_teacher_store(teacher_store_path(root, TEACHER))
    assert store.shard_size == 3 and store.completed_shards().tolist() == [0, 1, 2]

    code, out, err = _invoke(["extract", "--no-progress"])  # every teacher of extract.teachers; a no-op now
    assert code == 0, (out, err)
    assert f"--teacher {TEACHER} (extract.teachers)" in err and "skipped [0, 1, 2]" in out
    import ray

    ray_before = ray.is_initialized()
    code, out, err = _invoke(["extract", "--no-progress", "--workers", "1"])  # complete: no Ray start-up
    assert code == 0 and "skipped [0, 1, 2]" in out, (out, err)
    assert ray.is_initialized() == ray_before

    code, out, err = _invoke(["distill", "--norm", "phis", "--run-name", "typed", "--steps", "2"])
    assert code == 0, (out, err)
    assert "--teachers tiny_sam (extract.teachers)" in err and "--img-size 32 (distill.img_size)" in err
    assert "--steps" not in err  # the flag wins
    config = json.loads((work / "runs" / "typed" / "config.json").read_text())
    assert config["steps"] == 2 and config["img_size"] == 32 and config["batch_size"] == 4
    assert config["teachers"] == [TEACHER] and Path(config["root"]) == root

    code, out, err = _invoke(["store", "verify"])
    assert code == 0 and "3 ok, 0 damaged, 0 incomplete of 3 shards" in out, (out, err)


def test_flags_win_over_params_yaml(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    _write_params(work, tmp_path / "from_params")
    monkeypatch.chdir(work)
    code, out, err = _invoke(["store", "info", "--root", tmp_path / "from_flag"])
    assert code == 2 and f"under {tmp_path / 'from_flag'}" in err and "from " not in err.split("Error")[0]
    code, out, err = _invoke(["store", "info"])
    assert code == 2 and f"under {tmp_path / 'from_params'}" in err and "(store.root)" in err


def test_an_invalid_params_yaml_is_a_clean_error(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text("store: {root: x}\n")
    monkeypatch.chdir(tmp_path)
    code, out, err = _invoke(["store", "info"])
    assert code == 2 and "missing section(s)" in err and str(tmp_path / "params.yaml") in err
