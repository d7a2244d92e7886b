"""SIGINT / SIGTERM during a long stage: stop at a commit point and say what was kept and how to resume.

The stages of the offline pipeline (AM-RADIO arXiv 2312.06709 stage one into the feature store, the student
views, PHI-S arXiv 2410.01680 stage two) commit their work in units (a shard marked complete after it is
written, a checkpoint): a stop between units loses nothing. `stop_requests()` turns the first SIGINT or
SIGTERM into a request the shard runner (stages/orchestrate/shards.py) sees between shards; a second one
interrupts at once (KeyboardInterrupt), for a user who does not want to wait for the shard in flight. The
stage then raises an `Interrupted` whose message says what finished, what did not and the command that
resumes; `pipeline` prints it and exits 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """A stage stopped on a signal at a commit point; the message says what was kept and how to resume."""

    def __init__(self, signum: int, message: str) -> None:
        self.signum = signum
        super().__init__(message)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """Set by the first SIGINT / SIGTERM inside `stop_requests()`; `signum` is None until then."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


@contextmanager
def stop_requests(doing: str) -> Iterator[StopRequest]:
    """Within the block the first SIGINT / SIGTERM sets the yielded StopRequest (and logs that `doing` stops at
    the next commit point), the second raises KeyboardInterrupt. Outside the main thread (where Python delivers
    no signals) the request is never set. The previous handlers are restored on exit."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        if stop.signum is not None:
            raise KeyboardInterrupt
        stop.signum = signum
        log.warning("%s: %s stops at its next commit point (send it again to stop at once)", stop.name, doing)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def shard_ranges(shards: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8" (how the interrupt messages list shards)."""
    out: list[tuple[int, int]] = []
    for k in sorted(shards):
        if out and out[-1][1] == k - 1:
            out[-1] = (out[-1][0], k)
        else:
            out.append((k, k))
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out)
