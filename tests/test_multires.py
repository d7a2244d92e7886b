"""A teacher at two resolutions, trained in two resolution partitions, evaluated per resolution (AM-RADIO
arXiv 2312.06709; RADIOv2.5 arXiv 2412.07679), through the CLI: extract tiny_sam and tiny_sam@256 (real Zarr,
in process), `store info` / `teachers` say the resolution, render the student views at both sides, distill
with `--partition`, evaluate: per-resolution metrics and the cross-resolution consistency."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch
from typer.testing import CliRunner

from pipeline.cli import app
from stages.teachers.registry import build_teacher, get_teacher_spec
from store_schema.layout import split_store_key, store_key, teacher_store_path
from store_schema.teacher_store import open_teacher_store
from tests.ray_fixture import build_corpus


def invoke(args: list) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"pipeline {' '.join(map(str, args))} failed:\n{result.output}\n{result.exception!r}"
    return result.output


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


def test_two_resolutions_two_partitions_evaluated_per_resolution(tmp_path) -> None:
    images = build_corpus(tmp_path / "src", n_ok=10, num_views=2).parent / "images"
    root = tmp_path / "store"
    invoke(["corpus", images, "--out", root, "--views", "2", "--val-fraction", "0.3"])
    for key in ("tiny_clip", "tiny_sam", "tiny_sam@256"):
        out = invoke(["extract", "--teacher", key, "--root", root, "--no-ray", "--shard-size", "4", "--batch-size",
                      "8", "--no-progress", "--receipt", tmp_path / "receipts" / f"extract_{key}.json"])
        assert f"extract {key}:" in out
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
            "--student-views", "store"])
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
