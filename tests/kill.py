"""Killing a subprocess at a chosen moment, for the tests of interrupted runs."""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Callable


def sigkill_when(proc: subprocess.Popen, ready: Callable[[], bool], *, timeout_s: float = 120.0,
                 poll_s: float = 0.05) -> None:
    """SIGKILL `proc` as soon as `ready()` holds (or it ended, or timeout_s passed), and reap it."""
    try:
        deadline = time.monotonic() + timeout_s
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(poll_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
