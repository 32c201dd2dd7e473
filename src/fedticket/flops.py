"""FLOPs of one training step, counting only the weights that survive the mask.

Per conv / linear layer and per sample, with ``nnz`` the surviving weights and
``positions`` the output positions each weight is used at (``H_out * W_out``
for a conv, 1 for a linear layer on a vector):

* forward:   ``2 * nnz * positions`` (one multiply and one add per weight use)
  ``+ bias_outputs`` (one add per output when the layer has a bias);
* backward:  ``2 * nnz * positions`` for the weight gradient, another
  ``2 * nnz * positions`` for the gradient with respect to the layer input
  (skipped for the first layer, whose input needs no gradient: autograd does
  not compute it), and ``bias_outputs`` for the bias gradient.

This is the accounting of Evci et al. 2020 (RigL, appendix H: sparse training
costs ``3 x`` the sparse forward pass, backward ``= 2 x`` forward) and Kaplan
et al. 2020 (table 1: ``2N`` forward, ``4N`` backward per token), made exact
per layer. Activations, pooling and the loss are not counted: on the FedAvg CNN
they are under 0.5% of the total. A dense kernel multiplying by a mask does all
the dense work anyway; these counts are what a kernel that skips zeros needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LayerCost:
    name: str
    kind: str
    weights: int
    nnz_weights: int
    positions: int
    forward_macs: int
    forward_flops: int
    backward_flops: int

    @property
    def train_flops(self) -> int:
        return self.forward_flops + self.backward_flops


def layer_costs(
    module: nn.Module,
    input_shape: tuple[int, ...],
    mask: Mapping[str, torch.Tensor] | None = None,
) -> list[LayerCost]:
    """Per-sample costs of every Conv2d / Linear layer of ``module``, in execution order.

    ``mask`` maps parameter names of ``module`` (e.g. ``"body.conv1.weight"``) to
    0/1 tensors; layers without an entry count as dense.
    """
    shapes: list[tuple[str, nn.Conv2d | nn.Linear, torch.Size]] = []
    hooks = []
    for name, m in module.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if isinstance(m, nn.Conv2d) and m.groups != 1:
                raise NotImplementedError("grouped convolutions are not counted")

            def hook(mod: nn.Module, args: object, out: torch.Tensor, name: str = name) -> None:
                assert isinstance(mod, (nn.Conv2d, nn.Linear))
                shapes.append((name, mod, out.shape))

            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            was_training = module.training
            module.eval()
            module(torch.zeros(1, *input_shape))
            module.train(was_training)
    finally:
        for h in hooks:
            h.remove()

    costs = []
    for i, (name, m, out_shape) in enumerate(shapes):
        w: torch.Tensor = m.weight
        key = f"{name}.weight"
        nnz = int(mask[key].sum()) if mask is not None and key in mask else w.numel()
        if isinstance(m, nn.Conv2d):
            positions = int(out_shape[-1] * out_shape[-2])
            kind = "conv2d"
        else:
            positions = int(torch.Size(out_shape[1:-1]).numel())
            kind = "linear"
        out_features = int(w.shape[0])
        bias_key = f"{name}.bias"
        if m.bias is not None and mask is not None and bias_key in mask:
            out_features = int(mask[bias_key].sum())  # removed units add no bias
        macs = nnz * positions
        bias_outputs = out_features * positions if m.bias is not None else 0
        fwd = 2 * macs + bias_outputs
        bwd = 2 * macs + bias_outputs + (2 * macs if i > 0 else 0)
        costs.append(LayerCost(name, kind, w.numel(), nnz, positions, macs, fwd, bwd))
    return costs


def train_flops_per_sample(costs: list[LayerCost]) -> int:
    return sum(c.train_flops for c in costs)


def costs_report(costs: list[LayerCost]) -> list[dict]:
    return [asdict(c) | {"train_flops": c.train_flops} for c in costs]
