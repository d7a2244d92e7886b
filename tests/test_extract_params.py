"""params.yaml's extract section -> the ExtractConfig each teacher's DVC stage (`pipeline extract --params
params.yaml --teacher T`) runs with."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.cmd_extract import resolve_configs
from pipeline.params import parse_params

REPO = Path(__file__).resolve().parents[1]


def raw_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def extract_config(params: Path, teacher: str):
    """The ExtractConfig of one teacher's stage: `pipeline extract --params PARAMS --teacher T`, resolved."""
    return resolve_configs(["--params", str(params), "--teacher", teacher])[teacher]


def test_per_teacher_storage_grid_checkpoint_and_cluster_address(tmp_path):
    raw = raw_params()
    raw["extract"].update(ray_address="auto", storage_grids={"tiny_sam": "4x4"},
                          checkpoints={"tiny_clip": "/weights/clip.pt"}, device="cuda")
    parse_params(raw)
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    sam, clip = extract_config(p, "tiny_sam"), extract_config(p, "tiny_clip")
    assert sam.storage_grid == (4, 4) and clip.storage_grid is None
    assert clip.checkpoint == Path("/weights/clip.pt") and sam.checkpoint is None
    assert sam.ray_address == "auto" and sam.gpus_per_worker == 1.0


def test_mapping_naming_a_teacher_outside_the_sweep_is_refused():
    raw = raw_params()
    raw["extract"]["storage_grids"] = {"sam_h": "32x32"}
    with pytest.raises(ValueError, match=r"extract.storage_grids names \['sam_h'\]"):
        parse_params(raw)


def test_storage_grids_must_be_a_mapping():
    raw = raw_params()
    raw["extract"]["storage_grids"] = ["tiny_sam", "4x4"]
    with pytest.raises(ValueError, match="extract.storage_grids must be a mapping"):
        parse_params(raw)


def test_gpu_preset_pools_sam_h():
    assert extract_config(REPO / "configs" / "real_teachers_gpu.yaml", "sam_h").storage_grid == (32, 32)
