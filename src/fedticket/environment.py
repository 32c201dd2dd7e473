"""The machine and the environment variables fedticket reads (checked where read).

``FEDTICKET_THREADS``: torch threads in each Flower process (ServerApp, ClientApps)
that no config names a thread count for. Unset, empty or 0: torch's own count.

``FEDTICKET_PROBE_REPEATS``: how many times a run times the speed probe
(:func:`speed_probe`, the fastest is kept); unset or empty: 5; 0: no probe (the run's
summary has none, and a study pairs it unchecked). The test suite sets 0; its probe test
sets 1.
"""

from __future__ import annotations

import os
from typing import Any

from fedticket.errors import FedticketError

THREADS_VAR = "FEDTICKET_THREADS"
MAX_THREADS = 4096
PROBE_VAR = "FEDTICKET_PROBE_REPEATS"


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


def speed_probe(repeats: int | None = None) -> float | None:
    """CPU seconds one thread takes for a fixed workload of a client's kind: 8 SGD steps
    of a small CNN (two 5x5 convolutions, a linear layer; weights from a fixed seed) on a
    fixed batch of 32 images of 28x28, forward and backward. The fastest of ``repeats``
    timings (:data:`PROBE_VAR`, default 5; about 40 ms each here): a core shared with
    another process only ever adds time, so the minimum is the machine's speed.

    Hosts drift: the same CPU ran 1.63x slower per FLOP one day than the day before. A
    run records its probe, and a study refuses to pair runs whose probes are far apart.
    Nothing of torch's global state moves (its random stream, its thread count)."""
    import time

    import torch
    import torch.nn.functional as F

    if repeats is None:
        raw = os.environ.get(PROBE_VAR, "")
        try:
            repeats = int(raw) if raw else 5
        except ValueError:
            raise FedticketError(f"{PROBE_VAR} must be a whole number, got {raw!r}") from None
        if repeats < 0:
            raise FedticketError(f"{PROBE_VAR} must be 0 or more, got {repeats}")
    if repeats == 0:
        return None
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (32,), generator=g)
    shapes = [(16, 1, 5, 5), (16,), (32, 16, 5, 5), (32,), (10, 512), (10,)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = []
    try:
        for _ in range(repeats):
            w = [(torch.randn(*s, generator=g) * 0.1).requires_grad_() for s in shapes]
            start = time.thread_time()
            for _ in range(8):
                h = F.max_pool2d(F.relu(F.conv2d(x, w[0], w[1])), 2)
                h = F.max_pool2d(F.relu(F.conv2d(h, w[2], w[3])), 2)
                loss = F.cross_entropy(F.linear(h.flatten(1), w[4], w[5]), y)
                grads = torch.autograd.grad(loss, w)
                with torch.no_grad():
                    for p, d in zip(w, grads, strict=True):
                        p -= 0.01 * d
            times.append(time.thread_time() - start)
    finally:
        torch.set_num_threads(threads)
    return min(times)
