"""Time of one client update of `dae-ticket-fast` over the dense update (target p2).

The masks are the real pipeline's: `configs/quick.toml` (the FedAvg CNN on
Fashion-MNIST, DAE pretrained on the server's pool), pruned as `dae-ticket-fast` at 80%
and 90% of the prunable weights removed, and as `dae-ticket` at 80% and 95% for
reference (at 95% both with dense kernels and with `auto`, which puts fc1, then at
about 5% density, on CSR kernels).
One update is E=1 over 400 training images at B=10 (`LocalTrainer.update`, the code
every engine runs). Each variant is warmed up, then the variants are timed in turn,
repeatedly, in one process; the median per variant is divided by the dense median.
The targets use CPU time on one torch thread, as the simulator's clients train (with
one thread it is the thread's own CPU time, which a busy machine does not move); wall
time is printed beside it. `--profile` also prints torch.profiler's table of one
`dae-ticket-fast` s90 update, the operators by their own CPU time.

    .venv/bin/python benchmarks/client_update.py [--repeats 11] [--threads 1] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from pathlib import Path

import torch
from _timing import cpu_model

from fedticket.data import Labeled, load_splits
from fedticket.federated import LocalTrainer
from fedticket.pruning import Mask
from fedticket.spec import load_config, parse_set
from fedticket.stages import fresh_model, pretrain_and_prune

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "runs" / "bench"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as a "
                                                          "simulated client; 0 = torch's)")
    ap.add_argument("--profile", action="store_true",
                    help="also print the operator profile of one dae-ticket-fast s90 update")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(ROOT / "configs" / "quick.toml")
    variants: dict[str, tuple[str, float, str]] = {
        "dense": ("fedavg", 0.8, "auto"),
        "dae-ticket s80": ("dae-ticket", 0.8, "auto"),
        "dae-ticket-fast s80": ("dae-ticket-fast", 0.8, "auto"),
        "dae-ticket-fast s90": ("dae-ticket-fast", 0.9, "auto"),
        "dae-ticket s95": ("dae-ticket", 0.95, "dense-masked"),
        "dae-ticket s95 sparse": ("dae-ticket", 0.95, "auto"),
    }
    trainers: dict[str, LocalTrainer] = {}
    states = {}
    data = None
    for label, (method, sparsity, compute) in variants.items():
        [spec] = [s for s in replace(config, methods=(method,)).specs(
            parse_set([f"prune.sparsity={sparsity}", "federate.batch_size=10",
                       "federate.local_epochs=1", "data.train_size=4000",
                       f'federate.compute="{compute}"']))]
        splits = load_splits(spec.data, spec.seed)
        stages = pretrain_and_prune(spec, splits, CACHE)
        mask = stages.mask if method != "fedavg" else Mask.full(fresh_model(spec, splits, "x"))
        model = fresh_model(spec, splits, "init")
        trainers[label] = LocalTrainer(model, mask, spec.federate, splits.input_shape)
        states[label] = {k: v * mask.float(k) for k, v in stages.trained.items()}
        if data is None:
            x = torch.cat([c.x for c in splits.clients])[:400]
            y = torch.cat([c.y for c in splits.clients])[:400]
            data = Labeled(x, y)
    assert data is not None
    wall: dict[str, list[float]] = {k: [] for k in trainers}
    cpu: dict[str, list[float]] = {k: [] for k in trainers}
    for label, t in trainers.items():
        t.warm_up(states[label], data)
    for _ in range(args.repeats):
        for label, t in trainers.items():
            upd = t.update(states[label], data, torch.Generator().manual_seed(0))
            wall[label].append(upd.wall_s)
            cpu[label].append(upd.cpu_s)
    dense_w, dense_c = statistics.median(wall["dense"]), statistics.median(cpu["dense"])
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} "
          f"thread(s); {args.repeats} repeats, median of each")
    print(f"{'variant':22} {'compute':13} {'density':>7} {'FLOPs':>6} {'CPU s':>7} "
          f"{'CPU/dense':>9} {'wall/dense':>10}")
    dense_flops = trainers["dense"].flops_per_sample
    ratios = {}
    for label, t in trainers.items():
        w, c = statistics.median(wall[label]), statistics.median(cpu[label])
        ratios[label] = c / dense_c
        print(f"{label:22} {t.compute:13} {t.mask.density:7.3f} "
              f"{t.flops_per_sample / dense_flops:6.3f} {c:7.3f} {c / dense_c:9.3f} "
              f"{w / dense_w:10.3f}")
    if args.profile:
        profile(trainers["dae-ticket-fast s90"], states["dae-ticket-fast s90"], data)
    print(f"p2_update_time_ratio_s80: {ratios['dae-ticket-fast s80']:.3f}")
    print(f"p2_update_time_ratio_s90: {ratios['dae-ticket-fast s90']:.3f}")


def profile(trainer: LocalTrainer, state: dict, data: Labeled) -> None:
    """torch.profiler's operators of one update, by their own CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.update(state, data, torch.Generator().manual_seed(0))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
