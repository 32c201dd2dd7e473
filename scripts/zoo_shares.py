"""The structured ticket of every family of the test suite's zoo (tests/zoo.py): what the
compact model keeps of the dense one's parameters and training FLOPs, at the default
budget (``prune.flops_fraction = 0``: half the kept weight fraction, 0.1 at 80%
sparsity; channel floor 0.25).

    python scripts/zoo_shares.py            # the table in docs/your-model.md

Each network is taken over as a user's model, its DAE trained for one epoch on 512
random images (the shares depend on which units the budget keeps, not on the data), and
cut with ``find_ticket(..., structured=True)``. "compact params" counts the physically
smaller model's parameters; "kept params" also leaves out the weights magnitude pruning
zeroes inside it; "FLOPs" is the ledger's training FLOPs per sample under the mask.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fedticket import find_ticket  # noqa: E402
from fedticket.flops import layer_costs, train_flops_per_sample  # noqa: E402
from fedticket.spec import PretrainSpec  # noqa: E402
from zoo import SHAPES, ZOO  # noqa: E402
from zoo import build as build_zoo  # noqa: E402


def shares(family: str, shape: tuple[int, int, int]) -> tuple[float, float, float, int]:
    torch.manual_seed(0)
    model = build_zoo(family, shape, 10)
    dense = sum(p.numel() for p in model.parameters())
    x = torch.rand(512, *shape, generator=torch.Generator().manual_seed(0))
    ticket = find_ticket(model, x, structured=True, pretrain=PretrainSpec(epochs=1))
    compact = sum(p.numel() for p in ticket.compact_model().parameters())
    full = train_flops_per_sample(layer_costs(ticket.model, shape, None))
    kept = train_flops_per_sample(layer_costs(ticket.model, shape, ticket.mask))
    left = len(ticket.report["prune"]["structure"]["left_out"])
    return compact / dense, ticket.mask.density, kept / full, left


def main() -> None:
    torch.set_num_threads(1)
    print("| family | input | compact params | kept params | training FLOPs | groups left "
          "to magnitude pruning |")
    print("|---|---|--:|--:|--:|--:|")
    for family in ZOO:
        for shape in SHAPES:
            c, d, f, left = shares(family, shape)
            print(f"| {family} | {'x'.join(map(str, shape))} | {c:.1%} | {d:.1%} | {f:.1%} "
                  f"| {left} |", flush=True)


if __name__ == "__main__":
    main()
