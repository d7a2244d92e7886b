"""Stage one for a list of teachers, as `pipeline extract` (and dvc.yaml's extract stage) runs it (AM-RADIO,
arXiv 2312.06709: every teacher once into its store).

Every store's lease is taken first, in sorted order (a second run on a store fails within seconds, naming
the holder; two multi-teacher runs cannot deadlock), then one Ray session serves every teacher (none when
every store is already complete: nothing to schedule, no start-up cost), then each teacher is extracted
(stages/extract/driver.py), its storage fidelity measured when `fidelity_images` > 0 and its receipt
written. What happens is reported through `note` (stderr lines: leases) and `on_teacher` (one outcome per
teacher, as it finishes).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from stages.extract.config import ExtractConfig
from stages.extract.driver import ExtractReport, run_extract
from stages.extract.fidelity import ensure_fidelity, fidelity_summary
from stages.extract.interrupted import extraction_interrupted
from stages.extract.preflight import check_ray_resources
from stages.extract.receipt import write_receipt
from stages.orchestrate.ray_session import ray_session
from stages.orchestrate.shards import ShardRunInterrupted
from store_schema.errors import StoreError
from store_schema.layout import teacher_store_path
from store_schema.lease import Lease, LeaseOptions
from store_schema.teacher_store import open_teacher_store


@dataclass
class TeacherOutcome:
    """One teacher's extraction: its report, the fidelity line (and the file written now), its receipt."""

    report: ExtractReport
    fidelity: str | None = None
    fidelity_written: Path | None = None
    receipt: Path | None = None


def extract_teachers(root: Path | str, configs: dict[str, ExtractConfig], *, receipt: Path | dict[str, Path] | None,
                     lease: LeaseOptions, note: Callable[[str], None],
                     on_teacher: Callable[[TeacherOutcome], None], resume: str = "pipeline extract") -> None:
    """Extract every teacher (store key: `<teacher>` or `<teacher>@<side>`) of `configs` under `root` (see the
    module docstring); receipt: one path (one store) or a path per store key. SIGINT / SIGTERM stop it between
    shards with an Interrupted naming the stores and shards kept and `resume`, the command to re-run."""
    receipts = receipt if isinstance(receipt, dict) else {t: receipt for t in configs}
    with ExitStack() as held:
        leases = _take_leases(root, list(configs), lease, held, note)
        config = next(iter(configs.values()))  # Ray settings are the same for every teacher
        use_ray = config.workers > 0 and (bool(config.redo_shards)
                                          or not all(_complete(teacher_store_path(root, t)) for t in configs))
        with ray_session(config.ray_address, needed=use_ray, connect_timeout=config.ray_timeout) as resources:
            if resources is not None:
                check_ray_resources(resources, workers=config.workers, cpus_per_worker=config.cpus_per_worker,
                                    gpus_per_worker=config.gpus_per_worker, device=config.device)
            try:
                for name, teacher_config in configs.items():
                    on_teacher(_one(root, name, teacher_config, leases[name], receipts.get(name)))
            except ShardRunInterrupted as e:
                raise extraction_interrupted(root, list(configs), e.signum, resume) from None


def _one(root: Path | str, name: str, config: ExtractConfig, lease: Lease, receipt: Path | None) -> TeacherOutcome:
    outcome = TeacherOutcome(run_extract(root, name, config, lease=lease))
    store = open_teacher_store(teacher_store_path(root, name))
    if config.fidelity_images > 0:
        checks, outcome.fidelity_written = ensure_fidelity(root, store, num_images=config.fidelity_images,
                                                           device=config.device, checkpoint=config.checkpoint)
        outcome.fidelity = fidelity_summary(store, checks)
    if receipt is not None:
        outcome.receipt = write_receipt(store, receipt)
    return outcome


def _take_leases(root: Path | str, teachers: list[str], options: LeaseOptions, stack: ExitStack,
                 note: Callable[[str], None]) -> dict[str, Lease]:
    """{teacher: Lease} taken in sorted order."""
    leases = {}
    for name in sorted(teachers):
        lease = Lease(teacher_store_path(root, name), purpose=f"extract {name}", options=options)
        if options.wait:
            note(f"taking the lease on {lease.target} (waiting while another run holds it)")
        leases[name] = stack.enter_context(lease)
        if lease.took_over:
            note(f"took over a stale lease on {lease.target}: its holder is gone ({lease.took_over['reason']})")
    return leases


def _complete(store_path: Path | str) -> bool:
    """True when a store exists there with every shard complete."""
    try:
        return len(open_teacher_store(store_path).pending_shards()) == 0
    except StoreError:
        return False
