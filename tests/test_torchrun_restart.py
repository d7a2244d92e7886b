"""A dying rank: under `torchrun --nproc-per-node 2 --max-restarts 1` (gloo), one rank SIGKILLed mid-run
makes torchrun restart the group; the same command then resumes from the last checkpoint (the restart
count torchrun sets), takes over the dead rank 0's lease on the run directory, follows the same sample
order, and the finished run equals an uninterrupted one: same per-step losses, same weights.
(stages/distill, AM-RADIO arXiv 2312.06709 stage two, data-parallel.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from test_distill_loader import make_tiny_stores

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
STEPS, CKPT_EVERY = 60, 5


def _cmd(root: Path, out: Path, name: str) -> list[str]:
    return [TORCHRUN, "--standalone", "--nproc-per-node", "2", "--max-restarts", "1", "-m", "pipeline.cli",
            "distill", "--teachers", "alpha,beta", "--root", str(root), "--out", str(out), "--run-name", name,
            "--steps", str(STEPS), "--img-size", "64", "--batch-size", "2", "--workers", "0", "--ckpt-every",
            str(CKPT_EVERY), "--log-every", "1", "--warmup-steps", "2", "--seed", "3", "--device", "cpu",
            "--lr", "0.001", "--student", "vit_tiny_test"]


def _rank_process(launcher: psutil.Process, rank: str) -> psutil.Process | None:
    for p in launcher.children(recursive=True):
        try:
            if p.environ().get("RANK") == rank and "pipeline.cli" in " ".join(p.cmdline()):
                return p
        except psutil.Error:
            continue
    return None


def _losses(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(ln).items() if k not in ("images_per_s", "elapsed_s")}  # wall-clock fields
            for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_killed_rank_restarts_the_group_and_the_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    root = make_tiny_stores(tmp_path / "store", teachers=("alpha", "beta"))
    out = tmp_path / "runs"
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}", OMP_NUM_THREADS="1")
    ref = subprocess.run(_cmd(root, out, "ref"), capture_output=True, text=True, cwd=tmp_path, env=env, timeout=400)
    assert ref.returncode == 0, ref.stderr[-3000:]

    launcher = subprocess.Popen(_cmd(root, out, "killed"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=tmp_path, env=env)
    ckpt = out / "killed" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    victim = None
    while victim is None:
        assert launcher.poll() is None, "the run ended before a rank could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        if ckpt.is_file():
            victim = _rank_process(psutil.Process(launcher.pid), "1")
        time.sleep(0.01)
    step_at_kill = torch.load(ckpt, weights_only=True)["step"]
    victim.send_signal(signal.SIGKILL)
    stdout, stderr = launcher.communicate(timeout=400)
    assert launcher.returncode == 0, stderr[-3000:]
    assert step_at_kill < STEPS, "the kill came too late to test a restart"
    assert "restart 1 of the torchrun group: resuming" in stderr, stderr[-3000:]
    assert "took over" not in stdout  # (rank 0's stale lease is taken over silently at once: same host)

    a = torch.load(out / "ref" / "checkpoint.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert a["step"] == b["step"] == STEPS and a["loader"] == b["loader"]
    for k in a["student"]:
        assert torch.equal(a["student"][k], b["student"][k]), k
    for k in a["heads"]:
        assert torch.equal(a["heads"][k], b["heads"][k]), k
    assert _losses(out / "ref") == _losses(out / "killed")  # same sample order, step by step
    assert not (out / "killed.lease").exists()
