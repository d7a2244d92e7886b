"""What building the corpus manifest costs: CPU per image from tar shards and from a folder, and the memory of a
1,000,000-image manifest.

The first stage of offline agglomerative distillation (AM-RADIO, arXiv 2312.06709) decodes every image once
(content hash, size, views, split). Measured here over real photos at a realistic size: scikit-image's
bundled photos (the demo corpus) resized so their long side is ~500 px and saved as JPEG (quality 90),
repeated with small crops so every image has its own bytes, then

- written as WebDataset shards (`<key>.jpg` + `<key>.txt` + `<key>.json`, as img2dataset lays them out)
  and as a folder of files, and built with the real `build_corpus` in this process (workers=0: the work
  one Ray task does per unit, without Ray's start-up); CPU = this process's CPU time (time.process_time)
  per image, which is per core because the build is one thread here;
- a simulated 1,000,000-image manifest (100 tar shards of 10,000 members, 2 views, captions): its parts
  are generated directly (no decoding), then a fresh process merges them into manifest.parquet exactly as
  `pipeline corpus` does (`merge_parts` into `ManifestWriter`), and another fresh process reads it with
  `read_manifest` and touches every column a loader uses; peak RSS = the larger of the two processes'
  ru_maxrss.

Run: python benchmarks/corpus_cost.py [--images 400] [--rows 1000000] [--out benchmarks/results/corpus_cost_cpu.txt]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LONG_SIDE = 500
PER_SHARD = 100


def _load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def realistic_photos(n: int) -> list[bytes]:
    """n JPEGs (quality 90) with a ~500 px long side, made from the demo corpus's real photos."""
    from PIL import Image

    from stages.corpus.demo import skimage_data_dir
    from stages.corpus.images import IMAGE_EXTENSIONS

    sources = []
    for p in sorted(skimage_data_dir().iterdir()):
        if not p.name.lower().endswith(IMAGE_EXTENSIONS):
            continue
        try:
            im = Image.open(p).convert("RGB")
        except Exception:  # noqa: BLE001 - the bundled set has a file PIL cannot read; skip it
            continue
        if min(im.size) >= 128:
            sources.append(im)
    out = []
    for i in range(n):
        im = sources[i % len(sources)]
        crop = i // len(sources)  # a few pixels off each time: every image has its own bytes
        im = im.crop((crop % 7, crop % 5, im.width - crop % 3, im.height - crop % 11))
        scale = LONG_SIDE / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def write_folder(photos: list[bytes], folder: Path) -> None:
    folder.mkdir(parents=True)
    for i, data in enumerate(photos):
        (folder / f"{i:07d}.jpg").write_bytes(data)


def write_shards(photos: list[bytes], folder: Path) -> None:
    folder.mkdir(parents=True)
    for s in range(0, len(photos), PER_SHARD):
        with tarfile.open(folder / f"{s // PER_SHARD:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
            for i in range(s, min(s + PER_SHARD, len(photos))):
                for name, data in ((f"{i:07d}.jpg", photos[i]), (f"{i:07d}.txt", f"photo {i}".encode()),
                                   (f"{i:07d}.json", json.dumps({"key": f"{i:07d}", "caption": f"photo {i}"}).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))


def cpu_ms_per_image(source: str, out: Path, n: int) -> float:
    from stages.corpus.build_manifest import build_corpus
    from store_schema.manifest import ViewSpec

    c0 = time.process_time()
    report = build_corpus(source, out_dir=out, view_spec=ViewSpec(num_views=2), workers=0)
    cpu = time.process_time() - c0
    assert report.manifest.num_images == n and report.manifest.ok_N.all(), report.manifest
    return 1000.0 * cpu / n


# --- the simulated 1,000,000-image manifest -------------------------------------------------------------

def _hex(rng: np.random.Generator, n: int) -> np.ndarray:
    table = np.array([f"{b:02x}".encode() for b in range(256)], dtype="S2")
    return table[rng.integers(0, 256, (n, 32), dtype=np.uint8)].view("S64").reshape(n)


def simulate_parts(root: Path, rows: int, shards: int) -> list[str]:
    """Parts of `shards` tar shards as a build writes them (the located columns, sorted uris); returns
    their keys in order. Values are random but shaped like real ones (hex sha256, captions, ~500 px)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from store_schema import layout
    from store_schema.manifest import manifest_schema

    schema = pa.schema([f for f in manifest_schema(2, located=True) if f.name != "id"])
    rng = np.random.default_rng(0)
    keys, per = [], rows // shards
    (root / layout.CORPUS_PARTS_DIR).mkdir(parents=True)
    for s in range(shards):
        n = per if s < shards - 1 else rows - per * (shards - 1)
        members = [f"{s:05d}{j:05d}.jpg" for j in range(n)]
        offsets = 512 + np.arange(n, dtype=np.int64) * 60_000
        w, h = rng.integers(300, 500, n), rng.integers(300, 500, n)
        boxes = np.tile(np.array([0, 0, 1, 1, 0.1, 0.2, 0.8, 0.9], np.float64), n)
        cols = {
            "uri": pa.array([f"{s:05d}.tar#{m}" for m in members]), "sha256": pa.array(_hex(rng, n)).cast(pa.string()),
            "size_bytes": pa.array(rng.integers(20_000, 90_000, n)), "width": pa.array(w.astype(np.int32)),
            "height": pa.array(h.astype(np.int32)), "mode": pa.array(["RGB"] * n),
            "split": pa.array(np.where(rng.random(n) < 0.2, "val", "train")), "status": pa.array(["ok"] * n),
            "reason": pa.array([""] * n),
            "view_boxes": pa.FixedSizeListArray.from_arrays(pa.array(boxes), 8),
            "view_flips": pa.FixedSizeListArray.from_arrays(pa.array(np.tile([False, True], n)), 2),
            "shard": pa.array([f"{s:05d}.tar"] * n), "member": pa.array(members), "offset": pa.array(offsets),
            "length": pa.array(rng.integers(20_000, 90_000, n)),
            "sidecars": pa.array([json.dumps({"txt": f"a photo of thing {j} in shard {s}"}) for j in range(n)]),
        }
        table = pa.table(cols, schema=schema)
        key = f"{s:040x}"
        pq.write_table(table, layout.corpus_part_path(root, key), compression="zstd")
        keys.append(key)
    return keys


def _merge(root: str, keys: list[str]) -> None:
    from stages.corpus.build_runner import merge_parts
    from stages.corpus.units import CorpusUnit
    from store_schema import layout
    from store_schema.manifest import ManifestWriter, ViewSpec, manifest_metadata

    meta = manifest_metadata(view_spec=ViewSpec(num_views=2), source="simulated", image_root="/nowhere",
                             pixel_limit=10**8, min_side=8, val_fraction=0.2)
    units = [CorpusUnit(k, "/nowhere", ()) for k in keys]
    with ManifestWriter(layout.manifest_path(Path(root)), num_views=2, metadata=meta, located=True) as w:
        merge_parts(units, Path(root), w, located=True)
        w.finish()


def _read(root: str) -> None:
    from store_schema import layout
    from store_schema.manifest import read_manifest

    m = read_manifest(layout.manifest_path(Path(root)))
    touched = (int(m.ok_N.sum()), m.split_ids("train").size, float(m.view_boxes_NV4.sum()), m.uris[m.num_images - 1],
               m.sha256[12345], int(m.offsets_N.sum()), m.image_location(999_999 % m.num_images))
    assert m.num_images > 0, touched


def _peak_rss_of(fn: str, root: Path, keys: list[str]) -> float:
    """GB of peak RSS of a fresh process running fn(root, keys)."""
    code = (f"import json, resource, sys; sys.path.insert(0, {str(REPO)!r}); from benchmarks.corpus_cost import {fn}; "
            f"{fn}({str(root)!r}{', json.loads(sys.stdin.read())' if fn == '_merge' else ''}); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    res = subprocess.run([sys.executable, "-c", code], input=json.dumps(keys), capture_output=True, text=True,
                         check=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    return int(res.stdout.strip().splitlines()[-1]) * 1024 / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400, help="realistic photos to build from (default 400)")
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the simulated manifest (default 1,000,000)")
    ap.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    args = ap.parse_args()
    lines: list[str] = []

    def say(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    tmp = Path(tempfile.mkdtemp(prefix="corpus_cost_"))
    try:
        photos = realistic_photos(args.images)
        sizes = [len(p) for p in photos]
        say(f"photos: {len(photos)} JPEGs (quality 90, long side {LONG_SIDE} px), {np.mean(sizes) / 1e3:.0f} kB mean")
        write_shards(photos, tmp / "shards")
        write_folder(photos, tmp / "folder")
        cpu_ms_per_image(str(tmp / "folder"), tmp / "warm", len(photos))  # imports, PIL plugins: not counted
        tar_ms = cpu_ms_per_image(str(tmp / "shards"), tmp / "r_tar", len(photos))
        say(f"tar shards ({PER_SHARD} images each, with .txt / .json sidecars): {tar_ms:.2f} CPU ms per image "
            f"({_load()})")
        folder_ms = cpu_ms_per_image(str(tmp / "folder"), tmp / "r_folder", len(photos))
        say(f"folder of files: {folder_ms:.2f} CPU ms per image ({_load()})")

        sim = tmp / "sim"
        t0 = time.perf_counter()
        keys = simulate_parts(sim, args.rows, 100)
        say(f"simulated manifest: {args.rows} rows in 100 shard parts, generated in {time.perf_counter() - t0:.0f} s")
        build_gb = _peak_rss_of("_merge", sim, keys)
        size_mb = (sim / "manifest.parquet").stat().st_size / 1e6
        say(f"build (merge of the parts into manifest.parquet, {size_mb:.0f} MB): {build_gb:.2f} GB peak RSS ({_load()})")
        read_gb = _peak_rss_of("_read", sim, keys)
        say(f"read (read_manifest + every column a loader touches): {read_gb:.2f} GB peak RSS ({_load()})")
        say(f"corpus: {max(tar_ms, folder_ms):.2f} ms per image per core")
        say(f"manifest at 1M images: {max(build_gb, read_gb):.2f} GB peak RSS"
            if args.rows == 1_000_000 else
            f"manifest at {args.rows} images: {max(build_gb, read_gb):.2f} GB peak RSS (not the 1M figure)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
