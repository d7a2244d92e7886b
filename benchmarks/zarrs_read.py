"""Stage two's zarr read path (the one `s3://` store roots take; AM-RADIO arXiv 2312.06709 stage two reads
every teacher's stored targets once per epoch): zarr-python's own codec pipeline against the zarrs codec
pipeline (Rust; `zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})`), on the same
shards, with the project's own local reader (shard_reader.py's fast path) as the reference.

The array is laid out exactly as a teacher store's `patches` (uint16 bf16 bits, one image per inner chunk,
Blosc zstd-1 bitshuffle on 2 MiB blocks, crc32c; store_schema/codecs.py), DINOv2-g's shape at 224 px
(2 views x 16 x 16 x 1536), filled with low-rank synthetic tokens (benchmarks/codec_choice.py). Each
shard is read whole through `ShardReader._read_zarr` (what the loader calls for a non-local store), on a
local folder and on S3 served by moto on 127.0.0.1, and the bytes delivered are compared with zarr-python's.
Per shard: wall ms and CPU ms (process time, all threads: zarrs decodes chunks on a thread pool).

Run: python benchmarks/zarrs_read.py [--shards 6] [--shard-size 8] [--repeats 3] [--no-s3]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import zarr

from codec_choice import synthetic_tokens
from store_schema.codecs import CodecSpec, compressors, float32_to_bf16_bits
from store_schema.shard_reader import ShardReader

V, H, C = 2, 16, 1536  # DINOv2-g/14 @224: 2 views x 16 x 16 x 1536
ZARRS = {"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}


def write_array(store: object, n: int, S: int, seed: int = 0) -> None:
    """The teacher store's patches layout, n images in shards of S, written whole shard by whole shard."""
    spec = CodecSpec()
    arr = zarr.create_array(store, shape=(n, V, H, H, C), chunks=(1, V, H, H, C), shards=(S, V, H, H, C),
                            dtype=spec.stored_dtype, fill_value=0, compressors=compressors(spec), zarr_format=3)
    rng = np.random.default_rng(seed)
    for k in range(n // S):
        tokens = synthetic_tokens(S * V * H * H, C, rng).reshape(S, V, H, H, C)
        arr[k * S:(k + 1) * S] = float32_to_bf16_bits(tokens)


def read_all(array: zarr.Array, S: int, n: int, *, generic: bool) -> tuple[np.ndarray, float, float]:
    """Every shard through ShardReader (generic: zarr's path); (values, wall s, cpu s)."""
    reader = ShardReader(array, store_path="bench", name="patches")
    if generic:
        reader.plan = None  # the path non-local stores take
    out = np.empty((n, V, H, H, C), np.uint16)
    t0, c0 = time.perf_counter(), time.process_time()
    for k in range(n // S):
        reader.read_into(k * S, (k + 1) * S, out[k * S:(k + 1) * S])
    return out, time.perf_counter() - t0, time.process_time() - c0


def zarrs_status(array: zarr.Array) -> str:
    """Whether zarrs reads this array itself, or why zarr-python's own pipeline reads it instead."""
    from zarrs import ZarrsCodecPipeline

    try:
        pipeline = ZarrsCodecPipeline.from_array_metadata_and_store(array.metadata, array.store_path.store)
    except NotImplementedError as e:  # zarr then builds its own BatchedCodecPipeline
        return f"zarr-python reads it (zarrs refuses the store: {e})"
    return "zarrs reads it (its Rust codec pipeline)" if pipeline.impl is not None else \
        "zarr-python reads it (zarrs does not support the array's codecs)"


def measure(label: str, open_array: Callable[[], zarr.Array], n: int, S: int, repeats: int, *,
            fast_too: bool) -> None:
    """Print ms per shard of each pipeline (best of `repeats`) and whether the bytes are identical."""
    shard_mb = S * V * H * H * C * 2 / 1e6
    rows = {}
    runs = [("zarr-python", {}, True), ("zarrs", ZARRS, True)] + ([("local fast path", {}, False)] if fast_too else [])
    for name, cfg, generic in runs:
        best = (np.inf, np.inf)
        for _ in range(repeats):
            with zarr.config.set(cfg):
                array = open_array()  # the pipeline is chosen when the array is opened
            values, wall, cpu = read_all(array, S, n, generic=generic)
            best = min(best, (wall, cpu))
        rows[name] = (values, *best)
    print(f"{label}: with the zarrs configuration, {zarrs_status(open_array())}")
    ref = rows["zarr-python"][0]
    for name, (values, wall, cpu) in rows.items():
        shards = n // S
        same = "identical" if np.array_equal(values.view(np.uint8), ref.view(np.uint8)) else "DIFFERENT BYTES"
        print(f"{label:6s} {name:16s} {wall / shards * 1e3:7.1f} ms wall, {cpu / shards * 1e3:7.1f} ms CPU per "
              f"shard ({shard_mb:.1f} MB; {shard_mb * shards / wall / 1e3:.2f} GB/s wall)  {same}  "
              f"load average {os.getloadavg()[0]:.2f}")


@contextmanager
def moto_s3() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 in its own process (its CPU is not charged to the reader); yields a
    bucket's s3:// URL, with the AWS_* variables set for the clients of this process."""
    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    old = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                          "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    try:
        client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
        for _ in range(300):  # the server takes a few seconds to start on a busy machine
            try:
                client.create_bucket(Bucket="bench")
                break
            except Exception:  # noqa: BLE001 - connection refused until it listens
                time.sleep(0.1)
        yield "s3://bench/patches.zarr"
    finally:
        server.terminate()
        server.wait(timeout=30)
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=int, default=6)
    ap.add_argument("--shard-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-s3", action="store_true")
    args = ap.parse_args()
    S, n = args.shard_size, args.shards * args.shard_size
    print(f"zarr {zarr.__version__}; shards of {S} images x {V} views x {H}x{H}x{C} uint16; {args.shards} shards; "
          f"best of {args.repeats}; load average at start {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "patches.zarr"
        write_array(zarr.storage.LocalStore(path), n, S)
        measure("local", lambda: zarr.open_array(zarr.storage.LocalStore(path, read_only=True)), n, S, args.repeats,
                fast_too=True)
    if not args.no_s3:
        with moto_s3() as url:
            write_array(zarr.storage.FsspecStore.from_url(url), n, S)
            measure("s3", lambda: zarr.open_array(zarr.storage.FsspecStore.from_url(url, read_only=True)), n, S,
                    args.repeats, fast_too=False)


if __name__ == "__main__":
    main()
