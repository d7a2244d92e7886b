"""pyproject.toml declares ranges, constraints.txt the exact tested versions: the two must agree (every
pinned version inside its declared range, every declared dependency pinned) and Python has no upper cap.
The core install holds what the pipeline imports; DVC and ONNX are extras, which `[dev]` (what `make` and
`.ci/run` install) includes: checked on the wheel's own metadata, resolved through the installed packages."""

from __future__ import annotations

import email.parser
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PROJECT = "agglo-distill"


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not NAME==VERSION"
            pins[canonicalize_name(name)] = version
    return pins


def test_every_declared_dependency_is_pinned_inside_its_range():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    pins = _pins()
    problems = []
    for text in declared:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name == PROJECT:  # `[dev]` naming the other extras of this project
            problems += [f"{text}: no extra {x!r}" for x in req.extras if x not in project["optional-dependencies"]]
        elif name not in pins:
            problems.append(f"{req.name} is not pinned in constraints.txt")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req.name}=={pins[name]} (constraints.txt) is outside {req.specifier} (pyproject.toml)")
        elif not any(s.operator in (">=", "==", "~=") for s in req.specifier):
            problems.append(f"{req.name}: no lower bound (the oldest tested version) in pyproject.toml")
    assert not problems, "\n".join(problems)


def test_python_has_no_upper_cap_and_engines_are_ranges():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "<" not in project["requires-python"], project["requires-python"]
    exact = [r for r in project["dependencies"] if "==" in r]
    assert not exact, f"exact pins belong in constraints.txt, not pyproject.toml: {exact}"


def _wheel_requirements(tmp_path: Path) -> list[Requirement]:
    """Requires-Dist of the wheel `pip install .` would build: setuptools' own metadata step (what pip runs
    to resolve), on a copy of pyproject.toml, so nothing is written into the checkout."""
    for name in ("pyproject.toml", "README.md"):
        (tmp_path / name).write_bytes((REPO / name).read_bytes())
    (tmp_path / "out").mkdir()
    subprocess.run([sys.executable, "-c", "from setuptools import build_meta; build_meta.prepare_metadata_for_build_wheel('out')"],
                   cwd=tmp_path, check=True, capture_output=True)
    (meta,) = (tmp_path / "out").glob("*.dist-info/METADATA")
    return [Requirement(r) for r in email.parser.Parser().parsestr(meta.read_text()).get_all("Requires-Dist")]


def _closure(reqs: list[Requirement]) -> set[str]:
    """Every distribution these requirements pull in, resolved through the installed packages (the tested
    versions) with their own extras, no extra of ours."""
    seen: set[str] = set()
    todo = list(reqs)
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        for text in importlib.metadata.distribution(name).requires or []:
            sub = Requirement(text)
            envs = [{"extra": x} for x in req.extras] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append(sub)
    return seen


def test_core_install_pulls_neither_dvc_nor_onnx_and_dev_has_every_extra(tmp_path):
    reqs = _wheel_requirements(tmp_path)
    core = [r for r in reqs if r.marker is None]
    for extra, names in (("dvc", {"dvc"}), ("onnx", {"onnx", "onnxscript", "onnxruntime"})):
        declared = {canonicalize_name(r.name) for r in reqs if r.marker is not None and r.marker.evaluate({"extra": extra})}
        assert declared == names, (extra, declared)
    pulled = _closure(core)
    assert {"torch", "timm", "zarr", "ray", "safetensors", "typer"} <= pulled  # what the pipeline imports
    unwanted = pulled & {"dvc", "celery", "hydra-core", "onnx", "onnxruntime", "onnxscript", "pytest", "moto", "ruff"}
    assert not unwanted, f"`pip install {PROJECT}` would install {sorted(unwanted)}"
    dev = [r for r in reqs if r.marker is not None and r.marker.evaluate({"extra": "dev"})]
    (self_ref,) = [r for r in dev if canonicalize_name(r.name) == PROJECT]
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert self_ref.extras == set(extras) - {"dev"}
    assert {"dvc", "onnxruntime", "s3fs"} <= _closure([*core, *(r for r in reqs if r.marker and any(
        r.marker.evaluate({"extra": x}) for x in self_ref.extras))])
