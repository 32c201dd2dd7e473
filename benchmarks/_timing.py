"""A timing helper the benchmark scripts share (each still runs on its own:
``python benchmarks/NAME.py`` puts this folder on the import path)."""

import statistics
import time
from collections.abc import Callable
from pathlib import Path


def median_cpu_s(fn: Callable[[], object], repeat: int = 5, warmup: bool = True) -> float:
    """The median CPU time of ``repeat`` calls of ``fn`` (after one untimed call with
    ``warmup``): CPU time, not wall time, so a busy shared machine distorts it less."""
    if warmup:
        fn()
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def paired_cpu_s(
    fa: Callable[[], object], fb: Callable[[], object], repeat: int = 9
) -> tuple[float, float, float]:
    """CPU times of ``fa`` and ``fb`` called in turn ``repeat`` times (after one untimed
    call each): (median of a, median of b, median of the per-pair ratios b / a). Taking
    turns puts both under the same drift of a shared machine's speed."""
    fa()
    fb()
    ta, tb = [], []
    for _ in range(repeat):
        for fn, times in ((fa, ta), (fb, tb)):
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
    ratio = statistics.median(b / a for a, b in zip(ta, tb, strict=True))
    return statistics.median(ta), statistics.median(tb), ratio


def cpu_model() -> str:
    """The CPU's model name (ratios that hold on one CPU may not on another)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
