"""Per-teacher batch sizes and out-of-memory back-off: a CUDA OOM (injected here on the CPU as
`torch.cuda.OutOfMemoryError`) halves the teacher's batch and redoes the shard whole; the store equals a run
at the smaller batch, and the back-off is recorded in the store and printed."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from stages.extract.config import ExtractConfig
from stages.extract.driver import run_extract
from pipeline.params import parse_params
from stages.extract.worker import ShardWorker
from store_schema import layout
from store_schema.teacher_store import open_teacher_store

pytest_plugins = ["tests.ray_fixture"]
TEACHER = "tiny_dinov2"


def _arrays(root):
    s = open_teacher_store(layout.teacher_store_path(root, TEACHER))
    return np.asarray(s.patches[:]), np.asarray(s.summary[:]), np.asarray(s.valid[:]), s


def _inject_oom(monkeypatch, *, above: int, allowed: int) -> list[int]:
    """Forwards of more than `above` views raise CUDA OOM after `allowed` of them went through; returns the
    sizes of every forward that ran."""
    real = ShardWorker._forward_into
    seen: list[int] = []
    lock = threading.Lock()
    budget = [allowed]

    def forward(self, views, *args, **kwargs):
        with lock:
            if len(views) > above:
                if budget[0] <= 0:
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 34.00 GiB (injected)")
                budget[0] -= 1
            seen.append(len(views))
        return real(self, views, *args, **kwargs)

    monkeypatch.setattr(ShardWorker, "_forward_into", forward)
    return seen


def test_out_of_memory_halves_the_batch_redoes_the_shard_and_equals_a_smaller_batch_run(tmp_path, make_corpus,
                                                                                         monkeypatch):
    a = make_corpus(tmp_path / "a", n_ok=10, num_views=2)
    b = make_corpus(tmp_path / "b", n_ok=10, num_views=2)
    cfg = dict(workers=0, shard_size=4, progress=False)
    seen = _inject_oom(monkeypatch, above=2, allowed=1)  # one forward of 4 views goes through, then OOM
    report = run_extract(a, TEACHER, ExtractConfig(batch_size=4, **cfg))
    assert 4 in seen and seen[-1] <= 2  # the first shard had a batch of 4 done when it ran out: redone at 2
    monkeypatch.undo()
    reference = run_extract(b, TEACHER, ExtractConfig(batch_size=2, **cfg))
    assert not reference.backoffs
    pa, sa, va, store = _arrays(a)
    pb, sb, vb, _ = _arrays(b)
    assert np.array_equal(pa, pb) and np.array_equal(sa, sb) and np.array_equal(va, vb)
    assert store.stats("patches").content_hash() == open_teacher_store(
        layout.teacher_store_path(b, TEACHER)).stats("patches").content_hash()
    # recorded in the store and printed
    assert report.backoffs and all((frm, to) == (4, 2) for _, frm, to in report.backoffs)
    assert [(e["shard"], e["from"], e["to"]) for e in store.batch_backoffs] == report.backoffs
    from stages.extract.inspect import format_info, store_info

    assert f"out-of-memory back-offs {len(report.backoffs)} (shard {report.backoffs[0][0]}: 4 -> 2" in \
        format_info(store_info(store))  # `pipeline store info`
    k = report.backoffs[0][0]
    assert (f"{TEACHER}: out of device memory at batch 4 in shard {k}: batch halved to 2, shard {k} redone whole"
            in report.summary_line())


def test_out_of_memory_at_batch_one_is_a_clear_error_and_keeps_no_partial_shard(tmp_path, make_corpus, monkeypatch):
    root = make_corpus(tmp_path, n_ok=4, num_views=1)
    _inject_oom(monkeypatch, above=0, allowed=0)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="even at batch size 1"):
        run_extract(root, TEACHER, ExtractConfig(workers=0, batch_size=2, shard_size=8, progress=False))
    store = open_teacher_store(layout.teacher_store_path(root, TEACHER))
    assert store.completed_shards().size == 0


def test_batch_size_may_be_given_per_teacher(tmp_path):
    from pathlib import Path

    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())  # the required keys
    raw["extract"]["batch_size"] = {"tiny_sam": 2, "tiny_clip": 8}
    p = parse_params(raw)
    assert (p.extract.batch_size_for("tiny_sam"), p.extract.batch_size_for("tiny_clip"),
            p.extract.batch_size_for("tiny_dinov2")) == (2, 8, ExtractConfig.batch_size)
    raw["extract"]["batch_size"] = {"nope": 2}
    with pytest.raises(ValueError, match=r"extract.batch_size names unknown teachers \['nope'\]; valid teachers"):
        parse_params(raw)
    raw["extract"]["batch_size"] = {"tiny_sam": 0}
    with pytest.raises(ValueError, match="extract.batch_size.tiny_sam must be >= 1"):
        parse_params(raw)


def test_gpu_preset_gives_sam_h_a_batch_that_fits_40gb_cards():
    """`pipeline extract --params PRESET --teacher T` (dvc.yaml's extract stage) takes each teacher's size;
    a flag's TEACHER=N sets one teacher's, N every teacher's."""
    from pathlib import Path

    from pipeline.cmd_extract import resolve_configs

    preset = str(Path(__file__).resolve().parents[1] / "configs" / "real_teachers_gpu.yaml")

    def batch(teacher, *flags):
        return resolve_configs(["--params", preset, "--teacher", teacher, *flags])[teacher].batch_size

    assert batch("sam_h") == 16
    assert {batch(t) for t in ("clip_h_dfn", "siglip_so400m", "dinov2_g_reg")} == {64}
    assert (batch("sam_h", "--batch-size", "4"), batch("sam_h", "--batch-size", "sam_h=8"),
            batch("dinov2_g_reg", "--batch-size", "sam_h=8")) == (4, 8, ExtractConfig.batch_size)
