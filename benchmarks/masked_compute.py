"""How much of the counted FLOP saving turns into wall-clock saving today?

Times one client update (E=1 over 500 samples, B=10) of the FedAvg CNN under global
magnitude masks of several densities, after a warm-up, median of repeats, in one
run, and prints counted training FLOPs and measured wall time relative to dense.
The client trains with dense kernels and masked gradients, so wall time is not
expected to follow FLOPs; this benchmark shows by how much it does not.

    .venv/bin/python benchmarks/masked_compute.py
"""

from __future__ import annotations

import statistics

import torch

from fedticket.data import Labeled
from fedticket.federated import LocalTrainer
from fedticket.models import build, prunable_names
from fedticket.pruning import STRATEGIES, Mask, prune_lowest
from fedticket.spec import FederateSpec, ModelSpec


def main(repeats: int = 5) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = Labeled(torch.rand(500, 1, 28, 28, generator=g), torch.randint(0, 10, (500,),
                                                                         generator=g))
    spec = FederateSpec(local_epochs=1, batch_size=10, lr=0.01)
    rows = []
    for density in (1.0, 0.5, 0.2, 0.05):
        torch.manual_seed(0)
        model = build(ModelSpec(), (1, 28, 28), 10)
        names = prunable_names(model)
        scores = STRATEGIES["magnitude"](dict(model.named_parameters()), names, g)
        mask = prune_lowest(scores, Mask.full(model), names, 1 - density, "global")
        trainer = LocalTrainer(model, mask, spec, (1, 28, 28))
        state = {k: v * mask.float(k) for k, v in model.state_dict().items()}
        trainer.update(state, data, torch.Generator().manual_seed(0))  # warm-up
        times = [trainer.update(state, data, torch.Generator().manual_seed(0)).wall_s
                 for _ in range(repeats)]
        rows.append((density, mask.density, trainer.flops_per_sample * len(data),
                     statistics.median(times), statistics.pstdev(times)))
    base_flops, base_s = rows[0][2], rows[0][3]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {repeats} after a warm-up")
    print("prunable density  model density  GFLOP  FLOPs/dense  wall s (sd)      wall/dense")
    for d, md, flops, s, sd in rows:
        print(f"{d:16.2f}  {md:13.3f}  {flops / 1e9:5.1f}  {flops / base_flops:11.3f}  "
              f"{s:6.3f} ({sd:.3f})  {s / base_s:10.3f}")


if __name__ == "__main__":
    main()
