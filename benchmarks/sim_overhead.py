"""What the simulator costs beyond its training and evaluation (target p1).

One simulated FedAvg run (`TicketStrategy` on the `LocalEngine`: sampling, the codec's
encode and decode of every download and upload, training with `LocalTrainer`,
aggregation, evaluation, the cost ledger and a metrics writer) against a bare PyTorch
loop that trains the same clients in the same order with the same batches, averages
them and evaluates the same test set at the same rounds. The setting of the measured
round profile: Fashion-MNIST, the FedAvg CNN, 50 clients of 400 images, 10 per round,
E=1, B=10, the full 10k test set every round. Runs alternate (bare, simulator, ...)
in one process; the best of each is compared, in wall and CPU time.

    .venv/bin/python benchmarks/sim_overhead.py [--rounds 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedticket.accounting import Codec
from fedticket.data import load_splits
from fedticket.federated import (
    LocalEngine,
    LocalTrainer,
    TicketStrategy,
    client_seed,
    evaluate,
    sample_clients,
)
from fedticket.models import build
from fedticket.pruning import Mask
from fedticket.run_folder import MetricsWriter
from fedticket.spec import DataSpec, FederateSpec, ModelSpec


def bare(model, state, clients, test, spec: FederateSpec, seed: int) -> float:
    """FedAvg in plain PyTorch; returns the final accuracy."""
    rng = np.random.default_rng([seed, 0xFED])
    glob = {k: v.clone() for k, v in state.items()}
    acc = 0.0
    for r in range(spec.rounds + 1):
        if r > 0:
            ids = sample_clients(len(clients), spec.client_fraction, rng)
            total = sum(len(clients[c]) for c in ids)
            new = {k: torch.zeros_like(v) for k, v in glob.items()}
            for cid in ids:
                data = clients[cid]
                model.load_state_dict(glob)
                model.train()
                opt = torch.optim.SGD(model.parameters(), lr=spec.lr)
                g = torch.Generator().manual_seed(client_seed(seed, r, cid))
                for _ in range(spec.local_epochs):
                    perm = torch.randperm(len(data), generator=g)
                    for i in range(0, len(data), spec.batch_size):
                        idx = perm[i : i + spec.batch_size]
                        loss = F.cross_entropy(model(data.x[idx]), data.y[idx])
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                for k, v in model.state_dict().items():
                    new[k].add_(v, alpha=len(data) / total)
            glob = new
        model.load_state_dict(glob)
        acc, _ = evaluate(model, test)
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    data = DataSpec(dataset="fashion-mnist", pool_size=1000, train_size=20000, test_size=0,
                    num_clients=50)
    splits = load_splits(data, 0)
    spec = FederateSpec(rounds=args.rounds, client_fraction=0.2, local_epochs=1,
                        batch_size=10, lr=0.05)
    torch.manual_seed(0)
    model = build(ModelSpec(name="cnn-fedavg"), splits.input_shape, splits.num_classes)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    mask = Mask.full(model)
    trainer = LocalTrainer(model, mask, spec, splits.input_shape)
    trainer.warm_up(state, splits.clients[0])
    times: dict[str, list[tuple[float, float]]] = {"bare": [], "simulator": []}
    accs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            w, c = time.perf_counter(), time.process_time()
            accs["bare"] = bare(model, state, splits.clients, splits.test, spec, 0)
            times["bare"].append((time.perf_counter() - w, time.process_time() - c))
            w, c = time.perf_counter(), time.process_time()
            writer = MetricsWriter(Path(tmp))
            eval_s = 0.0

            def evaluate_fn(s):
                nonlocal eval_s
                t = time.perf_counter()
                out = trainer.evaluate(s, splits.test)
                eval_s += time.perf_counter() - t
                return out

            codec = Codec(mask)
            TicketStrategy(codec, state, spec, 0, len(splits.clients), evaluate_fn).start(
                LocalEngine(trainer, codec, splits.clients), [writer])
            writer.close()
            times["simulator"].append((time.perf_counter() - w, time.process_time() - c))
            accs["simulator"] = writer.rows[-1]["test_accuracy"]
            parts = (time.perf_counter() - w, writer.rows[-1]["cum_client_wall_s"], eval_s)
    best = {k: (min(t[0] for t in v), min(t[1] for t in v)) for k, v in times.items()}
    # speed per FLOP of the two parts of a round: evaluating and training
    fwd = sum(c.forward_flops for c in trainer.costs)
    model.load_state_dict(state)
    evals = []
    for _ in range(3):
        w = time.perf_counter()
        evaluate(model, splits.test)
        evals.append(time.perf_counter() - w)
    upd = min((trainer.update(state, splits.clients[0], torch.Generator().manual_seed(0))
               for _ in range(3)), key=lambda u: u.wall_s)
    eval_rate = fwd * len(splits.test) / min(evals) / 1e9
    train_rate = upd.flops / upd.wall_s / 1e9
    print(f"evaluation {min(evals):.2f} s for {len(splits.test)} images: {eval_rate:.0f} GFLOP/s; "
          f"one client update {upd.wall_s:.3f} s: {train_rate:.0f} GFLOP/s")
    print(json.dumps({"threads": torch.get_num_threads(), "rounds": args.rounds,
                      "final_accuracy": accs, "best_wall_cpu_s": best}))
    print(f"bare {best['bare'][0]:.2f} s wall, {best['bare'][1]:.2f} s CPU; simulator "
          f"{best['simulator'][0]:.2f} s wall, {best['simulator'][1]:.2f} s CPU")
    total, train_s, evals_s = parts
    print(f"where the last simulated run's {total:.2f} s went: client updates {train_s:.2f} s, "
          f"{args.rounds + 1} evaluations {evals_s:.2f} s, the rest (sampling, codec, "
          f"aggregation, ledger, files) {total - train_s - evals_s:.2f} s")
    print(f"p1_sim_over_raw_cpu: {best['simulator'][1] / best['bare'][1]:.3f}")
    print(f"p1_sim_over_raw: {best['simulator'][0] / best['bare'][0]:.3f}")


if __name__ == "__main__":
    main()
