"""WebDataset tar shards as a corpus source: every member accounted for, sidecars kept, one ranged read per
image, bad shards and members recorded with a reason, clear errors for sources that cannot be listed; then
the held-out shards (local folder and an s3:// bucket on a moto server) through `pipeline corpus`,
`pipeline extract` and `pipeline store verify`."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from stages.corpus.build_manifest import build_corpus, build_manifest
from stages.corpus.samples import decode_checked, load_checked
from store_schema import layout
from store_schema.manifest import read_manifest
from tests.wds_fixture import write_shards

pytest_plugins = ["tests.s3_fixture"]
TEACHER = "tiny_sam"


def _invoke(args: list) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res.exit_code, " ".join(res.output.split())


def _accounted(m) -> int:
    """Members a manifest accounts for: one row per member it names, plus each image row's sidecars."""
    member_rows = sum(1 for i in range(m.num_images) if m.members[i])
    sidecars = sum(len(json.loads(s)) for s in m.sidecars if s)
    return member_rows + sidecars


def _check_rows(m, expect: dict) -> None:
    assert m.located
    assert int(m.ok_N.sum()) == expect["images_ok"]
    reasons = {m.uris[i]: m.reasons[i] for i in range(m.num_images)}
    for uri in expect["corrupt"]:
        assert reasons[uri].startswith(("unreadable header", "decode failed")), reasons[uri]
    for uri in expect["non_image"]:
        assert reasons[uri].startswith("not an image member (.npy)"), reasons[uri]
    for uri in expect["truncated"]:
        assert reasons[uri].startswith("truncated shard: the member's data ends at byte"), reasons[uri]
    assert _accounted(m) == expect["members"]
    for i in np.flatnonzero(m.ok_N):  # captions and labels kept with their image
        side = json.loads(m.sidecars[i])
        assert side["txt"] == expect["captions"][m.uris[i]] and side["cls"] in ("0", "1", "2")
        assert json.loads(side["json"])["caption"] == side["txt"]


def test_every_member_of_local_shards_is_accounted_for_and_read_with_one_range(tmp_path):
    expect = write_shards(tmp_path / "shards")
    m = build_manifest(str(tmp_path / "shards" / "{00000..00003}.tar"), out_dir=tmp_path / "root")
    _check_rows(m, expect)
    missing = m.uris.index("00003.tar#")  # named by the pattern, not there: a row that says so
    assert not m.ok_N[missing] and m.reasons[missing].startswith("shard not found:")
    # the ranged read gives exactly the member's bytes, as tarfile extracts them
    with tarfile.open(tmp_path / "shards" / "00000.tar") as tf:
        member = tf.extractfile("000000001.jpg").read()
    i = m.uris.index("00000.tar#000000001.jpg")
    assert m.read_image_bytes(i) == member and m.lengths_N[i] == len(member)
    assert decode_checked(m, i)[0] is not None and load_checked(m, i).size == (m.table.column("width")[i].as_py(),
                                                                                m.table.column("height")[i].as_py())
    # a folder of shards and a glob give the same rows (less the missing shard's)
    folder = build_manifest(tmp_path / "shards", out_dir=tmp_path / "f")
    glob = build_manifest(str(tmp_path / "shards" / "*.tar"), out_dir=tmp_path / "g")
    assert folder.uris == glob.uris == [u for u in m.uris if u != "00003.tar#"]
    assert folder.sha256 == glob.sha256


def test_a_changed_shard_is_caught_by_the_hash_not_read_as_another_image(tmp_path):
    write_shards(tmp_path / "shards", shards=1)
    m = build_manifest(tmp_path / "shards", out_dir=tmp_path / "root")
    path = tmp_path / "shards" / "00000.tar"
    data = bytearray(path.read_bytes())
    data[m.offsets_N[0] + 200] ^= 0xFF
    path.write_bytes(bytes(data))
    img, reason = decode_checked(m, 0)
    assert img is None and reason.startswith("content changed since the manifest")
    path.write_bytes(bytes(data[: m.offsets_N[0] + 10]))
    img, reason = decode_checked(m, 0)
    assert img is None and "are not all there" in reason


def test_damaged_shards_are_rows_with_a_reason_never_a_crash(tmp_path):
    src = tmp_path / "shards"
    write_shards(src, shards=2)  # 00000.tar whole (4 images), 00001.tar truncated (2 whole images)
    (src / "00001.tar").rename(src / "00005.tar")
    (src / "00001.tar").write_bytes(b"")
    (src / "00002.tar").write_bytes(b"garbage that is no tar archive at all" * 40)
    good = (src / "00000.tar").read_bytes()
    with tarfile.open(src / "00000.tar") as tf:
        second = tf.getmembers()[4]
    # a header of the second sample overwritten: tarfile itself would stop there quietly
    (src / "00003.tar").write_bytes(good[:second.offset] + b"\x07" * 512 + good[second.offset + 512:])
    (src / "00004.tar.gz").write_bytes(b"\x1f\x8b")
    m = build_manifest(src, out_dir=tmp_path / "root")
    reasons = {m.uris[i]: m.reasons[i] for i in range(m.num_images) if not m.ok_N[i]}
    assert reasons["00001.tar#"] == "empty file (0 bytes)"
    assert reasons["00002.tar#"].startswith("not a tar archive")
    assert reasons[f"00003.tar#@{second.offset}"].startswith("damaged shard: unreadable tar header at byte")
    assert reasons["00004.tar.gz#"].startswith("compressed tar shard")
    assert int(m.ok_N.sum()) == 4 + 1 + 2  # shard 0 whole, shard 3 up to the damaged header, 5 up to its cut


def test_patterns_that_match_nothing_and_unknown_protocols_are_one_clear_error(tmp_path):
    code, out = _invoke(["corpus", str(tmp_path / "s" / "{00000..00009}.tar"), "--out", tmp_path / "r"])
    assert code == 2 and "brace pattern" in out and "matches nothing: none of its 10 names exists" in out
    code, out = _invoke(["corpus", str(tmp_path / "*.tar"), "--out", tmp_path / "r"])
    assert code == 2 and "glob pattern" in out and "matches nothing" in out
    code, out = _invoke(["corpus", "nosuchproto://bucket/shards/", "--out", tmp_path / "r"])
    assert code == 2 and "'nosuchproto'" in out and "Traceback" not in out


def test_corpus_resumes_from_parts_and_a_grown_corpus_reuses_the_unchanged_shards(tmp_path):
    write_shards(tmp_path / "shards", shards=3)
    first = build_corpus(tmp_path / "shards", out_dir=tmp_path / "root")
    assert (first.parts.built, first.parts.reused) == (3, 0)
    write_shards(tmp_path / "more", shards=4, seed=0)
    (tmp_path / "more" / "00003.tar").rename(tmp_path / "shards" / "00003.tar")
    grown = build_corpus(tmp_path / "shards", out_dir=tmp_path / "root")
    assert (grown.parts.built, grown.parts.reused) == (1, 3)
    fresh = build_corpus(tmp_path / "shards", out_dir=tmp_path / "fresh")
    assert fresh.manifest.hash == grown.manifest.hash


@pytest.mark.slow
def test_held_out_shards_local_and_on_s3_go_through_corpus_extract_and_verify(tmp_path, s3):
    """The acceptance run of the issue: shards built outside the project's code, with a corrupt member, a
    non-image member and a truncated shard, from a folder and from an s3:// bucket."""
    import fsspec

    expect = write_shards(tmp_path / "shards")
    fs = fsspec.filesystem("s3")
    for p in sorted((tmp_path / "shards").iterdir()):
        fs.put_file(str(p), f"{s3[len('s3://'):]}/wds/{p.name}")
    roots = {"local": (tmp_path / "shards", tmp_path / "root"),
             "s3": (f"{s3}/wds/{{00000..00002}}.tar", f"{s3}/wds-root")}
    hashes = {}
    for name, (source, root) in roots.items():
        code, out = _invoke(["corpus", source, "--out", root, "--views", "2", "--no-ray"])
        assert code == 0 and "images: 13 ok: 10 bad: 3" in out, out
        m = read_manifest(layout.manifest_path(root))
        _check_rows(m, expect)
        hashes[name] = m.sha256
        code, out = _invoke(["extract", "--teacher", TEACHER, "--root", root, "--no-ray", "--shard-size", "4",
                             "--batch-size", "4", "--no-progress"])
        assert code == 0 and f"extract {TEACHER}: 13 images, 20 views, 0 masked, 3 bad" in out, out
        code, out = _invoke(["store", "verify", "--root", root])
        assert code == 0 and "4 ok, 0 damaged, 0 incomplete of 4 shards" in out, out
    assert hashes["local"] == hashes["s3"]  # the same images, read with ranged reads from either place


def test_an_unreachable_bucket_names_the_source_and_protocol(tmp_path, s3):
    code, out = _invoke(["corpus", "s3://no-such-bucket-here/shards/", "--out", tmp_path / "r", "--no-ray"])
    assert code == 2 and "s3://no-such-bucket-here/shards/" in out and "'s3'" in out and "Traceback" not in out
