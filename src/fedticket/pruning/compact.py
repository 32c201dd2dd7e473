"""A physically smaller copy of a model whose mask removes whole units.

:class:`Compact` finds, from the mask alone, the units of each weight layer that are
gone (row, bias and every weight of the row masked), builds a copy of the model with
those rows and the matching inputs of the next layer sliced away, and maps state
dicts between the two. Parameter names stay the full model's (``body.conv1.weight``),
so the mask, the codec and the FLOP ledger keep working on logical names. Training
the compact model under the sliced mask gives the model that dense kernels under the
full mask give (up to the order of floating-point sums): removed units output
``relu(0) = 0`` there and feed nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from fedticket.pruning.mask import Mask
from fedticket.pruning.structured import chain, unit_rows

State = dict[str, torch.Tensor]


class Compact:
    """Index maps between the full model and its compact copy (built once per mask)."""

    def __init__(self, model: nn.Module, mask: Mask, input_shape: tuple[int, ...]):
        layers = chain(model, input_shape)
        keep_out: dict[str, torch.Tensor] = {}
        for layer in layers[:-1]:  # the head's outputs are the classes: always kept
            alive = unit_rows(mask, layer)
            bias = mask.get(f"{layer.name}.bias")
            if bias is not None:
                alive = alive | bias
            keep_out[layer.name] = alive.nonzero().flatten()
        self.index: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        prev: tuple[torch.Tensor, int] | None = None  # kept units of the previous layer
        for layer in layers:
            rows = keep_out.get(layer.name)
            cols = None
            if prev is not None:
                kept, group = prev
                cols = (kept[:, None] * group + torch.arange(group)).flatten()
            self.index[f"{layer.name}.weight"] = (rows, cols)
            self.index[f"{layer.name}.bias"] = (rows, None)
            prev = (rows, layer.group) if rows is not None else None
        self.shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        self.removed = sum(
            self.shapes[n][0] - len(r) for n, (r, _) in self.index.items()
            if r is not None and n.endswith(".weight")
        )
        self.net = self._build(model)
        self.mask = Mask(self.compact(mask))

    @property
    def is_identity(self) -> bool:
        return self.removed == 0

    def _build(self, model: nn.Module) -> nn.Module:
        net = copy.deepcopy(model)
        mods = dict(net.named_modules())
        with torch.no_grad():
            for name, (rows, cols) in self.index.items():
                prefix, attr = name.rsplit(".", 1)
                mod = mods[prefix]
                p = getattr(mod, attr, None)
                if p is None:
                    continue
                setattr(mod, attr, nn.Parameter(self._take(p.detach(), rows, cols).clone()))
                if attr == "weight":
                    out_n, in_n = mod.weight.shape[0], mod.weight.shape[1]
                    if isinstance(mod, nn.Conv2d):
                        mod.out_channels, mod.in_channels = out_n, in_n
                    elif isinstance(mod, nn.Linear):
                        mod.out_features, mod.in_features = out_n, in_n
        return net

    @staticmethod
    def _take(t: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None
              ) -> torch.Tensor:
        if rows is not None:
            t = t.index_select(0, rows)
        if cols is not None and t.dim() > 1:
            t = t.index_select(1, cols)
        return t

    def compact(self, state: Mapping[str, torch.Tensor]) -> State:
        """The compact model's state from a full-size one."""
        out = {}
        for name, t in state.items():
            rows, cols = self.index.get(name, (None, None))
            out[name] = self._take(t, rows, cols)
        return out

    def expand(self, state: Mapping[str, torch.Tensor]) -> State:
        """A full-size state from the compact one: exact zeros where units were removed."""
        out = {}
        for name, t in state.items():
            rows, cols = self.index.get(name, (None, None))
            if rows is None and cols is None:
                out[name] = t.detach().clone(memory_format=torch.contiguous_format)
                continue
            full = torch.zeros(self.shapes[name], dtype=t.dtype)
            r = rows if rows is not None else torch.arange(self.shapes[name][0])
            if cols is not None and t.dim() > 1:
                full[r[:, None], cols] = t.detach()
            else:
                full[r] = t.detach()
            out[name] = full
        return out
