"""FLOPs of one training step, counting only the weights that survive the mask.

Every module's multiply-adds come from PyTorch's own counter
(:class:`torch.utils.flop_counter.FlopCounterMode`: convolutions of any ``groups``,
matrix products, batched products and attention), taken per module on one forward pass
of one sample, so a layer type fedticket has never met is counted without new code. A
module's *own* count (its total less its submodules') scales with the kept fraction of
the weight tensors it holds directly (a conv or linear layer's ``weight``, an
attention module's ``in_proj_weight``): ``nnz`` surviving weights used at ``positions``
output positions each (``H_out * W_out`` for a conv, the tokens for a linear layer)
make ``macs = nnz * positions``. Products between activations (attention's ``q k^T``
and its product with ``v``) hold no weight and count in full. Per sample:

* forward:   ``2 * macs`` (one multiply and one add per weight use)
  ``+ bias_outputs`` (one add per output when the module has a bias);
* backward:  ``2 * macs`` for the weight gradient, another ``2 * macs`` for the
  gradient with respect to the module's input (skipped for the first counted module,
  whose input needs no gradient: autograd does not compute it), and ``bias_outputs``
  for the bias gradient; a product between activations costs twice its forward.

This is the accounting of Evci et al. 2020 (RigL, appendix H: sparse training
costs ``3 x`` the sparse forward pass, backward ``= 2 x`` forward) and Kaplan
et al. 2020 (table 1: ``2N`` forward, ``4N`` backward per token), made exact
per layer. Activations, normalisation, pooling and the loss are not counted (PyTorch's
counter does not count elementwise work): on the FedAvg CNN they are under 0.5% of the
total. A dense kernel multiplying by a mask does all the dense work anyway; these
counts are what a kernel that skips zeros needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from fedticket.errors import ConfigError


def _without_dynamo() -> None:
    """torch wraps every dispatch mode's ``__torch_dispatch__`` so that Dynamo never
    compiles it, and the wrapper imports ``torch._dynamo`` on its first call: 1.6 s of
    every process that counts FLOPs (each Flower ClientApp does). fedticket compiles
    nothing, so the counter's raw function is marked as its own Dynamo-disabled form,
    which the wrapper then calls as it is. (If torch's wrapper changes, this does
    nothing and the first count is slower, never different.)"""
    mode = getattr(flop_counter, "_FlopCounterMode", None)
    raw = getattr(getattr(mode, "__torch_dispatch__", None), "__wrapped__", None)
    if raw is not None and not hasattr(raw, "__dynamo_disable"):
        raw.__dynamo_disable = raw


_without_dynamo()


@dataclass(frozen=True)
class LayerCost:
    name: str
    """Module path (``body.conv1``)."""
    kind: str
    """The module's class name in lower case (``conv2d``, ``linear``, ``attention``)."""
    weights: int
    """Entries of the weight tensors the module holds directly (0: none)."""
    nnz_weights: int
    positions: int
    """Uses of each weight per sample (output positions); 0 without weights."""
    forward_macs: int
    forward_flops: int
    backward_flops: int

    @property
    def train_flops(self) -> int:
        return self.forward_flops + self.backward_flops


def _weights(module: nn.Module, path: str) -> list[tuple[str, torch.Tensor]]:
    """The tensors whose kept fraction scales the module's own compute: its direct
    parameters of two or more dimensions named ``weight`` or ``*_weight`` (an
    ``nn.MultiheadAttention``'s ``in_proj_weight``), by full name."""
    prefix = f"{path}." if path else ""
    return [(prefix + n, p) for n, p in module.named_parameters(recurse=False)
            if p.dim() >= 2 and (n == "weight" or n.endswith("_weight"))]


def layer_costs(
    module: nn.Module,
    input_shape: tuple[int, ...],
    mask: Mapping[str, torch.Tensor] | None = None,
) -> list[LayerCost]:
    """Per-sample costs of every module of ``module`` that computes products, in the
    order they first finish (a layer before the block that holds it).

    ``mask`` maps parameter and buffer names of ``module`` (e.g. ``"body.conv1.weight"``)
    to 0/1 tensors; tensors without an entry count as dense. Raises ConfigError naming
    the module when a forward pass on ``(1, *input_shape)`` zeros fails.
    """
    order: list[str] = []
    paths = dict(module.named_modules())
    hooks = [m.register_forward_hook(lambda mod, args, out, path=path: order.append(path))
             for path, m in paths.items()]
    root = type(module).__name__
    counter = FlopCounterMode(display=False)
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad(), counter:
            module(torch.zeros(1, *input_shape))
    except Exception as e:  # the user's module on a shape it cannot take
        raise ConfigError(f"cannot count the FLOPs of {root} on inputs of shape "
                          f"{tuple(input_shape)} ({type(e).__name__}: {e})") from None
    finally:
        module.train(was_training)
        for h in hooks:
            h.remove()
    totals = {key: sum(ops.values()) for key, ops in counter.get_flop_counts().items()}

    def total(path: str) -> int:
        return totals.get(f"{root}.{path}" if path else root, 0)

    costs: list[LayerCost] = []
    for path in dict.fromkeys(order):  # the order modules first finish in
        m = paths[path]
        own = total(path) - sum(total(f"{path}.{c}" if path else c)
                                for c, _ in m.named_children())
        if own <= 0:
            continue
        weights = _weights(m, path)
        numel = sum(w.numel() for _, w in weights)
        if numel:
            nnz = sum(int(mask[n].sum()) if mask is not None and n in mask else w.numel()
                      for n, w in weights)
            positions = own // (2 * numel)
            macs = nnz * positions
            bias = getattr(m, "bias", None)
            bias_key = f"{path}.bias"
            outputs = 0
            if isinstance(bias, torch.Tensor):
                outputs = int(mask[bias_key].sum()) if mask is not None and bias_key in mask \
                    else bias.numel()  # removed units add no bias
            bias_outputs = outputs * positions
            fwd = 2 * macs + bias_outputs
            bwd = 2 * macs + bias_outputs + (2 * macs if costs else 0)
        else:  # products of activations: no weight, both operands need a gradient
            nnz, positions, macs = 0, 0, own // 2
            fwd, bwd = own, 2 * own
        costs.append(LayerCost(path, type(m).__name__.lower(), numel, nnz, positions, macs,
                               fwd, bwd))
    return costs


def train_flops_per_sample(costs: list[LayerCost]) -> int:
    return sum(c.train_flops for c in costs)


def costs_report(costs: list[LayerCost]) -> list[dict]:
    return [asdict(c) | {"train_flops": c.train_flops} for c in costs]
