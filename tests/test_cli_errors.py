"""Bad command-line input ends in one clear error line and exit status 2, never a traceback, and the
mistakes that can be caught up front are caught before any teacher store is created (stage one of
AM-RADIO, arXiv 2312.06709: a half-made store from a typo would have to be deleted by hand)."""

from __future__ import annotations

import re

import pytest
import torch
import typer
from typer.testing import CliRunner

from pipeline import cmd_corpus, cmd_extract, cmd_store
from pipeline.defaults import parse_only
from stages.extract import preflight
from store_schema.layout import list_teacher_stores, teacher_store_path

pytest_plugins = ["tests.ray_fixture"]

TEACHER = "tiny_sam"


def _app() -> typer.Typer:
    app = typer.Typer()
    cmd_extract.register(app)
    cmd_store.register(app)
    return app


def _invoke(args: list) -> tuple[int, str]:
    """Exit code and the output (stdout + stderr) without ANSI codes and box drawing, whitespace collapsed."""
    result = CliRunner().invoke(_app(), [str(a) for a in args], env={"COLUMNS": "300", "NO_COLOR": "1"})
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.output)
    return result.exit_code, " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def _extract(root, *extra) -> tuple[int, str]:
    return _invoke(["extract", "--root", root, "--no-ray", "--no-progress", "--shard-size", "4",
                    "--batch-size", "8", *extra])


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from tests.ray_fixture import build_corpus

    return build_corpus(tmp_path_factory.mktemp("cli_errors"), n_ok=4, num_views=1)


@pytest.fixture(scope="module")
def filled_root(tmp_path_factory):
    """A root with one complete tiny_sam store (6 images, shards of 4)."""
    from tests.ray_fixture import build_corpus

    root = build_corpus(tmp_path_factory.mktemp("cli_errors_filled"), n_ok=4, num_views=1)
    code, out = _extract(root, "-t", TEACHER)
    assert code == 0, out
    return root


def test_storage_grid_larger_than_teacher_grid_is_a_clean_error_and_creates_no_store(root):
    code, out = _extract(root, "-t", TEACHER, "--storage-grid", "100x100")
    assert code == 2
    assert "storage grid 100x100 is larger than the teacher's patch grid 8x8" in out and "Traceback" not in out
    assert list_teacher_stores(root) == []


@pytest.mark.parametrize("args, message", [
    (["-t", "nosuch"], "unknown teacher 'nosuch'"),
    (["-t", TEACHER, "--storage-grid", "8by8"], "storage grid must look like HxW"),
    (["-t", TEACHER, "--keepbits", "many"], "keepbits must be an integer"),
    (["-t", TEACHER, "--device", "tpu"], "valid devices: cpu, cuda, cuda:N"),
    (["-t", TEACHER, "--gpus-per-worker", "-1"], "--gpus-per-worker must be >= 0"),
])
def test_bad_options_are_clean_errors_before_any_store(root, args, message):
    code, out = _extract(root, *args)
    assert code == 2 and message in out and "Traceback" not in out, out
    assert list_teacher_stores(root) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_refused_before_any_store(root):
    for extra in (["--no-ray"], ["--workers", "2"]):  # in-process and (local) Ray alike, before Ray starts
        code, out = _extract(root, "-t", TEACHER, "--device", "cuda", *extra)
        assert code == 2
        assert "CUDA requested but torch.cuda.is_available() is False on this machine" in out
    assert list_teacher_stores(root) == []


def test_missing_pretrained_weights_are_a_clean_error_before_any_store(root):
    from stages.teachers.registry import get_teacher_spec, weights_available

    if weights_available(get_teacher_spec("dinov2_s")) != "missing":
        pytest.skip("dinov2_s weights are in this machine's hub cache")
    code, out = _extract(root, "-t", "dinov2_s")
    assert code == 2 and "Pretrained weights for teacher 'dinov2_s' are not available" in out
    assert "Traceback" not in out and list_teacher_stores(root) == []


def test_store_mismatch_on_rerun_is_a_clean_error(filled_root):
    code, out = _extract(filled_root, "-t", TEACHER, "--shard-size", "2")  # the later option wins
    assert code == 2 and "--shard-size 2 conflicts with the existing store" in out and "Traceback" not in out
    assert "created with shard size 4: leave --shard-size out" in out  # the store's value is the default


@pytest.mark.parametrize("command", ["info", "verify"])
def test_store_commands_name_the_stores_that_exist(filled_root, command):
    code, out = _invoke(["store", command, "--root", filled_root, "-t", "nosuch"])
    assert code == 2
    assert f"no store for teacher(s) 'nosuch' under {filled_root}; stores there: {TEACHER}" in out
    code, out = _invoke(["store", command, "--root", filled_root / "empty"])
    assert code == 2 and "no teacher stores" in out


def test_list_teacher_stores_lists_only_real_stores(filled_root, tmp_path):
    assert list_teacher_stores(filled_root) == [TEACHER]
    assert list_teacher_stores(tmp_path / "absent") == []
    (tmp_path / "half.zarr").mkdir()  # no zarr.json: not a store
    teacher_store_path(tmp_path, "b").mkdir()
    (teacher_store_path(tmp_path, "b") / "zarr.json").write_text("{}")
    assert list_teacher_stores(tmp_path) == ["b"]


def test_gpus_per_worker_default_follows_the_device():
    assert cmd_extract.resolve_gpus_per_worker(None, "cuda") == 1.0
    assert cmd_extract.resolve_gpus_per_worker(None, "cuda:0") == 1.0
    assert cmd_extract.resolve_gpus_per_worker(None, "cpu") == 0.0
    assert cmd_extract.resolve_gpus_per_worker(0.5, "cuda") == 0.5
    with pytest.raises(ValueError, match="cluster has 4 CPUs and 0 GPUs"):
        preflight.check_ray_resources({"CPU": 4}, workers=2, cpus_per_worker=1, gpus_per_worker=1, device="cuda")
    with pytest.raises(ValueError, match="Ray would give the actors no GPU"):
        preflight.check_ray_resources({"CPU": 4, "GPU": 2}, workers=2, cpus_per_worker=1, gpus_per_worker=0,
                                        device="cuda")
    preflight.check_ray_resources({"CPU": 4, "GPU": 2}, workers=2, cpus_per_worker=1, gpus_per_worker=1,
                                    device="cuda")


def test_corpus_help_defaults_are_the_builders():
    from stages.corpus.build_manifest import DEFAULT_VAL_FRACTION
    from stages.corpus.images import DEFAULT_PIXEL_LIMIT, MIN_SIDE

    from stages.corpus.build_runner import FILES_PER_TASK

    app = typer.Typer()
    cmd_corpus.register(app)  # its defaults (shown by --help) are the corpus stage's, through default_map
    defaults = {k: v for k, v in parse_only(app, "corpus", []).params.items() if k in ("pixel_limit", "min_side",
                                                                                        "val_fraction", "files_per_task")}
    assert defaults == {"pixel_limit": DEFAULT_PIXEL_LIMIT, "min_side": MIN_SIDE,
                        "val_fraction": DEFAULT_VAL_FRACTION, "files_per_task": FILES_PER_TASK}


@pytest.mark.parametrize("content", ["state_dict", "text"])
def test_wrong_checkpoint_is_refused_before_any_store_in_a_few_lines(root, tmp_path, content):
    """A --checkpoint that is not the teacher's weights (another model's state dict, or not a torch file at
    all) fails in the preflight: one error naming the file and the mismatch, no traceback, no store."""
    bad = tmp_path / f"wrong_{content}.pt"
    if content == "state_dict":
        torch.save({"encoder.weight": torch.zeros(4, 4), "head.bias": torch.zeros(3)}, bad)
    else:
        bad.write_text("this is not a checkpoint\n")
    result = CliRunner().invoke(_app(), ["extract", "--root", str(root), "--no-ray", "--no-progress", "-t", "dinov2_s",
                                         "--checkpoint", str(bad)], env={"COLUMNS": "300", "NO_COLOR": "1"})
    out = result.output
    assert result.exit_code == 2, out
    assert out.startswith(f"Error: --checkpoint {bad} is not a checkpoint of teacher 'dinov2_s'"), out
    assert "Traceback" not in out and len(out.splitlines()) <= 3 and len(out) < 1200, out
    assert list_teacher_stores(root) == [] and not teacher_store_path(root, "dinov2_s").exists()


@pytest.mark.parametrize("args, says", [
    (["distill", "--teachers", "x", "--steps", "many"], "Error: Invalid value for '--steps'"),  # click's parse error
    (["corpus", "/no/such/folder", "--out", "out"], "Error: corpus source /no/such/folder does not exist"),
    (["store", "info", "--root", "nothing_here"], "Error: no teacher stores (<teacher>.zarr) under nothing_here"),
    (["evaluate", "not_a_run"], "Error: "),
])
def test_the_program_prints_every_user_error_one_way(tmp_path, args, says):
    """As a program (the console script calls `app()`), usage errors and the commands' own errors print the
    same way: one `Error: ...` line on stderr, exit 2; no box, no lowercase `error:`, no traceback."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", "from pipeline.cli import app; app()", *args], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(repo), "COLUMNS": "200",
                                                                          "PATH": "/usr/bin:/bin"})
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith(says), res.stderr
    assert not any(ch in res.stderr for ch in "╭│╰") and "Traceback" not in res.stderr
    assert "error:" not in res.stderr  # the lowercase style is gone


def test_extraction_over_a_replaced_manifest_says_what_to_do(tmp_path):
    """A manifest replaced under an existing store (copied from another corpus) is refused by extraction
    with the hash mismatch and what to do, not a bare `manifest_hash mismatch`."""
    import shutil

    from tests.ray_fixture import build_corpus
    from store_schema.layout import manifest_path

    root = build_corpus(tmp_path / "a", n_ok=4, num_views=1)
    code, out = _extract(root, "-t", TEACHER)
    assert code == 0, out
    other = build_corpus(tmp_path / "b", n_ok=5, num_views=1, seed=2)
    shutil.copyfile(manifest_path(other), manifest_path(root))
    code, out = _extract(root, "-t", TEACHER)
    assert code == 2 and "manifest_hash mismatch" in out and "Traceback" not in out, out
    assert "restore that manifest" in out and "extract into a new root" in out, out



def test_pipeline_traceback_shows_where_a_user_error_came_from(monkeypatch, capsys):
    """An uncaught user error prints one line; with PIPELINE_TRACEBACK=1 it raises (traceback kept), so a
    ValueError that is really a bug can be traced."""
    import pytest

    from pipeline.errors import run_cli

    def invoke(**_):
        raise ValueError("shape mismatch deep inside")

    monkeypatch.delenv("PIPELINE_TRACEBACK", raising=False)
    assert run_cli(invoke) == 2
    assert capsys.readouterr().err.strip() == "Error: shape mismatch deep inside"
    monkeypatch.setenv("PIPELINE_TRACEBACK", "1")
    with pytest.raises(ValueError, match="deep inside"):
        run_cli(invoke)
