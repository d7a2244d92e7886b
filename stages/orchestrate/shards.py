"""The shard runner every store-building stage shares: extraction (AM-RADIO arXiv 2312.06709's teachers run
once into the feature store), the student-view store, and any later stage whose work is split by shard.

A stage gives a worker class (built once per worker: it opens the manifest / builds the teacher in its
constructor, then `run_shard(k)` for shard after shard), the pending shards and `on_result(k, result, node)`,
the completion callback. The runner never marks anything complete itself: `on_result` is the driver's side
of the stage's completion protocol (write statistics, then the complete flag), called in this process, one
result at a time, so a killed run leaves every shard either finalized or not.

Two ways to run the same worker:
- `in_process`: one worker in this process, `in_flight` shards at once on threads (overlap one shard's
  write with the next one's compute), finalized in shard order.
- `on_ray`: `RayWorkers.count` actors (one worker each, `in_flight` concurrent shards per actor), shards dealt
  as actors free up, results finalized as they arrive. Actors restart (`max_restarts`) and retry the shard
  (`max_task_retries`) when their process dies, so a stage's whole-shard writes must be idempotent. Losing a
  node: an actor whose Ray node died (or that Ray gave up restarting) is dropped and its shards go back to
  the queue for the actors left; with none left `ShardRunStopped` says how many shards were kept. The nodes
  are polled every NODE_POLL_S while waiting, since an actor of a dead node that Ray cannot place again
  would otherwise wait for resources forever.

Interrupts: SIGINT / SIGTERM (stages/orchestrate/interrupts.py) stop dealing shards; `in_process` lets the
shard in flight finish and finalizes it, `on_ray` stops waiting and kills its actors (shards in flight are
not finalized, so nothing half-written counts); then `ShardRunInterrupted` says how many shards were
finalized. A second signal stops at once.

Errors: Python exceptions inside a shard are not retried (bugs or bad configuration, not transient): the
run lets in-flight shards finish (and finalizes those that succeeded), then raises the first error. `ray`
is imported only by `on_ray` (machines without Ray run `in_process`).
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from stages.orchestrate.interrupts import Interrupted, StopRequest, stop_requests

NODE_POLL_S = 1.0  # how often the driver checks for dead Ray nodes while it waits for results
STARTUP_GRACE_S = 20.0  # an actor not placed this long after a node died during start-up is given up

OnResult = Callable[[int, Any, str], None]  # (shard, the worker's result, Ray node id or "")


class ShardRunStopped(RuntimeError):
    """The run cannot go on (every Ray worker was lost); finalized shards are kept and a re-run resumes."""


class ShardRunInterrupted(Interrupted):
    """SIGINT / SIGTERM stopped the run between shards: `done` of `total` pending shards were finalized."""

    def __init__(self, signum: int, done: int, total: int) -> None:
        self.done, self.total = done, total
        super().__init__(signum, f"stopped by signal {signum}: {done} of {total} shards of this run complete and "
                                 "kept; re-run the same command to resume")


class ShardFailed(RuntimeError):
    """A shard raised in its worker; `shard` and `cause` (the worker's own exception) say which and why."""

    def __init__(self, shard: int, failed: int, cause: BaseException) -> None:
        self.shard, self.failed, self.cause = shard, failed, cause
        super().__init__(f"shard {shard} failed ({failed} shard(s) failed); complete shards are kept, re-run to "
                         "resume")


@dataclass(frozen=True)
class RayWorkers:
    """How many Ray actors and what each reserves; `in_flight` shards run concurrently in one actor."""

    count: int
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_restarts: int = 0
    max_task_retries: int = 0
    in_flight: int = 1


def in_process(worker: Any, pending: list[int], on_result: OnResult, *, in_flight: int = 1) -> None:
    """`worker.run_shard(k)` for every pending shard on `in_flight` threads of this process, results
    finalized in shard order. The first failure stops new submissions; shards in flight finish (and are
    finalized if they succeeded), then it is raised."""
    queue, done = deque(pending), 0
    with stop_requests("the shard run") as stop, ThreadPoolExecutor(in_flight, thread_name_prefix="shard") as pool:
        inflight: deque = deque()
        error: BaseException | None = None
        while queue and len(inflight) < in_flight:
            k = queue.popleft()
            inflight.append((k, pool.submit(worker.run_shard, k)))
        while inflight:
            k, fut = inflight.popleft()
            try:
                result = fut.result()
            except BaseException as e:  # noqa: BLE001 - the in-flight shard finishes, then this is raised
                error = error or e
                queue.clear()
                continue
            on_result(k, result, "")
            done += 1
            if stop.signum is not None:
                queue.clear()  # the shards in flight finish and are finalized, no new one starts
            if queue and error is None:
                j = queue.popleft()
                inflight.append((j, pool.submit(worker.run_shard, j)))
        if error is not None:
            raise error
        if stop.signum is not None and done < len(pending):
            raise ShardRunInterrupted(stop.signum, done, len(pending))


class _NodeAware:
    """Mixed into a worker class made a Ray actor: tells the driver which node the actor runs on (and, called
    first, that its constructor finished)."""

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


def on_ray(worker_cls: type, args: tuple, kwargs: dict[str, Any], pending: list[int], workers: RayWorkers,
           on_result: OnResult, *, resume_hint: str) -> float:
    """Run the pending shards on `workers.count` actors of `worker_cls(*args, **kwargs)` in the running Ray
    (stages.orchestrate.ray_session); see the module docstring. `resume_hint` ends the message of
    ShardRunStopped (the command that resumes). Returns the perf_counter time at which every actor was
    built (before any shard ran)."""
    import ray

    actor_cls = ray.remote(num_cpus=workers.num_cpus, num_gpus=workers.num_gpus, max_restarts=workers.max_restarts,
                           max_task_retries=workers.max_task_retries, max_concurrency=workers.in_flight)(
        type(f"Ray{worker_cls.__name__}", (worker_cls, _NodeAware), {}))
    with stop_requests("the shard run") as stop:
        pool = _ActorPool({i: actor_cls.remote(*args, **kwargs) for i in range(min(workers.count, len(pending)))},
                          pending, workers.in_flight, resume_hint, stop)
        try:
            pool.start()
            ready_at = time.perf_counter()
            pool.drain(on_result)
        finally:
            pool.kill()
    pool.raise_errors()
    if stop.signum is not None and pool.done < len(pending):
        raise ShardRunInterrupted(stop.signum, pool.done, len(pending))
    return ready_at


class _ActorPool:
    """The driver's bookkeeping of one `on_ray` run: actors, their nodes, the queue and the shards in flight."""

    def __init__(self, actors: dict[int, Any], pending: list[int], per_actor: int, resume_hint: str,
                 stop: StopRequest) -> None:
        self.actors, self.total, self.per_actor, self.resume_hint = actors, len(pending), per_actor, resume_hint
        self.stop, self.done = stop, 0
        self.queue: deque[int] = deque(pending)
        self.inflight: dict[Any, tuple[int, int]] = {}  # ref -> (shard, actor)
        self.node_of: dict[int, str] = {}
        self.lost: list[str] = []
        self.errors: list[tuple[int, BaseException]] = []

    def start(self) -> None:
        """Wait until every actor is built (an error in a constructor fails the run at once) and record its
        node; an actor still not placed STARTUP_GRACE_S after a node died during start-up is dropped."""
        import ray

        dead_at_start, death_seen = _dead_nodes(), None
        starting = {self.actors[i].node_id.remote(): i for i in self.actors}
        while starting and self.stop.signum is None:
            ready, _ = ray.wait(list(starting), num_returns=len(starting), timeout=NODE_POLL_S)
            for ref in ready:
                self.node_of[starting.pop(ref)] = ray.get(ref)
            if starting and death_seen is None and _dead_nodes() - dead_at_start:
                death_seen = time.monotonic()
            if starting and death_seen is not None and time.monotonic() - death_seen > STARTUP_GRACE_S:
                for ref, i in list(starting.items()):
                    del starting[ref]
                    self.drop(i, f"not started {STARTUP_GRACE_S:g} s after a node of the cluster died")

    def top_up(self) -> None:
        for i, actor in self.actors.items():
            while (self.queue and not self.errors
                   and sum(1 for _, a in self.inflight.values() if a == i) < self.per_actor):
                k = self.queue.popleft()
                self.inflight[actor.run_shard.remote(k)] = (k, i)

    def drop(self, i: int, why: str) -> None:
        import ray

        actor = self.actors.pop(i)
        for ref, (k, a) in list(self.inflight.items()):
            if a == i:
                del self.inflight[ref]
                self.queue.append(k)  # last: gives the lost worker's process time to be gone before a rewrite
        ray.kill(actor, no_restart=True)
        self.lost.append(f"worker on node {self.node_of.get(i, '?')[:12]}: {why}")
        if not self.actors:
            done = self.total - len(self.queue) - len(self.inflight)
            raise ShardRunStopped(f"every Ray worker was lost ({'; '.join(self.lost)}); {done} of {self.total} "
                                  f"shards of this run are complete and kept. {self.resume_hint}")

    def drain(self, on_result: OnResult) -> None:
        """Deal shards to the actors and finalize every result as it arrives, until none is left."""
        import ray

        self.top_up()
        while self.inflight and self.stop.signum is None:
            ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=NODE_POLL_S)
            if self.stop.signum is not None:
                break  # a signal: shards in flight are abandoned (never finalized), the actors killed
            if not ready:
                dead = _dead_nodes()
                for i in [i for i in self.actors if self.node_of.get(i) in dead]:
                    self.drop(i, "its node died")
                self.top_up()
                continue
            k, i = self.inflight.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayActorError as e:  # died for good: restarts used up, or its node is gone
                self.queue.append(k)
                self.drop(i, str(e).strip().splitlines()[0][:200])
                self.top_up()
                continue
            except Exception as e:  # noqa: BLE001 - collected, in-flight shards finish, then re-raised
                self.errors.append((k, e))
                continue
            try:
                on_result(k, result, self.node_of.get(i, ""))
                self.done += 1
            except Exception as e:  # noqa: BLE001 - as above
                self.errors.append((k, e))
            self.top_up()

    def kill(self) -> None:
        import ray

        for actor in self.actors.values():
            ray.kill(actor)

    def raise_errors(self) -> None:
        if self.errors:
            k, e = self.errors[0]
            raise ShardFailed(k, len(self.errors), getattr(e, "cause", e)) from e  # RayTaskError: .cause


def _dead_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if not n.get("Alive", True)}
