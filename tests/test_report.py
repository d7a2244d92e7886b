"""Report: average ranks across runs (PHI-S paper protocol), table files, plots, and the sweep cost."""

import csv
import json

import numpy as np
import pytest

from stages.evaluate.report import report_rows, sweep_cost, write_report
from stages.stats import Moments
from stages.teachers.spec import Family, TeacherSpec, WeightsSource
from store_schema.codecs import CodecSpec
from store_schema.layout import manifest_path, teacher_store_path
from store_schema.manifest import ManifestRow, ViewSpec, read_manifest, write_manifest
from store_schema.teacher_store import create_teacher_store


def _eval(norm, mse_a, mse_b, acc):
    return {"run": norm, "norm": norm, "split": "val",
            "teachers": {"ta": {"summary": {"mse": mse_a}, "patches": {"mse": mse_a * 2}},
                         "tb": {"patches": {"mse": mse_b}}},
            "probe": {"knn_acc": acc, "linear_acc": None}}


def test_report_rows_rank_by_category_and_leave_summary_mse_unranked():
    rows, ranking, _ = report_rows({"x": _eval("mse", 3.0, 3.0, 0.5), "y": _eval("phis", 1.0, 2.0, 0.9)})
    assert ranking.categories == {"Teacher MSE": ["ta/patches/mse", "tb/patches/mse"],
                                  "Classification": ["probe/knn_acc"]}
    assert ranking.empty_categories == ["Segmentation", "SAM-COCO", "LLaVA-1.5", "Probe 3D"]
    assert not ranking.paper_average
    assert ranking.reported == ["ta/summary/mse"]  # reported, not ranked (PHI-S paper)
    assert [r["variant"] for r in rows] == ["phis", "mse"] and rows[0]["avg_rank"] == 1.0
    assert rows[1]["rank Teacher MSE"] == 2.0 and rows[1]["avg_rank"] == 2.0


def test_seeds_are_averaged_ranked_by_mean_and_close_pairs_named():
    """Two variants x two seeds: mean ± std per metric, ranks of the means, and the within-one-std pairs."""
    evals = {"phis-seed0": _eval("phis", 1.0, 2.0, 0.80), "phis-seed1": _eval("phis", 1.2, 2.0, 0.90),
             "mse-seed0": _eval("mse", 1.3, 4.0, 0.70), "mse-seed1": _eval("mse", 1.5, 4.0, 0.60)}
    configs = {r: {"norm": ev["norm"], "seed": int(r[-1]), "steps": 5, "out_dir": r} for r, ev in evals.items()}
    rows, ranking, variants = report_rows(evals, configs)
    by = {v.name: v for v in variants}
    assert sorted(by) == ["mse", "phis"] and by["phis"].seeds == (0, 1)
    assert by["phis"].mean["ta/patches/mse"] == pytest.approx(2.2)  # patches mse = 2 * mse_a
    assert by["phis"].std["ta/patches/mse"] == pytest.approx(np.std([2.0, 2.4], ddof=1))
    assert by["mse"].mean["probe/knn_acc"] == pytest.approx(0.65)
    assert [r["variant"] for r in rows] == ["phis", "mse"]
    # ta/patches/mse: means 2.2 vs 2.8, stds 0.28 each: 0.6 apart, not within one std;
    # probe/knn_acc: means 0.85 vs 0.65, stds 0.071: not within; tb: std 0 (identical values)
    from stages.evaluate.report import within_one_std

    assert within_one_std(variants, "ta/patches/mse") == []
    evals["mse-seed1"] = _eval("mse", 1.0, 4.0, 0.60)  # mse patches now 2.6, 2.0: mean 2.3, std 0.42
    _, _, variants = report_rows(evals, configs)
    assert within_one_std(variants, "ta/patches/mse") == [("phis", "mse")]
    with pytest.raises(ValueError, match="repeated seeds"):
        report_rows(evals, {**configs, "phis-seed1": {**configs["phis-seed1"], "seed": 0}})


def test_random_student_init_of_each_seed_is_one_variant_other_weights_are_not():
    """config.json records the student's initialization; a random one is named by its seed
    (`random-init:seed=N`), which must not split a variant over seeds. Other weights do."""
    evals = {"phis-seed0": _eval("phis", 1.0, 2.0, 0.80), "phis-seed1": _eval("phis", 1.2, 2.0, 0.90)}

    def cfg(run, init):
        return {"norm": "phis", "seed": int(run[-1]), "steps": 5, "out_dir": run, "student_init": init}

    rnd = {r: cfg(r, {"source": "random", "id": f"random-init:seed={r[-1]}", "sha256": None}) for r in evals}
    _, _, variants = report_rows(evals, rnd)
    assert [(v.name, v.seeds) for v in variants] == [("phis", (0, 1))]
    files = {r: cfg(r, {"source": "file", "id": f"/w/{r}.pt", "sha256": r}) for r in evals}
    _, _, variants = report_rows(evals, files)
    assert sorted(v.seeds for v in variants) == [(0,), (1,)]


def _tiny_store(root, name, *, summary_dim, patch_dim, n_images=6, num_views=2, scale=1.0, mask_one=True):
    """A real Zarr teacher store with random values and stats of the stored values (hand-built manifest
    unless root already has one)."""
    mpath = manifest_path(root)
    if not mpath.exists():
        rows = [ManifestRow(uri=f"img{i}.png", sha256=f"{i:064x}", size_bytes=100, width=32, height=32,
                            mode="RGB", split="val" if i % 3 == 0 else "train", status="ok", reason="",
                            boxes_V4=np.tile([0.0, 0.0, 1.0, 1.0], (num_views, 1)),
                            flips_V=np.zeros(num_views, bool)) for i in range(n_images)]
        write_manifest(mpath, rows, view_spec=ViewSpec(num_views=num_views), source="hand-built",
                       image_root=".", pixel_limit=10**7, min_side=8, val_fraction=0.3)
    spec = TeacherSpec(name=name, family=Family.DINOV2, arch="hand", weights_id="", weights=WeightsSource.RANDOM,
                       resolution=28, patch_size=14, summary_dim=summary_dim, patch_dim=patch_dim,
                       num_prefix_tokens=1, mean=(0.5,) * 3, std=(0.5,) * 3, license="none")
    manifest = read_manifest(mpath)
    num_views = manifest.view_spec.num_views
    store = create_teacher_store(teacher_store_path(root, name), spec=spec, weights_identity={"source": "random"},
                                 manifest=manifest, shard_size=4, storage_grid=(2, 2),
                                 codec=CodecSpec())
    rng = np.random.default_rng(len(name))
    for k in range(store.num_shards):
        a, b = store.shard_range(k)
        S = b - a
        patches = (rng.normal(size=(S, num_views, 2, 2, patch_dim)) * np.arange(1, patch_dim + 1) + 3.0) * scale
        summary = rng.normal(size=(S, num_views, summary_dim)) if summary_dim else None
        valid = np.ones((S, num_views), bool)
        valid[0, 1] = not (mask_one and k == 0)  # one masked view in shard 0
        store.write_shard(k, summary_SVC=summary, patches_SVhwC=patches, valid_SV=valid)
        p_stored = np.asarray(store.read_shard(k)[1], np.float64)
        store.write_shard_stats(k, "patches", Moments.from_batch(p_stored.reshape(-1, patch_dim)))
        if summary_dim:
            store.write_shard_stats(k, "summary", Moments.from_batch(np.asarray(store.read_shard(k)[0]).reshape(-1, summary_dim)))
        store.mark_complete(k)
    return store


def _run_dir(tmp_path, root, name, ev, *, steps=10, batch=4, done=None, teachers=("ta", "tb")):
    """A hand-built run folder: config.json, a checkpoint at step `done` (default: finished), metrics.jsonl
    and an eval/metrics.json of that checkpoint (as evaluate_run records it)."""
    import torch

    from stages.distill.run import run_fingerprint

    d = tmp_path / "runs" / name
    (d / "eval").mkdir(parents=True)
    cfg = {"student": "tiny", "teachers": list(teachers), "root": str(root), "norm": ev["norm"],
           "steps": steps, "batch_size": batch, "img_size": 32, "out_dir": str(d), "seed": 0,
           "manifest_hash": "m" * 64, "run_id": name, "heads": []}
    (d / "config.json").write_text(json.dumps(cfg))
    torch.save({"version": 1, "step": steps if done is None else done}, d / "checkpoint.pt")
    (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "elapsed_s": 1.5 * s}) + "\n"
                                             for s in range(1, 6)))
    ev = {"num_samples": 4, "checkpoint_step": steps if done is None else done,
          "run_fingerprint": run_fingerprint(cfg), **ev}
    (d / "eval" / "metrics.json").write_text(json.dumps(ev))
    return d


def test_write_report_files_ranks_and_cost(tmp_path):
    root = tmp_path / "store"
    _tiny_store(root, "ta", summary_dim=4, patch_dim=8, scale=0.01)
    _tiny_store(root, "tb", summary_dim=0, patch_dim=4, scale=5.0)
    runs = [_run_dir(tmp_path, root, "r_mse", _eval("mse", 3.0, 3.0, 0.5), steps=10),
            _run_dir(tmp_path, root, "r_phis", _eval("phis", 1.0, 2.0, 0.9), steps=20),
            _run_dir(tmp_path, root, "r_zca", _eval("zca", 2.0, 1.0, 0.5), steps=30)]
    # different steps are not comparable: refused, then ranked together only when asked (cost: steps x batch)
    with pytest.raises(ValueError, match=r"training steps differ: 10 -> \['r_mse'\]; 20 -> \['r_phis'\]"):
        write_report(runs, tmp_path / "report")
    md = write_report(runs, tmp_path / "report", allow_incomparable=True)
    out = md.parent
    for name in ("report.md", "report.csv", "teacher_errors.png", "teacher_spectra.png", "loss_curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "teacher_errors.png").read_bytes()[:4] == b"\x89PNG"
    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["phis", "zca", "mse"]
    # Teacher MSE (feature MSE only): ta phis 1, zca 2, mse 3; tb zca 1, phis 2, mse 3 -> 1.5, 1.5, 3
    # Classification (kNN): phis 1, zca / mse 2.5; average over the two categories
    assert float(rows[0]["avg_rank"]) == pytest.approx((1.5 + 1) / 2)
    assert float(rows[1]["avg_rank"]) == pytest.approx((1.5 + 2.5) / 2)
    assert float(rows[2]["avg_rank"]) == pytest.approx((3 + 2.5) / 2)
    cost = json.loads((out / "cost.json").read_text())
    assert cost["store_passes"] == {"ta": 6 * 2 - 1, "tb": 6 * 2 - 1}  # one masked view each
    assert cost["online_passes"] == {"ta": (10 + 20 + 30) * 4, "tb": (10 + 20 + 30) * 4}
    assert cost["ratio"] == pytest.approx(480 / 22)
    text = md.read_text()
    assert "| phis | phis | variant | 1 |" in text and "480" in text and "ratio" in text
    assert "ranked per metric" in text and "**Teacher MSE**" in text and "Segmentation" in text
    assert "Fidelity not available" in text and "pipeline store fidelity" in text
    assert "One seed per variant" in text
    assert "grad_clip not recorded" in text and "phis not logged" in text  # hand-written run files
    # what a reader needs beside the scores (issue 15 item 11): golden lines of the report's content
    assert "| run | norm | student | steps | seed | eval split (samples) | teachers | training time | status |" in text
    assert "| r_phis | phis | tiny | 20 | 0 | val (4) | ta, tb | 8 s | ok |" in text
    assert "Lower is better: `ta/patches/mse`, `ta/summary/mse`, `tb/patches/mse`" in text
    assert "Higher is better: `probe/knn_acc`." in text
    # runs evaluated before the kNN feature was recorded used summary token 0: the report says so
    assert "Probe feature: raw student summary token 0, view 0 (1 summary token(s))." in text and "τ = 0.07" in text
    assert ("The average covers 2 of the paper's six categories (Teacher MSE, Classification); missing: "
            "**Segmentation, SAM-COCO, LLaVA-1.5, Probe 3D**") in text and "not the paper's average" in text
    assert "| variant | norm | summary loss | seeds |" in text and "average rank (2 of 6 categories) |" in text
    assert "## Teachers" in text and "RankMe" in text, text
    assert "| run | teacher/kind | MSE | normalized error | err. var. range (teacher) | err. var. range (normalized) |" in text
    nerr = [ln for ln in text.splitlines() if ln.startswith("| r_phis | tb/patches |")]
    assert len(nerr) == 1 and nerr[0].split(" | ")[3] not in ("n/a", "0")  # MSE / teacher variance
    assert "Training time (wall clock, student only, from metrics.jsonl): **22 s** over 3 runs" in text
    assert "![probe_accuracy.png](probe_accuracy.png)" in text and (out / "probe_accuracy.png").stat().st_size > 0


def test_clipped_share_weights_records_by_their_steps():
    from stages.evaluate.report import clipped_share

    hist = [{"step": 10, "clip_frac": 1.0}, {"step": 20, "clip_frac": 0.5}, {"step": 40, "clip_frac": 0.0}]
    assert clipped_share(hist) == pytest.approx((10 * 1.0 + 10 * 0.5) / 40)
    assert clipped_share([{"step": 1, "loss": 1.0}]) is None


def test_report_refuses_stale_evals_and_incomparable_runs_and_marks_unfinished(tmp_path):
    import torch

    root = tmp_path / "store"
    _tiny_store(root, "ta", summary_dim=4, patch_dim=8, scale=0.01)
    _tiny_store(root, "tb", summary_dim=0, patch_dim=4, scale=5.0)
    a = _run_dir(tmp_path, root, "r_phis", _eval("phis", 1.0, 2.0, 0.9), steps=20)
    b = _run_dir(tmp_path, root, "r_mse", _eval("mse", 3.0, 3.0, 0.5), steps=20, done=6)  # stopped at 6 of 20
    text = write_report([a, b], tmp_path / "rep").read_text()
    assert "| r_mse | mse | tiny | 6 of 20 | 0 | val (4) | ta, tb | 8 s | **unfinished (6/20 steps)** |" in text
    assert json.loads((tmp_path / "rep" / "cost.json").read_text())["online_passes"]["ta"] == (20 + 6) * 4
    with pytest.raises(ValueError, match=r"did not finish training"):
        write_report([a, b], tmp_path / "rep", allow_unfinished=False)
    # the run was trained further after its evaluation: the eval is stale
    torch.save({"version": 1, "step": 8}, b / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"evaluations of \['r_mse'\] do not match .* run `pipeline evaluate`"):
        write_report([a, b], tmp_path / "rep")
    text = write_report([a, b], tmp_path / "rep", allow_stale=True).read_text()
    assert "stale eval (not of the last checkpoint)" in text
    # a 1-teacher run on another split size is not ranked against a 2-teacher run
    ev = _eval("zca", 2.0, 1.0, 0.5)
    del ev["teachers"]["tb"]
    c = _run_dir(tmp_path, root, "r_zca", {**ev, "num_samples": 9}, steps=20, teachers=("ta",))
    with pytest.raises(ValueError, match=r"not comparable \(teacher sets differ: ta -> \['r_zca'\]; ta, tb -> "
                                         r"\['r_phis'\].*evaluation splits differ"):
        write_report([a, c], tmp_path / "rep2")
    text = write_report([a, c], tmp_path / "rep2", allow_incomparable=True).read_text()
    assert "**Reported although**:" in text and "the runs are not comparable" in text


def test_report_refuses_unevaluated_run(tmp_path):
    root = tmp_path / "store"
    run = _run_dir(tmp_path, root, "r", _eval("mse", 1.0, 1.0, 0.5))
    (run / "eval" / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match="pipeline evaluate"):
        write_report([run], tmp_path / "out")


def test_sweep_cost_rejects_teacher_without_store():
    with pytest.raises(ValueError, match="no store"):
        sweep_cost({"r": {"steps": 1, "batch_size": 2, "teachers": ["x"]}}, {"y": 3})


# ---- evaluate → report on real runs (real zarr, real distill training, real tiny ViT student) ----------

def _real_run(tmp_path, norm):
    import torch
    from PIL import Image

    from stages.corpus.build_manifest import build_manifest
    from stages.distill.config import DistillConfig
    from stages.distill.train import train
    from store_schema.layout import demo_images_dir, demo_probe_labels_path

    torch.set_num_threads(1)
    demo, root = tmp_path / "demo", tmp_path / "store"
    if not manifest_path(root).exists():
        images = demo_images_dir(demo)
        images.mkdir(parents=True)
        rng = np.random.default_rng(0)
        lines = ["uri,label"]
        for i in range(20):
            label = "dark" if i % 2 else "bright"
            base = 40 if label == "dark" else 215
            px = np.clip(base + rng.normal(0, 20, size=(32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(images / f"{label}_{i:02d}.png")
            lines.append(f"{label}_{i:02d}.png,{label}")
        demo_probe_labels_path(demo).write_text("\n".join(lines) + "\n")
        build_manifest(images, out_dir=root, view_spec=ViewSpec(num_views=2), min_side=8, val_fraction=0.35)
        _tiny_store(root, "ta", summary_dim=4, patch_dim=8, scale=0.01, mask_one=False)
        _tiny_store(root, "tb", summary_dim=0, patch_dim=4, scale=5.0, mask_one=False)
    config = DistillConfig(student="vit_tiny_test", teachers=("ta", "tb"), root=root, out_dir=tmp_path / "runs" / norm,
                           norm=norm, img_size=32, steps=3, batch_size=4, warmup_steps=1, log_every=1)
    return train(config), root


def test_evaluate_known_answer_when_heads_predict_zero(tmp_path):
    """Heads whose last Linear is zero predict 0 in normalized space, i.e. μ in teacher space: the
    teacher-space MSE must equal the mean of (y − μ)² over the val samples, read from the store."""
    import torch

    from stages.distill.run_dir import checkpoint_path
    from stages.distill.loader import StoreSet
    from stages.distill.run import load_run
    from stages.distill.run_dir import read_eval
    from stages.evaluate.evaluate import evaluate_run

    run, root = _real_run(tmp_path, "phis")
    _, _, heads, normalizers = load_run(run)
    for t in ("ta", "tb"):
        for lin in heads.last_linears(t):
            if lin is not None:
                torch.nn.init.zeros_(lin.weight)
                torch.nn.init.zeros_(lin.bias)
    ckpt = torch.load(checkpoint_path(run), weights_only=True)
    ckpt["heads"] = heads.state_dict()
    from stages.distill.checkpoint import payload_digest

    ckpt["digest"] = payload_digest(ckpt)  # an intended edit: re-sign it (the loader checks the digest)
    torch.save(ckpt, checkpoint_path(run))

    res = evaluate_run(run, batch_size=5)
    assert read_eval(run) == json.loads(json.dumps(res))
    from stages.distill.run import run_progress

    assert res["checkpoint_step"] == res["run_steps"] == 3 and res["finished"] is True  # what it measured
    assert res["run_fingerprint"] == run_progress(run)["fingerprint"] and res["teacher_set"] == ["ta", "tb"]
    with pytest.raises(FileNotFoundError, match="probe labels file .*MISSING.csv does not exist"):
        evaluate_run(run, labels_path=tmp_path / "MISSING.csv")
    stores = StoreSet(root, ("ta", "tb"), norm="phis")
    pairs = stores.samples("val")
    assert res["num_samples"] == len(pairs) > 0
    for t, kinds in (("ta", ("summary", "patches")), ("tb", ("patches",))):
        assert sorted(res["teachers"][t]) == sorted(kinds)
        s, p, _ = stores.stores[t].read_images(pairs[:, 0])
        for kind in kinds:
            y = np.asarray((s if kind == "summary" else p)[np.arange(len(pairs)), pairs[:, 1]], np.float64)
            expected = np.mean((y - normalizers[t][kind].mu_D) ** 2)
            assert res["teachers"][t][kind]["mse"] == pytest.approx(expected, rel=1e-4)
            assert res["teachers"][t][kind]["norm_err_var_range"] >= 0.0
    probe = res["probe"]
    assert probe["num_train"] + probe["num_val"] == 20 and 0.0 <= probe["knn_acc"] <= 1.0
    assert set(probe["heads"]) == {"ta"}  # only teachers with a summary head get a head probe


def _drop_inner_chunk(shard_file, row: int, rows: int) -> None:
    """Mark inner chunk `row` of a zarr shard file absent in its index (as if it was never written), with a
    valid index checksum: what a lost chunk looks like to zarr (it then reads the fill value, zero)."""
    import crc32c

    data = bytearray(shard_file.read_bytes())
    n = 16 * rows
    index = np.frombuffer(bytes(data[-(n + 4):-4]), dtype="<u8").reshape(rows, 2).copy()
    index[row] = 2**64 - 1
    body = index.tobytes()
    data[-(n + 4):] = body + crc32c.crc32c(body).to_bytes(4, "little")
    shard_file.write_bytes(bytes(data))


def test_evaluate_refuses_a_lost_chunk_of_a_complete_shard(tmp_path):
    """A val image whose stored patches chunk is gone (its shard still complete) would be scored against
    zeros: evaluation refuses, naming the store, the array, the shard and the image."""
    from stages.distill.loader import StoreSet
    from stages.evaluate.evaluate import evaluate_run
    from store_schema.errors import StoreCorruptionError

    run, root = _real_run(tmp_path, "phis")
    image = int(StoreSet(root, ("ta", "tb"), norm="phis").samples("val")[0, 0])
    shard, row = divmod(image, 4)  # _tiny_store: 4 images per shard
    shard_file = teacher_store_path(root, "tb") / "patches" / "c" / str(shard) / "0" / "0" / "0" / "0"
    _drop_inner_chunk(shard_file, row, 4)
    with pytest.raises(StoreCorruptionError,
                       match=rf"tb.zarr: patches of images \[{image}\] \(shard \[{shard}\]\) have valid views but "
                             r"no stored chunk.*evaluation would read zeros"):
        evaluate_run(run, batch_size=5)
    assert not (run / "eval" / "metrics.json").exists()


def test_evaluate_and_report_cli_on_two_trained_runs(tmp_path):
    import typer
    from typer.testing import CliRunner

    from pipeline import cmd_evaluate, cmd_report

    app = typer.Typer()
    cmd_evaluate.register(app)
    cmd_report.register(app)
    runs = [_real_run(tmp_path, norm)[0] for norm in ("phis", "standardize")]
    res = CliRunner().invoke(app, ["evaluate", *map(str, runs), "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    assert "ta: summary mse" in res.output and "probe: kNN acc" in res.output
    assert "feature: the K raw student summary tokens concatenated (RADIO's _extract_final)" in res.output
    assert json.loads((runs[0] / "eval" / "metrics.json").read_text())["probe"]["knn_feature"] == "concat"
    res = CliRunner().invoke(app, ["report", *map(str, runs), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "Probe feature: the K raw student summary tokens concatenated" in text
    # the paper's standardize and PHI-S ask for unit variance in every channel; summaries train raw (cosine)
    for norm in ("phis", "standardize"):
        for teacher in ("ta", "tb"):
            assert f"| {norm} | {teacher} | patches | {norm} | 1 | 1 | 1 |" in text, text
        assert f"| {norm} | ta | summary | cosine |" in text
    with open(tmp_path / "rep" / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["norm"] for r in rows} == {"phis", "standardize"}
    assert "tb/patches/mse" in rows[0] and "probe/knn_acc" in rows[0]
    cost = json.loads((tmp_path / "rep" / "cost.json").read_text())
    assert cost["online_passes"] == {"ta": 2 * 3 * 4, "tb": 2 * 3 * 4}
    assert cost["store_passes"] == {"ta": 20 * 2, "tb": 20 * 2}
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "nope")])
    flat = " ".join(res.output.replace("│", " ").split())  # typer's error box wraps lines
    assert res.exit_code == 2 and "not a distill run directory" in flat


def test_metric_missing_from_some_runs_is_named_not_silently_dropped(tmp_path):
    no_probe = _eval("zca", 2.0, 1.0, 0.5)
    no_probe["probe"] = None
    evals = {"r_phis": _eval("phis", 1.0, 2.0, 0.9), "r_zca": no_probe}
    assert report_rows(evals)[1].unranked == {"probe/knn_acc": ["zca"]}
    root = tmp_path / "store"
    _tiny_store(root, "ta", summary_dim=4, patch_dim=8, scale=0.01)
    _tiny_store(root, "tb", summary_dim=0, patch_dim=4, scale=5.0)
    runs = [_run_dir(tmp_path, root, name, ev) for name, ev in evals.items()]
    text = write_report(runs, tmp_path / "report").read_text()
    assert "**Not ranked**" in text and "- `probe/knn_acc`: missing from zca" in text
    assert "missing: **Classification, Segmentation, SAM-COCO, LLaVA-1.5, Probe 3D**" in text


def test_downstream_sections_are_flattened_and_ranked_in_their_categories():
    from stages.evaluate.report import flatten_metrics

    ev = _eval("phis", 1.0, 2.0, 0.9)
    ev["zeroshot"] = {"clip": {"top1": 0.4, "teacher_top1": 0.6}}
    ev["seg"] = {"linear_miou": 0.3, "openvocab_miou": {"clip": 0.2}}
    flat = flatten_metrics(ev)
    assert flat["zeroshot/clip/top1"] == 0.4 and flat["seg/openvocab_miou/clip"] == 0.2
    other = _eval("mse", 1.0, 2.0, 0.9)
    other["zeroshot"] = {"clip": {"top1": 0.5, "teacher_top1": 0.6}}
    other["seg"] = {"linear_miou": 0.1, "openvocab_miou": {"clip": 0.25}}
    ev["zeroshot_ranked"] = other["zeroshot_ranked"] = "clip"  # the designated zero-shot teacher
    rows, ranking, _ = report_rows({"a": ev, "b": other})
    assert ranking.categories["Classification"] == ["probe/knn_acc", "zeroshot/clip/top1"]
    # linear probes only: open-vocabulary segmentation is in neither paper's ranking
    assert ranking.categories["Segmentation"] == ["seg/linear_miou"]
    assert "zeroshot/clip/teacher_top1" in ranking.reported and "seg/openvocab_miou/clip" in ranking.reported
    by = {r["variant"]: r for r in rows}
    assert by["mse"]["rank Classification"] == pytest.approx((1.5 + 1) / 2)  # knn tie, zero-shot better
    assert by["phis"]["rank Segmentation"] == 1.0
    # evaluations from before the designation was recorded: the run's first teacher with a zero-shot result
    del ev["zeroshot_ranked"], other["zeroshot_ranked"]
    ev["zeroshot"]["siglip"] = other["zeroshot"]["siglip"] = {"top1": 0.1, "teacher_top1": 0.2}
    configs = {r: {"norm": e["norm"], "teachers": ["ta", "siglip", "clip"]} for r, e in (("a", ev), ("b", other))}
    assert report_rows({"a": ev, "b": other}, configs)[1].categories["Classification"] == [
        "probe/knn_acc", "zeroshot/siglip/top1"]
    # without any zero-shot result none is ranked; two designations cannot be ranked together
    assert report_rows({"a": _eval("phis", 1.0, 2.0, 0.9), "b": _eval("mse", 1.0, 2.0, 0.9)})[1].categories[
        "Classification"] == ["probe/knn_acc"]
    ev["zeroshot_ranked"], other["zeroshot_ranked"] = "clip", "siglip"
    with pytest.raises(ValueError, match=r"different teachers \['clip', 'siglip'\]"):
        report_rows({"a": ev, "b": other})


def test_evaluate_root_reads_a_moved_store_and_refuses_another_one(tmp_path):
    """`evaluate --root`: a store root moved after training is evaluated from its new place, with the same
    numbers; a root whose stores are not the run's is refused, naming what differs."""
    import shutil

    from typer.testing import CliRunner

    from pipeline.cli import app
    from stages.evaluate.evaluate import evaluate_run

    run, root = _real_run(tmp_path, "phis")
    before = evaluate_run(run, batch_size=5)
    moved = tmp_path / "moved_store"
    shutil.move(str(root), str(moved))
    res = CliRunner().invoke(app, ["evaluate", str(run), "--batch-size", "5"])
    assert res.exit_code == 2 and "Error: " in res.output  # the recorded root is gone
    res = CliRunner().invoke(app, ["evaluate", str(run), "--batch-size", "5", "--root", str(moved)])
    assert res.exit_code == 0, res.output
    after = json.loads((run / "eval" / "metrics.json").read_text())
    assert after["teachers"] == before["teachers"] and after["num_samples"] == before["num_samples"]
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(manifest_path(moved), manifest_path(other))
    _tiny_store(other, "ta", summary_dim=4, patch_dim=8, scale=0.02, mask_one=False)  # other values
    shutil.copytree(teacher_store_path(moved, "tb"), teacher_store_path(other, "tb"))
    res = CliRunner().invoke(app, ["evaluate", str(run), "--root", str(other)])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "the ta store there is not the one run" in text and "stats_hash" in text, text


def test_summary_loss_sweep_is_ranked_per_loss_and_the_order_change_named():
    """distill.summary_loss as a sweep axis: variants named <norm>/<loss>, each loss's norms ranked among
    themselves, and the report says whether the order changes."""
    from stages.evaluate.report import _ranking_lines

    evals = {"phis-cosine-seed0": _eval("phis", 1.0, 1.0, 0.9), "mse-cosine-seed0": _eval("mse", 2.0, 2.0, 0.5),
             "phis-variant-seed0": _eval("phis", 2.0, 2.0, 0.5), "mse-variant-seed0": _eval("mse", 1.0, 1.0, 0.9)}
    configs = {r: {"norm": ev["norm"], "summary_loss": r.split("-")[1], "seed": 0, "out_dir": r}
               for r, ev in evals.items()}
    rows, ranking, variants = report_rows(evals, configs)
    assert sorted(v.name for v in variants) == ["mse/cosine", "mse/variant", "phis/cosine", "phis/variant"]
    text = "\n".join(_ranking_lines(rows, ranking, variants))
    assert "- `cosine` summaries: phis > mse" in text and "- `variant` summaries: mse > phis" in text
    assert "**The order of the normalizations changes with the summary loss**" in text
    configs["mse-variant-seed0"]["summary_loss"] = configs["phis-variant-seed0"]["summary_loss"] = "variant"
    evals["mse-variant-seed0"], evals["phis-variant-seed0"] = _eval("mse", 2.0, 2.0, 0.4), _eval("phis", 1.0, 1.0, 0.8)
    rows, ranking, variants = report_rows(evals, configs)
    assert "is **the same** under every summary loss" in "\n".join(_ranking_lines(rows, ranking, variants))
