"""s3:// store roots against a real S3 server (moto's server mode, started here on 127.0.0.1): the corpus
manifest, extraction killed and resumed, `store verify` / `store info`, the creation marker, transcoding
from a local store to S3. Configured the standard way (AWS_ENDPOINT_URL and dummy credentials)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from stages.extract.driver import ExtractConfig, run_extract
from stages.extract.transcode import transcode_store
from stages.extract.verify import verify_store
from store_schema import layout, location
from store_schema.errors import StoreNotFoundError
from store_schema.manifest import read_manifest
from store_schema.teacher_store import open_teacher_store

pytest_plugins = ["tests.ray_fixture", "tests.s3_fixture"]
REPO = Path(__file__).resolve().parents[1]
TEACHER = "tiny_sam"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from tests.ray_fixture import build_corpus

    root = build_corpus(tmp_path_factory.mktemp("s3_corpus"), n_ok=10, num_views=2)  # 12 images, 2 bad
    return root.parent / "images", root


def _invoke(args: list) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res.exit_code, " ".join(res.output.split())


def _corpus(url: str, images_dir: Path) -> None:
    code, out = _invoke(["corpus", images_dir, "--out", url, "--views", "2"])
    assert code == 0, out


def test_corpus_manifest_on_s3(s3, images):
    images_dir, local_root = images
    url = f"{s3}/manifest-test"
    _corpus(url, images_dir)
    assert location.is_file(f"{url}/manifest.parquet")
    m, local = read_manifest(layout.manifest_path(url)), read_manifest(layout.manifest_path(local_root))
    assert m.path == f"{url}/manifest.parquet" and m.num_images == local.num_images == 12
    assert m.uris == local.uris and m.sha256 == local.sha256 and m.image_root == images_dir.resolve()
    np.testing.assert_array_equal(m.view_boxes_NV4, local.view_boxes_NV4)  # same views as a local manifest


def _completed(url: str) -> list[int]:
    try:
        return [int(k) for k in open_teacher_store(layout.teacher_store_path(url, TEACHER)).completed_shards()]
    except StoreNotFoundError:
        return []


@pytest.mark.slow
def test_extraction_on_s3_killed_and_resumed_then_verified(s3, images, tmp_path):
    images_dir, local_root = images
    url = f"{s3}/killed"
    _corpus(url, images_dir)
    cmd = [sys.executable, "-m", "pipeline.cli", "extract", "--no-ray", "--teacher", TEACHER, "--root", url,
           "--shard-size", "1", "--batch-size", "2", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 180
        while not _completed(url) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"finished before it could be killed: {proc.stderr.read()}"
    done = _completed(url)
    assert 0 < len(done) < 12, done

    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    m = re.search(r"computed shards \[([\d, ]*)\]; skipped \[([\d, ]*)\]", rerun.stdout)
    assert m, rerun.stdout
    computed = [int(v) for v in m.group(1).split(",") if v.strip()]
    assert sorted(computed) == sorted(set(range(12)) - set(done))  # nothing complete was redone

    # the same values as a local extraction of the same images and views
    run_extract(local_root, TEACHER, ExtractConfig(workers=0, shard_size=1, batch_size=2, progress=False))
    remote = open_teacher_store(layout.teacher_store_path(url, TEACHER))
    local = open_teacher_store(layout.teacher_store_path(local_root, TEACHER))
    assert np.array_equal(np.asarray(remote.patches[:]), np.asarray(local.patches[:]))
    assert np.array_equal(np.asarray(remote.valid[:]), np.asarray(local.valid[:]))
    assert remote.stats("patches").content_hash() == local.stats("patches").content_hash()
    assert verify_store(remote).complete

    code, out = _invoke(["store", "verify", "--root", url])
    assert code == 0 and "12 ok, 0 damaged, 0 incomplete of 12 shards" in out, out
    code, out = _invoke(["store", "info", "--root", url])
    assert code == 0 and TEACHER in out, out

    # stage two and evaluation read the stores (and keep their normalizers) on S3: same losses as from disk
    runs = {}
    for name, root in (("s3", url), ("local", local_root)):
        code, out = _invoke(["distill", "--teachers", TEACHER, "--root", root, "--out", tmp_path / name,
                             "--norm", "phis", "--steps", "3", "--img-size", "32", "--batch-size", "4",
                             "--warmup-steps", "1", "--log-every", "1", "--workers", "0"])
        assert code == 0, out
        code, out = _invoke(["evaluate", tmp_path / name / "phis", "--batch-size", "8"])
        assert code == 0, out
        runs[name] = tmp_path / name / "phis"
    fs, prefix = location.filesystem(f"{url}/normalizers")
    assert any(p.endswith(".safetensors") for p in fs.find(prefix)), "normalizers not persisted on S3"
    losses = {n: [json.loads(line)["loss"] for line in (r / "metrics.jsonl").read_text().splitlines()]
              for n, r in runs.items()}
    assert len(losses["s3"]) == 3 and losses["s3"] == losses["local"], losses
    ev = {n: json.loads((r / "eval" / "metrics.json").read_text())["teachers"] for n, r in runs.items()}
    assert ev["s3"] == ev["local"]

    # transcode the remote store into another prefix on the same server
    report = transcode_store(url, TEACHER, f"{s3}/pooled", storage_grid=(4, 4))
    assert report.computed_shards == list(range(12))
    assert verify_store(open_teacher_store(layout.teacher_store_path(f"{s3}/pooled", TEACHER))).complete


def test_a_store_whose_creation_was_interrupted_is_rebuilt(s3, images):
    images_dir, _ = images
    url = f"{s3}/marker"
    _corpus(url, images_dir)
    store_url = layout.teacher_store_path(url, TEACHER)
    run_extract(url, TEACHER, ExtractConfig(workers=0, shard_size=6, batch_size=4, progress=False))
    assert _completed(url) == [0, 1]
    fs, path = location.filesystem(layout.store_file(store_url, layout.CREATED_MARKER))
    fs.rm(path)  # as if the creating process died after the arrays, before the marker
    with pytest.raises(StoreNotFoundError, match="never finished being created"):
        open_teacher_store(store_url)
    code, out = _invoke(["store", "verify", "--root", url])
    assert code == 2 and "never finished being created" in out, out
    report = run_extract(url, TEACHER, ExtractConfig(workers=0, shard_size=6, batch_size=4, progress=False))
    assert sorted(report.computed_shards) == [0, 1] and report.skipped_shards == []  # rebuilt from nothing
    assert verify_store(open_teacher_store(store_url)).complete
