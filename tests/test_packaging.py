"""pyproject.toml declares ranges, constraints.txt the exact tested versions: the two must agree (every
pinned version inside its declared range, every declared dependency pinned) and Python has no upper cap."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


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
        if name not in pins:
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
