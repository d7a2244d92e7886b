"""The README's way to run a preset under real DVC: its keys merged into the repository's params.yaml, the
`deps` lines of keys it sets to null deleted (DVC cannot depend on a null path). `dvc stage list` then parses every
stage, and every `params` key a stage lists is in params.yaml; a preset copied over params.yaml as it is
would not (presets are partial: `pipeline demo --params` fills the left-out keys with their defaults)."""

from __future__ import annotations

import pytest
import yaml

from tests.test_dvc_pipeline import REPO, run

PRESETS = sorted((REPO / "configs").glob("*.yaml"))


def _merge(base: dict, preset: dict) -> dict:
    """The preset's keys over the repository's params.yaml; a mapping-valued setting (bench_datasets, ...) is
    the preset's whole, as in the preset."""
    for section, values in preset.items():
        if isinstance(values, dict) and isinstance(base.get(section), dict):
            base[section].update(values)
        else:
            base[section] = values
    return base


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_a_preset_merged_into_params_yaml_parses_under_real_dvc(preset, tmp_path):
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), yaml.safe_load(preset.read_text()))
    nulls = {f"${{{section}.{k}}}" for section, values in params.items() if isinstance(values, dict)
             for k, v in values.items() if v is None}
    lines = (REPO / "dvc.yaml").read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip().removeprefix("- ") not in nulls]
    (tmp_path / "dvc.yaml").write_text("".join(kept))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    listed = run(["dvc", "stage", "list"], tmp_path)  # exits non-zero on a dvc.yaml it cannot parse
    names = [line.split()[0] for line in listed.splitlines() if line.strip()]
    assert any(n.startswith("distill@") for n in names) and any(n.startswith("evaluate@") for n in names)
    # DVC reports a params key missing from params.yaml only when the stage runs: every key a stage lists
    stages = yaml.safe_load("".join(kept))["stages"].values()
    listed_keys = {k for st in stages for k in (st.get("do", st).get("params") or []) if isinstance(k, str)}
    missing = [k for k in sorted(listed_keys) if not _has(params, k)]
    assert not missing, f"{preset.name}: params.yaml lacks {missing}"


def _has(params: dict, dotted: str) -> bool:
    cur = params
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return False
        cur = cur[part]
    return True
