"""End to end through the CLI on a tiny corpus: corpus -> extract (real local Ray, real Zarr) -> verify ->
distill --norm phis -> evaluate -> report. The end-to-end layer of the tests: every stage really started."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from store_schema.layout import manifest_path, teacher_store_path
from store_schema.manifest import read_manifest
from store_schema.teacher_store import open_teacher_store

pytest_plugins = ["tests.ray_fixture"]

GOLDEN_PATCH_STD = {"tiny_clip": 0.02735002344791329, "tiny_sam": 6.587635484554664}  # sqrt(trace Σ / C)
# distill --norm phis, steps 1 and 6 (moved by issue 11: cosine summary loss, no grad clip; see CHANGELOG.md)
GOLDEN_LOSS_FIRST, GOLDEN_LOSS_LAST = 3.3311104774475098, 2.0763370990753174  # issue 9: normalizers fitted on the train split


def invoke(args: list[str]) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"pipeline {' '.join(map(str, args))} failed:\n{result.output}\n{result.exception!r}"
    return result.output


def test_corpus_extract_distill_evaluate_report(tmp_path, ray_session, make_corpus):
    images = make_corpus(tmp_path / "src", n_ok=12, num_views=2).parent / "images"
    root = tmp_path / "store"
    out = invoke(["corpus", images, "--out", root, "--views", "2", "--val-fraction", "0.3"])
    manifest = read_manifest(manifest_path(root))
    assert manifest.num_images == 14 and int(manifest.ok_N.sum()) == 12, out

    teachers = ["tiny_clip", "tiny_sam"]
    for name in teachers:
        out = invoke(["extract", "--teacher", name, "--root", root, "--workers", "2", "--shard-size", "4",
                      "--batch-size", "8", "--no-progress", "--receipt", tmp_path / f"receipt_{name}.json"])
        assert f"extract {name}: 14 images" in out
        store = open_teacher_store(teacher_store_path(root, name), expect_manifest_hash=manifest.hash)
        assert len(store.completed_shards()) == store.num_shards == 4
        receipt = json.loads((tmp_path / f"receipt_{name}.json").read_text())
        assert receipt["manifest_hash"] == manifest.hash
        assert receipt["stats_hash"]["patches"] == store.stats("patches").content_hash()
    invoke(["store", "verify", "--root", root])

    # the student's views rendered once on Ray and read by the loader: the golden numbers below were
    # recorded with views decoded by the loader, so they also check that the pixels are the same
    out = invoke(["views", "--root", root, "--size", "64", "--workers", "2"])
    assert "student views 64px" in out and "14 images: 12 rendered, 2 marked bad in the manifest" in out, out
    runs = tmp_path / "runs"
    invoke(["distill", "--norm", "phis", "--student", "vit_tiny_test", "--teachers", ",".join(teachers),
            "--root", root, "--out", runs, "--steps", "6", "--batch-size", "4", "--warmup-steps", "1",
            "--img-size", "64", "--log-every", "1", "--student-views", "store"])
    run = runs / "phis"
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history][-1] == 6
    assert all(math.isfinite(h["loss"]) for h in history)
    assert (run / "export.safetensors").is_file()

    # Golden numbers under fixed seeds (recorded on this 2-core x86_64 machine): a refactor that changes what
    # is stored or trained shows up here. Tolerances allow for BLAS differences between CPUs only.
    for name, golden_std in GOLDEN_PATCH_STD.items():
        store = open_teacher_store(teacher_store_path(root, name))
        std = float(np.sqrt(np.trace(store.stats("patches").covariance()) / store.patch_dim))
        assert std == pytest.approx(golden_std, rel=1e-4), name
    assert history[0]["loss"] == pytest.approx(GOLDEN_LOSS_FIRST, rel=1e-3)
    assert history[-1]["loss"] == pytest.approx(GOLDEN_LOSS_LAST, rel=1e-2)
    invoke(["evaluate", run])
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    for name in teachers:
        patches = metrics["teachers"][name]["patches"]
        assert np.isfinite(patches["mse"]) and patches["mse"] > 0
    report_dir = tmp_path / "report"
    invoke(["report", run, "--out", report_dir])
    table = (report_dir / "report.md").read_text()
    assert "| phis |" in table and (report_dir / "teacher_spectra.png").stat().st_size > 0
