"""The machine and the environment variables fedticket reads (checked where read).

``FEDTICKET_THREADS``: torch threads in each Flower process (ServerApp, ClientApps)
that no config names a thread count for. Unset, empty or 0: torch's own count.
"""

from __future__ import annotations

import os
from typing import Any

from fedticket.errors import FedticketError

THREADS_VAR = "FEDTICKET_THREADS"
MAX_THREADS = 4096


def thread_count(value: Any, where: str) -> int:
    """A thread count from a config or the environment: a whole number from 0 to
    :data:`MAX_THREADS`, where 0 (or unset, or empty) means torch's own. Anything else is
    an error naming ``where``."""
    if value is None or value == "":
        return 0
    n: int | None = None
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit() and len(text) <= 4:  # no sign, no point
            n = int(text)
    elif isinstance(value, int) and not isinstance(value, bool):
        n = value
    if n is None or not 0 <= n <= MAX_THREADS:
        raise FedticketError(f"{where} must be a whole number of threads from 0 (torch's "
                             f"own) to {MAX_THREADS}, got {value!r}")
    return n


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def env_threads() -> int:
    """``FEDTICKET_THREADS`` as a count (0: not set)."""
    return thread_count(os.environ.get(THREADS_VAR, ""), THREADS_VAR)
