"""Interrupts speak (issue 26): SIGINT / SIGTERM to a real `pipeline` process during stage one (AM-RADIO,
arXiv 2312.06709: teachers into the feature store, in this process and on a real local Ray) and stage two
(distillation) print what is finished, what is not and the command that resumes; running that command then
finishes the work without redoing what was kept.

The subprocesses start with SIGINT's default handling (a shell running the tests in the background ignores
SIGINT, and an ignored signal stays ignored across exec), so the signal reaches Python as a user's Ctrl-C does.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from store_schema.layout import teacher_store_path
from store_schema.teacher_store import open_teacher_store

REPO = Path(__file__).resolve().parents[1]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "250"}
    return subprocess.Popen([sys.executable, "-c", "from pipeline.cli import app; app()", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _signal_when(proc: subprocess.Popen, ready, sig: int, timeout: float = 300) -> tuple[int, str]:
    """Send `sig` once ready() holds (the run is under way); returns (exit status, stderr)."""
    t0 = time.monotonic()
    while not ready():
        assert proc.poll() is None, f"finished before the signal:\n{proc.communicate()[1]}"
        assert time.monotonic() - t0 < timeout, "the run never got under way"
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def _resume_command(err: str) -> list[str]:
    match = re.search(r"^  resume: (pipeline .*?)   \(", err, re.M)
    assert match, err
    return shlex.split(match.group(1))[1:]


def _listed(ranges: str) -> list[int]:
    """"0-2, 5" -> [0, 1, 2, 5]: the shards a message lists."""
    out = []
    for part in ranges.split(", "):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def _complete_shards(root: Path, teacher: str) -> list[int]:
    return [int(k) for k in open_teacher_store(teacher_store_path(root, teacher)).completed_shards()]


@pytest.fixture
def corpus(tmp_path) -> Path:
    from tests.ray_fixture import build_corpus

    build_corpus(tmp_path / "c", n_ok=16, num_views=1)
    return tmp_path


@pytest.mark.parametrize("sig, ray", [(signal.SIGINT, False), (signal.SIGTERM, True)])
def test_an_interrupted_extraction_says_what_it_kept_and_the_resume_command_finishes_it(corpus, sig, ray):
    root = corpus / "c" / "root"
    args = ["extract", "--root", str(root), "-t", "tiny_dinov2", "-t", "tiny_sam", "--shard-size", "1",
            "--batch-size", "4", "--no-progress", "--fidelity-images", "0",
            *(["--workers", "1"] if ray else ["--no-ray"])]
    flags = teacher_store_path(root, "tiny_dinov2") / "shards" / "complete" / "c"  # one file per complete shard
    code, err = _signal_when(_start(args, corpus), lambda: flags.is_dir() and any(flags.iterdir()), sig)
    name = signal.Signals(sig).name
    assert code == 128 + sig, err
    kept = _complete_shards(root, "tiny_dinov2")
    assert 0 < len(kept) < 18
    lines = err.strip().splitlines()
    assert lines[-4].startswith(f"Interrupted ({name}): extraction stopped between shards"), err
    done = re.fullmatch(r"  finished \(complete, kept\): tiny_dinov2 shards (.+) \((\d+) of 18\)", lines[-3])
    todo = re.fullmatch(r"  not finished: tiny_dinov2 shards (.+) \((\d+) of 18\); tiny_sam \(not started\)", lines[-2])
    assert done and todo, err
    assert _listed(done[1]) == kept and int(done[2]) == len(kept)
    assert _listed(todo[1]) == sorted(set(range(18)) - set(kept)) and int(todo[2]) == 18 - len(kept)
    assert "Traceback" not in err and "will be retried" not in err, err
    resume = _resume_command(err)
    assert resume == args

    result = CliRunner().invoke(app, resume)  # the resume command, as printed
    assert result.exit_code == 0, result.output
    rest = sorted(set(range(18)) - set(kept))
    assert f"skipped {kept}" in result.output and f"computed shards {rest}" in result.output, result.output
    assert _complete_shards(root, "tiny_dinov2") == _complete_shards(root, "tiny_sam") == list(range(18))


@pytest.fixture
def stores(corpus) -> Path:
    root = corpus / "c" / "root"
    result = CliRunner().invoke(app, ["extract", "--root", str(root), "-t", "tiny_sam", "--no-ray", "--no-progress",
                                      "--shard-size", "4", "--fidelity-images", "0"])
    assert result.exit_code == 0, result.output
    return root


def test_an_interrupted_distillation_says_what_it_kept_and_the_resume_command_finishes_it(stores, corpus):
    args = ["distill", "--root", str(stores), "--teachers", "tiny_sam", "--norm", "mse", "--out", "runs",
            "--steps", "60", "--batch-size", "4", "--warmup-steps", "1", "--img-size", "32", "--log-every", "1",
            "--ckpt-every", "0", "--workers", "0"]
    metrics = corpus / "runs" / "mse" / "metrics.jsonl"
    code, err = _signal_when(_start(args, corpus), lambda: metrics.is_file() and metrics.stat().st_size > 0,
                             signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err
    match = re.search(r"^Interrupted \(SIGTERM\) at step (\d+) of 60: steps 1-(\d+) are finished and kept in "
                      r"runs/mse/checkpoint.pt, steps (\d+)-60 are not\.$", err, re.M)
    assert match and match[1] == match[2] and int(match[3]) == int(match[1]) + 1, err
    assert _resume_command(err) == [*args, "--resume"]
    assert "Traceback" not in err

    os.chdir(corpus)
    result = CliRunner().invoke(app, _resume_command(err))
    assert result.exit_code == 0, result.output
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, 61))  # resumed at step + 1: no step redone, none missing


def test_resume_without_a_checkpoint_says_a_plain_run_starts_it(stores, corpus):
    os.chdir(corpus)
    result = CliRunner().invoke(app, ["distill", "--root", str(stores), "--teachers", "tiny_sam", "--norm", "mse",
                                      "--out", "runs", "--resume"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "Error: --resume: nothing to resume at runs/mse (there is no run there yet; checkpoint.pt does not exist); "
        "run the same command without --resume to start the run")
    assert not (corpus / "runs").exists()
