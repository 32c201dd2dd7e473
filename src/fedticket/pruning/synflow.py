"""SynFlow: a mask from the initial weights alone, no data (Tanaka et al. 2020).

The network is made linear and positive: every parameter is replaced by its absolute
value, BatchNorm uses its running statistics (``eval()``), and the input is all ones,
in float64. ``R`` is the sum of the outputs; a weight's score is ``|w * dR/dw|``, the
"synaptic flow" through it. Pruning by these scores in one shot collapses whole layers,
so it runs ``iterations`` times, each keeping ``(1 - sparsity) ** (k / iterations)`` of
the prunable weights (the paper's exponential schedule, 100 iterations), with the
scores recomputed on the masked network each time.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fedticket.pruning.mask import Mask
from fedticket.pruning.strategies import prune_lowest


def synflow_scores(model: nn.Module, mask: Mask, names: list[str],
                   input_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """``|w * dR/dw|`` for the tensors ``names`` of ``model`` under ``mask`` (the model is
    not changed)."""
    net = copy.deepcopy(model).double().eval()
    params = dict(net.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            keep = mask[name].to(p.dtype) if name in mask else 1.0
            p.copy_(p.abs() * keep)
    net.zero_grad()
    out = net(torch.ones((1, *input_shape), dtype=torch.float64))
    out.sum().backward()
    return {n: (_grad(params[n]) * params[n]).abs().detach().float() for n in names}


def _grad(p: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(p) if p.grad is None else p.grad


def synflow_prune(model: nn.Module, names: list[str], sparsity: float, iterations: int,
                  input_shape: tuple[int, ...]) -> Mask:
    """The SynFlow mask of ``model`` over ``names`` (global scope), at ``sparsity``."""
    mask = Mask.full(model)
    total = sum(mask[n].numel() for n in names)
    for k in range(1, iterations + 1):
        keep = round(total * (1.0 - sparsity) ** (k / iterations))
        alive = sum(int(mask[n].sum()) for n in names)
        scores = synflow_scores(model, mask, names, input_shape)
        mask = prune_lowest(scores, mask, names, (alive - keep) / alive if alive else 0.0,
                            "global")
    return mask
