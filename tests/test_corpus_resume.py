"""The corpus build killed mid-run restarts at the first unfinished unit, reuses the finished parts, and
writes a manifest identical (byte for byte) to an uninterrupted build's; on Ray the same bytes again."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from stages.corpus.build_manifest import build_corpus
from store_schema import layout
from store_schema.manifest import ViewSpec
from tests.kill import sigkill_when

pytest_plugins = ["tests.ray_fixture"]
REPO = Path(__file__).resolve().parents[1]


def _photos(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = rng.integers(0, 255, (160 + i, 200, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"p{i:03d}.{'png' if i % 3 else 'jpg'}")
    (folder / "p000_empty.jpg").write_bytes(b"")


def _parts(root: Path) -> list[str]:
    folder = root / layout.CORPUS_PARTS_DIR
    return sorted(p.name for p in folder.glob("*.parquet")) if folder.is_dir() else []


def test_killed_corpus_build_resumes_and_equals_an_uninterrupted_one(tmp_path):
    src, root = tmp_path / "photos", tmp_path / "root"
    _photos(src, 60)
    cmd = [sys.executable, "-m", "pipeline.cli", "corpus", str(src), "--out", str(root), "--no-ray",
           "--files-per-task", "1", "--views", "2"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    sigkill_when(proc, lambda: len(_parts(root)) >= 3, poll_s=0.005)
    assert proc.returncode == -signal.SIGKILL, f"finished before it could be killed: {proc.stderr.read()}"
    kept = _parts(root)
    assert 3 <= len(kept) < 61 and not (root / "manifest.parquet").exists()

    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    m = re.search(r"units: (\d+)\s+built: (\d+) \(this process\)\s+reused: (\d+)", rerun.stdout)
    assert m and int(m.group(1)) == 61 and int(m.group(3)) == len(kept), rerun.stdout
    assert int(m.group(2)) == 61 - len(kept)  # nothing finished was built again
    assert set(kept) <= set(_parts(root))

    whole = build_corpus(str(src), out_dir=tmp_path / "whole", files_per_task=1, view_spec=ViewSpec(num_views=2))
    assert (root / "manifest.parquet").read_bytes() == (tmp_path / "whole" / "manifest.parquet").read_bytes()
    assert whole.manifest.num_images == 61 and int(whole.manifest.ok_N.sum()) == 60


def test_corpus_on_ray_gives_the_in_process_manifest(tmp_path, ray_session):
    src = tmp_path / "photos"
    _photos(src, 9)
    on_ray = build_corpus(src, out_dir=tmp_path / "ray", workers=2, files_per_task=2)
    here = build_corpus(src, out_dir=tmp_path / "here", workers=0, files_per_task=2)
    assert on_ray.parts.engine == "Ray" and on_ray.parts.built == 5 and here.parts.engine == "this process"
    assert on_ray.parts.workers.isdisjoint(here.parts.workers)  # built in other processes
    assert (tmp_path / "ray" / "manifest.parquet").read_bytes() == (tmp_path / "here" / "manifest.parquet").read_bytes()
