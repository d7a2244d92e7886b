"""The Ray session of a run (stage one of AM-RADIO arXiv 2312.06709: teachers run once into the feature store;
student views rendered once; stores transcoded on Ray's dask scheduler).

The one place Ray is started and stopped: `ray_session()` is the block every caller wraps its Ray work in. Local by default (`ray.init` sized to this machine's CPUs / GPUs), or a
connection to an existing cluster when an address is given. Ray 2.60 turns token authentication on by
default for local clusters, so the mode is set explicitly here, in `os.environ` right before `ray.init`
(never at import). An already initialised Ray in this process is reused, which is how tests share one
local Ray per session.

`ray` is imported inside each function, never at module import: machines without Ray (the GPU machine)
import this module, and `pipeline extract --no-ray` never touches it.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator

from stages.orchestrate.ray_address import (
    DEFAULT_CONNECT_TIMEOUT_S,
    bounded_gcs_wait,
    check_reachable,
    resolve_address,
    unreachable_after_init,
)

AUTH_MODES = ("disabled", "token")  # what Ray 2.60's RAY_AUTH_MODE accepts


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    auth_mode: str = "disabled",
    object_store_memory: int | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> dict[str, float]:
    """Start (or connect to, or reuse) Ray and return the cluster's resources.

    address: None starts a local Ray sized to this machine (num_cpus / num_gpus override the detected
    counts); "auto" or "host:port" / "ray://host:port" connects to an existing cluster (num_cpus /
    num_gpus must then be None: a cluster's size is its own). auth_mode: RAY_AUTH_MODE for a local
    cluster, "disabled" (a single-user machine; the default) or "token". connect_timeout: seconds an
    existing cluster has to answer (stages/orchestrate/ray_address.py) before RayUnreachableError names the
    address. If Ray is already initialised in this process it is reused as it is.
    """
    import ray

    if ray.is_initialized():
        if address is not None and address != "auto":  # an explicit cluster must answer, and be the one joined
            check_reachable(address, timeout_s=connect_timeout)
            _same_cluster(address, ray.get_runtime_context().gcs_address)
        return ray.cluster_resources()
    if auth_mode not in AUTH_MODES:
        raise ValueError(f"unknown Ray auth mode {auth_mode!r}; valid modes: {', '.join(AUTH_MODES)}")
    common = dict(log_to_driver=False, logging_level=logging.WARNING)
    if address is None:
        os.environ["RAY_AUTH_MODE"] = auth_mode
        ray.init(num_cpus=num_cpus if num_cpus is not None else os.cpu_count(), num_gpus=num_gpus,
                 object_store_memory=object_store_memory, include_dashboard=False, **common)
    else:
        if num_cpus is not None or num_gpus is not None:
            raise ValueError("num_cpus / num_gpus size a local Ray only; an existing cluster at "
                             f"{address!r} has its own resources")
        check_reachable(address, timeout_s=connect_timeout)
        try:
            with bounded_gcs_wait(connect_timeout):
                ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, TimeoutError) as e:
            raise unreachable_after_init(address, connect_timeout, e) from e
    return ray.cluster_resources()


def _same_cluster(address: str, joined: str) -> None:
    """Raise ValueError when this process already runs Ray at `joined` and the caller names another cluster."""
    import socket

    def endpoint(addr: str) -> tuple[str, int]:
        host, port = resolve_address(addr)
        try:
            return socket.gethostbyname(host), port
        except OSError:
            return host, port

    if not address.startswith("ray://") and endpoint(address) != endpoint(joined):
        raise ValueError(f"this process already runs Ray connected to {joined}; it cannot also join the cluster at "
                         f"{address}: run the command in a new process, or give --ray-address {joined}")


def ray_is_running() -> bool:
    """Whether this process has already initialised Ray (a caller that did not start it must not stop it)."""
    import ray

    return ray.is_initialized()


def shutdown_ray() -> None:
    """Stop the Ray this process started or joined (no-op when none is running)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


@contextmanager
def ray_session(address: str | None = None, *, needed: bool = True, **init_kwargs: Any) -> Iterator[dict[str, float] | None]:
    """Ray for the block: yields the cluster's resources (None when not `needed`: no Ray is touched).

    A Ray this process already runs (a caller's, a test session's) is used and left running; a Ray started
    here (local, or a connection to the cluster at `address`) is stopped when the block ends, also on an
    error. init_kwargs go to `init_ray` (num_cpus, num_gpus, auth_mode, object_store_memory,
    connect_timeout)."""
    if not needed:
        yield None
        return
    started = not ray_is_running()
    try:
        yield init_ray(address, **init_kwargs)
    finally:
        if started:
            shutdown_ray()
