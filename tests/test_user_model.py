"""The trained student the way vision users load it (AM-RADIO arXiv 2312.06709 adaptors in teacher space,
PHI-S arXiv 2410.01680 inverse folded in): the one loader and `torch.hub.load(..., source='local')` in an
interpreter that cannot import zarr, DVC, Ray or the other pipeline-only packages; `pipeline export --onnx`
under onnxruntime; the trunk in timm's layout through `timm.create_model`. Each against the training side
(the run's checkpoint with its normalizers), on real tiny runs of a ViT, a `timm:` ViT and an E-RADIO student.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from stages.distill.config import DistillConfig
from stages.distill.exported import load_exported
from stages.distill.run import load_run
from stages.distill.train import train
from tests.absent_packages import REPO, env_without, loaded_modules
from test_distill_loader import make_tiny_stores

torch.set_num_threads(1)
TEACHERS = ("alpha", "beta", "gamma")  # beta has no summary (SAM-like)
STUDENTS = {"vit": "vit_tiny_test", "timm": "timm:vit_tiny_patch16_224", "eradio": "eradio_tiny_test"}
# What a user loading a student must not need: the stores, the sweep, the cluster, the plots, the exporters.
NOT_NEEDED = ("zarr", "numcodecs", "dask", "pyarrow", "pandas", "ray", "dvc", "matplotlib", "open_clip", "sklearn",
              "onnx", "onnxruntime", "onnxscript", "s3fs")
TOL = 1e-4


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("user_model")
    root = make_tiny_stores(base / "store", n_images=8, shard_size=4)
    out = {}
    for key, student in STUDENTS.items():
        config = DistillConfig(student=student, teachers=TEACHERS, root=root, out_dir=base / "runs" / key, norm="phis",
                               img_size=64, steps=2, batch_size=4, warmup_steps=1, log_every=1, seed=0)
        out[key] = train(config)
    return out


def _images(n: int = 3) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


def _training_side(run: Path, images: np.ndarray) -> dict[str, torch.Tensor]:
    """The run's checkpoint (student + heads trained on normalized targets) with each prediction mapped back to
    the teacher's space by its normalizer's inverse: what every exported form must reproduce."""
    _, student, heads, normalizers = load_run(run)
    model = load_exported(run)
    x_BCHW = model.pixels(images)
    with torch.no_grad():
        out = student.eval()(x_BCHW)
        preds = heads.eval()(out)
    want = {"backbone_summary": out.summary_BKC, "backbone_features": out.features_BhwC}
    for t, (s, p) in preds.items():
        if s is not None:
            want[f"{t}.summary"] = normalizers[t]["summary"].invert(s)
        want[f"{t}.features"] = normalizers[t]["patches"].invert(p)
    return want


def _close(got: np.ndarray | torch.Tensor, want: torch.Tensor, what: str) -> None:
    got_np, want_np = np.asarray(got, np.float64), want.double().numpy()
    assert got_np.shape == want_np.shape, (what, got_np.shape, want_np.shape)
    worst = float(np.max(np.abs(got_np - want_np) / (1.0 + np.abs(want_np))))
    assert worst <= TOL, f"{what}: deviation {worst:.2e} > {TOL}"


_LOAD_SCRIPT = """
import sys, torch, numpy as np
from safetensors.torch import save_file
repo, run, images_path, out_path = sys.argv[1:5]
images = np.load(images_path)
from stages.distill.exported import load_exported
direct = load_exported(run)
hub = torch.hub.load(repo, "student", source="local", path=run + "/export.safetensors",
                     adaptor_names=["gamma", "beta"])
flat = {}
with torch.no_grad():
    for tag, model in (("direct", direct), ("hub", hub)):
        out = model(model.pixels(images))
        flat[tag + "/backbone_summary"] = out.backbone_summary_BKC
        flat[tag + "/backbone_features"] = out.backbone_features_BhwC
        for name, a in out.adaptors.items():
            if a.summary_BC is not None:
                flat[f"{tag}/{name}.summary"] = a.summary_BC
            flat[f"{tag}/{name}.features"] = a.features_BhwC
save_file({k: v.contiguous() for k, v in flat.items()}, out_path)
print("adaptors:", ",".join(direct.adaptor_names), "|", ",".join(hub.adaptor_names))
print("loaded:", %s)
print("training code:", sorted(m for m in ("stages.distill.loader", "stages.distill.train", "stages.extract",
                                           "stages.teachers.registry", "stages.teachers.weights",
                                           "stages.teachers.dinov2", "stages.teachers.open_clip_family",
                                           "stages.teachers.sam", "store_schema.teacher_store")
                                 if m in sys.modules))
"""


@pytest.mark.parametrize("key", ["vit", "eradio"])
def test_loader_and_torch_hub_need_no_store_packages_and_equal_the_training_side(runs, tmp_path, key):
    run, images = runs[key], _images()
    np.save(tmp_path / "images.npy", images)
    script = _LOAD_SCRIPT % (loaded_modules(NOT_NEEDED),)
    res = subprocess.run([sys.executable, "-c", script, str(REPO), str(run), str(tmp_path / "images.npy"),
                          str(tmp_path / "out.safetensors")], capture_output=True, text=True, timeout=300,
                         env=env_without(tmp_path, NOT_NEEDED), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert "adaptors: alpha,beta,gamma | gamma,beta" in lines
    assert "loaded: []" in lines and "training code: []" in lines, res.stdout
    got = load_file(str(tmp_path / "out.safetensors"))
    want = _training_side(run, images)
    for name, w in want.items():
        _close(got[f"direct/{name}"], w, f"load_exported {name}")
        if not name.startswith("alpha"):
            _close(got[f"hub/{name}"], w, f"torch.hub {name}")
    assert not any(k.startswith("hub/alpha") for k in got)  # only the adaptors asked for


def test_torch_hub_adaptor_names_unknown_lists_the_valid_ones_and_empty_is_the_backbone(runs):
    with pytest.raises(ValueError, match=r"unknown or repeated adaptor name\(s\) \['clip'\]; valid: \['alpha', "
                                         r"'beta', 'gamma'\]"):
        torch.hub.load(str(REPO), "student", source="local", path=str(runs["vit"]), adaptor_names=["clip"])
    backbone = torch.hub.load(str(REPO), "student", source="local", path=str(runs["vit"]), adaptor_names=[])
    with torch.no_grad():
        out = backbone(backbone.pixels(_images(1)))
    assert out.adaptors == {} and out.backbone_features_BhwC.shape == (1, 4, 4, 64)
    assert backbone.preprocessing == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                      "input_size": 64, "patch_size": 16, "interpolation": "bicubic"}


@pytest.mark.parametrize("key", ["vit", "eradio"])
def test_pipeline_export_onnx_matches_pytorch_under_onnxruntime_at_any_batch(runs, key):
    import onnx
    import onnxruntime as ort

    from pipeline.cli import app

    run = runs[key]
    res = CliRunner().invoke(app, ["export", str(run), "--onnx"])
    assert res.exit_code == 0, res.output
    assert f"onnx: {run / 'export.onnx'} (onnxruntime vs PyTorch at batch 1, 3: max deviation" in res.output
    graph = onnx.load(str(run / "export.onnx"), load_external_data=False)
    meta = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(meta["adaptor_names"]) == list(TEACHERS) and meta["outputs"] == "teacher_space"
    assert json.loads(meta["preprocessing"])["input_size"] == 64 and json.loads(meta["config"])["student"] == STUDENTS[key]
    session = ort.InferenceSession(str(run / "export.onnx"), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)  # a symbolic (dynamic) batch dimension
    names = [o.name for o in session.get_outputs()]
    assert names == ["backbone_summary", "backbone_features", "alpha.summary", "alpha.features", "beta.features",
                     "gamma.summary", "gamma.features"]
    for batch in (5, 1):
        images = _images(batch)
        want = _training_side(run, images)
        got = session.run(names, {"pixels": load_exported(run).pixels(images).numpy()})
        for name, g in zip(names, got):
            _close(g, want[name], f"onnx {name} batch {batch}")


def test_timm_student_trunk_loads_with_timm_create_model_and_matches(runs):
    import timm

    from pipeline.cli import app

    run = runs["timm"]
    res = CliRunner().invoke(app, ["export", str(run)])
    assert res.exit_code == 0, res.output
    folder = run / "timm"
    assert f"timm: {folder}" in res.output and sorted(p.name for p in folder.iterdir()) == ["config.json",
                                                                                             "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224" and config["model_args"]["reg_tokens"] == 1  # K = 2
    assert config["pretrained_cfg"]["mean"] == [0.485, 0.456, 0.406] and config["pretrained_cfg"]["input_size"] == [3, 64, 64]
    model = load_exported(run)
    x_BCHW = model.pixels(_images())
    with torch.no_grad():
        want = model(x_BCHW)
    by_overlay = timm.create_model(config["architecture"], pretrained=True,
                                   pretrained_cfg_overlay={"file": str(folder / "model.safetensors")},
                                   **config["model_args"])
    by_folder = timm.create_model(f"local-dir:{folder}", pretrained=True)
    K = want.backbone_summary_BKC.shape[1]
    for trunk in (by_overlay.eval(), by_folder.eval()):
        with torch.no_grad():
            tokens_BNC = trunk.forward_features(x_BCHW)
        torch.testing.assert_close(tokens_BNC[:, :K], want.backbone_summary_BKC, rtol=0, atol=0)
        torch.testing.assert_close(tokens_BNC[:, K:].reshape(want.backbone_features_BhwC.shape),
                                   want.backbone_features_BhwC, rtol=0, atol=0)
    assert list(timm.data.resolve_data_config({}, model=by_folder)["mean"]) == [0.485, 0.456, 0.406]


def test_export_of_a_vit_writes_the_timm_layout_and_eradio_none(runs):
    from pipeline.cli import app

    (runs["vit"] / "export.onnx").write_bytes(b"made from an earlier export")
    res = CliRunner().invoke(app, ["export", str(runs["vit"])])
    assert res.exit_code == 0 and (runs["vit"] / "timm" / "model.safetensors").is_file()
    assert f"removed: {runs['vit'] / 'export.onnx'}" in res.output and not (runs["vit"] / "export.onnx").exists()
    assert "removed:" not in res.output.replace(f"removed: {runs['vit'] / 'export.onnx'}", "")  # timm/ rewritten
    res = CliRunner().invoke(app, ["export", str(runs["eradio"])])
    assert res.exit_code == 0 and "timm:" not in res.output and not (runs["eradio"] / "timm").exists()


def test_onnx_without_the_extra_says_which_extra_to_install(runs, tmp_path):
    env = env_without(tmp_path, ("onnx", "onnxscript", "onnxruntime"))
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "export", str(runs["eradio"]), "--onnx"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ONNX export") and "pip install 'agglo-distill[onnx]'" in last, res.stderr
