"""A teacher at two resolutions, trained in two resolution partitions, evaluated per resolution (AM-RADIO
arXiv 2312.06709; RADIOv2.5 arXiv 2412.07679), through the CLI: extract tiny_sam and tiny_sam@256 (real Zarr,
in process), `store info` / `teachers` say the resolution, render the student views at both sides, distill
with `--partition`, evaluate: per-resolution metrics and the cross-resolution consistency."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.cmd_distill import resolve_distill
from pipeline.cmd_extract import resolve_configs
from pipeline.cmd_views import register as register_views
from pipeline.defaults import parse_only
from pipeline.params import read_params
from stages.teachers.registry import build_teacher, get_teacher_spec
from store_schema.layout import split_store_key, store_key, teacher_store_path
from store_schema.teacher_store import open_teacher_store

pytest_plugins = ["tests.ray_fixture"]


def invoke(args: list) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"pipeline {' '.join(map(str, args))} failed:\n{result.output}\n{result.exception!r}"
    return result.output


def _app(register) -> typer.Typer:
    app_ = typer.Typer()
    register(app_)
    return app_


def test_store_keys() -> None:
    assert store_key("tiny_sam") == "tiny_sam" and store_key("tiny_sam", 256) == "tiny_sam@256"
    assert split_store_key("sam_h@512") == ("sam_h", 512) and split_store_key("sam_h") == ("sam_h", None)
    for bad in ("sam_h@", "sam_h@0512", "sam_h@x"):
        try:
            split_store_key(bad)
        except ValueError as e:
            assert "input side in pixels" in str(e)
        else:
            raise AssertionError(bad)


def test_random_teacher_at_another_resolution_is_the_same_network() -> None:
    """tiny_dinov2@224 is tiny_dinov2's weights with the position embedding resampled (not a new draw)."""
    base, high = build_teacher(get_teacher_spec("tiny_dinov2")), build_teacher(get_teacher_spec("tiny_dinov2@224"))
    a, b = base.state_dict(), high.state_dict()
    same = [k for k in a if a[k].shape == b[k].shape]
    assert all(torch.equal(a[k], b[k]) for k in same) and len(same) == len(a) - 1
    assert dataclasses.replace(get_teacher_spec("tiny_sam@256"), resolution=128) == get_teacher_spec("tiny_sam")


def test_two_resolutions_two_partitions_evaluated_per_resolution(tmp_path, make_corpus) -> None:
    images = make_corpus(tmp_path / "src", n_ok=10, num_views=2).parent / "images"
    root = tmp_path / "store"
    invoke(["corpus", images, "--out", root, "--views", "2", "--val-fraction", "0.3"])
    receipts = tmp_path / "receipts"
    common = ["--root", root, "--no-ray", "--shard-size", "4", "--batch-size", "8", "--no-progress"]
    assert "extract tiny_clip:" in invoke(["extract", "--teacher", "tiny_clip", *common,
                                           "--receipt", receipts / "extract_tiny_clip.json"])
    # one call writes tiny_sam's store and tiny_sam@256's, each receipt under the name dvc.yaml's stages read
    out = invoke(["extract", "--teacher", "tiny_sam", "--resolution", "256", *common,
                  "--receipt", receipts / "extract_tiny_sam.json"])
    assert "extract tiny_sam:" in out and "extract tiny_sam@256:" in out
    assert sorted(p.name for p in receipts.iterdir()) == ["extract_tiny_clip.json", "extract_tiny_sam.json",
                                                          "extract_tiny_sam@256.json"]
    before = (receipts / "extract_tiny_sam@256.json").read_bytes()
    invoke(["extract", "--teacher", "tiny_sam@256", *common, "--receipt", tmp_path / "again.json"])  # alone: re-read
    assert (tmp_path / "again.json").read_bytes() == before
    high = open_teacher_store(teacher_store_path(root, "tiny_sam@256"))
    assert high.key == "tiny_sam@256" and high.grid == (16, 16) and high.spec.resolution == 256
    assert high.fingerprint()["teacher_spec"]["resolution"] == 256
    assert json.loads((tmp_path / "receipts" / "extract_tiny_sam@256.json").read_text())["teacher"] == "tiny_sam@256"
    low = open_teacher_store(teacher_store_path(root, "tiny_sam"))
    assert low.grid == (8, 8) and low.stats("patches").content_hash() != high.stats("patches").content_hash()
    info = invoke(["store", "info", "--root", root])
    assert "tiny_sam@256  (" in info and "teacher input 256 px; stored grid 16x16" in info
    assert "teacher input 128 px; stored grid 8x8" in info
    teachers = invoke(["teachers", "tiny_sam@256", "--format", "json"])
    assert json.loads(teachers)[0] == {**json.loads(teachers)[0], "name": "tiny_sam@256", "resolution": 256,
                                       "grid": "16x16"}

    invoke(["views", "--root", root, "--size", "64", "--size", "128", "--no-ray"])
    runs = tmp_path / "runs"
    invoke(["distill", "--norm", "phis", "--root", root, "--out", runs, "--steps", "3", "--warmup-steps", "1",
            "--log-every", "1", "--partition", "64:4:tiny_clip,tiny_sam", "--partition", "128:2:tiny_sam@256",
            "--student-views", "store", "--receipts", receipts])
    run = runs / "phis"
    saved = json.loads((run / "config.json").read_text())
    assert saved["partitions"] == [{"img_size": 64, "batch_size": 4, "teachers": ["tiny_clip", "tiny_sam"]},
                                   {"img_size": 128, "batch_size": 2, "teachers": ["tiny_sam@256"]}]
    assert saved["stores"]["tiny_sam@256"]["teacher_spec"]["resolution"] == 256
    out = invoke(["evaluate", run])
    assert "at 96 px (not trained)" in out and "consistency 64->96 px" in out
    res = json.loads((run / "eval" / "metrics.json").read_text())["resolutions"]
    assert res["sizes"] == [64, 96, 128] and res["trained"] == [64, 128] and res["untrained"] == [96]
    assert set(res["per_size"]["96"]["teachers"]) == {"tiny_clip", "tiny_sam", "tiny_sam@256"}
    cons = res["consistency"]["64->96"]["tiny_sam@256"]["patches"]
    assert -1.0 <= cons <= 1.0 and np.isfinite(cons)
    assert res["consistency"]["96->128"]["tiny_clip"].keys() == {"patches", "summary"}
    report = tmp_path / "report"
    invoke(["report", run, "--out", report])
    md = (report / "report.md").read_text()
    assert "## Student recipe" in md and "64:4:tiny_clip,tiny_sam; 128:2:tiny_sam@256" in md and "| 64->96 |" in md


def _params(tmp_path, monkeypatch, **distill_and_extract) -> None:
    """configs/multires_demo.yaml as ./params.yaml, with `extract.<k>` / `distill.<k>` replaced."""
    params = yaml.safe_load((Path(__file__).parents[1] / "configs" / "multires_demo.yaml").read_text())
    for dotted, value in distill_and_extract.items():
        section, key = dotted.split("__")
        params[section][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)


def test_the_preset_resolves_into_stores_views_and_partitions(tmp_path, monkeypatch) -> None:
    """What dvc.yaml's stages run from configs/multires_demo.yaml: extract tiny_sam also writes tiny_sam@256,
    views renders every partition's side, distill trains the partitions (their stores are the teachers)."""
    _params(tmp_path, monkeypatch)
    assert list(resolve_configs(["--teacher", "tiny_sam"])) == ["tiny_sam", "tiny_sam@256"]
    assert list(resolve_configs(["--teacher", "tiny_clip"])) == ["tiny_clip"]
    assert parse_only(_app(register_views), "views", []).params["size"] == [64, 128]
    config = resolve_distill(["--norm", "phis"])
    assert [p.img_size for p in config.partitions] == [64, 128]
    assert config.teachers == ("tiny_dinov2", "tiny_clip", "tiny_sam", "tiny_sam@256")
    _params(tmp_path, monkeypatch, distill__partitions=[], distill__img_size=96)
    assert parse_only(_app(register_views), "views", []).params["size"] == [96]  # one partition: distill.img_size


@pytest.mark.parametrize(("args", "message"), [
    (["--resolution", "abc"], "give input sides in pixels"),
    (["--resolution", "typo=256"], "which this call does not extract"),
    (["--resolution", "128"], "at its own input side 128 px"),
    (["--resolution", "100"], "a multiple of its patch size"),
])
def test_resolution_flag_errors_name_the_fix(tmp_path, monkeypatch, args, message) -> None:
    monkeypatch.chdir(tmp_path)  # no params.yaml
    with pytest.raises(ValueError, match=message):
        resolve_configs(["--root", "r", "--teacher", "tiny_sam", *args])
    with pytest.raises(ValueError, match="already is one at another side"):
        resolve_configs(["--root", "r", "--teacher", "tiny_sam@256", "--resolution", "512"])
    assert list(resolve_configs(["--root", "r", "--teacher", "tiny_sam,tiny_clip", "--resolution", "tiny_sam=256,512"])) \
        == ["tiny_sam", "tiny_clip", "tiny_sam@256", "tiny_sam@512"]


@pytest.mark.parametrize(("changes", "message"), [
    ({"distill__partitions": ["64:8:tiny_clip", "128:4:tiny_sam@512"]}, r"names stores \['tiny_sam@512'\] that are not"),
    ({"extract__resolutions": {"dinov2_s": [448]}}, "not in extract.teachers"),
    ({"extract__resolutions": {"tiny_sam": [128]}, "distill__partitions": []}, "at its own input side"),
    ({"distill__partitions": ["64:tiny_clip"]}, r"distill.partitions\[0\]: .*SIZE:BATCH:STORES"),
    ({"distill__cpe_grid": -1}, "distill.cpe_grid must be >= 0"),
    ({"distill__teacher_batches": "half"}, r"distill.teacher_batches must be one of \['shared', 'split'\]"),
])
def test_params_partitions_must_name_extracted_stores(tmp_path, monkeypatch, changes, message) -> None:
    _params(tmp_path, monkeypatch, **changes)
    with pytest.raises(ValueError, match=message):
        read_params(tmp_path / "params.yaml")


def test_a_padded_teacher_in_two_partitions_with_split_batches(tmp_path, make_corpus, monkeypatch) -> None:
    """SAM's own resize rule (longest side + padding, stages/teachers/resize.py) in the AM-RADIO setting: the
    padded teacher's stores in two partitions, per-teacher batch rows. The partition path aligns and masks its
    predictions with the rows' frames exactly as a plain forward does, and the run trains and evaluates."""
    from stages.distill.config import DistillConfig
    from stages.distill.train import Distiller, PartInput, train
    from stages.evaluate.evaluate import evaluate_run
    from stages.extract.config import ExtractConfig
    from stages.extract.driver import run_extract
    from stages.students.build import build_models
    from stages.teachers import registry
    from stages.teachers.resize import ResizeRule, batch_frames

    pad = dataclasses.replace(registry.get_teacher_spec("tiny_sam"), name="tiny_sam_pad", resize=ResizeRule.LONGEST_PAD)
    monkeypatch.setitem(registry.TEACHERS, pad.name, pad)
    root = make_corpus(tmp_path, n_ok=12, num_views=2)
    for key in ("tiny_clip", "tiny_sam_pad", "tiny_sam_pad@256"):
        run_extract(root, key, ExtractConfig(workers=0, shard_size=4, batch_size=8, progress=False))
    config = DistillConfig(student="vit_tiny_test", teachers=(), root=root, out_dir=tmp_path / "run", steps=3,
                           partitions=("64:4:tiny_clip,tiny_sam_pad", "128:2:tiny_sam_pad@256"), warmup_steps=1,
                           log_every=1, seed=0, teacher_batches="split")
    run = train(config)
    assert all(np.isfinite(json.loads(line)["loss"]) for line in (run / "metrics.jsonl").read_text().splitlines())
    metrics = evaluate_run(run, split="train", batch_size=4)
    assert np.isfinite(metrics["teachers"]["tiny_sam_pad@256"]["patches"]["mse"])

    store = open_teacher_store(teacher_store_path(root, "tiny_sam_pad"))
    frames = batch_frames({"tiny_sam_pad": store.frames_NV4}, np.arange(4), np.zeros(4, int), "cpu")
    assert not torch.equal(frames["tiny_sam_pad"], torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 4))  # padded views
    model = Distiller(*build_models(config, [t for t in _targets(root, ("tiny_clip", "tiny_sam_pad"))])).eval()
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        plain = model(x, frames)
        (parts,) = model(parts=[PartInput(x, ("tiny_clip", "tiny_sam_pad"), None, False, frames)])
        rows = {"tiny_clip": slice(0, 2), "tiny_sam_pad": slice(2, 4)}
        (split,) = model(parts=[PartInput(x, ("tiny_clip", "tiny_sam_pad"), rows, False, frames)])
        for t in ("tiny_clip", "tiny_sam_pad"):  # a teacher's rows alone, through the plain forward
            assert torch.equal(parts[t][1], plain[t][1])
            alone = model(x[rows[t]], {k: f[rows[t]] for k, f in frames.items()})[t][1]
            assert torch.allclose(split[t][1], alone, atol=1e-6)
    part = PartInput(x, ("tiny_clip", "tiny_sam_pad"), rows, False, frames)
    assert torch.equal(part.loss_frames()["tiny_sam_pad"], frames["tiny_sam_pad"][2:4])


def _targets(root, keys):
    from stages.distill.loader import StoreSet
    from stages.distill.train import head_targets

    return head_targets(StoreSet(root, keys, norm="phis", summary_loss="cosine"))
