"""Client CPU seconds per GFLOP of the same runs made twice: the machine's speed
between two sets of records.

    python scripts/cpu_per_gflop.py FIRST SECOND

FIRST and SECOND are run folders (one run per subfolder, as ``fedticket study`` writes
them). A run in both (the same folder name: the same spec) gives one ratio: its client
CPU seconds per client GFLOP in SECOND over that in FIRST. The runs do the same work
(same data, mask, rounds and FLOPs), so the ratio is the change in the machine's speed
for that work. It prints each pair and the median, smallest and largest ratio.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def rate(run: Path) -> tuple[float, float] | None:
    """(client CPU seconds per client GFLOP, client GFLOP) of a finished run."""
    if not (run / "summary.json").is_file():
        return None
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    gflop = last["cum_client_flops"] / 1e9
    return (last["cum_client_cpu_s"] / gflop, gflop) if gflop else None


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: cpu_per_gflop.py FIRST SECOND", file=sys.stderr)
        return 2
    first, second = (Path(a) for a in argv)
    for folder in (first, second):
        if not folder.is_dir():
            print(f"error: {folder} is not a folder", file=sys.stderr)
            return 2
    ratios = []
    for run in sorted(p for p in first.iterdir() if p.is_dir()):
        a, b = rate(run), rate(second / run.name)
        if a is None or b is None:
            continue
        if abs(a[1] - b[1]) > 1e-6 * a[1]:
            print(f"error: {run.name} did other work in the two folders "
                  f"({a[1]:.3f} and {b[1]:.3f} GFLOP)", file=sys.stderr)
            return 1
        ratios.append(b[0] / a[0])
        print(f"{run.name}: {1e3 * a[0]:.1f} -> {1e3 * b[0]:.1f} ms/GFLOP, "
              f"{ratios[-1]:.2f}x")
    if not ratios:
        print("error: no finished run is in both folders", file=sys.stderr)
        return 1
    print(f"{len(ratios)} runs in both: second over first, median {statistics.median(ratios):.2f}x "
          f"(from {min(ratios):.2f}x to {max(ratios):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
