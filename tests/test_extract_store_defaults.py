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


def test_a_store_from_before_the_codec_blocksize_field_is_continued(tmp_path, make_corpus):
    """A store created with the earlier default (lz4-5, Blosc's automatic blocks) records a codec without
    `blocksize`; a re-run continues it with its own codec instead of refusing a codec mismatch."""
    import json

    from store_schema.codecs import CodecSpec
    from store_schema.teacher_store import open_teacher_store

    root = make_corpus(tmp_path, n_ok=10)
    first = _extract(root, "--shard-size", "4")
    assert first.exit_code == 0, first.output
    store_dir = next(root.glob(f"{TEACHER}.zarr"))
    meta = json.loads((store_dir / "zarr.json").read_text())
    codec = meta["attributes"]["codec"]
    assert codec["blocksize"] == CodecSpec().blocksize
    # as the earlier version wrote it: lz4-5, no blocksize field (and the arrays' own codec metadata agree)
    meta["attributes"]["codec"] = {k: v for k, v in {**codec, "compressor": "lz4", "clevel": 5}.items() if k != "blocksize"}
    (store_dir / "zarr.json").write_text(json.dumps(meta))
    for arr in ("patches", "summary"):
        f = store_dir / arr / "zarr.json"
        if f.exists():
            f.write_text(f.read_text().replace('"cname": "zstd"', '"cname": "lz4"').replace('"clevel": 1', '"clevel": 5')
                         .replace(f'"blocksize": {CodecSpec().blocksize}', '"blocksize": 0'))
    again = _extract(root)
    assert again.exit_code == 0, again.output
    assert "0 shards computed, 3 skipped" in again.output, again.output
    store = open_teacher_store(store_dir)
    assert store.codec == CodecSpec(compressor="lz4", clevel=5, blocksize=0)
    assert store.read_shard(1)[2].any()  # and it reads
