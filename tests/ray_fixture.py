"""pytest plugin for the extraction tests: one local Ray per test session, and a generated corpus.

Use with `pytest_plugins = ["tests.ray_fixture"]` and the `ray_session` / `make_corpus` fixtures. Sized to the 2 cores
tests may use; token auth disabled explicitly (Ray 2.60 enables it by default) by `init_ray`.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs, started once and shut down at the end of the session."""
    from stages.orchestrate.ray_session import init_ray, shutdown_ray

    resources = init_ray(None, num_cpus=2, num_gpus=0, object_store_memory=200 * 2**20)
    yield resources
    shutdown_ray()


def build_corpus(base, *, n_ok: int = 12, num_views: int = 2, seed: int = 0):
    """A small generated corpus under `base`: n_ok images of assorted sizes / formats plus 2 bad files
    (an empty file and a text file named .jpg), and `base/root/manifest.parquet` with `num_views` views.

    Returns the store root (`base/root`); images live in `base/images` (the manifest points there)."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from stages.corpus.build_manifest import build_manifest
    from store_schema.manifest import ViewSpec

    images = Path(base) / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n_ok):
        h, w = int(rng.integers(24, 64)), int(rng.integers(24, 64))
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.stack([(xx * (3 + i)) % 256, (yy * (5 + i)) % 256, (xx + yy + 17 * i) % 256], -1)
        arr = (arr + rng.integers(0, 40, arr.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(arr).save(images / f"img_{i:02d}.{'png' if i % 2 else 'jpg'}")
    (images / "img_03b_empty.jpg").write_bytes(b"")
    (images / "img_09b_text.jpg").write_text("not an image")
    root = Path(base) / "root"
    build_manifest(images, out_dir=root, view_spec=ViewSpec(num_views=num_views, seed=seed))
    return root


@pytest.fixture
def make_corpus():
    """The corpus builder `build_corpus(base, *, n_ok=12, num_views=2, seed=0) -> store root`."""
    return build_corpus
