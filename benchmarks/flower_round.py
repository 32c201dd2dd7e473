"""Round time of fedticket's Flower app against a minimal Flower PyTorch app.

Both run on the same local deployment (one SuperLink, 3 SuperNodes on 127.0.0.1, one
torch thread per process), with the same model size (the FedAvg CNN, 1,663,370
parameters), 400 samples per client, E=1, B=10, every node training every round and
the server evaluating 1,000 test images after each round. The minimal app
(``benchmarks/minimal_flower_app``) is written as Flower's quickstart is: Flower's
``FedAvg``, dense ``ArrayRecord`` messages, synthetic images of the same shape.
fedticket's app runs ``dae-ticket`` (and dense ``fedavg``) on Fashion-MNIST.

A round's time is measured on the server, from configuring the round to the end of
the evaluation; round 1 (cold start of every process) is left out of the means. The
target: ours <= 1.2 x minimal + our clients' training time (the slowest client's
update per round, since clients run side by side). Printed as
``p4_flower_round_over_minimal: X`` with X = (ours - our training) / minimal.

    .venv/bin/python benchmarks/flower_round.py [--rounds 4] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fedticket.flower.deploy import LocalDeployment, run_config_file, write_app
from fedticket.io import atomic_write_json, git_commit, versions
from fedticket.runner import folder_name
from fedticket.spec import parse_config

HERE = Path(__file__).resolve().parent
NODES = 3
CONFIG = {
    "methods": ["dae-ticket", "fedavg"],
    "seeds": [0],
    "data": {"dataset": "fashion-mnist", "pool_size": 1000, "train_size": 1200,
             "test_size": 1000, "num_clients": NODES},
    "model": {"name": "cnn-fedavg"},
    "pretrain": {"epochs": 1},
    "prune": {"sparsity": 0.8},
    "federate": {"client_fraction": 1.0, "local_epochs": 1, "batch_size": 10, "lr": 0.05},
}


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    raw = json.loads(json.dumps(CONFIG))
    raw["federate"]["rounds"] = args.rounds
    specs = parse_config(raw).specs()
    result: dict = {"rounds": args.rounds, "nodes": NODES, "threads": 1, "config": raw}
    with tempfile.TemporaryDirectory(prefix="flower-round-") as tmp:
        work = Path(tmp)
        nodes = [{"partition-id": i, "num-partitions": NODES, "threads": 1}
                 for i in range(NODES)]
        with LocalDeployment(work / "deploy", nodes) as dep:
            cfg = work / "minimal.toml"
            cfg.write_text(f'num-rounds = {args.rounds}\nout = "{work / "minimal.json"}"\n')
            t = time.perf_counter()
            st = dep.wait(dep.submit(HERE / "minimal_flower_app", cfg), 1800)
            if st["status"] != "finished:completed":
                sys.exit(f"minimal app run {st['status']}: {dep.server_log(int(st['run-id']))}")
            times = json.loads((work / "minimal.json").read_text())["round_wall_s"]
            minimal = [times[str(r)] for r in range(1, args.rounds + 1)]
            result["minimal"] = {"round_wall_s": minimal, "run_wall_s": time.perf_counter() - t,
                                 "network_traffic": st["network-traffic"]}
            print(f"minimal app: rounds {', '.join(f'{s:.1f}' for s in minimal)} s", flush=True)
            app = write_app(work / "app")
            for spec in specs:
                out = work / "runs"
                t = time.perf_counter()
                st = dep.wait(dep.submit(app, run_config_file(work / "r.toml", spec, out, 1)),
                              3600)
                if st["status"] != "finished:completed":
                    sys.exit(f"fedticket run {st['status']}: {dep.server_log(int(st['run-id']))}")
                run = out / folder_name(spec, "flower")
                metrics = [r for r in rows(run / "metrics.jsonl") if r["round"] > 0]
                clients = rows(run / "clients.jsonl")
                train = [max(c["wall_s"] for c in clients if c["round"] == m["round"])
                         for m in metrics]
                result[spec.method] = {
                    "round_wall_s": [m["round_wall_s"] for m in metrics],
                    "client_train_s": train,
                    "run_wall_s": time.perf_counter() - t,
                    "network_traffic": st["network-traffic"],
                    "payload_bytes": metrics[-1]["cum_down_bytes"] + metrics[-1]["cum_up_bytes"],
                    "framework_bytes": metrics[-1]["cum_framework_bytes"],
                }
                walls = ", ".join(f"{m['round_wall_s']:.1f}" for m in metrics)
                print(f"{spec.method}: rounds {walls} s, "
                      f"client training {', '.join(f'{s:.2f}' for s in train)} s", flush=True)
    base = statistics.mean(result["minimal"]["round_wall_s"][1:])
    for method in ("dae-ticket", "fedavg"):
        r = result[method]
        ours = statistics.mean(r["round_wall_s"][1:])
        train = statistics.mean(r["client_train_s"][1:])
        r["over_minimal"] = (ours - train) / base
        r["raw_over_minimal"] = ours / base
        print(f"{method}: {ours:.2f} s per round (training {train:.2f} s) vs minimal "
              f"{base:.2f} s; (ours - training) / minimal = {r['over_minimal']:.3f}; "
              f"ours / minimal = {r['raw_over_minimal']:.3f}; traffic "
              f"{r['network_traffic']['total-bytes']:,} B vs minimal "
              f"{result['minimal']['network_traffic']['total-bytes']:,} B")
    result["provenance"] = {"git": git_commit(), "versions": versions()}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "flower_round.json", result)
    print(f"p4_flower_round_over_minimal: {result['dae-ticket']['over_minimal']:.3f}")


if __name__ == "__main__":
    main()
