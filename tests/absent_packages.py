"""Run Python as on a machine that lacks some packages: a `sitecustomize.py` on PYTHONPATH sets
`sys.modules[name] = None` for each, Python's own way of blocking an import (the packages stay installed; the
child interpreter cannot import them: `import x` raises ModuleNotFoundError and `importlib.util.find_spec("x")`
returns None, as for a package that is not installed). Used to prove what runs without Ray, DVC, zarr, ..."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARK = "halted; None in sys.modules"  # in every refused import's message

_SITECUSTOMIZE = """
import sys

for _name in {absent!r}:
    sys.modules[_name] = None
"""


def env_without(tmp_path: Path, absent: tuple[str, ...]) -> dict[str, str]:
    """The environment of a child interpreter that cannot import `absent`, with this repository on its path."""
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(absent=tuple(absent)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shim), str(REPO)]), OMP_NUM_THREADS="1")
    env.pop("RAY_ADDRESS", None)
    return env


def loaded_modules(names: tuple[str, ...]) -> str:
    """Python source of an expression: which of `names` are imported for real (not blocked) in sys.modules."""
    return f"sorted(n for n in {tuple(names)!r} if sys.modules.get(n) is not None)"
