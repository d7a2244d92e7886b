"""Stage two on stores extracted from the REAL tiny teachers (AM-RADIO arXiv 2312.06709, PHI-S arXiv
2410.01680): tiny_clip and tiny_dinov2 (summary + patches) and tiny_sam (patches only), extracted
in-process by stages.extract.driver.run_extract over a small generated corpus. A short phis run must reduce every
teacher's summary and patch loss; the automatic student K gives one CLS token per summary teacher; and
`pipeline distill --sweep` (dvc.yaml's distill stage) resumes / extends a run from params.yaml and replaces
one trained with another config.
"""

from __future__ import annotations

import numpy as np

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from stages.extract.driver import ExtractConfig, run_extract
from stages.distill.config import DistillConfig
from stages.distill.run import load_run
from stages.distill.train import train

torch.set_num_threads(1)
TEACHERS = ("tiny_clip", "tiny_sam", "tiny_dinov2")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def teacher_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.ray_fixture import build_corpus  # at run time: importing at collection would pre-empt the
    # assertion rewriting of the modules that load tests.ray_fixture as a pytest plugin

    root = build_corpus(tmp_path_factory.mktemp("real_teachers"), n_ok=12, num_views=2)
    for name in TEACHERS:
        run_extract(root, name, ExtractConfig(workers=0, batch_size=8, shard_size=4, progress=False))
    return root


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_phis_reduces_every_real_teacher_loss(teacher_root: Path, tmp_path: Path) -> None:
    config = DistillConfig(student="vit_tiny_test", teachers=TEACHERS, root=teacher_root, out_dir=tmp_path / "run",
                           img_size=64, steps=30, batch_size=4, lr=3e-3, warmup_steps=3, log_every=1, seed=0,
                           weight_decay=0.0)
    rows = _metrics(train(config))
    keys = sorted(k for k in rows[0] if k.startswith("loss/"))
    assert keys == ["loss/tiny_clip/patches", "loss/tiny_clip/summary", "loss/tiny_dinov2/patches",
                    "loss/tiny_dinov2/summary", "loss/tiny_sam/patches"]
    for k in keys:
        first = sum(r[k] for r in rows[:4]) / 4
        last = sum(r[k] for r in rows[-4:]) / 4
        assert last < 0.6 * first, f"{k}: first {first:.4f} last {last:.4f}"
    _, student, heads, _ = load_run(config.out_dir)
    assert student.num_summary_tokens == 2  # tiny_clip and tiny_dinov2 have a summary, tiny_sam none
    assert heads.summary_token == {"tiny_clip": 0, "tiny_dinov2": 1}


def _write_params(path: Path, root: Path, runs: Path, **distill: object) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["store"]["root"] = str(root)
    raw["extract"]["teachers"] = list(TEACHERS)
    raw["distill"].update(runs_dir=str(runs), norms=["phis"], img_size=32, batch_size=4, warmup_steps=1,
                          log_every=1, ckpt_every=2, **distill)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_distill_variant_resumes_and_retrains_on_other_configs_and_steps(teacher_root: Path, tmp_path: Path) -> None:
    from pipeline.cli import app
    from pipeline.cmd_distill import resolve_distill
    from pipeline.params import read_params
    from stages.distill.sweep import train_variant

    runs, params = tmp_path / "runs", tmp_path / "params.yaml"
    run = runs / "phis-seed0"

    def variant() -> str:
        res = CliRunner().invoke(app, ["distill", "--sweep", "--replace-conflicting", "--norm", "phis", "--params",
                                       str(params)])
        said = "\n".join(ln for ln in res.output.splitlines() if not ln.startswith("student views: "))  # stderr note
        return f"{res.exit_code} {' '.join(said.replace('│', ' ').split())}"

    _write_params(params, teacher_root, runs, steps=3)
    assert variant().endswith("(trained)")
    assert variant().endswith("(reused)")
    first_id = json.loads((run / "config.json").read_text())["run_id"]
    _write_params(params, teacher_root, runs, steps=5)  # what a `dvc repro` after raising distill.steps runs
    out = variant()  # a 5-step run is trained on a 5-step schedule: a new run, not a 3-step one extended
    assert "steps 3 -> 5" in out and out.endswith("(retrained)"), out
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 5
    assert [r["step"] for r in _metrics(run)] == [1, 2, 3, 4, 5]
    lrs = [r["lr"] for r in _metrics(run)]
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:])), lrs  # one warmup-cosine: no jump at step 4
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["run_id"] != first_id and resolved["extensions"] == []
    _write_params(params, teacher_root, runs, steps=5, lr=0.01)  # a changed distill.* param under DVC
    out = variant()
    assert out.startswith("0 ") and "lr 0.001 -> 0.01" in out and out.endswith("(retrained)"), out
    assert json.loads((run / "config.json").read_text())["lr"] == 0.01
    assert [r["step"] for r in _metrics(run)] == [1, 2, 3, 4, 5]  # a new run, not appended
    _write_params(params, teacher_root, runs, steps=4, lr=0.01)  # fewer steps cannot be resumed
    out = variant()
    assert "steps 5 -> 4" in out and out.endswith("(retrained)"), out
    # `pipeline demo` (no DVC cache behind it) refuses instead of replacing
    read_params(_write_params(params, teacher_root, runs, steps=4, lr=0.02))
    with pytest.raises(ValueError, match=r"cannot be resumed with this config: lr 0.01 -> 0.02"):
        train_variant(resolve_distill(["--params", str(params), "--sweep", "--norm", "phis", "--seed", "0"]),
                      replace_conflicting=False)


def test_a_run_is_not_resumed_on_stores_whose_targets_changed(teacher_root: Path, tmp_path: Path) -> None:
    from pipeline.cmd_distill import resolve_distill
    from stages.distill.sweep import train_variant
    from store_schema.layout import teacher_store_path
    from store_schema.teacher_store import open_teacher_store

    base = tmp_path / "copy"
    shutil.copytree(teacher_root.parent, base)  # images + store root, as build_corpus laid them out
    root, runs = base / teacher_root.name, tmp_path / "runs"
    params = _write_params(tmp_path / "params.yaml", root, runs, steps=3)
    config = resolve_distill(["--params", str(params), "--sweep", "--norm", "phis", "--seed", "0"])
    assert train_variant(config, replace_conflicting=True) == "trained"
    assert train_variant(config, replace_conflicting=True) == "reused"
    store = open_teacher_store(teacher_store_path(root, "tiny_sam"), mode="r+")  # as if re-extracted differently
    from store_schema import layout
    _, slot = store.ledger.folded()  # the folded totals of the train split: shift their mean
    mean = store.group[layout.stats_array("patches", "mean", "total")]
    mean[slot, 0] = np.asarray(mean[slot, 0]) + 1.0
    with pytest.raises(ValueError, match=r"the stored targets of \['tiny_sam'\] changed"):
        train_variant(config, replace_conflicting=False)
    assert train_variant(config, replace_conflicting=True) == "retrained"
    _, _, _, normalizers = load_run(config.out_dir)  # the new run uses the normalizer fitted on the new stats
    assert normalizers["tiny_sam"]["patches"].stats_hash == store.stats("patches", split="train").content_hash()
