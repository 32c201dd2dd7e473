"""A physically smaller copy of a model whose mask removes whole units.

:class:`Compact` finds, from the mask alone, the units of each channel group
(:mod:`fedticket.pruning.structured`) that are gone (every entry of their own outputs
masked: weight rows, bias, BatchNorm), builds a copy of the model with them cut out by
Torch-Pruning (the copy's conv, linear and BatchNorm layers shrink, and so do the
inputs of every layer that read them, across residual adds), and maps state dicts
between the two. Tensor names stay the full model's (``body.conv1.weight``), so the
mask, the codec and the FLOP ledger keep working on logical names. Training the
compact model under the sliced mask gives the model that dense kernels under the full
mask give (up to the order of floating-point sums): a removed unit feeds only inputs
that are masked, so nothing reads it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from fedticket.pruning.mask import Mask, model_tensors
from fedticket.pruning.structured import ChannelGraph, channel_graph, unit_removed

State = dict[str, torch.Tensor]


class Compact:
    """Index maps between the full model and its compact copy (built once per mask)."""

    def __init__(self, model: nn.Module, mask: Mask, input_shape: tuple[int, ...],
                 graph: ChannelGraph | None = None):
        graph = graph or channel_graph(model, input_shape)
        self.shapes = {n: tuple(t.shape) for n, t in model_tensors(model).items()}
        drop: dict[tuple[str, int], set[int]] = {}
        removed_by_group: list[tuple[str, torch.Tensor]] = []
        for g in graph.groups:
            gone = unit_removed(mask, g).nonzero().flatten()
            if len(gone) == 0:
                continue
            removed_by_group.append((g.name, gone))
            for s in g.slices:
                drop.setdefault((s.tensor, s.dim), set()).update(
                    int(i) for i in s.index[gone].flatten())
        self.removed = sum(len(gone) for _, gone in removed_by_group)
        self.index: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        for (name, dim), gone_idx in drop.items():
            rows, cols = self.index.get(name, (None, None))
            keep = torch.tensor([i for i in range(self.shapes[name][dim]) if i not in gone_idx],
                                dtype=torch.long)
            self.index[name] = (keep, cols) if dim == 0 else (rows, keep)
        self.net = self._build(model, input_shape, removed_by_group)
        self.mask = Mask(self.compact(mask))

    @property
    def is_identity(self) -> bool:
        return self.removed == 0

    def _build(self, model: nn.Module, input_shape: tuple[int, ...],
               removed: list[tuple[str, torch.Tensor]]) -> nn.Module:
        """A copy of ``model`` with the removed units cut out by Torch-Pruning, holding the
        compacted values of ``model``'s tensors (checked against our own index maps)."""
        net = copy.deepcopy(model)
        if removed:
            import torch_pruning as tp

            mods = dict(net.named_modules())
            was_training = net.training
            net.eval()
            graph = tp.DependencyGraph().build_dependency(
                net, example_inputs=torch.zeros(1, *input_shape))
            for name, gone in removed:
                root = mods[name]
                handler = (tp.prune_conv_out_channels if isinstance(root, nn.Conv1d | nn.Conv2d
                                                                    | nn.Conv3d)
                           else tp.prune_linear_out_channels)
                graph.get_pruning_group(root, handler, idxs=[int(i) for i in gone]).prune()
            net.train(was_training)
        compacted = self.compact(model_tensors(model))
        tensors = model_tensors(net)
        with torch.no_grad():
            for name, t in compacted.items():
                if tuple(tensors[name].shape) != tuple(t.shape):
                    raise AssertionError(f"compact model: {name} is {tuple(tensors[name].shape)}"
                                         f" after Torch-Pruning, {tuple(t.shape)} by the mask")
                tensors[name].copy_(t)
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
            shape, full = self.shapes[name], t.detach().contiguous()
            if cols is not None and t.dim() > 1:  # columns first, then rows: two copies
                wide = torch.zeros((t.shape[0], *shape[1:]), dtype=t.dtype)
                full = wide.index_copy_(1, cols, full)
            if rows is not None:
                full = torch.zeros(shape, dtype=t.dtype).index_copy_(0, rows, full)
            out[name] = full
        return out
