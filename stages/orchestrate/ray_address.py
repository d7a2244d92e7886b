"""Reaching an existing Ray cluster within a bounded time (stage one of AM-RADIO, arXiv 2312.06709, runs its
teachers on a cluster named by `--ray-address`).

Ray 2.60's `ray.init(address=...)` retries an unreachable GCS for about 14 minutes (20 attempts of ~41 s, each
printing "Failed to connect to GCS ... within 5 seconds") and cannot be interrupted while an attempt blocks in
C++. A mistyped head-node address must instead end in one line naming the address, so before `ray.init`:

- `auto` is resolved as Ray resolves it (RAY_ADDRESS, then the cluster `ray start` recorded on this machine,
  then a running GCS process); nothing found is an error naming what was looked for;
- the resolved host:port (also of a `ray://` client address) gets a TCP connection bounded by the timeout:
  refused, unresolvable or silent addresses are an error naming the address and the timeout;
- over that connection, the HTTP/2 connection preface every gRPC server (Ray's GCS, Ray Client's server)
  answers with a SETTINGS frame: a port that answers something else (an HTTP/1 server, an SSH daemon) or
  nothing within the timeout is an error naming the address, since Ray's C++ client would wait ~40 s per try;
- `ray.init` itself runs with its GCS wait bounded by the same timeout (`RAY_gcs_server_port_wait_time_s`,
  `RAY_py_gcs_connect_timeout_s`, set for the call and restored after).
"""

from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from typing import Iterator

DEFAULT_CONNECT_TIMEOUT_S = 10.0  # `--ray-timeout` / extract.ray_timeout; a live head node answers in well under 1 s
_FIX = ("check the head node's address and port (`ray status` on the head node; `ray start --head` prints it), "
        "give --ray-timeout SECONDS for a slow network, or leave --ray-address out to start a local Ray")


class RayUnreachableError(ConnectionError):
    """No Ray cluster answers at the address given (a user's mistake or a cluster that is down)."""


def resolve_address(address: str) -> tuple[str, int]:
    """(host, port) of the cluster `address` names: "auto", "host:port" or "ray://host:port"."""
    import ray._private.services as services

    if address.startswith("ray://"):
        target = address[len("ray://"):]
    elif address == "auto":
        try:
            target = services.canonicalize_bootstrap_address_or_die("auto")
        except ConnectionError as e:
            raise RayUnreachableError(
                f"--ray-address auto found no running Ray cluster ({' '.join(str(e).split()[:6])}: no RAY_ADDRESS "
                "in the environment, no `ray start` on this machine); start one (`ray start --head`), give the head "
                "node's host:port, or leave --ray-address out to start a local Ray") from None
    else:
        target = address
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--ray-address {address!r} is not 'auto', HOST:PORT or ray://HOST:PORT "
                         "(e.g. 10.0.0.5:6379, the address `ray start --head` prints)")
    return host.strip("[]"), int(port)


def check_reachable(address: str, *, timeout_s: float) -> None:
    """Raise RayUnreachableError unless a TCP connection to the cluster's address opens within timeout_s."""
    if timeout_s <= 0:
        raise ValueError(f"--ray-timeout must be > 0 seconds, got {timeout_s:g}")
    host, port = resolve_address(address)
    shown = address if address == f"{host}:{port}" else f"{address} ({host}:{port})"
    deadline = time.monotonic() + timeout_s
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as conn:
            answer = _http2_answer(conn, deadline)
    except socket.timeout:
        raise RayUnreachableError(f"no Ray cluster answered at {shown} within {timeout_s:g} s; {_FIX}") from None
    except OSError as e:
        reason = e.strerror or str(e)
        raise RayUnreachableError(f"cannot reach a Ray cluster at {shown}: {reason}; {_FIX}") from None
    if answer is None:
        raise RayUnreachableError(f"{shown} accepts connections but no Ray cluster answered there within "
                                  f"{timeout_s:g} s (no gRPC reply); {_FIX}")
    if not answer:
        raise RayUnreachableError(f"{shown} is not a Ray cluster (it does not speak gRPC: another service "
                                  f"listens on that port); {_FIX}")


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + empty SETTINGS
_SETTINGS = 4  # HTTP/2 frame type


def _http2_answer(conn: socket.socket, deadline: float) -> bool | None:
    """True when the peer answers the HTTP/2 preface with a SETTINGS frame (a gRPC server), False when it
    answers something else or closes, None when it stays silent until the deadline."""
    conn.sendall(_HTTP2_PREFACE)
    header = b""
    while len(header) < 9:
        conn.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            chunk = conn.recv(9 - len(header))
        except socket.timeout:
            return None
        except ConnectionResetError:
            return False
        if not chunk:
            return False
        header += chunk
    return header[3] == _SETTINGS


@contextmanager
def bounded_gcs_wait(timeout_s: float) -> Iterator[None]:
    """Ray's own GCS connection wait bounded by timeout_s for the block (one attempt of at most timeout_s)."""
    wanted = {"RAY_gcs_server_port_wait_time_s": "1", "RAY_py_gcs_connect_timeout_s": str(max(1, int(timeout_s))),
              "RAY_gcs_rpc_server_connect_timeout_s": str(max(1, min(5, int(timeout_s))))}
    before = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def unreachable_after_init(address: str, timeout_s: float, error: BaseException) -> RayUnreachableError:
    """The error for a `ray.init` that failed after the address answered (a port that is no Ray GCS, a
    version mismatch, ...)."""
    first = " ".join(str(error).split())[:300]
    return RayUnreachableError(f"the address {address} answers but Ray could not connect to a cluster there within "
                               f"{timeout_s:g} s ({type(error).__name__}: {first}); {_FIX}")
