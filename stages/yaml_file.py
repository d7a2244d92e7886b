"""Reading a YAML file a user wrote (params.yaml, a preset copied from configs/): a mistake in it is one line
naming the file, the line and the column, never a parser traceback about "<unicode string>"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_yaml_file(path: Path, *, what: str, example: str) -> Any:
    """The parsed YAML at `path`; FileNotFoundError / ValueError with one line naming it (what: "params file";
    example: a file of the right kind, named in the message for a file that is not text)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}" + (" (a folder)" if path.is_dir() else ""))
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(yaml_error_line(e, path)) from None
    except (UnicodeDecodeError, OSError) as e:
        raise ValueError(f"{path} cannot be read as a YAML text file ({e}); it must be a {what} such as "
                         f"{example}") from None


def yaml_error_line(error: Exception, path: Path) -> str:
    """One line for a YAML syntax error: the file, line and column (1-based), what the parser found and the fix."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
    problem = " ".join(str(getattr(error, "problem", None) or error).split())
    context = getattr(error, "context", None)
    what = f"{problem} ({' '.join(context.split())})" if context else problem
    return (f"{where}: not valid YAML: {what}; fix the file there (e.g. a missing ']' or ',', a tab, or a "
            "`key: value` inside a [flow list])")
