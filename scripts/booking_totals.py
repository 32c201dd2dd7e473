"""One method's traffic to each target under both booking conventions (docs/PEERS.md,
"One booking convention for the start of training"), from a study's run folders.

The runs book a download of a start reproducible from the seed at the seed's 8 bytes
(``federate.init_bytes = seed``). Under ``weights`` the same download costs the payload
it carried: before round 1 (SSFL's prelude) the dense float32 model, 4 bytes an entry;
in round 1 the run's float32 payload of the start, 4 bytes a kept value. Nothing else
moves, so the script adds that difference to each run's traffic to each target.

    python scripts/booking_totals.py RUNS_DIR [METHOD]     # default: snip-ticket
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SEED_BYTES = 8


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def totals(run: Path, targets: list[float]) -> dict[float, tuple[int, int] | None]:
    """Per target: (traffic under ``seed``, under ``weights``), None if never reached."""
    spec = json.loads((run / "spec.json").read_text())["spec"]
    if spec["federate"]["values"] != "f32" or spec["federate"]["init_bytes"] != "seed":
        raise SystemExit(f"{run}: the script knows float32 runs booked under seed only")
    report = json.loads((run / "mask_report.json").read_text())
    carried = {0: 4 * report["numel"], 1: 4 * report["nnz"]}
    clients = lines(run / "clients.jsonl")
    out: dict[float, tuple[int, int] | None] = {}
    for t in targets:
        row = next((r for r in lines(run / "metrics.jsonl")
                    if r["test_accuracy"] is not None and r["test_accuracy"] >= t), None)
        if row is None:
            out[t] = None
            continue
        seed = row["cum_down_bytes"] + row["cum_up_bytes"]
        extra = sum(carried[c["round"]] - SEED_BYTES for c in clients
                    if c["round"] <= min(row["round"], 1) and c["down_bytes"] == SEED_BYTES)
        out[t] = (seed, seed + extra)
    return out


def main(argv: list[str]) -> None:
    root, method = Path(argv[0]), argv[1] if len(argv) > 1 else "snip-ticket"
    targets = [0.70, 0.80]
    by_partition: dict[str, list[dict]] = {}
    for run in sorted(root.glob(f"*/{method}_s*")) + sorted(root.glob(f"{method}_s*")):
        if not (run / "summary.json").is_file():
            continue
        spec = json.loads((run / "spec.json").read_text())["spec"]
        by_partition.setdefault(spec["data"]["partition"], []).append(totals(run, targets))
    print(f"{method}: traffic to target, MB, mean over the seeds that reached it "
          "(seed convention / weights convention)")
    for partition, runs in sorted(by_partition.items()):
        for t in targets:
            got = [r[t] for r in runs if r[t] is not None]
            if not got:
                print(f"  {partition} {t:.2f}: not reached")
                continue
            seed = sum(g[0] for g in got) / len(got) / 1e6
            weights = sum(g[1] for g in got) / len(got) / 1e6
            print(f"  {partition} {t:.2f}: {seed:.1f} / {weights:.1f} "
                  f"({len(got)}/{len(runs)} seeds)")


if __name__ == "__main__":
    main(sys.argv[1:])
