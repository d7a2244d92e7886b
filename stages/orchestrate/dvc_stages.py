"""dvc.yaml as the one statement of the pipeline's order (the offline sweep of PHI-S, arXiv 2410.01680, over
an AM-RADIO arXiv 2312.06709 store): its stages, expanded the way `dvc repro` expands them, as command lines.

`pipeline demo --params PRESET` runs these commands in this order, in one process; `dvc repro` runs the
same commands, one process each. Supported of DVC's syntax is what dvc.yaml uses: `${section.key}` from the
params file, `matrix:` over params lists with `${item.<name>}` (stage names `<stage>@<v1>-<v2>`, the first
matrix key outermost), `foreach:` over a params mapping with `do:` and `${key}` / `${item}` (stage names
`<stage>@<key>`), and the stages in file order (dvc.yaml lists them in dependency order).
"""

from __future__ import annotations

import itertools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

_REF = re.compile(r"\$\{([^}]+)\}")


@dataclass(frozen=True)
class StageCommand:
    """One expanded stage: its DVC name (`distill@phis-0`) and its command line as argv."""

    name: str
    argv: list[str]


def _resolve(ref: str, params: dict[str, Any], item: Any, key: Any = None) -> Any:
    parts = ref.strip().split(".")
    scope = {"item": item, **({"key": key} if key is not None else {})}
    node: Any = scope[parts[0]] if parts[0] in scope else params
    for part in parts[1:] if parts[0] in scope else parts:
        if not isinstance(node, dict) or part not in node:
            raise ValueError(f"dvc.yaml refers to ${{{ref}}}, which the params file does not define")
        node = node[part]
    return node


def _interpolate(text: str, params: dict[str, Any], item: Any, key: Any = None) -> Any:
    whole = _REF.fullmatch(text.strip())
    if whole:  # a whole value (a matrix list) keeps its type
        return _resolve(whole.group(1), params, item, key)
    return _REF.sub(lambda m: str(_resolve(m.group(1), params, item, key)), text)


def stage_commands(dvc_yaml: Path, params: dict[str, Any]) -> list[StageCommand]:
    """Every stage of `dvc_yaml`, matrices expanded, with `params` (the parsed params file) interpolated."""
    stages = yaml.safe_load(Path(dvc_yaml).read_text()).get("stages") or {}
    out = []
    for name, stage in stages.items():
        if "foreach" in stage:  # DVC's foreach over a mapping: ${key} and ${item} per entry
            entries = _interpolate(stage["foreach"], params, {})
            for key, value in entries.items():
                cmd = _interpolate(" ".join(stage["do"]["cmd"].split()), params, value, key)
                out.append(StageCommand(f"{name}@{key}", shlex.split(cmd)))
            continue
        matrix = {k: _interpolate(v, params, {}) if isinstance(v, str) else v
                  for k, v in (stage.get("matrix") or {}).items()}
        for values in itertools.product(*matrix.values()) if matrix else [()]:
            item = dict(zip(matrix, values))
            full = f"{name}@{'-'.join(map(str, values))}" if matrix else name
            out.append(StageCommand(full, shlex.split(_interpolate(" ".join(stage["cmd"].split()), params, item))))
    return out
