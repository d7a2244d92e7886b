"""`pipeline extract --redo-shards`: damaged shards of a finished store are extracted again; their complete
flags and statistics are cleared first, folded statistics are unfolded (the other folded shards' partials
recomputed from their stored values) and folded again. Afterwards the store equals an uninterrupted
extraction: arrays bit for bit, statistics within 1e-12 relative (float64 rounding of the recomputed partials)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from pipeline import cmd_extract, cmd_store
from stages.extract.verify import verify_store
from store_schema.layout import teacher_store_path
from store_schema.teacher_store import open_teacher_store

pytest_plugins = ["tests.ray_fixture"]
TEACHER = "tiny_dinov2"  # summary and patches


def _app() -> typer.Typer:
    app = typer.Typer()
    cmd_extract.register(app)
    cmd_store.register(app)
    return app


def _extract(root, *more: str):
    return CliRunner().invoke(_app(), ["extract", "--teacher", TEACHER, "--root", str(root), "--no-ray",
                                       "--shard-size", "4", "--batch-size", "8", "--no-progress", *more])


def _shard_file(root, array: str, k: int):
    zeros = ("0",) * (4 if array == "patches" else 2)  # [N, V, h, w, C] / [N, V, C]: shard k's key c/k/0/...
    return teacher_store_path(root, TEACHER).joinpath(array, "c", str(k), *zeros)


@pytest.fixture
def roots(tmp_path, make_corpus):
    root = make_corpus(tmp_path / "c", n_ok=10)  # 12 images, 3 shards of 4
    res = _extract(root)
    assert res.exit_code == 0, res.output
    reference = tmp_path / "reference"
    shutil.copytree(root, reference)  # the uninterrupted run
    return root, reference


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def test_redo_of_damaged_folded_shards_equals_an_uninterrupted_run(roots):
    root, reference = roots
    store = open_teacher_store(teacher_store_path(root, TEACHER))
    assert store.ledger.folded()[0] == 3  # a finished store: every shard is folded
    raw = bytearray(_shard_file(root, "patches", 1).read_bytes())
    raw[100] ^= 0x40  # a flipped byte in shard 1's first inner chunk
    _shard_file(root, "patches", 1).write_bytes(bytes(raw))
    _shard_file(root, "summary", 2).unlink()  # shard 2's summaries are lost
    report = verify_store(store)
    assert [s.shard for s in report.shards if s.status == "damaged"] == [1, 2]
    assert f"repair: pipeline extract --teacher {TEACHER} --root ROOT --redo-shards 1,2" in report.format()

    res = _extract(root, "--redo-shards", "1")  # shard 2 is lost too: refused before any change
    assert res.exit_code == 2 and "shards [2]" in res.output and "--redo-shards 1,2" in res.output, res.output
    assert list(open_teacher_store(teacher_store_path(root, TEACHER)).completed_shards()) == [0, 1, 2]

    res = _extract(root, "--redo-shards", "1,2")
    assert res.exit_code == 0, res.output
    assert "2 shards computed, 1 skipped" in res.output
    assert "redone shards [1, 2]" in res.output and "statistics of 3 folded shards were unfolded" in res.output
    got, want = (open_teacher_store(teacher_store_path(r, TEACHER)) for r in (root, reference))
    assert verify_store(got).complete and got.ledger.folded()[0] == 3
    for name in ("summary", "patches", "valid"):
        a, b = np.asarray(getattr(got, name)[:]), np.asarray(getattr(want, name)[:])
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    worst = 0.0
    for kind in got.kinds:
        for split in (None, "train", "val"):
            g, w = got.stats(kind, split), want.stats(kind, split)
            assert g.count == w.count > 0
            worst = max(worst, _rel(g.mean_D, w.mean_D), _rel(g.m2_DD, w.m2_DD))
    assert worst <= 1e-12, worst
    print(f"max relative difference of the statistics after the redo: {worst:.3g}")


def test_redo_refuses_bad_shard_numbers_and_several_teachers(roots):
    root, _ = roots
    res = _extract(root, "--redo-shards", "7")
    assert res.exit_code == 2 and "--redo-shards [7]" in res.output and "has shards 0..2" in res.output
    res = _extract(root, "--redo-shards", "1;2")
    assert res.exit_code == 2 and "takes shard indices such as 5,7 or 3-6" in " ".join(res.output.split())
    store = open_teacher_store(teacher_store_path(root, TEACHER))
    with pytest.raises(ValueError, match="--redo-shards 0"):  # the store's own refusal says how
        open_teacher_store(store.path, mode="r+").write_shard(
            0, summary_SVC=np.zeros((4, 2, store.summary_dim), np.float32),
            patches_SVhwC=np.zeros((4, 2, *store.grid, store.patch_dim), np.float32), valid_SV=np.zeros((4, 2), bool))


def test_verify_repair_redoes_the_damaged_shards(roots):
    root, reference = roots
    _shard_file(root, "patches", 0).unlink()  # shard 0's patches are lost (folded, like every shard)
    res = CliRunner().invoke(_app(), ["store", "verify", "--root", str(root), "--repair"])
    assert res.exit_code == 0, res.output
    assert "shard 0 DAMAGED" in res.output and "repaired shards [0]" in res.output
    assert "2 ok, 1 damaged" in res.output and "3 ok, 0 damaged, 0 incomplete of 3 shards" in res.output  # before, after
    got, want = (open_teacher_store(teacher_store_path(r, TEACHER)) for r in (root, reference))
    for name in ("summary", "patches", "valid"):
        assert np.array_equal(np.asarray(getattr(got, name)[:]), np.asarray(getattr(want, name)[:])), name
    for kind in got.kinds:
        g, w = got.stats(kind), want.stats(kind)
        assert g.count == w.count and _rel(g.m2_DD, w.m2_DD) <= 1e-12
