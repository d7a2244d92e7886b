"""Store-fed loader of stage two (AM-RADIO arXiv 2312.06709 offline; PHI-S arXiv 2410.01680 targets).

`make_tiny_stores` (also used by the other test_distill_* files) builds a real image folder, a real
manifest (stages.corpus) and real Zarr stores (store_schema) for three fake teachers whose targets are a
fixed function of the rendered view, at very different scales (0.03, 1, 5), so a student can learn them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stages.corpus.build_manifest import build_manifest
from stages.corpus.images import load_rgb
from stages.corpus.views import render_view
from stages.distill.loader import LoaderState, StoreBatches, StoreSet, make_loader, targets_on_device
from stages.distill.train import normalize_targets
from stages.normalize import NormVariant
from stages.stats import Moments
from stages.teachers.spec import Family, TeacherSpec, WeightsSource
from store_schema.codecs import CodecSpec
from store_schema.errors import StoreCorruptionError
from store_schema.layout import student_views_path, teacher_store_path
from store_schema.manifest import ViewSpec
from store_schema.teacher_store import create_teacher_store

torch.set_num_threads(1)

# name -> (summary_dim, patch_dim, resolution, patch_size, scale, offset)
FAKE_TEACHERS = {
    "alpha": (8, 8, 28, 14, 0.03, 0.01),   # 2x2 grid, tiny scale (DFN CLIP-like)
    "beta": (0, 12, 64, 16, 5.0, -3.0),    # 4x4 grid, no summary, large scale (SAM-like)
    "gamma": (16, 8, 42, 14, 1.0, 0.5),    # 3x3 grid
}


def fake_spec(name: str) -> TeacherSpec:
    cs, cp, res, patch, scale, _ = FAKE_TEACHERS[name]
    return TeacherSpec(name=name, family=Family.DINOV2, arch="synthetic", weights_id="", weights=WeightsSource.RANDOM,
                       resolution=res, patch_size=patch, summary_dim=cs, patch_dim=cp, num_prefix_tokens=1 if cs else 0,
                       mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), license="test", activation_scale=scale)


def write_images(folder: Path, n: int, *, seed: int = 0) -> None:
    """n small structured RGB images (gradients + blocks) and one corrupt file."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:40, 0:48] / 48.0
    for i in range(n):
        a = rng.uniform(-1, 1, (3, 3))
        img = np.stack([a[c, 0] * xx + a[c, 1] * yy + a[c, 2] for c in range(3)], -1)
        y0, x0 = rng.integers(0, 24, 2)
        img[y0:y0 + 16, x0:x0 + 16] += rng.uniform(-1, 1, 3)
        Image.fromarray((np.clip(img * 0.5 + 0.5, 0, 1) * 255).astype(np.uint8)).save(folder / f"img_{i:03d}.png")
    (folder / "zz_broken.png").write_bytes(b"not an image")


def fake_targets(view_HW3: np.ndarray, name: str) -> tuple[np.ndarray | None, np.ndarray]:
    """A fixed random affine map of the view's pooled colours: summary [Cs], patches [h, w, Cp]."""
    cs, cp, res, patch, scale, offset = FAKE_TEACHERS[name]
    g = res // patch
    rng = np.random.default_rng(sum(map(ord, name)))
    proj_3P, proj_3S = rng.normal(size=(3, cp)), rng.normal(size=(3, max(cs, 1)))
    x = view_HW3.astype(np.float64) / 255.0 - 0.5
    side = x.shape[0] // g
    pooled_gg3 = x[: g * side, : g * side].reshape(g, side, g, side, 3).mean(axis=(1, 3))
    patches = (np.tanh(pooled_gg3 @ proj_3P * 2.0) * scale + offset).astype(np.float32)
    summary = (np.tanh(x.mean(axis=(0, 1)) @ proj_3S) * scale + offset).astype(np.float32) if cs else None
    return summary, patches


def make_tiny_stores(root: Path, *, n_images: int = 16, num_views: int = 2, shard_size: int = 4,
                     teachers: tuple[str, ...] = tuple(FAKE_TEACHERS), view_seed: int = 0,
                     invalid: tuple[tuple[str, int, int], ...] = (("beta", 1, 1),)) -> Path:
    """Images + manifest + one complete store per fake teacher under root; returns root."""
    images = root.parent / f"{root.name}_images"
    if not images.exists():
        write_images(images, n_images)
    manifest = build_manifest(images, out_dir=root, view_spec=ViewSpec(num_views=num_views, seed=view_seed))
    for name in teachers:
        spec = fake_spec(name)
        store = create_teacher_store(teacher_store_path(root, name), spec=spec,
                                     weights_identity={"source": "random", "id": "synthetic", "sha256": None},
                                     manifest=manifest, shard_size=shard_size, storage_grid=spec.grid,
                                     codec=CodecSpec())
        for k in range(store.num_shards):
            a, b = store.shard_range(k)
            S, V, (h, w) = b - a, num_views, spec.grid
            summary = np.zeros((S, V, spec.summary_dim), np.float32) if spec.summary_dim else None
            patches = np.zeros((S, V, h, w, spec.patch_dim), np.float32)
            valid = np.zeros((S, V), bool)
            for i in range(a, b):
                if not manifest.ok_N[i]:
                    continue
                img = load_rgb(manifest.image_path(i), pixel_limit=manifest.pixel_limit)
                for v in range(V):
                    view = render_view(img, manifest.view_boxes_NV4[i, v], bool(manifest.view_flips_NV[i, v]), 48)
                    s, p = fake_targets(view, name)
                    patches[i - a, v] = p
                    if summary is not None:
                        summary[i - a, v] = s
                    valid[i - a, v] = (name, i, v) not in invalid
            store.write_shard(k, summary_SVC=summary, patches_SVhwC=patches, valid_SV=valid)
            stored_s, stored_p, stored_v = store.read_shard(k)
            for kind, arr in (("summary", stored_s), ("patches", stored_p)):
                if arr is not None:
                    store.write_shard_stats(k, kind, Moments.from_batch(arr[stored_v].reshape(-1, arr.shape[-1])))
            store.mark_complete(k)
    return root


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_stores(tmp_path_factory.mktemp("loader") / "store")


def _collect(ds: StoreBatches, n: int | None, *, num_workers: int = 0) -> list[dict]:
    """n batches (None: until the loader ends), targets normalized as the training step does (CPU device)."""
    out = []
    for batch in make_loader(ds, num_workers=num_workers):
        batch.update(normalize_targets(targets_on_device(batch, "cpu"), ds.stores.normalizers))
        out.append(batch)
        if len(out) == n:
            return out
    if n is None:
        return out
    raise AssertionError("loader ended")


def test_samples_exclude_bad_images_invalid_views_and_val(tiny_root: Path) -> None:
    stores = StoreSet(tiny_root, ("alpha", "beta", "gamma"), norm=NormVariant.PHIS)
    m = stores.manifest
    pairs = {tuple(p) for p in stores.samples("train").tolist()}
    assert (1, 1) not in pairs  # invalid in beta's store
    assert not any(m.split[i] == "val" or not m.ok_N[i] for i, _ in pairs)
    expected = {(int(i), v) for i in m.split_ids("train") for v in range(2)} - {(1, 1)}
    assert pairs == expected
    assert not m.ok_N.all()  # the corrupt file is in the manifest as bad


def test_batches_have_normalized_targets_of_their_views(tiny_root: Path) -> None:
    stores = StoreSet(tiny_root, ("alpha", "beta", "gamma"), norm=NormVariant.PHIS)
    ds = StoreBatches(stores, split="train", batch_size=4, img_size=64, seed=3)
    batch = _collect(ds, 1)[0]
    assert batch["image_BHW3"].shape == (4, 64, 64, 3) and batch["image_BHW3"].dtype == torch.uint8
    assert batch["alpha/summary"].shape == (4, 8) and batch["alpha/patches"].shape == (4, 2, 2, 8)
    assert batch["beta/patches"].shape == (4, 4, 4, 12) and "beta/summary" not in batch
    for b, (i, v) in enumerate(zip(batch["image_B"].tolist(), batch["view_B"].tolist())):
        _, raw_p, _ = stores.stores["gamma"].read_images(np.array([i]))
        want = stores.normalizers["gamma"]["patches"].apply(torch.from_numpy(raw_p[0, v]))
        torch.testing.assert_close(batch["gamma/patches"][b], want)
    # PHI-S makes every teacher's targets unit-scale although raw scales differ ~170x
    for t in ("alpha", "beta"):
        assert 0.2 < batch[f"{t}/patches"].std().item() < 5.0


def test_each_image_is_decoded_once_per_epoch_and_views_are_the_teachers_crops(tiny_root: Path) -> None:
    """Student views come from one decode per image per epoch (kept with its unit), at the reduced JPEG
    scale all the image's views allow, with the crop box and flip the teachers saw."""
    from stages.corpus.samples import load_checked_for_views
    from stages.corpus.views import render_view

    stores = StoreSet(tiny_root, ("alpha", "gamma"), norm=NormVariant.PHIS)
    m = stores.manifest
    ds = StoreBatches(stores, split="train", batch_size=3, img_size=32, seed=5, shuffle_block=2, epochs=1)
    got = _collect(ds, None)
    images = {int(i) for b in got for i in b["image_B"].tolist()}
    assert ds.image_decodes == len(images) < sum(len(b["image_B"]) for b in got)  # fewer decodes than samples
    for b in got:
        for r, (i, v) in enumerate(zip(b["image_B"].tolist(), b["view_B"].tolist())):
            img = load_checked_for_views(m, i, m.view_boxes_NV4[i], 32)
            want = render_view(img, m.view_boxes_NV4[i, v], bool(m.view_flips_NV[i, v]), 32)
            np.testing.assert_array_equal(b["image_BHW3"][r].numpy(), want)


def test_order_is_deterministic_worker_independent_and_resumable(tiny_root: Path) -> None:
    stores = StoreSet(tiny_root, ("alpha", "gamma"), norm=NormVariant.PHIS)
    kw = dict(split="train", batch_size=3, img_size=32, seed=7, shuffle_block=2)
    ds = StoreBatches(stores, **kw)
    bpe = ds.batches_per_epoch
    ref = _collect(ds, bpe + 3)  # crosses into epoch 1
    ids = [(b["epoch"], b["position"], b["image_B"].tolist(), b["view_B"].tolist()) for b in ref]
    with_workers = _collect(StoreBatches(stores, **kw), bpe + 3, num_workers=2)
    assert [(b["epoch"], b["position"], b["image_B"].tolist(), b["view_B"].tolist()) for b in with_workers] == ids
    torch.testing.assert_close(with_workers[-1]["alpha/patches"], ref[-1]["alpha/patches"])
    resumed = _collect(StoreBatches(stores, **kw, start=LoaderState(ref[4]["epoch"], ref[4]["position"])), 3)
    assert [(b["epoch"], b["position"], b["image_B"].tolist()) for b in resumed] == [i[:3] for i in ids[4:7]]
    # epochs differ in order, each epoch holds no sample twice
    e0 = [tuple(p) for b in ref[:bpe] for p in zip(b["image_B"].tolist(), b["view_B"].tolist())]
    assert len(set(e0)) == len(e0)
    assert ref[0]["image_B"].tolist() != ref[bpe]["image_B"].tolist() or ref[1]["image_B"].tolist() != ref[bpe + 1]["image_B"].tolist()


def test_ranks_partition_the_global_batch(tiny_root: Path) -> None:
    stores = StoreSet(tiny_root, ("gamma",), norm=NormVariant.PHIS)
    single = StoreBatches(stores, split="train", batch_size=4, img_size=32, seed=1)
    ranks = [StoreBatches(stores, split="train", batch_size=2, img_size=32, seed=1, rank=r, world_size=2)
             for r in range(2)]
    n = single.batches_per_epoch
    assert ranks[0].batches_per_epoch == n
    one = _collect(single, n)
    per_rank = [_collect(r, n) for r in ranks]
    seen = []
    for b in range(n):
        union = per_rank[0][b]["image_B"].tolist() + per_rank[1][b]["image_B"].tolist()
        assert union == one[b]["image_B"].tolist()
        seen += list(zip(union, per_rank[0][b]["view_B"].tolist() + per_rank[1][b]["view_B"].tolist()))
    assert len(seen) == len(set(seen))  # no sample twice in an epoch, across ranks


def test_loader_ships_compact_bf16_bits_and_never_normalizes(tiny_root: Path) -> None:
    stores = StoreSet(tiny_root, ("alpha", "beta"), norm=NormVariant.PHIS)
    ds = StoreBatches(stores, split="train", batch_size=4, img_size=32, seed=0)
    batch = next(iter(make_loader(ds, num_workers=0)))
    for key in ("alpha/summary", "alpha/patches", "beta/patches"):
        (piece,) = batch["targets"][key]
        assert piece.dtype == torch.uint16  # float32 BitRound(7) values are exact bf16: their high halves
    raw = targets_on_device(batch, "cpu")
    for b, (i, v) in enumerate(zip(batch["image_B"].tolist(), batch["view_B"].tolist())):
        s, p, _ = stores.stores["alpha"].read_images(np.array([i]))
        assert torch.equal(raw["alpha/patches"][b], torch.from_numpy(p[0, v]))  # bit-exact after widening
        assert torch.equal(raw["alpha/summary"][b], torch.from_numpy(s[0, v]))


def test_refuses_stores_from_different_manifests(tmp_path: Path) -> None:
    root = make_tiny_stores(tmp_path / "a", teachers=("alpha",))
    other = make_tiny_stores(tmp_path / "b", teachers=("gamma",), view_seed=5)
    teacher_store_path(other, "gamma").rename(teacher_store_path(root, "gamma"))
    with pytest.raises(ValueError, match="different manifests"):
        StoreSet(root, ("alpha", "gamma"), norm=NormVariant.PHIS)
    with pytest.raises(ValueError, match="manifest on disk"):
        StoreSet(root, ("gamma",), norm=NormVariant.PHIS)


def test_refuses_an_image_changed_since_the_manifest(tmp_path: Path) -> None:
    root = make_tiny_stores(tmp_path / "s", teachers=("gamma",))
    stores = StoreSet(root, ("gamma",), norm=NormVariant.PHIS)
    i = int(stores.samples("train")[0, 0])
    Image.new("RGB", (40, 40), (9, 9, 9)).save(stores.manifest.image_path(i))
    ds = StoreBatches(stores, split="train", batch_size=len(stores.samples("train")), img_size=32, seed=0)
    with pytest.raises(ValueError, match="changed since the manifest"):
        _collect(ds, 1)


# ---- one read per shard per rank per epoch, counted at the file system --------------------------------
_OPENED: list[str] = []
_WATCH: list[str] = []


def _audit(event: str, args: tuple) -> None:  # runs in forked loader workers too
    if event == "open" and _WATCH and isinstance(args[0], (str, bytes, Path)):
        path = os.fsdecode(args[0])
        if path.startswith(_WATCH[0]) and "/c/" in path:
            with open(_WATCH[1], "a") as f:  # one line per shard-file open, appended by whichever process
                f.write(path + "\n")


def _shard_opens(root: Path, log: Path, run) -> list[str]:
    if _audit not in _OPENED:
        sys.addaudithook(_audit)
        _OPENED.append(_audit)  # type: ignore[arg-type]
    _WATCH[:] = [str(root), str(log)]
    try:
        run()
    finally:
        _WATCH.clear()
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("world_size, views", [(1, False), (2, False), (2, True)])
def test_two_workers_read_each_shard_once_per_rank_per_epoch(tmp_path: Path, world_size: int, views: bool) -> None:
    """... and, with the student's views rendered once (`pipeline views`), each view shard once too."""
    root = make_tiny_stores(tmp_path / "s", teachers=("alpha", "gamma"), n_images=24, shard_size=4)
    if views:
        from stages.extract.student_views import run_views

        run_views(root, 32, use_ray=False)
    stores = StoreSet(root, ("alpha", "gamma"), norm=NormVariant.PHIS)
    kw = dict(split="train", batch_size=2, img_size=32, seed=0, shuffle_block=2, world_size=world_size)
    single = _collect(StoreBatches(stores, **kw), StoreBatches(stores, **kw).batches_per_epoch)
    for rank in range(world_size):
        ds = StoreBatches(stores, **kw, rank=rank, epochs=1)  # one epoch, so prefetching stops at its end
        got: list[dict] = []
        log = tmp_path / f"opens_{world_size}_{rank}.txt"
        opens = _shard_opens(root, log, lambda: got.extend(_collect(ds, None, num_workers=2)))
        assert len(got) == ds.batches_per_epoch
        # every shard file this rank's epoch needs was opened exactly once, across both worker processes
        used_units = {int(i) // 4 for b in got for i in b["image_B"].tolist()}
        want = sorted(f"{teacher_store_path(root, t)}/{kind}/c/{u}/" for t in ("alpha", "gamma")
                      for kind in ("summary", "patches") for u in used_units)
        if views:
            assert ds.views is not None
            want = sorted(want + [f"{student_views_path(root, 32)}/views/c/{u}/" for u in used_units])
        assert sorted(p[: p.index("/c/") + 3] + p[p.index("/c/") + 3:].split("/")[0] + "/" for p in opens) == want
        if world_size == 1:  # and the batches are exactly those of the in-process loader
            assert [b["image_B"].tolist() for b in got] == [b["image_B"].tolist() for b in single]
            torch.testing.assert_close(got[-1]["gamma/patches"], single[-1]["gamma/patches"])


def test_loader_memory_budget_names_what_one_shuffle_block_needs(tiny_root: Path) -> None:
    stores = StoreSet(tiny_root, ("alpha", "beta"), norm=NormVariant.PHIS)
    unit = stores.unit_nbytes
    ds = StoreBatches(stores, split="train", batch_size=2, img_size=32, seed=0, shuffle_block=2,
                      loader_memory=unit)  # one unit: less than a block of two
    with pytest.raises(ValueError, match=r"needs .* more than the loader memory budget .* --loader-memory"):
        make_loader(ds, num_workers=0)
    roomy = StoreBatches(stores, split="train", batch_size=2, img_size=32, seed=0, shuffle_block=2)
    need = roomy.plan(0, start=0, n_workers=1).peak_bytes
    assert unit < need <= 3 * unit  # about one block (2 units), plus the next block's first unit at the seam
    ok = StoreBatches(stores, split="train", batch_size=2, img_size=32, seed=0, shuffle_block=2, loader_memory=need)
    assert len(_collect(ok, ok.batches_per_epoch)) == ok.batches_per_epoch


def test_refuses_a_lost_chunk_of_a_complete_shard(tmp_path: Path) -> None:
    root = make_tiny_stores(tmp_path / "s", teachers=("gamma",))
    stores = StoreSet(root, ("gamma",), norm=NormVariant.PHIS)
    shard = teacher_store_path(root, "gamma") / "patches" / "c" / "1" / "0" / "0" / "0" / "0"
    assert shard.is_file()
    shard.unlink()  # the shard of images 4..7 is gone although shards/complete says 1
    ds = StoreBatches(stores, split="train", batch_size=len(stores.samples("train")), img_size=32, seed=0)
    with pytest.raises(StoreCorruptionError, match=r"gamma.zarr.*patches of images \[4, 5, 6, 7\].*shard \[1\]"):
        _collect(ds, 1)


def test_recycled_worker_buffers_arrive_as_the_same_storages(tmp_path: Path) -> None:
    """What pinning in place rests on (loader._InPlacePinner, CUDA): with each received target storage
    kept alive, the workers' recycled shared-memory buffers arrive in the main process as those same
    storages, so page-locking each once covers every later batch: distinct buffers stay within
    workers x slots x arrays however many batches pass."""
    root = make_tiny_stores(tmp_path / "s", teachers=("alpha", "gamma"), n_images=24, shard_size=4)
    stores = StoreSet(root, ("alpha", "gamma"), norm=NormVariant.PHIS)
    ds = StoreBatches(stores, split="train", batch_size=2, img_size=32, seed=0, shuffle_block=2, epochs=2)
    kept: dict[int, torch.UntypedStorage] = {}
    batches = 0
    for batch in make_loader(ds, num_workers=2):
        for parts in batch["targets"].values():
            for p in parts:
                storage = p.untyped_storage()
                first = kept.setdefault(storage.data_ptr(), storage)
                assert first._cdata == storage._cdata  # the same storage (mapping), not a new one at that address
        batches += 1
    arrays = sum(len(s.kinds) for s in stores.stores.values())
    assert batches == 2 * ds.batches_per_epoch > 3 * ds.piece_slots
    assert len(kept) <= 2 * ds.piece_slots * arrays < batches * arrays


def test_pinning_without_cuda_is_a_clear_error(tiny_root: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: pinning is available")
    stores = StoreSet(tiny_root, ("alpha",), norm=NormVariant.PHIS)
    ds = StoreBatches(stores, split="train", batch_size=2, img_size=32, seed=0)
    with pytest.raises(ValueError, match="pin_memory needs a CUDA device"):
        make_loader(ds, num_workers=0, pin_memory=True)
