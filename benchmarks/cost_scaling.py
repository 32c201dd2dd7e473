"""How a client's cost grows with sparsity, model size and clients per round; a plot.

1. Sparsity: one client update (E=1, 400 images, B=10) of the FedAvg CNN under the
   real masks of `configs/quick.toml` at 50/80/90/95% of the prunable weights removed,
   `dae-ticket` (dense-masked kernels) and `dae-ticket-fast` (structured), wall time
   over the dense update, beside the counted training FLOPs over dense.
2. Model size: the same update for the registry's models on their inputs, against
   their training FLOPs per sample.
3. Clients per round: one simulated round (training, aggregation, evaluation of 1,000
   test images) with 2 to 20 clients.

Writes `docs/img/cost_scaling.png` and prints the numbers.

    .venv/bin/python benchmarks/cost_scaling.py
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from fedticket.accounting import Codec  # noqa: E402
from fedticket.data import Labeled, load_splits  # noqa: E402
from fedticket.federated import LocalTrainer, run_fedavg  # noqa: E402
from fedticket.models import build  # noqa: E402
from fedticket.pruning import Mask  # noqa: E402
from fedticket.spec import FederateSpec, ModelSpec, load_config, parse_set  # noqa: E402
from fedticket.stages import fresh_model, pretrain_and_prune  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = FederateSpec(local_epochs=1, batch_size=10, lr=0.05)


def timed(trainer: LocalTrainer, state, data, repeats: int = 5) -> float:
    trainer.warm_up(state, data)
    return statistics.median(
        trainer.update(state, data, torch.Generator().manual_seed(0)).wall_s
        for _ in range(repeats))


def main() -> None:
    config = load_config(ROOT / "configs" / "quick.toml")
    g = torch.Generator().manual_seed(0)
    data = Labeled(torch.rand(400, 1, 28, 28, generator=g),
                   torch.randint(0, 10, (400,), generator=g))
    # 1. sparsity
    base = None
    rows = []
    for sparsity in (0.5, 0.8, 0.9, 0.95):
        for method in ("dae-ticket", "dae-ticket-fast"):
            [spec] = replace(config, methods=(method,)).specs(
                parse_set([f"prune.sparsity={sparsity}"]))
            splits = load_splits(spec.data, spec.seed)
            stages = pretrain_and_prune(spec, splits, ROOT / "runs" / "quick")
            if base is None:
                dense = LocalTrainer(fresh_model(spec, splits, "d"),
                                     Mask.full(fresh_model(spec, splits, "d")), SPEC,
                                     splits.input_shape)
                base = (timed(dense, dense.model.state_dict(), data), dense.flops_per_sample)
            t = LocalTrainer(fresh_model(spec, splits, "init"), stages.mask, SPEC,
                             splits.input_shape)
            state = {k: v * stages.mask.float(k) for k, v in stages.trained.items()}
            rows.append((method, sparsity, timed(t, state, data) / base[0],
                         t.flops_per_sample / base[1]))
            print(f"sparsity {sparsity:.2f} {method:16} time/dense {rows[-1][2]:.3f} "
                  f"FLOPs/dense {rows[-1][3]:.3f}", flush=True)
    # 2. model size
    sizes = []
    for name, shape in (("cnn-digits", (1, 8, 8)), ("mlp", (1, 28, 28)),
                        ("cnn-fedavg", (1, 28, 28)), ("cnn-cifar", (3, 32, 32))):
        torch.manual_seed(0)
        m = build(ModelSpec(name=name), shape, 10)
        x = Labeled(torch.rand(400, *shape, generator=g), torch.randint(0, 10, (400,),
                                                                         generator=g))
        t = LocalTrainer(m, Mask.full(m), SPEC, shape)
        sizes.append((name, t.flops_per_sample * 400, timed(t, m.state_dict(), x)))
        print(f"model {name:11} {sizes[-1][1] / 1e9:7.2f} GFLOP per update, "
              f"{sizes[-1][2]:.3f} s", flush=True)
    # 3. clients per round
    spec = config.specs(parse_set(["data.num_clients=20", "data.test_size=1000"]))[0]
    splits = load_splits(spec.data, spec.seed)
    model = fresh_model(spec, splits, "init")
    mask = Mask.full(model)
    trainer = LocalTrainer(model, mask, SPEC, splits.input_shape)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.warm_up(state, splits.clients[0])
    per_round = []
    for m in (2, 5, 10, 20):
        fed = replace(SPEC, rounds=1, client_fraction=m / 20)
        start = time.perf_counter()
        run_fedavg(trainer, Codec(mask), state, splits.clients, splits.test, fed, 0)
        per_round.append((m, time.perf_counter() - start))
        print(f"{m:2} clients per round: {per_round[-1][1]:.2f} s (incl. 2 evaluations)",
              flush=True)

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    for method, marker in (("dae-ticket", "o"), ("dae-ticket-fast", "s")):
        pts = [r for r in rows if r[0] == method]
        ax[0].plot([1 - r[1] for r in pts], [r[2] for r in pts], marker=marker,
                   label=f"{method}: time")
        ax[0].plot([1 - r[1] for r in pts], [r[3] for r in pts], marker=marker,
                   linestyle=":", label=f"{method}: FLOPs")
    ax[0].set(xlabel="kept fraction of prunable weights", ylabel="over dense update",
              title="client update vs sparsity (FedAvg CNN)")
    ax[0].legend(fontsize=7)
    ax[1].loglog([s[1] / 1e9 for s in sizes], [s[2] for s in sizes], "o-")
    for name, f, t in sizes:
        ax[1].annotate(name, (f / 1e9, t), fontsize=7)
    ax[1].set(xlabel="GFLOP per update (400 samples, E=1)", ylabel="s",
              title="update time vs model size")
    ax[2].plot([p[0] for p in per_round], [p[1] for p in per_round], "o-")
    ax[2].set(xlabel="clients per round", ylabel="s", title="simulated round (dense CNN)")
    fig.tight_layout()
    out = ROOT / "docs" / "img" / "cost_scaling.png"
    fig.savefig(out, dpi=110)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
