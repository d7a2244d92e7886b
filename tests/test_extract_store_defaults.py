"""Re-running `pipeline extract` on an existing store: the store's shard size, storage grid and codec are
the defaults (the flags' built-in defaults no longer collide with them); only a typed flag that
conflicts with the store is an error, naming the flag, the store's value and what to do."""

from __future__ import annotations

from typer.testing import CliRunner

pytest_plugins = ["tests.ray_fixture"]
TEACHER = "tiny_sam"


def _extract(root, *flags: str):
    from pipeline.cli import app

    return CliRunner().invoke(app, ["extract", "--teacher", TEACHER, "--root", str(root), "--no-ray",
                                    "--batch-size", "8", "--no-progress", *flags])


def test_rerun_takes_the_stores_shard_size_grid_and_codec(tmp_path, make_corpus):
    root = make_corpus(tmp_path, n_ok=10)  # 12 images
    first = _extract(root, "--shard-size", "4", "--storage-grid", "4x4", "--keepbits", "none")
    assert first.exit_code == 0, first.output
    again = _extract(root)  # defaults 64 / the teacher's 8x8 grid / keepbits 7 differ from the store
    assert again.exit_code == 0, again.output
    assert "0 shards computed, 3 skipped" in again.output
    assert (f"{TEACHER}: continuing the existing store with its own shard size 4; storage grid (4, 4); "
            "codec keepbits None") in again.output
    same = _extract(root, "--shard-size", "4")  # a typed flag that agrees is fine
    assert same.exit_code == 0, same.output
    clash = _extract(root, "--shard-size", "8")
    text = " ".join(clash.output.split())
    assert clash.exit_code == 2, clash.output
    assert "--shard-size 8 conflicts with the existing store" in text and "shard size 4" in text
    assert "leave --shard-size out to continue that store, or extract into another --root" in text
    clash = _extract(root, "--keepbits", "7")
    assert clash.exit_code == 2 and "--keepbits 7 conflicts with the existing store" in " ".join(clash.output.split())
