"""Every user command, walked through the classes of mistake a new user makes (issue 26): a params file that is
not valid YAML, a Ray cluster that is not there, a device that is not there, an output on a read-only
filesystem, a wrong name. Each ends in exactly one `Error:` line (what, where, how to fix), exit status 2, no
traceback, and nothing left behind: the project folder is byte-for-byte what it was (the store of stage one of
AM-RADIO, arXiv 2312.06709, its student views, and the PHI-S sweep's run folders, arXiv 2410.01680).

The project is real: a small generated corpus, a tiny_sam store extracted, its student views rendered, one
2-step run distilled and evaluated, all through the same CLI.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.cli import app

REPO = Path(__file__).resolve().parents[1]
pytest_plugins = ["tests.ray_fixture"]

# every command that reads params.yaml, with arguments that are right but for the mistake under test
COMMANDS: dict[str, list[str]] = {
    "corpus": ["corpus", "c/images", "--out", "newroot"],
    "demo-corpus": ["demo-corpus", "newdemo"],
    "extract": ["extract", "-t", "tiny_dinov2", "--no-progress"],
    "extract-text": ["extract-text", "-t", "tiny_clip", "--classes", "c/classes.txt"],
    "views": ["views", "--size", "48"],
    "distill": ["distill", "--norm", "mse", "--run-name", "new"],
    "evaluate": ["evaluate", "runs/r1"],
    "report": ["report", "runs/r1", "--out", "newreport"],
    "store info": ["store", "info"],
    "store verify": ["store", "verify"],
    "store fidelity": ["store", "fidelity", "-t", "tiny_sam"],
    "store transcode": ["store", "transcode", "-t", "tiny_sam", "--to", "tc"],
    "demo": ["demo"],
}
NO_PARAMS = {"teachers": "lists the registry, reads and writes nothing",
             "export": "reads no params file (its read-only case is below)"}


@contextmanager
def _cwd(path: Path):
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _run(project: Path, args: list[str], env: dict | None = None) -> tuple[int, str]:
    with _cwd(project):
        result = CliRunner().invoke(app, args, env={"COLUMNS": "250", "NO_COLOR": "1", **(env or {})})
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


def _snapshot(project: Path) -> dict[str, tuple[int, int] | None]:
    """Every file (size, mtime) and folder under the project (a folder's own mtime moves with a lease file
    taken and released in it: not something left behind)."""
    return {str(p.relative_to(project)): None if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(project.rglob("*"))}


def _one_error_line(code: int, out: str, *expected: str) -> str:
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in out, out
    assert out.strip().splitlines()[-1] == errors[0], out  # the last word
    for part in expected:
        assert part in errors[0], (part, errors[0])
    return errors[0]


def _refused(project: Path, args: list[str], *expected: str, env: dict | None = None) -> str:
    """Run args in the project: one Error line holding `expected`, exit 2, nothing in the project changed."""
    before = _snapshot(project)
    code, out = _run(project, args, env)
    line = _one_error_line(code, out, *expected)
    assert _snapshot(project) == before, f"{args} left something behind"
    return line


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder: params.yaml (the smoke preset pointed at a generated corpus), two extracted stores,
    its 32 px student views, a 2-step run r1 and its evaluation."""
    from tests.ray_fixture import build_corpus

    project = tmp_path_factory.mktemp("mistakes")
    build_corpus(project / "c", n_ok=6, num_views=1)
    (project / "c" / "classes.txt").write_text("a cat\na dog\n")
    params = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    params["store"]["root"], params["demo"]["dir"], params["corpus"]["source"] = "c/root", "c", "c/images"
    params["extract"].update(teachers=["tiny_sam", "tiny_clip"], batch_size=8, shard_size=4, fidelity_images=0)
    params["distill"].update(norms=["mse"], runs_dir="runs", steps=2, batch_size=4, warmup_steps=1, log_every=1)
    params["evaluate"]["probe_labels"] = None  # no labels: the probe is skipped
    params["report"]["out"] = "report"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["extract", "--no-progress"], ["views"], ["distill", "--norm", "mse", "--run-name", "r1"],
                 ["evaluate", "runs/r1"]):
        code, out = _run(project, args)
        assert code == 0, out
    return project


def test_every_command_with_params_is_walked():
    """The walk below covers every command of `pipeline` (a new command must be added to it)."""
    import typer

    from tests.test_cli_help import walk

    names = {" ".join(path) for path, cmd in walk(typer.main.get_command(app)) if not hasattr(cmd, "list_commands")}
    assert names == set(COMMANDS) | set(NO_PARAMS)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_malformed_params_yaml_names_file_line_and_column(project, command):
    good = (project / "params.yaml").read_text()
    lines = good.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("  teachers:"))
    lines[i] = "  teachers: [tiny_sam, {a: b]"  # a typo inside a flow list
    (project / "params.yaml").write_text("\n".join(lines) + "\n")
    try:
        _refused(project, COMMANDS[command], f"{project / 'params.yaml'}, line {i + 1}, column 29: not valid YAML",
                 "fix the file there")
    finally:
        (project / "params.yaml").write_text(good)


def test_a_params_file_that_is_not_text_or_not_a_mapping_is_one_line(project):
    (project / "list.yaml").write_text("- a\n- b\n")
    (project / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01")
    try:
        _refused(project, ["extract", "--params", "list.yaml"], "list.yaml: top level must be a mapping")
        _refused(project, ["distill", "--params", "binary.yaml"], "binary.yaml cannot be read as a YAML text file")
        _refused(project, ["report", "--params", "absent.yaml"], "no params file at", "absent.yaml")
    finally:
        (project / "list.yaml").unlink()
        (project / "binary.yaml").unlink()


def _ray_commands(address: str, timeout: float) -> dict[str, list[str]]:
    ray = ["--ray-address", address, "--ray-timeout", str(timeout)]
    return {"corpus": ["corpus", "c/images", "--out", "newroot", *ray],
            "extract": ["extract", "-t", "tiny_dinov2", "--no-progress", "--workers", "1", *ray],
            "views": ["views", "--size", "48", "--workers", "1", *ray],
            "store transcode": ["store", "transcode", "-t", "tiny_sam", "--to", "tc", *ray]}


@pytest.fixture
def silent_port():
    """A TCP port that accepts connections and never answers (a firewall-less host where no Ray listens)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def not_ray_port():
    """A TCP port where another service answers (an HTTP/1 server) instead of a Ray GCS."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    server = HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def test_an_unreachable_cluster_address_is_one_line_naming_it(project, silent_port, not_ray_port):
    """A refused port, a port that never answers (bounded by --ray-timeout, not Ray's ~14 minutes of
    retries), a port where something else answers: one line naming the address, in every command that
    takes --ray-address (corpus, extract, views, store transcode), and in `pipeline demo` through params.yaml's
    extract.ray_address."""
    for name, args in _ray_commands("127.0.0.1:1", 5).items():
        _refused(project, args, "cannot reach a Ray cluster at 127.0.0.1:1", "--ray-timeout")
    for name, args in _ray_commands(f"127.0.0.1:{silent_port}", 1).items():
        _refused(project, args, f"127.0.0.1:{silent_port} accepts connections but no Ray cluster answered there "
                                "within 1 s")
    for name, args in _ray_commands(f"127.0.0.1:{not_ray_port}", 5).items():
        _refused(project, args, f"127.0.0.1:{not_ray_port} is not a Ray cluster (it does not speak gRPC")
    _demo_refused(project, dict(ray_address=f"127.0.0.1:{silent_port}", ray_timeout=1, workers=1),
                  f"127.0.0.1:{silent_port} accepts connections")


def _demo_refused(project: Path, extract: dict, *expected: str) -> str:
    """`pipeline demo` on params.yaml with `extract` settings changed: its one `Error:` line."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["extract"].update(extract)
    (project / "cluster.yaml").write_text(yaml.safe_dump(params))
    try:
        return _refused(project, ["demo", "--params", "cluster.yaml"], *expected)
    finally:
        (project / "cluster.yaml").unlink()


def test_ray_address_auto_resolves_as_ray_does(project):
    """`auto` takes RAY_ADDRESS first (here: nowhere), as Ray does; the line names both (Ray spells a loopback
    address as this node's IP)."""
    for args in _ray_commands("auto", 5).values():
        _refused(project, args, "cannot reach a Ray cluster at auto (", ":1): Connection refused",
                 env={"RAY_ADDRESS": "127.0.0.1:1"})


def test_ray_address_auto_without_a_cluster(project, tmp_path):
    import ray._private.services as services

    if services.find_gcs_addresses():
        pytest.skip("a Ray cluster runs on this machine: `auto` finds it")
    for args in _ray_commands("auto", 5).values():
        _refused(project, args, "--ray-address auto found no running Ray cluster", "ray start --head",
                 env={"RAY_ADDRESS": None, "RAY_TMPDIR": str(tmp_path)})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["extract", "extract-text", "distill", "evaluate"])
def test_a_device_that_is_not_there_is_refused_before_any_output(project, command):
    _refused(project, COMMANDS[command] + ["--device", "cuda"],
             "CUDA requested but torch.cuda.is_available() is False on this machine (--device cuda); use --device cpu")


@pytest.mark.parametrize("args, says", [
    (["extract", "-t", "nosuch"], "unknown teacher 'nosuch'"),
    (["distill", "--norm", "nosuch"], "unknown normalization variant 'nosuch'; valid: mse"),
    (["distill", "--norm", "mse", "--run-name", "new", "--student", "nosuch"], "unknown student 'nosuch'; valid:"),
    (["distill", "--norm", "mse", "--run-name", "new", "--loader-memory", "1"], "Raise --loader-memory"),
    (["distill", "--norm", "mse", "--out", "fresh/runs", "--run-name", "new", "--loader-memory", "1"],
     "Raise --loader-memory"),
    (["distill", "--norm", "mse", "--run-name", "new", "--resume"],
     "nothing to resume at runs/new (there is no run there yet; checkpoint.pt does not exist); run the same "
     "command without --resume to start the run"),
    (["evaluate", "runs/nosuch"], "runs/nosuch"),
    (["store", "info", "-t", "nosuch"], "stores there: tiny_clip, tiny_sam"),
])
def test_wrong_names_and_values_leave_nothing_behind(project, args, says):
    """Including the mistakes distill finds only after it made its run folder (the student's name, the
    loader's budget): the new folder (and a runs folder made for it) is removed again."""
    _refused(project, args, says)


@pytest.fixture(scope="module")
def read_only_project(project, tmp_path_factory):
    """A copy of the project on a read-only filesystem: a tmpfs remounted read-only where this user may mount
    (root on this project's machines), else the copy with its write permission removed."""
    base = tmp_path_factory.mktemp("ro")
    copy = base / "project"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(base)], capture_output=True)
    if mounted.returncode == 0:
        shutil.copytree(project, copy)
        remount = subprocess.run(["mount", "-o", "remount,ro", str(base)], capture_output=True)
        assert remount.returncode == 0, remount.stderr
    elif os.geteuid() != 0:
        shutil.copytree(project, copy)
        for p in [copy, *copy.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
    else:
        pytest.skip(f"root without mount permission: permissions do not bind root ({mounted.stderr.strip()})")
    yield copy
    if mounted.returncode == 0:
        subprocess.run(["umount", "-l", str(base)], check=False)


@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in ("store info", "store verify", "demo")]
                         + ["export"])
def test_a_read_only_output_is_one_line(read_only_project, command):
    args = COMMANDS.get(command, ["export", "runs/r1"])
    line = _refused(read_only_project, args)
    assert ("Read-only file system" in line or "Permission denied" in line), line
    assert "use another location" in line or "give another location" in line, line


def test_reading_a_read_only_project_still_works(read_only_project):
    for args in (["store", "info"], ["store", "verify"]):
        code, out = _run(read_only_project, args)
        assert code == 0, out


def test_a_cluster_address_is_checked_while_this_process_already_runs_ray(project, silent_port, ray_session):
    """A process that already runs Ray (a notebook, a test session) does not reuse it for another address:
    the address given is checked as above, and a live cluster that is not the one joined is refused by name.
    A stage refused inside `pipeline demo` is still one `Error:` line, the last one: the stage's own."""
    import ray

    from stages.orchestrate.ray_session import _same_cluster

    _demo_refused(project, dict(ray_address=f"127.0.0.1:{silent_port}", ray_timeout=1, workers=1),
                  f"127.0.0.1:{silent_port} accepts connections")
    _refused(project, _ray_commands("127.0.0.1:1", 5)["extract"], "cannot reach a Ray cluster at 127.0.0.1:1")
    joined = ray.get_runtime_context().gcs_address
    port = int(joined.rpartition(":")[2])
    _same_cluster(f"localhost:{port}" if joined.startswith("127.") else joined, joined)  # the same cluster
    with pytest.raises(ValueError, match=f"already runs Ray connected to {joined}; it cannot also join"):
        _same_cluster(f"127.0.0.1:{port + 1}", joined)
    line = _demo_refused(project, dict(ray_address=None, workers=0), "c holds files that are not part of the demo")
    assert "stage demo_corpus" not in line, line
