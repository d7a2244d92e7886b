"""Downstream evaluation of a real (tiny) run end to end: real stores (in-process extraction), the real
tiny_clip text tower, a few distillation steps, then `evaluate_run` with zero-shot, linear-probe and
open-vocabulary segmentation; the exported student (`load_exported`) against the run's checkpoint."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from stages.extract.driver import ExtractConfig, run_extract
from stages.corpus.build_manifest import build_manifest
from stages.corpus.demo import SHAPE_CLASSES, shapes_image
from stages.distill import load_exported
from stages.distill.config import DistillConfig
from stages.distill.run import load_run
from stages.distill.train import train
from stages.evaluate.downstream import DownstreamConfig, flatten_downstream
from stages.evaluate.evaluate import evaluate_run
from stages.evaluate.zeroshot import zeroshot_predict
from stages.extract.text import extract_text
from stages.prompts import prompt_set
from store_schema import text_store
from store_schema.layout import teacher_store_path
from store_schema.manifest import ViewSpec, read_manifest
from store_schema.teacher_store import open_teacher_store

TEACHERS = ("tiny_clip", "tiny_sam")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("downstream")
    images, masks = base / "images", base / "masks"
    (images / "shapes").mkdir(parents=True)
    (masks / "shapes").mkdir(parents=True)
    rows = []
    for i in range(20):
        img, mask = shapes_image(100 + i)
        Image.fromarray(img).save(images / "shapes" / f"s{i:02d}.png")
        Image.fromarray(mask, mode="L").save(masks / "shapes" / f"s{i:02d}.png")
        rows.append((f"shapes/s{i:02d}.png", "many" if mask.astype(bool).mean() > 0.25 else "few"))
    with open(base / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("uri", "label"), *rows])
    (base / "zs.txt").write_text("few\tfew shapes\nmany\tmany shapes\n")
    (base / "seg.txt").write_text("\n".join(SHAPE_CLASSES) + "\n")
    root = base / "store"
    build_manifest(images, out_dir=root, view_spec=ViewSpec(num_views=1), val_fraction=0.4)
    for t in TEACHERS:
        run_extract(root, t, ExtractConfig(workers=0, shard_size=8, progress=False))
    extract_text(root, "tiny_clip", [prompt_set(base / "zs.txt", "simple"), prompt_set(base / "seg.txt", "simple")])
    config = DistillConfig(student="vit_tiny_test", teachers=TEACHERS, root=root, out_dir=base / "runs" / "phis",
                           norm="phis", img_size=64, steps=4, batch_size=4, warmup_steps=1, log_every=1)
    train(config)
    return base, config.out_dir


def _cfg(base, **kw):
    return DownstreamConfig(zeroshot_classes=base / "zs.txt", zeroshot_templates="simple", seg_masks=base / "masks",
                            seg_classes=base / "seg.txt", seg_templates="simple", seg_probe_steps=30, **kw)


def test_evaluate_reports_zeroshot_and_segmentation_with_teacher_references(run_dir):
    base, run = run_dir
    res = evaluate_run(run, labels_path=base / "labels.csv", downstream=_cfg(base))
    z = res["zeroshot"]["tiny_clip"]
    assert set(res["zeroshot"]) == {"tiny_clip"}  # only the CLIP teacher has a text tower
    assert all(0.0 <= z[k] <= 1.0 for k in ("top1", "teacher_top1", "agreement"))
    assert res["downstream_info"]["zeroshot"]["tiny_clip"]["num_classes"] == 2
    seg = res["seg"]
    assert set(seg["teacher_linear_miou"]) == set(TEACHERS) and set(seg["openvocab_miou"]) == {"tiny_clip"}
    assert 0.0 < seg["linear_miou"] <= 1.0 and res["downstream_info"]["seg"]["num_classes"] == len(SHAPE_CLASSES)
    flat = flatten_downstream(res)
    assert {"zeroshot/tiny_clip/top1", "zeroshot/tiny_clip/teacher_top1", "zeroshot/tiny_clip/agreement",
            "seg/linear_miou", "seg/openvocab_miou/tiny_clip", "seg/teacher_openvocab_miou/tiny_clip",
            "seg/teacher_linear_miou/tiny_sam"} <= set(flat)

    # the teacher reference, recomputed from the store by hand
    manifest = read_manifest(run_dir[0] / "store" / "manifest.parquet")
    labels = {u: lab for u, lab in csv.reader(open(base / "labels.csv")) if u != "uri"}
    ids = np.array([i for i, u in enumerate(manifest.uris) if manifest.split[i] == "val" and manifest.ok_N[i]])
    path = teacher_store_path(base / "store", "tiny_clip")
    summary, _, _ = open_teacher_store(path).read_images(ids)
    text = text_store.read_text_embeddings(path, prompt_set(base / "zs.txt", "simple"))
    y = np.array([["few", "many"].index(labels[manifest.uris[i]]) for i in ids])
    assert z["teacher_top1"] == pytest.approx(float(np.mean(zeroshot_predict(summary[:, 0], text) == y)))
    assert res["downstream_info"]["zeroshot"]["tiny_clip"]["num_images"] == len(ids)


def test_evaluate_without_the_prompt_set_says_how_to_extract_it(run_dir, tmp_path):
    base, run = run_dir
    other = tmp_path / "other.txt"
    other.write_text("few\tfew objects\nmany\tmany objects\n")  # same labels, other prompts: other hash
    with pytest.raises(text_store.MissingTextEmbeddingsError, match=r"other\.txt.*pipeline extract-text"):
        evaluate_run(run, labels_path=base / "labels.csv",
                     downstream=DownstreamConfig(zeroshot_classes=other, zeroshot_templates="simple"))


def test_load_exported_gives_teacher_space_outputs_of_the_run(run_dir):
    _, run = run_dir
    model = load_exported(run)
    assert model.adaptor_names == list(TEACHERS)
    _, student, heads, normalizers = load_run(run)
    pixels = model.pixels(np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
    with torch.no_grad():
        out = model(pixels)
        preds = heads(student(pixels))
    for t in TEACHERS:
        s_norm, p_norm = preds[t]
        np.testing.assert_allclose(out.adaptors[t].features_BhwC.numpy(),
                                   normalizers[t]["patches"].invert(p_norm).numpy(), rtol=1e-4, atol=1e-5)
        if s_norm is not None:
            np.testing.assert_allclose(out.adaptors[t].summary_BC.numpy(),
                                       normalizers[t]["summary"].invert(s_norm).numpy(), rtol=1e-4, atol=1e-6)
    assert out.adaptors["tiny_sam"].summary_BC is None and out.backbone_features_BhwC.shape[-1] == 64
    with pytest.raises(FileNotFoundError, match="pipeline export"):
        load_exported(run / "nothing_here")
