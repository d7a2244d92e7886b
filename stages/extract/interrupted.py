"""What an interrupted stage-one run says (AM-RADIO arXiv 2312.06709: teachers extracted once into the store):
which stores and shards are complete and kept, which are not, and the command that resumes (complete
shards are skipped by the re-run, so nothing finished is redone)."""

from __future__ import annotations

import signal
from pathlib import Path

from stages.orchestrate.interrupts import Interrupted, shard_ranges
from store_schema.errors import StoreError
from store_schema.layout import student_views_path, teacher_store_path
from store_schema.teacher_store import open_teacher_store
from store_schema.view_store import open_view_store


def _shards(store: object) -> tuple[list[int], list[int], int]:
    done = [int(k) for k in store.completed_shards()]
    todo = [int(k) for k in store.pending_shards()]
    return done, todo, store.num_shards


def _teacher_state(root: Path | str, teacher: str) -> tuple[str | None, str | None]:
    """(what is finished, what is not) of one teacher's store, as message fragments (None: nothing)."""
    try:
        done, todo, n = _shards(open_teacher_store(teacher_store_path(root, teacher)))
    except (StoreError, FileNotFoundError):
        return None, f"{teacher} (not started)"
    if not todo:
        return f"{teacher} (all {n} shards)", None
    finished = f"{teacher} shards {shard_ranges(done)} ({len(done)} of {n})" if done else None
    return finished, f"{teacher} shards {shard_ranges(todo)} ({len(todo)} of {n})"


def _lines(signum: int, what: str, finished: list[str], unfinished: list[str], resume: str) -> str:
    return "\n".join([
        f"Interrupted ({signal.Signals(signum).name}): {what} stopped between shards; a shard counts only once it is "
        "written whole, so nothing half-written is kept.",
        f"  finished (complete, kept): {'; '.join(finished) or 'nothing yet'}",
        f"  not finished: {'; '.join(unfinished) or 'nothing'}",
        f"  resume: {resume}   (complete shards are skipped)"])


def extraction_interrupted(root: Path | str, teachers: list[str], signum: int, resume: str) -> Interrupted:
    """The Interrupted of `pipeline extract` over `teachers` under `root`, read from the stores themselves."""
    finished, unfinished = [], []
    for t in teachers:
        done, todo = _teacher_state(root, t)
        finished += [done] if done else []
        unfinished += [todo] if todo else []
    return Interrupted(signum, _lines(signum, "extraction", finished, unfinished, resume))


def views_interrupted(root: Path | str, size: int, signum: int, resume: str) -> Interrupted:
    """The Interrupted of `pipeline views` at `size` (the view store's complete and pending shards)."""
    done, todo, n = _shards(open_view_store(student_views_path(root, size)))
    name = f"student views {size}px"
    return Interrupted(signum, _lines(
        signum, f"rendering the {name}", [f"{name} shards {shard_ranges(done)} ({len(done)} of {n})"] if done else [],
        [f"{name} shards {shard_ranges(todo)} ({len(todo)} of {n})"] if todo else [], resume))
