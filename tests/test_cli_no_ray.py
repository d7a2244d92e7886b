"""`pipeline extract --no-ray` on a machine without Ray, matplotlib, dvc or open_clip (the GPU machine has
torch, timm, zarr, pyarrow and typer only): stage one of AM-RADIO (arXiv 2312.06709) must run there.

The missing packages are simulated for real: a `sitecustomize.py` on PYTHONPATH installs a sys.meta_path
finder that makes importing them raise ImportError, and `python -m pipeline.cli` runs in that interpreter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from stages.extract.verify import verify_store
from store_schema.layout import teacher_store_path
from store_schema.teacher_store import open_teacher_store
from tests.absent_packages import MARK, REPO, env_without, loaded_modules

pytest_plugins = ["tests.ray_fixture"]

ABSENT = ("ray", "matplotlib", "dvc", "open_clip")
TEACHER = "tiny_dinov2"  # timm only

def _env(tmp_path: Path) -> dict[str, str]:
    return env_without(tmp_path, ABSENT)


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_shim_really_hides_the_packages(tmp_path):
    env = _env(tmp_path)
    for name in ABSENT:
        res = _run(["-c", f"import {name}"], env)
        assert res.returncode != 0 and MARK in res.stderr, (name, res.stderr)


def test_command_modules_import_no_stage_code(tmp_path):
    """`pipeline --help` cost: the command modules import typer, the standard library and params only."""
    code = ("import sys\n"
            "import pipeline.cmd_corpus, pipeline.cmd_teachers, pipeline.cmd_extract, pipeline.cmd_store\n"
            "import pipeline.cmd_evaluate, pipeline.cmd_report\n"
            f"heavy = {loaded_modules(('torch', 'stages', 'zarr', 'numpy', 'ray'))}\n"
            "assert not heavy, heavy\n")
    res = _run(["-c", code], _env(tmp_path))
    assert res.returncode == 0, res.stderr


def test_extract_no_ray_runs_without_ray_matplotlib_dvc(tmp_path, make_corpus):
    root = make_corpus(tmp_path, n_ok=6, num_views=1)  # 8 images, 2 of them bad
    env = _env(tmp_path)
    res = _run(["-m", "pipeline.cli", "extract", "--no-ray", "--teacher", TEACHER, "--root", str(root),
                "--shard-size", "3", "--batch-size", "4", "--no-progress"], env)
    assert res.returncode == 0, res.stderr
    assert f"extract {TEACHER}: 8 images, 6 views, 0 masked, 2 bad, 3 shards computed" in res.stdout

    store = open_teacher_store(teacher_store_path(root, TEACHER))
    assert store.completed_shards().tolist() == [0, 1, 2]
    report = verify_store(store)
    assert report.complete and report.missing_ids == [] and report.damaged_ids == []
    assert np.asarray(store.valid[:]).sum() == 6 and store.stats("patches").count == 6 * 8 * 8

    # store verify runs there too (same interpreter restrictions)
    res = _run(["-m", "pipeline.cli", "store", "verify", "--root", str(root)], env)
    assert res.returncode == 0 and "3 ok, 0 damaged, 0 incomplete of 3 shards" in res.stdout, res.stderr
