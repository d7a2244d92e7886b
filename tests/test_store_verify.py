"""`pipeline store verify` / `store info` on a real store: corruption is found and named by image id.

Every chunk ends in a crc32c checksum (the sharding index carries its own), so one flipped byte in a
shard file fails that image's read; a complete shard whose data vanished disagrees with its statistics.
"""

from __future__ import annotations

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from pipeline import cmd_extract, cmd_store
from stages.extract.verify import format_id_ranges, verify_store
from store_schema.layout import teacher_store_path
from store_schema.teacher_store import open_teacher_store

pytest_plugins = ["tests.ray_fixture"]

TEACHER = "tiny_sam"  # no summary token: patches only


def _app() -> typer.Typer:
    app = typer.Typer()
    cmd_extract.register(app)
    cmd_store.register(app)
    return app


def _shard_file(store, k: int):
    """The patches shard file of shard k (zarr v3 default chunk keys: c/<k>/0/0/0/0)."""
    return store.path / "patches" / "c" / str(k) / "0" / "0" / "0" / "0"


def _inner_chunk_span(path, row: int, rows: int) -> tuple[int, int]:
    """(offset, nbytes) of inner chunk `row` from the shard index at the file's end (rows x 2 uint64 + crc32c)."""
    data = path.read_bytes()
    index = np.frombuffer(data[-(16 * rows + 4):-4], dtype="<u8").reshape(rows, 2)
    return int(index[row, 0]), int(index[row, 1])


@pytest.fixture
def store_root(tmp_path, make_corpus):
    root = make_corpus(tmp_path, n_ok=10)  # 12 images; images 4 and 11 are bad
    result = CliRunner().invoke(_app(), ["extract", "--teacher", TEACHER, "--root", str(root), "--no-ray",
                                         "--shard-size", "4", "--batch-size", "8", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"extract {TEACHER}: 12 images, 20 views, 0 masked, 2 bad, 3 shards computed" in result.output
    assert "  bad images (recorded in the manifest, not extracted), per reason:" in result.output
    assert "    1 empty file (0 bytes): " in result.output  # the corpus's two bad files, by reason
    return root


def test_clean_store_verifies_and_info_reports_statistics(store_root):
    runner = CliRunner()
    result = runner.invoke(_app(), ["store", "verify", "--root", str(store_root)])
    assert result.exit_code == 0, result.output
    assert "3 ok, 0 damaged, 0 incomplete of 3 shards" in result.output
    info = runner.invoke(_app(), ["store", "info", "--root", str(store_root), "--teacher", TEACHER])
    assert info.exit_code == 0, info.output
    assert "images 12 x views 2; valid views 20; shards 3/3 complete" in info.output
    assert "summary none; patches [12, 2, 8, 8, 96]" in info.output
    assert "RankMe" in info.output and "eigenvalue entropy rank" in info.output and "bits/value" in info.output


def test_flipped_byte_names_the_damaged_image(store_root):
    store = open_teacher_store(teacher_store_path(store_root, TEACHER))
    path = _shard_file(store, 1)  # images 4..7; image 4 is bad (never written), 6 is row 2
    offset, nbytes = _inner_chunk_span(path, 2, store.shard_size)
    assert nbytes > 0
    raw = bytearray(path.read_bytes())
    raw[offset + nbytes // 2] ^= 0x40
    path.write_bytes(bytes(raw))

    report = verify_store(store)
    assert not report.ok and report.damaged_ids == [6]
    result = CliRunner().invoke(_app(), ["store", "verify", "--root", str(store_root), "--teacher", TEACHER])
    assert result.exit_code == 1
    assert "shard 1 DAMAGED images [6]" in result.output


def test_complete_shard_with_vanished_data_is_damaged(store_root):
    store = open_teacher_store(teacher_store_path(store_root, TEACHER))
    _shard_file(store, 2).unlink()  # reads back as zeros (fill value); its stats say otherwise
    report = verify_store(store)
    assert report.damaged_ids == [8, 9, 10, 11]
    # shard 2 is folded into the store's totals: its kept sketch (sum of mean, trace of M2) catches it
    assert report.shards[2].problems == [f"patches {sp} stats sketch differs from the stored data" for sp in ("train", "val")]


def test_folded_shard_cannot_be_rewritten(store_root):
    store = open_teacher_store(teacher_store_path(store_root, TEACHER), mode="r+")
    with pytest.raises(ValueError, match="shard 0 is complete and its statistics are folded"):
        store.write_shard(0, summary_SVC=None, patches_SVhwC=np.zeros((4, 2, 8, 8, 96), np.float32),
                          valid_SV=np.zeros((4, 2), bool))


def test_incomplete_shard_names_missing_images_and_fails_unless_allowed(tmp_path, make_corpus):
    from stages.extract.driver import ExtractConfig, finalize_shard, run_extract
    from stages.extract.worker import ShardWorker
    from stages.teachers.registry import get_teacher_spec
    from store_schema.layout import manifest_path

    store_root = make_corpus(tmp_path, n_ok=10)
    run_extract(store_root, TEACHER, ExtractConfig(workers=0, shard_size=4, batch_size=8, progress=False))
    # the same store as a run that has finished shards 1 and 2 but not shard 0 leaves it
    path = teacher_store_path(store_root, TEACHER)
    import shutil

    from store_schema.teacher_store import create_teacher_store
    from stages.teachers.registry import weights_identity
    from store_schema.manifest import read_manifest
    spec = get_teacher_spec(TEACHER)
    shutil.rmtree(path)
    store = create_teacher_store(path, spec=spec, weights_identity=weights_identity(spec),
                                 manifest=read_manifest(manifest_path(store_root)), shard_size=4,
                                 storage_grid=spec.grid, codec=ExtractConfig().codec)
    worker = ShardWorker(spec, store_path=path, manifest_path=manifest_path(store_root), batch_size=8)
    for k in (1, 2):
        finalize_shard(store, worker.run_shard(k))
    report = verify_store(store)
    assert report.ok and not report.complete
    assert report.missing_shards == [0] and report.missing_ids == [0, 1, 2, 3] and report.damaged_ids == []

    args = ["store", "verify", "--root", str(store_root)]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 1, result.output
    assert "MISSING 4 images 0-3 (incomplete shards [0]; re-run extract to write them)" in result.output
    allowed = CliRunner().invoke(_app(), [*args, "--allow-incomplete"])
    assert allowed.exit_code == 0 and "MISSING 4 images 0-3" in allowed.output


def test_damage_fails_even_with_allow_incomplete(store_root):
    store = open_teacher_store(teacher_store_path(store_root, TEACHER))
    _shard_file(store, 2).unlink()
    result = CliRunner().invoke(_app(), ["store", "verify", "--root", str(store_root), "--allow-incomplete"])
    assert result.exit_code == 1 and "shard 2 DAMAGED images [8, 9, 10, 11]" in result.output


def test_format_id_ranges():
    assert format_id_ranges([]) == ""
    assert format_id_ranges([5]) == "5"
    assert format_id_ranges([0, 1, 2, 3, 8, 10, 11]) == "0-3, 8, 10-11"


def test_a_store_from_another_corpus_fails_verify_and_info(store_root, tmp_path, make_corpus):
    """A store copied into a root whose manifest is another corpus's must not pass as `ok`: its image ids
    mean other images there."""
    import shutil

    other = make_corpus(tmp_path / "other", n_ok=9, seed=3)
    shutil.copytree(teacher_store_path(store_root, TEACHER), teacher_store_path(other, TEACHER))
    runner = CliRunner()
    verify = runner.invoke(_app(), ["store", "verify", "--root", str(other)])
    assert verify.exit_code == 1, verify.output
    assert "3 ok, 0 damaged" in verify.output and "WRONG MANIFEST: built from manifest" in verify.output
    assert "re-extract into this root" in verify.output
    info = runner.invoke(_app(), ["store", "info", "--root", str(other)])
    assert info.exit_code == 1 and "WRONG MANIFEST" in info.output
    assert f"store(s) {TEACHER} under {other} were not built from its manifest" in info.output
    # its own root still passes both
    assert runner.invoke(_app(), ["store", "verify", "--root", str(store_root)]).exit_code == 0
    assert runner.invoke(_app(), ["store", "info", "--root", str(store_root)]).exit_code == 0


def test_info_on_an_empty_store_prints_no_nan(tmp_path, make_corpus):
    from stages.extract.driver import ExtractConfig
    from stages.teachers.registry import get_teacher_spec, weights_identity
    from store_schema.layout import manifest_path
    from store_schema.manifest import read_manifest
    from store_schema.teacher_store import create_teacher_store

    root = make_corpus(tmp_path, n_ok=4)
    spec = get_teacher_spec(TEACHER)
    create_teacher_store(teacher_store_path(root, TEACHER), spec=spec, weights_identity=weights_identity(spec),
                         manifest=read_manifest(manifest_path(root)), shard_size=4, storage_grid=spec.grid,
                         codec=ExtractConfig().codec)
    info = CliRunner().invoke(_app(), ["store", "info", "--root", str(root)])
    assert info.exit_code == 0, info.output
    assert "nan" not in info.output.lower()
    assert "shards 0/2 complete" in info.output and "bits/value: none yet (no complete shard)" in info.output
    assert "patches  tokens 0: no statistics yet" in info.output
