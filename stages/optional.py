"""Optional dependencies: the one place a feature asks for a package that the core install does not have.

The core install (`pip install agglo-distill`) runs corpus, stage one, stage two, evaluation and the report;
extras add the rest (pyproject.toml `[project.optional-dependencies]`): `dvc` (the `dvc.yaml` sweep, `make
demo`), `onnx` (`pipeline export --onnx`), `s3` (s3:// store roots). `require` imports a module or raises
`MissingExtraError`: one line naming the package, what needed it and the extra that installs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

DISTRIBUTION = "agglo-distill"


class MissingExtraError(ImportError):
    """A feature needs a package of an optional extra that is not installed."""


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """`import module`, or MissingExtraError saying `pip install 'agglo-distill[extra]'`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(f"{purpose} needs the Python package {module!r}, which is not installed ({e}); "
                                f"install it with: pip install '{DISTRIBUTION}[{extra}]'", name=module) from e
