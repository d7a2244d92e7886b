"""Stage-two training on tiny synthetic stores (AM-RADIO arXiv 2312.06709, PHI-S arXiv 2410.01680)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stages.distill.config import DistillConfig
from stages.students.preprocess import student_pixels
from stages.distill.exported import load_exported
from stages.distill.run import load_run
from stages.distill.train import train
from stages.students.build import summary_tokens_for
from stages.normalize import NormVariant
from stages.students import HeadTarget
from test_distill_loader import make_tiny_stores

torch.set_num_threads(1)
TEACHERS = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_stores(tmp_path_factory.mktemp("train") / "store")


def _config(root: Path, out: Path, **kw) -> DistillConfig:
    base = dict(student="vit_tiny_test", teachers=TEACHERS, root=root, out_dir=out, img_size=64, steps=4,
                batch_size=4, lr=3e-3, warmup_steps=2, log_every=1, seed=0, weight_decay=0.0)
    return DistillConfig(**{**base, **kw})


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_phis_run_reduces_every_teacher_loss(tiny_root: Path, tmp_path: Path) -> None:
    run = train(_config(tiny_root, tmp_path / "run", steps=40, warmup_steps=4))
    rows = _metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 41))
    keys = [k for k in rows[0] if k.startswith("loss/")]
    assert sorted(keys) == sorted(["loss/alpha/summary", "loss/alpha/patches", "loss/beta/patches",
                                   "loss/gamma/summary", "loss/gamma/patches"])
    for k in keys:
        first = sum(r[k] for r in rows[:5]) / 5
        last = sum(r[k] for r in rows[-5:]) / 5
        assert last < 0.7 * first, f"{k}: first {first:.4f} last {last:.4f}"
    assert all(r["images_per_s"] > 0 for r in rows)
    config = json.loads((run / "config.json").read_text())
    assert config["norm"] == "phis" and len(config["manifest_hash"]) == 64
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 40 and set(ckpt) >= {"student", "heads", "optimizer", "scheduler", "loader", "rng"}


@pytest.mark.parametrize("norm", [v.value for v in NormVariant])
def test_every_norm_variant_trains_with_finite_losses(tiny_root: Path, tmp_path: Path, norm: str) -> None:
    run = train(_config(tiny_root, tmp_path / norm, norm=norm, steps=2))
    for row in _metrics(run):
        assert all(math.isfinite(v) for k, v in row.items() if k.startswith("loss")), row


def test_export_folds_denormalization_into_teacher_space(tiny_root: Path, tmp_path: Path) -> None:
    run = train(_config(tiny_root, tmp_path / "exp", norm="pca_w", steps=2))
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(run / "export.safetensors") == mode(run / "config.json")  # not 0600 while the rest is 0644
    config, student, heads, normalizers = load_run(run)
    exported = load_exported(run)  # the one loader of export.safetensors
    student_x, heads_x = exported.student, exported.heads
    x_BCHW = student_pixels(torch.randint(0, 255, (2, 64, 64, 3), dtype=torch.uint8), device="cpu")
    with torch.no_grad():
        norm_preds, teacher_preds = heads(student(x_BCHW)), heads_x(student_x(x_BCHW))
    for t in TEACHERS:
        s_norm, p_norm = norm_preds[t]
        s_teacher, p_teacher = teacher_preds[t]
        torch.testing.assert_close(p_teacher, normalizers[t]["patches"].invert(p_norm), rtol=1e-4, atol=1e-4)
        if s_norm is not None:
            torch.testing.assert_close(s_teacher, normalizers[t]["summary"].invert(s_norm), rtol=1e-4, atol=1e-4)
    # teacher-space outputs carry the teacher's scale: beta (scale 5, offset -3) is far from alpha (0.03)
    assert teacher_preds["beta"][1].abs().mean() > 20 * teacher_preds["alpha"][1].abs().mean()


def test_eradio_student_and_teacher_weights(tiny_root: Path, tmp_path: Path) -> None:
    run = train(_config(tiny_root, tmp_path / "eradio", student="eradio_tiny_test", steps=2,
                        teacher_weights={"beta": 2.0}, summary_weight=0.5))
    row = _metrics(run)[-1]
    parts = sum((2.0 if "beta" in k else 1.0) * (0.5 if k.endswith("summary") else 1.0) * v
                for k, v in row.items() if k.startswith("loss/"))
    assert row["loss"] == pytest.approx(parts, rel=1e-5)
    _, student, heads, _ = load_run(run)
    assert student.num_summary_tokens == 1 and heads.summary_token == {"alpha": 0, "gamma": 0}  # spatial mean


def test_config_errors_are_clear(tiny_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="valid: mse"):
        _config(tiny_root, tmp_path / "x", norm="whiten")
    with pytest.raises(ValueError, match="not among the selected teachers"):
        _config(tiny_root, tmp_path / "x", teacher_weights={"delta": 1.0})
    run = train(_config(tiny_root, tmp_path / "twice", steps=1))
    with pytest.raises(ValueError, match="--resume"):
        train(_config(tiny_root, run, steps=1))


def test_cli_distill_and_export(tiny_root: Path, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from pipeline import cmd_distill, cmd_export

    app = typer.Typer()
    cmd_distill.register(app)
    cmd_export.register(app)
    runner = CliRunner()
    args = ["distill", "--norm", "standardize", "--student", "vit_tiny_test", "--teachers", "alpha,gamma",
            "--root", str(tiny_root), "--out", str(tmp_path / "runs"), "--steps", "2", "--batch-size", "2",
            "--img-size", "64", "--teacher-weights", "gamma=2", "--workers", "0", "--log-every", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "standardize"
    config = json.loads((run / "config.json").read_text())
    assert config["teachers"] == ["alpha", "gamma"] and config["teacher_weights"] == {"gamma": 2.0}
    assert config["batch_size"] == 2 and config["num_workers"] == 0 and config["img_size"] == 64
    assert config["num_summary_tokens"] is None and load_run(run)[1].num_summary_tokens == 2  # automatic
    (run / "export.safetensors").unlink()
    assert runner.invoke(app, ["export", str(run)]).exit_code == 0 and (run / "export.safetensors").exists()
    bad = runner.invoke(app, [*args[:-6], "--teacher-weights", "gamma:2"])
    assert bad.exit_code != 0 and "NAME=NUMBER" in bad.output
    again = runner.invoke(app, args)  # the run exists and --resume was not given
    assert again.exit_code == 2 and "--resume" in again.output
    help_text = runner.invoke(app, ["distill", "--help"]).output
    assert "--teacher-weights" in help_text and "phis" in help_text and "--num-summary-tokens" in help_text
    one = runner.invoke(app, [*args, "--run-name", "k1", "--num-summary-tokens", "1"])
    assert one.exit_code == 0, one.output
    assert json.loads((tmp_path / "runs" / "k1" / "config.json").read_text())["num_summary_tokens"] == 1
    assert load_run(tmp_path / "runs" / "k1")[1].num_summary_tokens == 1
    unknown = runner.invoke(app, [*args, "--run-name", "x", "--norm", "whiten"])
    assert unknown.exit_code == 2 and "valid: mse" in unknown.output


def test_automatic_summary_tokens_one_per_summary_teacher() -> None:
    targets = [HeadTarget("a", 8, 8, (2, 2)), HeadTarget("b", 0, 8, (2, 2)), HeadTarget("c", 4, 8, (2, 2))]

    def k(student: str, **kw) -> int:
        config = DistillConfig(student=student, teachers=("a", "b", "c"), root=Path("r"), out_dir=Path("o"), **kw)
        return summary_tokens_for(config, targets)

    assert k("vit_tiny_test") == 2 and k("vit_b16") == 2  # one CLS token per teacher with a summary
    assert k("eradio_tiny_test") == 1  # E-RADIO's summary is the spatial mean
    assert k("vit_tiny_test", num_summary_tokens=3) == 3
    no_summary = [HeadTarget("b", 0, 8, (2, 2))]
    config = DistillConfig(student="vit_tiny_test", teachers=("b",), root=Path("r"), out_dir=Path("o"))
    assert summary_tokens_for(config, no_summary) == 1
    with pytest.raises(ValueError, match="num_summary_tokens must be >= 1"):
        DistillConfig(student="vit_tiny_test", teachers=("b",), root=Path("r"), out_dir=Path("o"), num_summary_tokens=0)


def test_cli_module_imports_no_heavy_stage_and_lists_every_norm() -> None:
    code = ("import sys, pipeline.cmd_distill as c; "
            "print(sorted(m for m in ('torch', 'ray', 'zarr', 'matplotlib', 'stages') if m in sys.modules)); "
            "print(','.join(c.NORM_NAMES))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", ",".join(v.value for v in NormVariant)]


# ---- issue 11: summary loss, one optimizer for every variant ------------------------------------------------

def test_summary_loss_is_cosine_on_raw_summaries_by_default(tiny_root: Path, tmp_path: Path) -> None:
    """Default: summaries are not normalized by the loader (identity normalizer) and trained with cosine,
    whatever the feature variant; "variant" applies the variant's normalizer and loss. The run records it."""
    import numpy as np

    from stages.distill.loader import StoreBatches, StoreSet, make_loader, targets_on_device
    from stages.distill.train import distill_loss, normalize_targets
    from stages.normalize import target_loss

    raw = StoreSet(tiny_root, TEACHERS, norm=NormVariant.PHIS)
    own = StoreSet(tiny_root, TEACHERS, norm=NormVariant.PHIS, summary_loss="variant")
    t = next(t for t in TEACHERS if "summary" in raw.normalizers[t])
    assert raw.normalizers[t]["summary"].variant is NormVariant.COSINE  # identity: raw summaries
    assert own.normalizers[t]["summary"].variant is NormVariant.PHIS
    def first_batch(stores: StoreSet) -> dict:  # targets normalized as the training step does
        b = next(iter(make_loader(StoreBatches(stores, split="train", batch_size=4, img_size=64, seed=0),
                                  num_workers=0)))
        return {**b, **normalize_targets(targets_on_device(b, "cpu"), stores.normalizers)}

    b_raw, b_own = first_batch(raw), first_batch(own)
    s_BC, _, _ = raw.stores[t].read_images(b_raw["image_B"].numpy())
    stored = np.asarray(s_BC[np.arange(4), b_raw["view_B"].numpy()], np.float32)
    torch.testing.assert_close(b_raw[f"{t}/summary"], torch.from_numpy(stored))
    torch.testing.assert_close(b_own[f"{t}/summary"], own.normalizers[t]["summary"].apply(torch.from_numpy(stored)))
    torch.testing.assert_close(b_raw[f"{t}/patches"], b_own[f"{t}/patches"])  # features: the variant either way

    pred = {u: (None if f"{u}/summary" not in b_raw else torch.randn_like(b_raw[f"{u}/summary"]),
                torch.randn_like(b_raw[f"{u}/patches"])) for u in TEACHERS}
    config = _config(tiny_root, tmp_path / "x", norm="mse")
    _, parts = distill_loss(config, pred, b_raw, torch.device("cpu"))
    assert parts[f"loss/{t}/summary"] == target_loss("cosine", pred[t][0], b_raw[f"{t}/summary"])
    _, parts = distill_loss(_config(tiny_root, tmp_path / "x", norm="mse", summary_loss="variant"), pred, b_raw,
                            torch.device("cpu"))
    assert parts[f"loss/{t}/summary"] == target_loss("mse", pred[t][0], b_raw[f"{t}/summary"])

    run = train(_config(tiny_root, tmp_path / "rec", norm="zca", steps=1))
    saved = json.loads((run / "config.json").read_text())
    assert saved["summary_loss"] == "cosine"
    assert saved["normalizers"][t]["summary"]["variant"] == "cosine"
    assert saved["normalizers"][t]["patches"]["variant"] == "zca"
    with pytest.raises(ValueError, match="unknown summary loss 'l2'"):
        _config(tiny_root, tmp_path / "bad", summary_loss="l2")
    legacy = {k: v for k, v in saved.items() if k != "summary_loss"}  # a config.json from before the field
    assert DistillConfig.from_dict(legacy).summary_loss == "variant"


def test_clipped_fraction_is_logged_and_default_does_not_clip(tiny_root: Path, tmp_path: Path) -> None:
    off = _metrics(train(_config(tiny_root, tmp_path / "off", norm="mse", steps=3)))
    assert all(r["clip_frac"] == 0.0 and r["grad_norm"] > 0 for r in off)
    tight = _metrics(train(_config(tiny_root, tmp_path / "tight", norm="mse", steps=3, grad_clip=1e-6)))
    assert all(r["clip_frac"] == 1.0 for r in tight)
    loose = _metrics(train(_config(tiny_root, tmp_path / "loose", norm="mse", steps=3, grad_clip=1e9)))
    assert all(r["clip_frac"] == 0.0 for r in loose)
    assert DistillConfig(student="s", teachers=("a",), root=".", out_dir=".").grad_clip == 0.0


def test_no_weight_decay_on_tokens_position_embeddings_biases_and_norms() -> None:
    from stages.distill.train import Distiller, make_optimizer, no_weight_decay_names
    from stages.students import TeacherHeads, build_student

    student = build_student("vit_tiny_test", img_size=64, num_summary_tokens=2)
    heads = TeacherHeads(student.embed_dim, [HeadTarget("t", 8, 8, (4, 4))], num_summary_tokens=2)
    model = Distiller(student, heads)
    exempt = no_weight_decay_names(model)
    assert {"student.model.cls_token", "student.model.reg_token", "student.model.pos_embed"} <= exempt
    assert "student.model.patch_embed.proj.weight" not in exempt and "heads.patch_heads.t.0.weight" not in exempt
    assert all(p.ndim < 2 for n, p in model.named_parameters() if n in exempt and "token" not in n
               and "pos_embed" not in n)
    optimizer, _ = make_optimizer(_config(Path("."), Path("."), weight_decay=0.05), model)
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    named = dict(model.named_parameters())
    assert optimizer.param_groups[0]["weight_decay"] == 0.05 and optimizer.param_groups[1]["weight_decay"] == 0.0
    assert id(named["student.model.pos_embed"]) not in decayed
    assert id(named["student.model.blocks.0.attn.qkv.weight"]) in decayed
