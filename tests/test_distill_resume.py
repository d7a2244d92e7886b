"""Stop-and-resume of stage two gives the same weights as an uninterrupted run (same seed, CPU); a resume
refuses a different config (naming the fields), may extend `steps`, and survives a torn metrics line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from stages.distill.config import RESUMABLE_FIELDS, DistillConfig
from stages.distill.train import _truncate_metrics, train
from test_distill_loader import make_tiny_stores

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_stores(tmp_path_factory.mktemp("resume") / "store", teachers=("alpha", "beta"))


def _config(root: Path, out: Path, workers: int) -> DistillConfig:
    # batch 5 over 27 train samples: 5 batches per epoch, so 9 steps cross an epoch boundary
    return DistillConfig(student="vit_tiny_test", teachers=("alpha", "beta"), root=root, out_dir=out,
                         img_size=64, steps=9, batch_size=5, lr=2e-3, warmup_steps=2, log_every=1,
                         num_workers=workers, seed=11)


@pytest.mark.parametrize(("workers", "stop"), [(0, 3), (0, 5), (2, 3)])  # mid-epoch, at the epoch end
def test_resume_matches_uninterrupted_run(tiny_root: Path, tmp_path: Path, workers: int, stop: int) -> None:
    full = train(_config(tiny_root, tmp_path / "full", workers))
    part = train(_config(tiny_root, tmp_path / "part", workers), stop_at=stop)
    stopped = torch.load(part / "checkpoint.pt", weights_only=True)
    assert stopped["step"] == stop and stopped["loader"] == {"epoch": stop // 5, "position": stop % 5}
    assert not (part / "export.safetensors").exists()
    train(_config(tiny_root, tmp_path / "part", workers), resume=True)
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 9 and a["loader"] == b["loader"]
    for group in ("student", "heads"):
        for k, v in a[group].items():
            assert torch.equal(v, b[group][k]), f"{group}.{k} differs after resume"
    losses = [[json.loads(x)["loss"] for x in (r / "metrics.jsonl").read_text().splitlines()] for r in (full, part)]
    assert losses[0] == losses[1] and len(losses[0]) == 9
    assert (part / "export.safetensors").exists()


def test_resume_without_checkpoint_is_an_error(tiny_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        train(_config(tiny_root, tmp_path / "none", 0), resume=True)


def test_resume_refuses_a_different_config_naming_the_fields(tiny_root: Path, tmp_path: Path) -> None:
    run = train(_config(tiny_root, tmp_path / "run", 0), stop_at=2)
    other = dataclasses.replace(_config(tiny_root, run, 0), norm="mse", lr=1e-2)
    with pytest.raises(ValueError, match=r"lr: saved 0\.002, requested 0\.01; norm: saved 'phis', requested 'mse'"):
        train(other, resume=True)
    assert json.loads((run / "config.json").read_text())["norm"] == "phis"  # config.json not overwritten
    with pytest.raises(ValueError, match="9-step run .* pass --extend"):
        train(dataclasses.replace(_config(tiny_root, run, 0), steps=1), resume=True)
    with pytest.raises(ValueError, match="steps may only grow"):
        train(dataclasses.replace(_config(tiny_root, run, 0), steps=1), resume=True, extend=True)


def test_resume_conflicts_ignores_only_the_resumable_fields(tiny_root: Path, tmp_path: Path) -> None:
    saved = _config(tiny_root, tmp_path / "a", 0)
    cadence = dataclasses.replace(saved, steps=99, log_every=7, ckpt_every=3, ckpt_minutes=1.0, num_workers=2,
                                  prefetch_factor=4, device="cuda", out_dir=tmp_path / "moved",
                                  root=tmp_path / "respelled", loader_memory="1GiB", student_views="decode")
    assert saved.resume_conflicts(cadence) == []
    assert set(RESUMABLE_FIELDS) == {"steps", "log_every", "ckpt_every", "ckpt_minutes", "num_workers",
                                     "prefetch_factor", "device", "out_dir", "root",
                                     "loader_memory", "student_views", "grad_checkpointing",
                                     "torch_compile"}  # stores: checked by fingerprint
    changed = dataclasses.replace(saved, seed=1, teachers=("beta", "alpha"), num_summary_tokens=2, batch_size=4)
    assert saved.resume_conflicts(changed) == ["batch_size", "num_summary_tokens", "seed", "teachers"]


def test_more_steps_on_resume_is_refused_without_extend(tiny_root: Path, tmp_path: Path) -> None:
    run = train(dataclasses.replace(_config(tiny_root, tmp_path / "run", 0), steps=4))
    with pytest.raises(ValueError, match=r"steps=7: it is a 4-step run \(trained on a 4-step schedule\)"):
        train(dataclasses.replace(_config(tiny_root, run, 0), steps=7), resume=True)
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 4
    assert json.loads((run / "config.json").read_text())["steps"] == 4


def test_extending_a_finished_run_follows_the_new_schedule(tiny_root: Path, tmp_path: Path) -> None:
    run = train(dataclasses.replace(_config(tiny_root, tmp_path / "run", 0), steps=4))
    extended = dataclasses.replace(_config(tiny_root, run, 0), steps=7, log_every=2, ckpt_every=5)
    train(extended, resume=True, extend=True)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 6, 7]
    # the old schedule (total 4) would give lr 0 after step 4; the new one (total 7) is still decaying
    assert rows[-2]["lr"] > rows[-1]["lr"] > 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 7
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["steps"] == 7
    assert [(e["from_steps"], e["to_steps"]) for e in resolved["extensions"]] == [(4, 7)]
    assert "learning rate jumps" in resolved["extensions"][0]["schedule"]


def test_torn_last_metrics_line_is_dropped_on_resume(tiny_root: Path, tmp_path: Path) -> None:
    full = train(_config(tiny_root, tmp_path / "full", 0))
    part = train(_config(tiny_root, tmp_path / "part", 0), stop_at=3)
    with (part / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "lr": 0.00')  # the process was killed mid-write
    train(_config(tiny_root, part, 0), resume=True)
    losses = [[json.loads(x)["loss"] for x in (r / "metrics.jsonl").read_text().splitlines()] for r in (full, part)]
    assert losses[0] == losses[1] and len(losses[0]) == 9


def test_corrupt_middle_metrics_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n{"step": 4')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        _truncate_metrics(path, 3)
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4')
    _truncate_metrics(path, 1)
    assert path.read_text() == '{"step": 1}\n'


def test_fresh_run_starts_a_fresh_metrics_file(tiny_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 123.0}\n')  # killed before its first checkpoint
    train(dataclasses.replace(_config(tiny_root, run, 0), steps=2))
    assert [json.loads(x)["loss"] != 123.0 for x in (run / "metrics.jsonl").read_text().splitlines()] == [True] * 2


def test_sigint_checkpoints_then_resume_finishes(tiny_root: Path, tmp_path: Path) -> None:
    import os
    import signal
    import threading
    import time

    from stages.distill.train import TrainingInterrupted

    config = dataclasses.replace(_config(tiny_root, tmp_path / "run", 0), steps=400, ckpt_minutes=0.0)
    metrics = config.out_dir / "metrics.jsonl"

    def interrupt_after_first_steps() -> None:  # Ctrl-C once the run logged a few steps
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    threading.Thread(target=interrupt_after_first_steps, daemon=True).start()
    with pytest.raises(TrainingInterrupted, match=r"SIGINT at step \d+ of 400: checkpoint written"):
        train(config)
    step = torch.load(config.out_dir / "checkpoint.pt", weights_only=True)["step"]
    assert 3 <= step < 400
    assert not (config.out_dir / "export.safetensors").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    train(dataclasses.replace(config, steps=400, log_every=100), resume=True, stop_at=step + 2)
    assert torch.load(config.out_dir / "checkpoint.pt", weights_only=True)["step"] == step + 2


def test_warmup_not_shorter_than_steps_warns(tiny_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="stages.distill.train"):  # a logging record (the CLI prints it)
        train(dataclasses.replace(_config(tiny_root, tmp_path / "run", 0), steps=2, warmup_steps=2))
    assert any(r.levelname == "WARNING" and "warmup_steps=2 >= steps=2" in r.getMessage() for r in caplog.records)
