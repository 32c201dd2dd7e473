"""Structured, FLOP-aware pruning: remove whole conv channels (or hidden units) where the
compute is, so that the subnetwork is a physically smaller dense model.

A model's weight layers form a chain (``body`` conv / linear layers in order, then the
head). Removing unit ``j`` of layer ``i`` zeroes row ``j`` of its weight, its bias
entry, and the inputs of layer ``i + 1`` that read unit ``j`` (at a conv -> linear
boundary, the ``H * W`` flattened positions of channel ``j``). The result is an
ordinary :class:`~fedticket.pruning.Mask` on the full-size parameter names; a
training path that skips the removed units (:mod:`fedticket.pruning.compact`) gives
the same model as dense kernels under that mask.

Which units go is decided greedily: at every step the unit with the lowest
``importance / saving`` goes, where importance is the L2 norm of the unit's incoming
(DAE-trained) weights over the mean norm in its layer, and saving is the forward
multiply-adds its removal saves (its own row and the next layer's inputs it feeds).
Every layer but the last of the body is structured; the last body layer (the FedAvg
CNN's fc1, which holds the bytes) is left to unstructured pruning. Each structured
layer keeps at least ``MIN_KEEP`` of its units.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from fedticket.accounting.flops import layer_costs
from fedticket.errors import ConfigError
from fedticket.pruning.mask import Mask

MIN_KEEP = 0.25


@dataclass(frozen=True)
class ChainLayer:
    """One weight layer of the chain: ``name`` is its module path (``body.conv1``)."""

    name: str
    units: int
    group: int
    """How many inputs of the *next* layer each unit feeds (H*W at conv -> linear)."""
    positions: int
    """Output positions per sample (H*W for a conv, 1 for a linear layer)."""


def chain(model: nn.Module, input_shape: tuple[int, ...]) -> list[ChainLayer]:
    """The weight layers of ``model`` in execution order, with how each feeds the next.

    Raises ConfigError for a model that is not a plain chain of conv / linear layers.
    """
    costs = layer_costs(model, input_shape)
    mods = dict(model.named_modules())
    out = []
    for i, c in enumerate(costs):
        m = mods[c.name]
        assert isinstance(m, nn.Conv2d | nn.Linear)
        units = int(m.weight.shape[0])
        group = 1
        if i + 1 < len(costs):
            nxt = mods[costs[i + 1].name]
            assert isinstance(nxt, nn.Conv2d | nn.Linear)
            fan_in = int(nxt.weight.shape[1])
            if fan_in % units:
                raise ConfigError(f"{costs[i + 1].name} does not read {c.name} unit by unit; "
                                  "structured pruning needs a plain chain of layers")
            group = fan_in // units
        out.append(ChainLayer(c.name, units, group, c.positions))
    return out


def unit_rows(mask: Mapping[str, torch.Tensor], layer: ChainLayer) -> torch.Tensor:
    """Bool per unit of ``layer``: does any of its weights survive?"""
    w = mask[f"{layer.name}.weight"]
    return w.reshape(w.shape[0], -1).any(dim=1)


def remove_units(mask: dict[str, torch.Tensor], layers: list[ChainLayer], i: int,
                 units: torch.Tensor) -> None:
    """Zero, in place, everything of ``units`` (indices) of layer ``i``."""
    layer, nxt = layers[i], layers[i + 1]
    mask[f"{layer.name}.weight"][units] = False
    if f"{layer.name}.bias" in mask:
        mask[f"{layer.name}.bias"][units] = False
    cols = (units[:, None] * layer.group + torch.arange(layer.group)).flatten()
    w = mask[f"{nxt.name}.weight"]
    w.view(w.shape[0], w.shape[1], -1)[:, cols] = False


def structured_prune(
    weights: Mapping[str, torch.Tensor],
    mask: Mask,
    layers: list[ChainLayer],
    flops_fraction: float,
) -> tuple[Mask, dict]:
    """Remove units of the structured layers until the forward multiply-adds are at most
    ``flops_fraction`` of the dense model's (or every layer is at ``MIN_KEEP``).

    Returns the new mask and a report (units kept per layer, MACs before and after).
    """
    new = {n: mask[n].clone() for n in mask}
    structured = layers[:-2]  # every body layer but the last; never the head
    importance = {}
    for layer in structured:
        w = weights[f"{layer.name}.weight"].detach()
        norms = w.reshape(w.shape[0], -1).norm(dim=1)
        importance[layer.name] = norms / norms.mean().clamp_min(1e-12)

    def macs() -> int:
        total = 0
        for layer in layers:
            total += int(new[f"{layer.name}.weight"].sum()) * layer.positions
        return total

    dense = sum(int(mask[f"{ly.name}.weight"].numel()) * ly.positions for ly in layers)
    budget = flops_fraction * dense
    floor = {ly.name: max(1, int(round(MIN_KEEP * ly.units))) for ly in structured}
    current = macs()
    while current > budget:
        best: tuple[float, int, int, int] | None = None
        for i, layer in enumerate(structured):
            alive = unit_rows(new, layer)
            if int(alive.sum()) <= floor[layer.name]:
                continue
            w = new[f"{layer.name}.weight"]
            row_macs = w.reshape(w.shape[0], -1).sum(dim=1) * layer.positions
            nxt = layers[i + 1]
            nw = new[f"{nxt.name}.weight"]
            per_in = nw.reshape(nw.shape[0], nw.shape[1], -1).sum(dim=(0, 2))
            col_macs = per_in.view(layer.units, layer.group).sum(dim=1) * nxt.positions
            saving = (row_macs + col_macs).float()
            ratio = importance[layer.name] / saving.clamp_min(1.0)
            ratio[~alive] = float("inf")
            j = int(torch.argmin(ratio))
            if best is None or float(ratio[j]) < best[0]:
                best = (float(ratio[j]), i, j, int(saving[j]))
        if best is None:
            break  # every structured layer is at its floor
        _, i, j, saved = best
        remove_units(new, layers, i, torch.tensor([j]))
        current -= saved
    current = macs()
    report = {
        "kept_units": {ly.name: int(unit_rows(new, ly).sum()) for ly in structured},
        "units": {ly.name: ly.units for ly in structured},
        "forward_macs_fraction": current / dense,
        "flops_fraction_target": flops_fraction,
    }
    return Mask(new), report


def fraction_to_reach(mask: Mask, names: list[str], sparsity: float) -> float:
    """Fraction of the surviving entries of ``names`` to remove so that ``sparsity`` of
    all of them is gone (0 when the structured step already went that far)."""
    total = sum(mask[n].numel() for n in names)
    alive = sum(int(mask[n].sum()) for n in names)
    target = round((1.0 - sparsity) * total)
    return max(0.0, 1.0 - target / alive) if alive else 0.0
