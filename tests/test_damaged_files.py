"""Damaged files: a truncated or altered normalizer, checkpoint, config.json, receipt or manifest stops the
command with one error naming the file and how to recover (exit 2, no traceback), and nothing is refitted
or retrained in its place (the damaged file is left as it was). Stage two of AM-RADIO (arXiv 2312.06709)
with PHI-S normalizers (arXiv 2410.01680) fitted once and persisted."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from stages.distill.run_dir import checkpoint_path
from stages.extract.receipt import check_receipt, write_receipt
from store_schema.errors import DamagedFileError
from store_schema.layout import manifest_path, teacher_store_path
from store_schema.teacher_store import open_teacher_store
from test_distill_loader import make_tiny_stores

TEACHERS = "alpha,beta"


def _invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300", "NO_COLOR": "1"})
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.output)
    return result.exit_code, " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def _distill(root: Path, out: Path, *extra) -> tuple[int, str]:
    return _invoke("distill", "--teachers", TEACHERS, "--root", root, "--out", out, "--steps", "4",
                   "--img-size", "64", "--batch-size", "4", "--workers", "0", "--ckpt-every", "2",
                   "--warmup-steps", "1", *extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A base folder holding stores (base/store, images beside it) and a finished 4-step run base/runs/phis."""
    base = tmp_path_factory.mktemp("damaged")
    root = make_tiny_stores(base / "store", teachers=("alpha", "beta"))
    code, out = _distill(root, base / "runs")
    assert code == 0, out
    return base


@pytest.fixture
def copy(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the trained base (same relative layout), safe to damage."""
    dst = tmp_path / "base"
    shutil.copytree(trained, dst)
    config = dst / "runs" / "phis" / "config.json"  # a moved run: its store root and run dir moved with it
    config.write_text(config.read_text().replace(str(trained), str(dst)))
    return dst


def _truncate(path: Path) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path.read_bytes()


def _flip(path: Path, at: float = 0.7) -> bytes:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    return path.read_bytes()


def _assert_clear(code: int, out: str, path: Path, *recovery: str) -> None:
    assert code == 2, out
    assert "Traceback" not in out
    assert str(path) in out and "is damaged" in out, out
    for word in recovery:
        assert word in out, out


@pytest.mark.parametrize("damage", [_truncate, _flip])
def test_damaged_normalizer_is_never_refitted(copy: Path, damage) -> None:
    files = sorted((copy / "store" / "normalizers").rglob("*.safetensors"))
    assert files
    target = files[len(files) // 2]
    damaged = damage(target)
    code, out = _distill(copy / "store", copy / "runs", "--run-name", "second")
    _assert_clear(code, out, target, "Delete it to refit", "not refitted automatically")
    assert target.read_bytes() == damaged  # not rewritten
    code, out = _invoke("evaluate", copy / "runs" / "phis")
    _assert_clear(code, out, target, "Delete it to refit")


@pytest.mark.parametrize("damage", [_truncate, _flip])
def test_damaged_checkpoint_is_never_retrained(copy: Path, damage) -> None:
    from stages.distill.sweep import train_variant
    from stages.distill.run_dir import read_run_config

    run = copy / "runs" / "phis"
    ckpt = checkpoint_path(run)
    damaged = damage(ckpt)
    code, out = _distill(copy / "store", copy / "runs", "--resume", "--steps", "4")
    _assert_clear(code, out, ckpt, "restore checkpoint.pt from a backup", "nothing was retrained")
    code, out = _invoke("evaluate", run)
    _assert_clear(code, out, ckpt, "delete the run directory")
    config, _ = read_run_config(run)
    (run / "export.safetensors").unlink()  # an unfinished run: DVC's distill --sweep must resume it
    with pytest.raises(DamagedFileError, match="checkpoint.pt is damaged"):
        train_variant(config, replace_conflicting=True)
    assert ckpt.read_bytes() == damaged


def test_truncated_config_json_names_the_file(copy: Path) -> None:
    config = copy / "runs" / "phis" / "config.json"
    _truncate(config)
    code, out = _distill(copy / "store", copy / "runs", "--resume", "--steps", "4")
    _assert_clear(code, out, config, "not valid JSON", "restore it from a backup")
    code, out = _invoke("evaluate", copy / "runs" / "phis")
    _assert_clear(code, out, config, "not valid JSON")


def test_altered_config_json_disagrees_with_the_checkpoint(copy: Path) -> None:
    config = copy / "runs" / "phis" / "config.json"
    config.write_text(config.read_text().replace('"lr": 0.001', '"lr": 0.005'))
    code, out = _distill(copy / "store", copy / "runs", "--resume", "--steps", "4", "--lr", "0.005")
    _assert_clear(code, out, config, "disagrees with checkpoint.pt", "lr: config.json 0.005, checkpoint 0.001")
    config.write_text(config.read_text().replace('"student": "vit_tiny_test"', '"student": "eradio_tiny_test"'))
    code, out = _invoke("evaluate", copy / "runs" / "phis")
    _assert_clear(code, out, config, "disagrees with checkpoint.pt")


@pytest.mark.parametrize("damage", ["truncate", "alter"])
def test_damaged_receipt_names_the_file_and_how_to_rewrite_it(copy: Path, damage: str) -> None:
    store = open_teacher_store(teacher_store_path(copy / "store", "alpha"))
    receipt = write_receipt(store, copy / "receipts" / "extract_alpha.json")
    check_receipt(receipt, store)  # intact: accepted
    if damage == "truncate":
        _truncate(receipt)
        match = "not valid JSON"
    else:
        receipt.write_text(receipt.read_text().replace('"complete_shards": [\n    0,', '"complete_shards": [\n    7,'))
        match = r"fields \['complete_shards'\] differ"
    with pytest.raises(DamagedFileError, match=match) as err:
        check_receipt(receipt, store)
    assert str(receipt) in str(err.value) and "pipeline extract --teacher alpha --receipt" in str(err.value)


@pytest.mark.parametrize("damage", [_truncate, _flip])
def test_damaged_manifest_names_the_file_and_how_to_rebuild_it(copy: Path, damage) -> None:
    manifest = manifest_path(copy / "store")
    damage(manifest)
    code, out = _distill(copy / "store", copy / "runs", "--run-name", "other")
    assert code == 2 and "Traceback" not in out, out
    assert str(manifest) in out or "manifest" in out, out
    assert "pipeline corpus" in out, out  # both a parse failure and a hash mismatch say how to rebuild it
    code, out = _invoke("extract", "--teacher", "tiny_dinov2", "--root", copy / "store", "--no-ray", "--no-progress")
    assert code == 2 and "Traceback" not in out and "pipeline corpus" in out, out
