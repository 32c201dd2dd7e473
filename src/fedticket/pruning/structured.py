"""Structured, FLOP-aware pruning: remove whole conv channels (or hidden units) where the
compute is, so that the subnetwork is a physically smaller dense model.

Which tensors a channel touches comes from a dependency graph of the model, built by
Torch-Pruning's ``DependencyGraph`` (Fang et al. 2023, "DepGraph"), not from a walk of
our own: removing output channel ``j`` of a convolution also removes entry ``j`` of
its bias and of the BatchNorm that normalises it, and input ``j`` of every layer that
reads it (at a conv -> linear boundary, the ``H * W`` flattened positions of channel
``j``); channels joined by a residual add form one group and go together. A
:class:`ChannelGroup` lists, for every unit of a group, the slices of every tensor it
owns. The result is an ordinary :class:`~fedticket.pruning.Mask` on the full-size
names; :mod:`fedticket.pruning.compact` turns it into a physically smaller model that
computes the same function.

Which units go is decided greedily: at every step the unit with the lowest
``importance / saving`` goes, where importance is the L2 norm of the unit's outgoing
weights (every convolution or linear layer writing into it; for a plain layer, its
row) over the mean norm in its group, and saving is the forward multiply-adds its
removal saves (its rows and the inputs of the layers it feeds). Every group but those
that feed the head is structured (on the FedAvg CNN: conv1 and conv2, not fc1, which
holds the bytes and is left to unstructured pruning); each keeps at least
``channel_floor`` of its units.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedticket.errors import ConfigError, FedticketWarning
from fedticket.flops import layer_costs
from fedticket.pruning.mask import Mask
from fedticket.registry import Registry

if TYPE_CHECKING:
    from fedticket.spec import PruneSpec

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
ROOT = "head"
"""Module path of the classifier's head: groups that feed it are never structured."""


@dataclass(frozen=True, eq=False)
class Slice:
    """The entries of one tensor that belong to each unit of a group."""

    tensor: str
    """Full name (``body.conv1.weight``, ``body.bn.running_mean``)."""
    dim: int
    """0: the unit's own outputs (rows); 1: inputs of a layer that reads it (columns)."""
    index: torch.Tensor
    """``(units, per_unit)`` indices along ``dim``."""
    positions: int
    """Output positions per sample of the layer owning ``tensor`` when it is a conv or
    linear weight (its multiply-adds per entry); 0 for anything else."""


@dataclass(frozen=True, eq=False)
class ChannelGroup:
    """Units (channels, hidden units) that must be removed together, and what each owns."""

    name: str
    """Module path of the first (in module order) conv / linear layer writing the units."""
    units: int
    slices: tuple[Slice, ...]
    feeds_head: bool

    def rows(self) -> tuple[Slice, ...]:
        """The slices of the units' own outputs (conv / linear weights and biases, norms)."""
        return tuple(s for s in self.slices if s.dim == 0)

    def out_weights(self) -> tuple[Slice, ...]:
        """Rows of conv / linear weights: the layers that write into the units."""
        return tuple(s for s in self.slices if s.dim == 0 and s.positions)


@dataclass(frozen=True, eq=False)
class ChannelGraph:
    """Every channel group of a model and the positions of each conv / linear weight."""

    groups: tuple[ChannelGroup, ...]
    positions: Mapping[str, int]
    """``{weight name: output positions per sample}`` of every conv / linear layer."""
    left_out: Mapping[str, str] = field(default_factory=dict)
    """``{module path: why}`` of the groups the structured step cannot cut, left whole
    (unstructured pruning still prunes their weights)."""

    def warning(self) -> str:
        """One line on what the structured step leaves to magnitude pruning, or ''."""
        if not self.left_out:
            return ""
        first, why = next(iter(self.left_out.items()))
        more = len(self.left_out) - 1
        return (f"structured pruning leaves {len(self.left_out)} channel group"
                f"{'s' if len(self.left_out) > 1 else ''} to magnitude pruning: {first}: "
                f"{why}" + (f"; and {more} more ({', '.join(list(self.left_out)[1:4])}"
                            f"{', ...' if more > 3 else ''})" if more else ""))

    def macs(self, mask: Mapping[str, torch.Tensor]) -> int:
        """Forward multiply-adds per sample under ``mask``."""
        return sum(int(mask[n].sum()) * p for n, p in self.positions.items())

    @property
    def structured(self) -> tuple[ChannelGroup, ...]:
        return tuple(g for g in self.groups if not g.feeds_head)


def channel_graph(model: nn.Module, input_shape: tuple[int, ...]) -> ChannelGraph:
    """The channel groups of ``model`` on ``(1, *input_shape)`` inputs.

    A group that cannot be cut out exactly is left out (nothing of it is removed by the
    structured step; unstructured pruning still prunes its weights), and
    :attr:`ChannelGraph.left_out` says which and why: a unit that touches a module with
    parameters that is neither a conv / linear layer nor a BatchNorm (a LayerNorm or
    GroupNorm mixes the channels in its statistics, so removing one changes the
    others), the input channels of a grouped (not depthwise) convolution, or units
    whose slices do not fit their tensors or overlap (a reshape the dependency graph
    does not follow: a channel shuffle, the split of attention heads). Raises
    ConfigError when the graph cannot be built.
    """
    import torch_pruning as tp

    positions = {f"{c.name}.weight": c.positions for c in layer_costs(model, input_shape)
                 if c.weights}
    paths = {m: p for p, m in model.named_modules()}
    sizes = {n: tuple(t.shape) for n, t in [*model.named_parameters(),
                                             *model.named_buffers()]}
    head = dict(model.named_modules()).get(ROOT)
    was_training = model.training
    model.eval()
    try:
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=torch.zeros(1, *input_shape))
        roots = list(graph.get_all_groups(ignored_layers=[head] if head is not None else [],
                                          root_module_types=list(WEIGHTED)))
    except Exception as e:  # the tracer failing on a user's model
        raise ConfigError(f"cannot build the channel dependency graph of the model "
                          f"({type(e).__name__}: {e}); use prune.structure = 'none'") from None
    finally:
        model.train(was_training)
    order = {p: i for i, (p, _) in enumerate(model.named_modules())}
    groups, left_out = [], {}
    for root in roots:
        dep = root[0].dep
        module, handler, units = dep.target.module, dep.handler, len(root[0].idxs)
        where = paths.get(module, "?")
        per_unit = [_unit_slices(graph.get_pruning_group(module, handler, idxs=[j]), paths)
                    for j in range(units)]
        reason = next((s for s in per_unit if isinstance(s, str)), None)
        units_ = [s for s in per_unit if not isinstance(s, str)]
        reason = reason or _misfit(units_, sizes)
        if reason is not None:
            left_out[where] = reason
            continue
        keys: list[tuple[str, int]] = list(units_[0])
        slices = tuple(
            Slice(tensor, dim, torch.tensor([s[(tensor, dim)] for s in units_]),
                  positions.get(tensor, 0) if tensor.endswith(".weight") else 0)
            for tensor, dim in keys
        )
        feeds_head = any(s.tensor.startswith(f"{ROOT}.") for s in slices)
        writers = [s.tensor.rsplit(".", 1)[0] for s in slices if s.dim == 0 and s.positions]
        name = min(writers or [paths[module]], key=order.__getitem__)
        groups.append(ChannelGroup(name, units, slices, feeds_head))
    groups.sort(key=lambda g: order[g.name])
    return ChannelGraph(tuple(groups), positions, left_out)


def _misfit(per_unit: list[dict[tuple[str, int], list[int]]],
            sizes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why the units' slices cannot be cut out as they are, or None when they can: every
    unit owns the same tensors with as many entries, inside each tensor, and no entry
    belongs to two units."""
    keys = list(per_unit[0])
    if any(list(s) != keys or any(len(s[k]) != len(per_unit[0][k]) for k in keys)
           for s in per_unit):
        return "its units own unequal slices (a reshape the dependency graph cannot follow)"
    for tensor, dim in keys:
        taken = [i for s in per_unit for i in s[(tensor, dim)]]
        if max(taken, default=-1) >= sizes[tensor][dim] or len(set(taken)) < len(taken):
            return (f"its slices of {tensor} do not fit the tensor (a reshape the dependency "
                    "graph cannot follow: a channel shuffle, a split into attention heads)")
    return None


def _unit_slices(group, paths: Mapping[nn.Module, str]) -> dict[tuple[str, int], list[int]] | str:
    """``{(tensor, dim): indices}`` of one unit's dependency group, or why it cannot be
    cut out (it touches a module we do not know how to slice)."""
    out: dict[tuple[str, int], list[int]] = {}
    for item in group:
        module = item.dep.target.module
        if module not in paths:
            continue  # an operation of the traced graph (add, relu, flatten), no tensors
        path, fn = paths[module], item.dep.handler.__name__
        idxs = sorted(int(i) for i in item.idxs)
        kind = type(module).__name__
        if isinstance(module, WEIGHTED):
            groups = getattr(module, "groups", 1)
            if groups > 1 and module.weight.shape[1] > 1:
                return (f"it passes through the grouped convolution {path} "
                        f"(groups={groups}), whose groups would change")
            if fn == "prune_out_channels":
                out[(f"{path}.weight", 0)] = idxs
                if module.bias is not None:
                    out[(f"{path}.bias", 0)] = idxs
            elif fn == "prune_in_channels" and groups == 1:
                out[(f"{path}.weight", 1)] = idxs
            elif fn == "prune_in_channels":
                continue  # depthwise: input channel j is output channel j (its rows)
            else:
                return f"{path} ({kind}) is reached by {fn}"
        elif isinstance(module, NORMS):
            for t in ("weight", "bias", "running_mean", "running_var"):
                if getattr(module, t, None) is not None:
                    out[(f"{path}.{t}", 0)] = idxs
        elif any(True for _ in module.parameters(recurse=False)):
            return (f"it passes through {path} ({kind}), whose parameters or statistics "
                    "are not per channel alone")
    return out


def _take(t: torch.Tensor, s: Slice) -> torch.Tensor:
    """``(units, entries)`` view of what each unit owns of tensor ``t`` (a copy)."""
    moved = t.movedim(s.dim, 0)
    picked = moved[s.index.flatten()]
    return picked.reshape(s.index.shape[0], -1)


def unit_alive(mask: Mapping[str, torch.Tensor], group: ChannelGroup) -> torch.Tensor:
    """Bool per unit of ``group``: does any weight writing into it survive?"""
    alive = torch.zeros(group.units, dtype=torch.bool)
    for s in group.out_weights():
        alive |= _take(mask[s.tensor], s).any(dim=1)
    return alive


def unit_removed(mask: Mapping[str, torch.Tensor], group: ChannelGroup) -> torch.Tensor:
    """Bool per unit: is every entry of its own outputs masked (weights, biases and
    normalisation), so that it outputs nothing and can be cut out?"""
    gone = torch.ones(group.units, dtype=torch.bool)
    for s in group.rows():
        if s.tensor in mask:
            gone &= ~_take(mask[s.tensor], s).any(dim=1)
    return gone


def remove_units(mask: dict[str, torch.Tensor], group: ChannelGroup, units: torch.Tensor) -> None:
    """Mask, in place, everything of ``units`` (indices) of ``group``."""
    for s in group.slices:
        if s.tensor not in mask:
            continue
        idx = s.index[units].flatten()
        mask[s.tensor].index_fill_(s.dim, idx, False)


def structured_prune(
    weights: Mapping[str, torch.Tensor],
    mask: Mask,
    graph: ChannelGraph,
    flops_fraction: float,
    channel_floor: float = 0.25,
) -> tuple[Mask, dict]:
    """Remove units of the structured groups until the forward multiply-adds are at most
    ``flops_fraction`` of the dense model's (or every group is at its floor).

    Returns the new mask and a report (units kept per group, MACs before and after).
    """
    new = {n: mask[n].clone() for n in mask}
    structured = graph.structured
    importance = {}
    for g in structured:
        sq = sum(_take(weights[s.tensor].detach(), s).pow(2).sum(dim=1) for s in g.out_weights())
        norms = torch.as_tensor(sq).sqrt()
        importance[g.name] = norms / norms.mean().clamp_min(1e-12)
    dense = sum(mask[n].numel() * p for n, p in graph.positions.items())
    budget = flops_fraction * dense
    floor = {g.name: max(1, int(round(channel_floor * g.units))) for g in structured}
    current = graph.macs(new)
    while current > budget:
        best: tuple[float, int, int, int] | None = None
        for i, g in enumerate(structured):
            alive = unit_alive(new, g)
            if int(alive.sum()) <= floor[g.name]:
                continue
            saving = sum(_take(new[s.tensor], s).sum(dim=1) * s.positions
                         for s in g.slices if s.positions)
            saving = torch.as_tensor(saving).float()
            ratio = importance[g.name] / saving.clamp_min(1.0)
            ratio[~alive] = float("inf")
            j = int(torch.argmin(ratio))
            if best is None or float(ratio[j]) < best[0]:
                best = (float(ratio[j]), i, j, int(saving[j]))
        if best is None:
            break  # every structured group is at its floor
        _, i, j, saved = best
        remove_units(new, structured[i], torch.tensor([j]))
        current -= saved
    current = graph.macs(new)
    report = {
        "kept_units": {g.name: int(unit_alive(new, g).sum()) for g in structured},
        "units": {g.name: g.units for g in structured},
        "forward_macs_fraction": current / dense,
        "flops_fraction_target": flops_fraction,
        "channel_floor": channel_floor,
    }
    return Mask(new), report


def fraction_to_reach(mask: Mask, names: list[str], sparsity: float) -> float:
    """Fraction of the surviving entries of ``names`` to remove so that ``sparsity`` of
    all of them is gone (0 when the structured step already went that far)."""
    total = sum(mask[n].numel() for n in names)
    alive = sum(int(mask[n].sum()) for n in names)
    target = round((1.0 - sparsity) * total)
    return max(0.0, 1.0 - target / alive) if alive else 0.0


# ------------------------------------------------------------------------ structures
@dataclass(frozen=True)
class Structure:
    """One way to remove whole units before magnitude pruning (``prune.structure``)."""

    cut: Callable[[PruneSpec, nn.Module, tuple[int, int, int], Mask], tuple[Mask, dict]] \
        | None = None
    """The mask with units removed and the step's report; None: no unit is removed."""


STRUCTURES: Registry[Structure] = Registry("prune.structure")
"""Every structured step a spec may name."""


def _channels(prune: PruneSpec, model: nn.Module, input_shape: tuple[int, int, int],
              mask: Mask) -> tuple[Mask, dict]:
    """FLOP-aware channel pruning down to ``prune.flops_fraction`` of the forward MACs
    (0: half the kept weight fraction), each group at least ``prune.channel_floor``."""
    graph = _graph(model, input_shape)
    mask, structure = structured_prune(dict(model.named_parameters()), mask, graph,
                                       _budget(prune), prune.channel_floor)
    return mask, structure | {"left_out": dict(graph.left_out)}


def _graph(model: nn.Module, input_shape: tuple[int, int, int]) -> ChannelGraph:
    """The channel graph, with the one-line warning on what it leaves whole."""
    graph = channel_graph(model, input_shape)
    if graph.left_out:
        warnings.warn(graph.warning(), FedticketWarning, stacklevel=4)
    return graph


def _budget(prune: PruneSpec) -> float:
    """``prune.flops_fraction``, 0 meaning ``(1 - sparsity) / 2``."""
    return prune.flops_fraction or (1.0 - prune.sparsity) / 2


def uniform_prune(mask: Mask, graph: ChannelGraph, flops_fraction: float
                  ) -> tuple[Mask, dict]:
    """Every structured group narrowed by one width factor ``w``: it keeps its first
    ``max(1, round(w * units))`` units, with ``w`` the largest (to 1e-4, by bisection)
    whose forward multiply-adds are at most ``flops_fraction`` of the dense model's. A
    thin dense network: which units go does not matter at a random init."""
    dense = sum(mask[n].numel() * p for n, p in graph.positions.items())

    def narrowed(w: float) -> dict[str, torch.Tensor]:
        new = {n: mask[n].clone() for n in mask}
        for g in graph.structured:
            keep = max(1, int(round(w * g.units)))
            if keep < g.units:
                remove_units(new, g, torch.arange(keep, g.units))
        return new

    lo, hi = 0.0, 1.0
    if graph.macs(narrowed(hi)) > flops_fraction * dense:
        while hi - lo > 1e-4:
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if graph.macs(narrowed(mid)) <= flops_fraction * dense \
                else (lo, mid)
    else:
        lo = hi
    new = narrowed(lo)
    return Mask(new), {
        "width": lo,
        "kept_units": {g.name: int(unit_alive(new, g).sum()) for g in graph.structured},
        "units": {g.name: g.units for g in graph.structured},
        "forward_macs_fraction": graph.macs(new) / dense,
        "flops_fraction_target": flops_fraction,
    }


def _uniform(prune: PruneSpec, model: nn.Module, input_shape: tuple[int, int, int],
             mask: Mask) -> tuple[Mask, dict]:
    """One width factor for every channel group, to ``prune.flops_fraction`` of the
    forward MACs (0: ``(1 - sparsity) / 2``, the channel step's default budget)."""
    graph = _graph(model, input_shape)
    mask, structure = uniform_prune(mask, graph, _budget(prune))
    return mask, structure | {"left_out": dict(graph.left_out)}


STRUCTURES.add("none", Structure())
STRUCTURES.add("channels", Structure(_channels))
STRUCTURES.add("uniform", Structure(_uniform))
