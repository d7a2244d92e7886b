"""Held-out WebDataset shards, written here with the standard library's tarfile the way img2dataset lays
them out (`<key>.jpg` + `<key>.json` + `<key>.txt`, `<key>.cls` for labels), with the faults a real corpus
has: a corrupt image member, a non-image member, and a truncated shard."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def _jpeg(rng: np.random.Generator, i: int) -> bytes:
    h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([(xx * (3 + i)) % 256, (yy * (5 + i)) % 256, (xx + yy + 17 * i) % 256], -1)
    buf = io.BytesIO()
    Image.fromarray((arr + rng.integers(0, 30, arr.shape)).clip(0, 255).astype(np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
    tf.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, *, shards: int = 3, per_shard: int = 4, seed: int = 0) -> dict:
    """`folder/{00000..}.tar`; the second shard holds a corrupt image and a non-image member, the last
    shard is cut in the middle of its third image. Returns what a build must account for."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    expect = {"images_ok": 0, "corrupt": [], "non_image": [], "truncated": [], "members": 0, "captions": {}}
    for s in range(shards):
        path = folder / f"{s:05d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
            for j in range(per_shard):
                key = f"{s:05d}{j:04d}"
                caption = f"a photo number {s}-{j}"
                _add(tf, f"{key}.jpg", _jpeg(rng, s * per_shard + j))
                _add(tf, f"{key}.txt", caption.encode())
                _add(tf, f"{key}.json", json.dumps({"key": key, "caption": caption, "url": f"http://x/{key}"}).encode())
                _add(tf, f"{key}.cls", str(j % 3).encode())
                expect["members"] += 4
                expect["captions"][f"{path.name}#{key}.jpg"] = caption
            if s == 1:
                _add(tf, "corrupt0001.jpg", b"\xff\xd8\xff\xe0 this is not a jpeg body")
                _add(tf, "stray0001.npy", b"\x93NUMPY fake")
                expect["corrupt"].append(f"{path.name}#corrupt0001.jpg")
                expect["non_image"].append(f"{path.name}#stray0001.npy")
                expect["members"] += 2
        expect["images_ok"] += per_shard
    last = folder / f"{shards - 1:05d}.tar"
    data = last.read_bytes()
    # cut inside the third sample's image: members before it stay whole
    with tarfile.open(last) as tf:
        infos = tf.getmembers()
    cut_member = infos[8]  # third sample's .jpg (4 members per sample)
    last.write_bytes(data[: cut_member.offset_data + cut_member.size // 2])
    lost = [i.name for i in infos[8:]]
    expect["truncated"].append(f"{last.name}#{cut_member.name}")
    expect["images_ok"] -= per_shard - 2
    expect["members"] -= len(lost) - 1  # the cut member is still a row; the ones after it are lost
    for name in lost:
        expect["captions"].pop(f"{last.name}#{name}", None)
    return expect
