"""Where teacher weights come from (DESIGN §4, real teachers without the internet).

Every test runs with the Hugging Face hub in offline mode, an empty (or test-populated) hub cache under
tmp_path and outgoing sockets refused, so nothing can wait on the network. The hub-cache code path is
exercised for real by placing tiny teachers' weight files in a hub-cache layout; local checkpoints are
real files loaded through timm's and open_clip's own loaders.
"""

from __future__ import annotations

import dataclasses
import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file

from stages.teachers.errors import MissingWeightsError
from stages.teachers.open_clip_family import OpenClipTeacher
from stages.teachers.preprocess import to_pixels
from stages.teachers.registry import TEACHERS, build_teacher, weights_available, weights_identity
from stages.teachers.spec import TeacherSpec, WeightsSource
from stages.teachers.weights import hub_location


@pytest.fixture(autouse=True)
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline hub, empty cache under tmp_path, and any network connection attempt fails loudly."""
    torch.set_num_threads(1)
    cache = tmp_path / "hf_hub_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))

    def _refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", _refuse)
    return cache


def _pixels(spec: TeacherSpec, n: int = 2) -> torch.Tensor:
    views = np.random.default_rng(0).integers(0, 256, (n, spec.resolution, spec.resolution, 3), dtype=np.uint8)
    return to_pixels(views, spec)


def _pretrained(base: str, **changes) -> TeacherSpec:
    return dataclasses.replace(TEACHERS[base], weights=WeightsSource.PRETRAINED, **changes)


def _put_in_hub_cache(cache: Path, repo_id: str, filename: str) -> Path:
    """Hugging Face hub cache layout: models--org--name/{refs/main, snapshots/<commit>/<file>}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    target = repo / "snapshots" / commit / filename
    target.parent.mkdir(parents=True)
    return target


def _outputs(teacher: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out = teacher(x)
    return [t for t in (out.summary_BC, out.patches_BhwC) if t is not None]


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("name, repo_part", [("dinov2_g_reg", "vit_giant_patch14_reg4_dinov2.lvd142m"),
                                             ("sam_h", "samvit_huge_patch16.sa1b")])
def test_missing_timm_weights_fail_with_clear_message(name: str, repo_part: str, offline_hub: Path) -> None:
    spec = TEACHERS[name]
    assert weights_available(spec) == "missing"
    with pytest.raises(MissingWeightsError) as e:
        build_teacher(spec)
    msg = str(e.value)
    assert name in msg and repo_part in msg  # which weights
    assert str(offline_hub) in msg and "model.safetensors" in msg  # where it looked
    assert "--checkpoint PATH" in msg and "timm.create_model" in msg  # how to provide them


def test_missing_open_clip_weights_fail_instead_of_random(offline_hub: Path) -> None:
    spec = TEACHERS["clip_h_dfn"]
    assert weights_available(spec) == "missing"
    with pytest.raises(MissingWeightsError) as e:
        build_teacher(spec)
    msg = str(e.value)
    assert "clip_h_dfn" in msg and "ViT-H-14-378-quickgelu/dfn5b" in msg and "apple/DFN5B-CLIP-ViT-H-14-378" in msg
    assert str(offline_hub) in msg and "open_clip_pytorch_model.bin" in msg
    assert "--checkpoint PATH" in msg and "open_clip.create_model" in msg


def test_missing_local_checkpoint_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    assert weights_available(_pretrained("tiny_sam"), checkpoint=path) == "missing"
    with pytest.raises(MissingWeightsError, match="nope.pt"):
        build_teacher(_pretrained("tiny_sam"), checkpoint=path)


def test_checkpoint_with_random_spec_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({}, path)
    with pytest.raises(ValueError, match="weights=pretrained"):
        build_teacher(TEACHERS["tiny_sam"], checkpoint=path)


@pytest.mark.parametrize("name, module_attr", [("tiny_dinov2", "vit"), ("tiny_sam", "vit"), ("tiny_clip", "visual")])
def test_local_checkpoint_round_trip(name: str, module_attr: str, tmp_path: Path) -> None:
    spec = TEACHERS[name]
    donor = build_teacher(dataclasses.replace(spec, name=f"{name}_donor"))  # other seed, other weights
    path = tmp_path / f"{name}.pth"
    torch.save(getattr(donor, module_attr).state_dict(), path)
    loaded = build_teacher(_pretrained(name), checkpoint=path)
    x = _pixels(spec)
    _assert_same(_outputs(loaded, x), _outputs(donor, x))
    fresh = _outputs(build_teacher(spec), x)  # the spec's own random init differs: loading did something
    assert not torch.equal(fresh[-1], _outputs(loaded, x)[-1])
    ident = weights_identity(_pretrained(name), path)
    assert ident == {"source": "local", "id": str(path.resolve()),
                     "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert weights_available(_pretrained(name), checkpoint=path) == "local"


@pytest.mark.parametrize("name, module_attr", [("tiny_dinov2", "vit"), ("tiny_clip", "visual")])
def test_local_checkpoint_load_is_strict(name: str, module_attr: str, tmp_path: Path) -> None:
    sd = getattr(build_teacher(TEACHERS[name]), module_attr).state_dict()
    sd.pop(next(k for k in sd if k.endswith("weight")))
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    with pytest.raises(RuntimeError, match="Missing key"):
        build_teacher(_pretrained(name), checkpoint=path)


def test_timm_weights_from_hub_cache_load_offline(offline_hub: Path) -> None:
    spec = _pretrained("tiny_dinov2", name="tiny_dinov2_hub", weights_id="lvd142m")
    repo_id, files, _ = hub_location(spec)
    assert repo_id == "timm/vit_small_patch14_reg4_dinov2.lvd142m" and files[0] == "model.safetensors"
    donor = build_teacher(TEACHERS["tiny_dinov2"])
    save_file({k: v.contiguous() for k, v in donor.vit.state_dict().items()},
              str(_put_in_hub_cache(offline_hub, repo_id, files[0])))
    assert weights_available(spec) == "cached"
    loaded = build_teacher(spec)
    x = _pixels(spec)
    _assert_same(_outputs(loaded, x), _outputs(donor, x))
    assert weights_identity(spec) == {"source": "hub", "id": "timm:vit_small_patch14_reg4_dinov2.lvd142m",
                                      "sha256": None}


def test_open_clip_weights_from_hub_cache_load_offline(offline_hub: Path) -> None:
    import open_clip

    spec = _pretrained("tiny_clip", name="tiny_clip_hub", weights_id="openai")
    repo_id, files, _ = hub_location(spec)
    torch.manual_seed(7)
    clip = open_clip.create_model(spec.arch, pretrained=None, **spec.arch_kwargs).eval()  # full CLIP checkpoint
    torch.save(clip.state_dict(), _put_in_hub_cache(offline_hub, repo_id, files[-1]))
    assert weights_available(spec) == "cached"
    loaded = build_teacher(spec)
    reference = OpenClipTeacher(clip.visual, spec).requires_grad_(False)  # same (fused) attention path
    x = _pixels(spec)
    _assert_same(_outputs(loaded, x), _outputs(reference, x))
    assert weights_identity(spec)["id"] == "open_clip:ViT-B-16/openai"
    # the same whole-CLIP file as a local checkpoint: its visual.* entries load strictly into the tower
    local = build_teacher(spec, checkpoint=next(offline_hub.rglob(files[-1])))
    _assert_same(_outputs(local, x), _outputs(reference, x))


def test_random_weights_identity_is_explicit() -> None:
    ident = weights_identity(TEACHERS["tiny_clip"])
    assert ident["source"] == "random" and ident["sha256"] is None and "seed" in ident["id"]
    assert weights_available(TEACHERS["tiny_clip"]) == "random"
