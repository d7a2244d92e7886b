"""`pipeline evaluate RUN --on ROOT` end to end: a demo-like run (real stores, a few distillation steps), a
held-out imagefolder dataset and a held-out ade20k-layout dataset drawn with PIL here (not by the
project's demo corpus), through `pipeline corpus --layout`, `pipeline extract --root`, `pipeline
extract-text --classes ROOT` and `pipeline evaluate --on`: numeric kNN accuracy and mIoU, cached features
and teacher references, and the refusals."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from stages.extract.driver import ExtractConfig, run_extract
from stages.corpus.build_manifest import build_manifest
from stages.corpus.demo import shapes_image
from stages.distill.config import DistillConfig
from stages.distill.train import train
from stages.evaluate.bench_report import flatten_bench
from store_schema import layout
from store_schema.manifest import ViewSpec
from tests.dataset_builders import build_ade20k, build_depth, build_imagefolder, build_voc

TEACHERS = ("tiny_clip", "tiny_sam")
runner = CliRunner()


def _ok(args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench")
    (base / "images").mkdir()
    for i in range(16):
        Image.fromarray(shapes_image(200 + i)[0]).save(base / "images" / f"s{i:02d}.png")
    root = base / "store"
    build_manifest(base / "images", out_dir=root, view_spec=ViewSpec(num_views=1), val_fraction=0.3)
    for t in TEACHERS:
        run_extract(root, t, ExtractConfig(workers=0, shard_size=8, progress=False))
    config = DistillConfig(student="vit_tiny_test", teachers=TEACHERS, root=root, out_dir=base / "runs" / "phis",
                           norm="phis", img_size=64, steps=3, batch_size=4, warmup_steps=1, log_every=1)
    train(config)
    datasets = {"colours": build_imagefolder(base / "src_colours"), "shapes_ade": build_ade20k(base / "src_ade")}
    layouts = {"colours": "imagefolder", "shapes_ade": "ade20k"}
    for name, src in datasets.items():
        out = _ok(["corpus", src, "--out", base / name, "--layout", layouts[name]])
        assert f"dataset {name!r}" in out
        for t in TEACHERS:
            _ok(["extract", "--root", base / name, "--teacher", t, "--no-ray", "--no-progress", "--shard-size", 16])
    _ok(["extract-text", "--teacher", "tiny_clip", "--root", base / "colours", "--classes", base / "colours",
         "--templates", "simple"])
    return base, config.out_dir


def _evaluate(run, *roots, extra=()):
    args = ["evaluate", run, "--probe-iterations", 40, "--probe-batch-size", 4, "--linear-iterations", 30,
            "--target-side", 48, "--zeroshot-templates", "simple", *extra]
    for r in roots:
        args += ["--on", r]
    return runner.invoke(app, [str(a) for a in args])


def test_held_out_datasets_give_knn_accuracy_and_miou(setup):
    base, run = setup
    result = _evaluate(run, base / "colours", base / "shapes_ade")
    assert result.exit_code == 0, result.output
    ev = json.loads((run / "eval" / "metrics.json").read_text())
    colours, ade = ev["bench"]["colours"], ev["bench"]["shapes_ade"]
    assert 0.0 <= colours["knn_acc"] <= 1.0 and 0.0 <= colours["linear_acc"] <= 1.0
    assert set(colours["zeroshot"]) == {"tiny_clip"} and 0.0 <= colours["zeroshot"]["tiny_clip"]["top1"] <= 1.0
    assert colours["num_train"] == 24 and colours["num_val"] == 12
    assert 0.0 < ade["seg"]["miou"] <= 1.0 and ade["seg"]["num_val"] == 6
    assert ade["inference"].startswith("whole image")
    # teacher references: both teachers on the segmentation set, only the CLIP one has a summary
    assert set(ade["teacher_refs"]) == set(TEACHERS) and 0.0 < ade["teacher_refs"]["tiny_sam"]["seg"]["miou"] <= 1
    assert set(colours["teacher_refs"]) == {"tiny_clip"} and "zeroshot_top1" in colours["teacher_refs"]["tiny_clip"]
    flat = flatten_bench(ev["bench"])
    assert {"bench/colours/knn_top1", "bench/colours/linear_top1", "bench/shapes_ade/seg_probe_miou",
            "bench/colours/zeroshot/tiny_clip/top1", "bench/shapes_ade/teacher_seg_probe_miou/tiny_sam",
            "bench/colours/teacher_zeroshot_top1/tiny_clip"} <= set(flat)
    assert flat["bench/colours/knn_top1"] == colours["knn_acc"]
    assert "bench colours (imagefolder, 24 train / 12 val): kNN acc" in result.output
    assert (run / "eval" / "cache" / "colours.zarr").is_dir()
    assert layout.bench_references_path(base / "shapes_ade").is_file()

    from stages.evaluate.report import write_report

    md = write_report([run], base / "report").read_text()
    assert "## Evaluation datasets (`pipeline evaluate --on`)" in md and "no sliding window" in md
    assert "`shapes_ade` (ade20k, 12 train / 6 val): probes seg" in md and "teacher reference tiny_sam: mIoU" in md
    assert "bench/colours/knn_top1" in md and "bench/shapes_ade/seg_probe_miou" in md


def test_features_and_references_are_reused_not_recomputed(setup):
    base, run = setup
    assert _evaluate(run, base / "shapes_ade").exit_code == 0
    refs = layout.bench_references_path(base / "shapes_ade")
    before = refs.stat().st_mtime_ns
    first = json.loads((run / "eval" / "metrics.json").read_text())["bench"]["shapes_ade"]
    result = _evaluate(run, base / "shapes_ade")
    assert result.exit_code == 0, result.output
    assert "feature cache" in result.output and "reused; 0 of 1 blocks to compute" in result.output
    assert "computing once" not in result.output and refs.stat().st_mtime_ns == before
    again = json.loads((run / "eval" / "metrics.json").read_text())["bench"]["shapes_ade"]
    assert again["seg"] == first["seg"] and again["teacher_refs"] == first["teacher_refs"]
    # no memory budget: every mini-batch streamed from the cache on disk, the same probe and scores
    assert _evaluate(run, base / "shapes_ade", extra=["--probe-memory", 0]).exit_code == 0
    streamed = json.loads((run / "eval" / "metrics.json").read_text())["bench"]["shapes_ade"]
    assert streamed["seg"] == first["seg"]


def test_unlabeled_corpus_and_wrong_probe_are_refused_naming_the_probe(setup):
    base, run = setup
    result = _evaluate(run, base / "store")
    assert result.exit_code == 2 and "unlabeled corpus" in result.output and "knn" in result.output
    result = _evaluate(run, base / "colours", extra=["--probe", "seg"])
    assert result.exit_code == 2
    assert "the seg probe needs segmentation masks" in result.output and "imagefolder" in result.output
    result = _evaluate(run, base / "colours", extra=["--probe", "flow"])
    assert result.exit_code == 2 and "unknown probe" in result.output and "normals" in result.output
    before = (run / "eval" / "metrics.json").stat().st_mtime_ns if (run / "eval" / "metrics.json").exists() else None
    result = _evaluate(run, base / "not_built")  # refused before the run's own evaluation is computed or written
    assert result.exit_code == 2 and "no evaluation dataset at" in result.output, result.output
    assert "--layout imagefolder|ade20k|voc|depth" in result.output and "evaluate.bench_datasets" in result.output
    after = (run / "eval" / "metrics.json").stat().st_mtime_ns if (run / "eval" / "metrics.json").exists() else None
    assert before == after



def test_voc_and_depth_datasets_give_miou_depth_and_normal_scores(setup, tmp_path):
    base, run = setup
    _ok(["corpus", build_voc(tmp_path / "src_voc"), "--out", tmp_path / "voc", "--layout", "voc"])
    _ok(["corpus", build_depth(tmp_path / "src_nyu", normals=False), "--out", tmp_path / "nyu", "--layout", "depth"])
    result = _evaluate(run, tmp_path / "voc", tmp_path / "nyu")
    assert result.exit_code == 0, result.output
    bench = json.loads((run / "eval" / "metrics.json").read_text())["bench"]
    assert 0.0 < bench["voc"]["seg"]["miou"] <= 1.0 and bench["voc"]["seg"]["num_val"] == 4
    depth, normals = bench["nyu"]["depth"], bench["nyu"]["normals"]
    assert depth["abs_rel"] > 0 and 0.0 <= depth["delta1"] <= 1.0
    assert 0.0 <= normals["mean_angle_deg"] <= 180.0 and 0.0 <= normals["within_11_25"] <= 1.0
    # no teacher store was extracted over these roots: no references, and the result says how to get them
    assert bench["nyu"]["teacher_refs"] == {}
    assert "pipeline extract --root" in bench["nyu"]["skipped"]["teacher_refs/tiny_sam"]
    assert "skipped teacher_refs/tiny_clip" in result.output
