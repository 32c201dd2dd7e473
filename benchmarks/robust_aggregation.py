"""What the robust aggregation rules and the update-norm bounds cost on a clean run (no
hostile client).

1. Time: aggregating 10 client updates of the FedAvg CNN (3.3M weights, 80% of the
   prunable ones zero) with each rule, as CPU time of this process, median of 5, and the
   ratio to ``fedavg``; and the norms of the 10 updates, which the bounds
   (``federate.max_update_norm``, ``federate.norm_factor``) compute before FedAvg.
2. Accuracy and cost: `configs/quick.toml`'s `dae-ticket` run with
   ``federate.aggregation`` = fedavg, median and trimmed-mean (trim 0.1 of 5 clients
   drops nothing; 0.2 drops the extreme one at each end), and fedavg with
   ``norm_factor = 10``: final and best accuracy, the run's server wall time per round,
   and how many honest updates the bound rejected.

    .venv/bin/python benchmarks/robust_aggregation.py [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from _timing import median_cpu_s

from fedticket.federated.aggregate import coordinate_median, fedavg, trimmed_mean
from fedticket.federated.strategy import update_norm
from fedticket.io import git_commit, versions
from fedticket.models import build
from fedticket.runner import run_one
from fedticket.spec import ModelSpec, load_config, parse_set

ROOT = Path(__file__).resolve().parents[1]
RULES = {"fedavg": [], "median": ['federate.aggregation="median"'],
         "trimmed-mean 0.2": ['federate.aggregation="trimmed-mean"', "federate.trim_fraction=0.2"],
         "fedavg norm x10": ["federate.norm_factor=10"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    model = build(ModelSpec(), (1, 28, 28), 10)
    updates = []
    for _ in range(10):
        state = {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
        for k in state:
            if k.endswith("weight"):
                state[k][torch.rand(state[k].shape, generator=g) < 0.8] = 0.0
        updates.append(state)
    timed = {
        "fedavg": median_cpu_s(lambda: fedavg([(u, 40) for u in updates]), warmup=False),
        "median": median_cpu_s(lambda: coordinate_median(updates), warmup=False),
        "trimmed-mean 0.2": median_cpu_s(lambda: trimmed_mean(updates, 0.2), warmup=False),
        "norms for a bound": median_cpu_s(lambda: [update_norm(u, updates[0]) for u in updates],
                                          warmup=False),
    }
    print("aggregating 10 updates of the FedAvg CNN (CPU s, median of 5):")
    for rule, t in timed.items():
        print(f"  {rule:18} {t:7.3f} s   x{t / timed['fedavg']:5.1f} of fedavg")
    config = load_config(ROOT / "configs" / "quick.toml")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rule, items in RULES.items():
            [spec] = [s for s in config.specs(parse_set(items)) if s.method == "dae-ticket"]
            folder = run_one(spec, Path(tmp), stream=None)
            summary = json.loads((folder / "summary.json").read_text())
            rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
            walls = [r["round_wall_s"] for r in rows if r["round"] > 0]
            failures = folder / "failures.jsonl"
            rejected = sum("update norm" in line for line in
                           (failures.read_text().splitlines() if failures.exists() else []))
            runs[rule] = {"final_accuracy": summary["final_accuracy"],
                          "best_accuracy": summary["best_accuracy"],
                          "mean_round_wall_s": statistics.mean(walls),
                          "rejected_by_norm_bound": rejected}
    print("configs/quick.toml, dae-ticket, 15 rounds of 5 clients:")
    for rule, r in runs.items():
        print(f"  {rule:18} final acc {r['final_accuracy']:.4f}  best {r['best_accuracy']:.4f}  "
              f"round wall {r['mean_round_wall_s']:.2f} s  rejected {r['rejected_by_norm_bound']}")
    out = ROOT / "benchmarks" / "results" / "robust_aggregation.json"
    out.write_text(json.dumps({"aggregation_cpu_s": timed, "quick_dae_ticket": runs,
                               "threads": args.threads, "git": git_commit(),
                               "versions": versions(), "argv": sys.argv}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
