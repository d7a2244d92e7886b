"""Student views rendered once (`pipeline views`, store_schema/view_store.py) and read by stage two's loader.

The loader must show the student exactly what it would render itself from the image file (same decode,
crop box, flip, resize: FKD arXiv 2112.01528 / AM-RADIO arXiv 2312.06709 fixed views), without decoding;
an interrupted render resumes at the shards not marked complete; bad input is recorded and refused as
without the store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stages.distill.config import DistillConfig
from stages.distill.loader import StoreBatches, StoreSet
from stages.extract.student_views import render_images, run_views
from stages.normalize import NormVariant
from store_schema.errors import StoreCorruptionError, StoreMismatchError
from store_schema.layout import student_views_path
from store_schema.manifest import read_manifest
from store_schema.view_store import create_view_store, open_view_store
from tests.test_distill_loader import _collect, make_tiny_stores

pytest_plugins = ["tests.ray_fixture"]
REPO = Path(__file__).resolve().parents[1]
KW = dict(split="train", batch_size=3, img_size=32, seed=5, shuffle_block=2, epochs=1)


@pytest.fixture(scope="module")
def rendered_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_tiny_stores(tmp_path_factory.mktemp("views") / "store", teachers=("alpha", "gamma"))
    report = run_views(root, 32, use_ray=False)
    assert report.shards_rendered == open_view_store(student_views_path(root, 32)).num_shards
    return root


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stored_views_are_the_decoded_views_without_a_decode(rendered_root: Path, num_workers: int) -> None:
    stores = StoreSet(rendered_root, ("alpha", "gamma"), norm=NormVariant.PHIS)
    from_store = StoreBatches(stores, **KW, student_views="store")
    decoded = StoreBatches(stores, **KW, student_views="decode")
    assert "read from" in from_store.views_note and "decoded" in decoded.views_note
    a, b = _collect(from_store, None, num_workers=num_workers), _collect(decoded, None, num_workers=num_workers)
    assert len(a) == len(b) == from_store.batches_per_epoch
    for x, y in zip(a, b):
        assert x["image_B"].tolist() == y["image_B"].tolist() and x["view_B"].tolist() == y["view_B"].tolist()
        assert torch.equal(x["image_BHW3"], y["image_BHW3"])  # bit for bit
        assert torch.equal(x["gamma/patches"], y["gamma/patches"])
    if num_workers == 0:  # counters live in this process only without workers
        units = {int(i) // stores.unit_size for x in a for i in x["image_B"].tolist()}
        assert from_store.image_decodes == 0 and from_store.view_reads == len(units)
        assert decoded.view_reads == 0 and decoded.image_decodes > 0


def test_auto_reads_a_complete_store_and_budgets_its_bytes(rendered_root: Path) -> None:
    stores = StoreSet(rendered_root, ("alpha", "gamma"), norm=NormVariant.PHIS)
    auto = StoreBatches(stores, **KW)
    assert auto.views is not None and "pre-rendered at 32 px" in auto.views_note
    per_unit = stores.unit_size * stores.manifest.view_spec.num_views * 32 * 32 * 3
    assert auto.unit_nbytes == stores.unit_nbytes + per_unit
    other_size = StoreBatches(stores, **{**KW, "img_size": 48})  # no store at 48 px: decoded, and said so
    assert other_size.views is None and "pipeline views" in other_size.views_note and "48" in other_size.views_note
    with pytest.raises(ValueError, match=r"no student-view store at .*48px\.zarr.*pipeline views"):
        StoreBatches(stores, **{**KW, "img_size": 48}, student_views="store")


def test_unfinished_store_is_decoded_in_auto_and_refused_in_store_mode(tmp_path: Path) -> None:
    root = make_tiny_stores(tmp_path / "s", teachers=("gamma",))
    run_views(root, 32, use_ray=False)
    store = open_view_store(student_views_path(root, 32), mode="r+")
    store._complete[2] = 0  # as a render killed after writing shard 2's file, before marking it
    stores = StoreSet(root, ("gamma",), norm=NormVariant.PHIS)
    auto = StoreBatches(stores, **KW)
    assert auto.views is None and "1 of 5 shards not rendered yet" in auto.views_note
    with pytest.raises(ValueError, match="not rendered yet; finish it with `pipeline views"):
        StoreBatches(stores, **KW, student_views="store")
    again = run_views(root, 32, use_ray=False)
    assert (again.shards_rendered, again.shards_kept) == (1, 4)


_KILL_AFTER_TWO = """
import os, signal, sys
from store_schema.view_store import ViewStore
from stages.extract.student_views import run_views
orig, done = ViewStore.mark_complete, []
def mark(self, k):
    orig(self, k)
    done.append(k)
    if len(done) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
ViewStore.mark_complete = mark
run_views(sys.argv[1], 32, use_ray=False)
"""


def test_a_killed_render_resumes_without_redoing_finished_shards(tmp_path: Path) -> None:
    root = make_tiny_stores(tmp_path / "s", teachers=("gamma",))
    proc = subprocess.run([sys.executable, "-c", _KILL_AFTER_TWO, str(root)], cwd=REPO, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    store = open_view_store(student_views_path(root, 32))
    assert store.completed_shards().tolist() == [0, 1]
    shard_files = {k: store.path / "views" / "c" / str(k) / "0" / "0" / "0" / "0" for k in (0, 1)}
    before = {k: p.stat().st_mtime_ns for k, p in shard_files.items()}
    report = run_views(root, 32, use_ray=False)
    assert (report.shards_rendered, report.shards_kept) == (3, 2)
    assert {k: p.stat().st_mtime_ns for k, p in shard_files.items()} == before  # finished shards not redone
    m = read_manifest(root / "manifest.parquet")
    want, valid, _ = render_images(m, 0, m.num_images, 32)
    np.testing.assert_array_equal(np.asarray(open_view_store(store.path).views[:]), want)
    np.testing.assert_array_equal(np.asarray(open_view_store(store.path).valid[:]), valid)


def test_an_image_changed_since_the_manifest_is_recorded_and_refused_as_without_the_store(tmp_path: Path) -> None:
    root = make_tiny_stores(tmp_path / "s", teachers=("gamma",))
    stores = StoreSet(root, ("gamma",), norm=NormVariant.PHIS)
    i = int(stores.samples("train")[0, 0])
    Image.new("RGB", (40, 40), (9, 9, 9)).save(stores.manifest.image_path(i))
    report = run_views(root, 32, use_ray=False)
    assert list(report.bad) == [i] and "changed since the manifest" in report.bad[i]
    assert f"{i}: " in report.summary() and "1 image(s) skipped" in report.summary()
    assert not open_view_store(student_views_path(root, 32)).valid[i]
    ds = StoreBatches(stores, split="train", batch_size=len(stores.samples("train")), img_size=32, seed=0,
                      student_views="store")
    with pytest.raises(ValueError, match="changed since the manifest"):
        _collect(ds, 1)


def test_a_damaged_view_shard_is_an_error_naming_the_remedy(tmp_path: Path) -> None:
    root = make_tiny_stores(tmp_path / "s", teachers=("gamma",))
    run_views(root, 32, use_ray=False)
    shard = student_views_path(root, 32) / "views" / "c" / "0" / "0" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF  # inside the first inner chunk
    shard.write_bytes(bytes(data))
    stores = StoreSet(root, ("gamma",), norm=NormVariant.PHIS)
    ds = StoreBatches(stores, split="train", batch_size=len(stores.samples("train")), img_size=32, seed=0)
    with pytest.raises(StoreCorruptionError, match=r"student-view store .* is damaged .*crc32c.*run `pipeline views "
                                                   r"--size 32` again, or train with --student-views decode"):
        _collect(ds, 1)


def test_a_store_of_another_manifest_or_shard_size_is_refused(tmp_path: Path) -> None:
    root = make_tiny_stores(tmp_path / "s", teachers=("gamma",))
    run_views(root, 32, use_ray=False)
    with pytest.raises(StoreMismatchError, match="shard_size"):
        run_views(root, 32, shard_size=3, use_ray=False)
    other = make_tiny_stores(tmp_path / "o", teachers=("gamma",), view_seed=1)  # other views: another manifest
    create_view_store(student_views_path(other, 32), manifest=read_manifest(other / "manifest.parquet"), size=32,
                      shard_size=4)
    (student_views_path(root, 32) / "zarr.json").write_bytes((student_views_path(other, 32) / "zarr.json").read_bytes())
    stores = StoreSet(root, ("gamma",), norm=NormVariant.PHIS)
    with pytest.raises(StoreMismatchError, match="manifest_hash"):
        StoreBatches(stores, **KW)


def test_student_views_option_is_checked_and_resumable() -> None:
    base = dict(student="vit_tiny_test", teachers=("a",), root="r", out_dir="o")
    with pytest.raises(ValueError, match="valid: auto, store, decode"):
        DistillConfig(**base, student_views="sometimes")
    assert DistillConfig(**base).resume_conflicts(DistillConfig(**base, student_views="decode")) == []


def test_cli_renders_on_local_ray_with_the_size_from_params(tmp_path: Path, ray_session) -> None:
    root = make_tiny_stores(tmp_path / "s", teachers=("gamma",))
    params = (REPO / "params.yaml").read_text()
    assert "  root: data/store" in params and "  img_size: 64" in params
    (tmp_path / "params.yaml").write_text(params.replace("  root: data/store", f"  root: {root}")
                                          .replace("  img_size: 64", "  img_size: 24"))
    from typer.testing import CliRunner

    from pipeline.cli import app

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        res = CliRunner().invoke(app, ["views", "--workers", "2", "--receipt", "receipts/views.json"])
    finally:
        os.chdir(cwd)
    assert res.exit_code == 0, res.output
    assert "student views 24px" in res.output and "5 shard(s) rendered" in res.output
    receipt = json.loads((tmp_path / "receipts" / "views.json").read_text())
    assert receipt["24"]["complete_shards"] == [0, 1, 2, 3, 4] and receipt["24"]["size"] == 24
    m = read_manifest(root / "manifest.parquet")
    want, _, _ = render_images(m, 0, m.num_images, 24)
    np.testing.assert_array_equal(np.asarray(open_view_store(student_views_path(root, 24)).views[:]), want)
    info = CliRunner().invoke(app, ["store", "info", "--root", str(root)])
    assert info.exit_code == 0, info.output
    assert "student views 24px:" in info.output and "5/5 shards complete, 16 of 17 images rendered" in info.output
