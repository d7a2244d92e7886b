"""How stage one extracts a teacher (AM-RADIO, arXiv 2312.06709: teachers run once into a feature store).

`ExtractConfig` is the extract stage's typed config and the one place its defaults are declared:
`pipeline extract`'s option defaults and params.yaml's missing `extract:` keys both come from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stages.orchestrate.ray_address import DEFAULT_CONNECT_TIMEOUT_S
from store_schema.codecs import CodecSpec
from store_schema.stats_ledger import DEFAULT_FOLD_EVERY


@dataclass(frozen=True)
class ExtractConfig:
    """How to extract one teacher (typed config at the CLI boundary)."""

    batch_size: int = 32
    shard_size: int = 64
    storage_grid: tuple[int, int] | None = None  # None: the teacher's own patch grid
    codec: CodecSpec = field(default_factory=CodecSpec)
    checkpoint: Path | None = None
    device: str = "cpu"
    workers: int = 1  # Ray actors; 0 runs the shard worker in this process without Ray
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    ray_address: str | None = None  # None: local Ray (reused when already initialised)
    ray_timeout: float = DEFAULT_CONNECT_TIMEOUT_S  # seconds a cluster at ray_address has to answer
    progress: bool = True
    decode_ahead: int = 0  # images a worker decodes ahead on its decode threads (0: inline)
    stats_fold_every: int = DEFAULT_FOLD_EVERY  # complete shards per fold of the statistics (store attribute)
    redo_shards: tuple[int, ...] = ()  # complete shards to extract again (damaged ones; stages/extract/redo.py)
    fidelity_images: int = 0  # after extraction: train images the storage-fidelity check runs on (0: skip)

    @property
    def cpu_threads(self) -> int:
        """Host threads per worker: the CPUs Ray grants it (at least one)."""
        return max(1, int(self.cpus_per_worker))

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = in-process without Ray), got {self.workers}")
        if self.stats_fold_every < 1:
            raise ValueError(f"stats_fold_every must be >= 1, got {self.stats_fold_every}")
        if self.fidelity_images < 0:
            raise ValueError(f"fidelity_images must be >= 0 (0: skip the check), got {self.fidelity_images}")
        if self.ray_timeout <= 0:
            raise ValueError(f"ray_timeout must be > 0 seconds, got {self.ray_timeout:g}")
        if self.batch_size < 1 or self.shard_size < 1:
            raise ValueError(f"batch_size and shard_size must be >= 1, got {self.batch_size}, {self.shard_size}")
