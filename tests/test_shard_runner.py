"""The shard runner extraction and the student-view store share (stages/orchestrate/shards.py), with a toy
worker: in this process and on the session's real local Ray; completion callbacks in the driver, a failing
shard, and every actor lost."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from stages.orchestrate.shards import RayWorkers, ShardFailed, ShardRunStopped, in_process, on_ray

pytest_plugins = ["tests.ray_fixture"]


class Squares:
    """Built once per worker; shard k -> k*k, or an error for the shards in `fail`, or the process exits."""

    def __init__(self, fail: tuple[int, ...] = (), die: bool = False) -> None:
        self.fail, self.die, self.pid = fail, die, os.getpid()

    def run_shard(self, k: int) -> tuple[int, int, int]:
        if self.die:
            os._exit(1)  # the actor's process dies (as on an OOM kill)
        if k in self.fail:
            raise ValueError(f"shard {k} is bad")
        return k, k * k, self.pid


def test_in_process_finalizes_in_shard_order_in_the_driver_thread():
    seen = []
    in_process(Squares(), [4, 1, 7, 3], lambda k, r, node: seen.append((k, r[1], node, threading.current_thread())),
               in_flight=2)
    assert [s[:3] for s in seen] == [(4, 16, ""), (1, 1, ""), (7, 49, ""), (3, 9, "")]
    assert {s[3] for s in seen} == {threading.main_thread()}


def test_in_process_finishes_in_flight_shards_then_raises_the_first_error():
    seen = []
    with pytest.raises(ValueError, match="shard 1 is bad"):
        in_process(Squares(fail=(1,)), [0, 1, 2, 3, 4], lambda k, r, node: seen.append(k), in_flight=2)
    assert seen == [0, 2]  # 2 was in flight when 1 failed; nothing new was started after


@pytest.fixture(scope="module")
def by_value():
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import a test module
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_on_ray_runs_every_shard_once_and_reports_the_node(ray_session, by_value):
    import ray

    seen = {}
    on_ray(Squares, (), {}, list(range(6)), RayWorkers(2, in_flight=2), lambda k, r, node: seen.__setitem__(k, (r, node)),
           resume_hint="re-run")
    assert sorted(seen) == list(range(6)) and all(r[1] == k * k for k, (r, _) in seen.items())
    assert {node for _, node in seen.values()} == {ray.get_runtime_context().get_node_id()}
    assert len({r[2] for r, _ in seen.values()}) == 2  # two actors, each built once, shared the shards


def test_on_ray_a_failing_shard_fails_the_run_after_the_others_are_finalized(ray_session, by_value):
    seen = []
    with pytest.raises(ShardFailed, match=r"shard 2 failed \(1 shard\(s\) failed\)") as err:
        on_ray(Squares, (), {"fail": (2,)}, list(range(5)), RayWorkers(1), lambda k, r, node: seen.append(k),
               resume_hint="re-run")
    assert isinstance(err.value.cause, ValueError) and "shard 2 is bad" in str(err.value.cause)
    assert seen == [0, 1]  # shards are dealt in order to the one actor; nothing new after the failure


def test_on_ray_losing_every_actor_stops_the_run_with_the_resume_hint(ray_session, by_value):
    with pytest.raises(ShardRunStopped, match=r"every Ray worker was lost .* 0 of 3 shards .* run it again"):
        on_ray(Squares, (), {"die": True}, [0, 1, 2], RayWorkers(1), lambda k, r, node: None,
               resume_hint="run it again")
