"""Pruning is a pure function: (scores, current mask) -> new mask.

A strategy only says how to score the surviving weights; :func:`prune_lowest`
removes the lowest-scored fraction of them, over all prunable tensors at once
(``global``) or tensor by tensor (``layer``). Like
``torch.nn.utils.prune.global_unstructured`` the count removed is
``round(fraction * surviving)`` and ties go as ``torch.topk`` breaks them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from fedticket.pruning.mask import Mask

Scores = Callable[[Mapping[str, torch.Tensor], list[str], torch.Generator], dict[str, torch.Tensor]]


def magnitude_scores(
    weights: Mapping[str, torch.Tensor], names: list[str], generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """|w|: the lottery-ticket criterion (Frankle & Carbin 2019)."""
    return {n: weights[n].detach().abs() for n in names}


def random_scores(
    weights: Mapping[str, torch.Tensor], names: list[str], generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Uniform random scores: a random subnetwork of the same size."""
    return {n: torch.rand(weights[n].shape, generator=generator) for n in names}


STRATEGIES: dict[str, Scores] = {"magnitude": magnitude_scores, "random": random_scores}


def _lowest(scores: torch.Tensor, alive: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool tensor (flat) of the ``round(fraction * alive)`` lowest-scored alive entries."""
    alive_idx = alive.nonzero().flatten()
    k = round(fraction * alive_idx.numel())
    drop = torch.zeros_like(alive)
    if k > 0:
        low = torch.topk(scores[alive_idx], k, largest=False).indices
        drop[alive_idx[low]] = True
    return drop


def prune_lowest(
    scores: Mapping[str, torch.Tensor],
    mask: Mask,
    names: list[str],
    fraction: float,
    scope: str,
) -> Mask:
    """Remove ``fraction`` of the surviving entries of ``names`` with the lowest scores."""
    new = {n: mask[n].clone() for n in mask}
    if scope == "global":
        flat_s = torch.cat([scores[n].flatten() for n in names])
        flat_a = torch.cat([mask[n].flatten() for n in names])
        drop = _lowest(flat_s, flat_a, fraction)
        start = 0
        for n in names:
            size = mask[n].numel()
            new[n] = mask[n] & ~drop[start : start + size].view_as(mask[n])
            start += size
    elif scope == "layer":
        for n in names:
            drop = _lowest(scores[n].flatten(), mask[n].flatten(), fraction)
            new[n] = mask[n] & ~drop.view_as(mask[n])
    elif scope == "erk":
        alive = sum(int(mask[n].sum()) for n in names)
        budget = erk_counts({n: tuple(mask[n].shape) for n in names},
                            round((1.0 - fraction) * alive))
        for n in names:
            kept = int(mask[n].sum())
            drop = _lowest(scores[n].flatten(), mask[n].flatten(),
                           max(0, kept - budget[n]) / kept if kept else 0.0)
            new[n] = mask[n] & ~drop.view_as(mask[n])
    else:
        raise ValueError(f"unknown pruning scope {scope!r}")
    return Mask(_never_empty(new, mask, scores, names))


def floor_of(shape: tuple[int, ...] | torch.Size) -> int:
    """How many entries a tensor that pruning would empty keeps: one per output unit
    (its first dimension), so that every layer still passes a signal."""
    return int(shape[0])


def _protect(scores: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """``scores`` with the highest-scored alive entry raised to +inf (kept)."""
    out = scores.detach().clone().float()
    idx = alive.flatten().nonzero().flatten()
    if idx.numel():
        out.view(-1)[idx[torch.argmax(out.flatten()[idx])]] = float("inf")
    return out


def _never_empty(new: dict[str, torch.Tensor], old: Mapping[str, torch.Tensor],
                 scores: Mapping[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """``new`` where no tensor of ``names`` that had survivors is left with none: such a
    tensor keeps its :func:`floor_of` highest-scored survivors (all of them if fewer),
    and as many of the lowest-scored survivors of the other tensors go instead, so the
    count kept stays the same. A layer emptied by pruning would cut the network (on a
    network of thin layers, e.g. a MobileNet's projections, global magnitude pruning at
    80% does)."""
    emptied = [n for n in names if bool(old[n].any()) and not bool(new[n].any())]
    if not emptied:
        return new
    restored = 0
    for n in emptied:
        alive = old[n].flatten().nonzero().flatten()
        k = min(floor_of(old[n].shape), alive.numel())
        top = alive[torch.topk(scores[n].flatten()[alive], k).indices]
        flat = torch.zeros(old[n].numel(), dtype=torch.bool)
        flat[top] = True
        new[n] = flat.view_as(old[n])
        restored += k
    others = [n for n in names if n not in emptied]
    if others and restored:
        # each other tensor keeps its best survivor, so none is emptied here
        flat_s = torch.cat([_protect(scores[n], new[n]).flatten() for n in others])
        flat_a = torch.cat([new[n].flatten() for n in others])
        alive_idx = flat_a.nonzero().flatten()
        k = min(restored, alive_idx.numel())
        drop = torch.zeros_like(flat_a)
        drop[alive_idx[torch.topk(flat_s[alive_idx], k, largest=False).indices]] = True
        start = 0
        for n in others:
            size = new[n].numel()
            new[n] = new[n] & ~drop[start : start + size].view_as(new[n])
            start += size
    return new


def erk_counts(shapes: Mapping[str, tuple[int, ...]], keep: int) -> dict[str, int]:
    """Weights each tensor keeps when ``keep`` of them are kept in all, by
    Erdos-Renyi-Kernel (Evci et al. 2020, RigL; FedDST's default): a tensor's density is
    proportional to ``sum(shape) / prod(shape)``, capped at 1 (a capped tensor keeps
    everything and the others share the rest)."""
    dense: set[str] = set()
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    while True:
        free = keep - sum(sizes[n] for n in dense)
        raw = {n: sum(s) / sizes[n] for n, s in shapes.items() if n not in dense}
        scale = free / sum(raw[n] * sizes[n] for n in raw) if raw else 0.0
        over = [n for n in raw if raw[n] * scale >= 1.0]
        if not over:
            break
        dense.update(over)
    counts = {n: sizes[n] if n in dense else int(raw[n] * scale * sizes[n]) for n in shapes}
    short = keep - sum(counts.values())  # rounding: the largest free tensors take the rest
    for n in sorted((n for n in shapes if n not in dense), key=lambda n: -sizes[n]):
        if short <= 0:
            break
        extra = min(short, sizes[n] - counts[n])
        counts[n] += extra
        short -= extra
    return counts


def random_like(reference: Mask, names: list[str], generator: torch.Generator) -> Mask:
    """A random mask with exactly ``reference``'s number of kept entries in each tensor
    of ``names`` (the other tensors as in ``reference``)."""
    new = {n: reference[n].clone() for n in reference}
    for n in names:
        k = int(reference[n].sum())
        order = torch.randperm(reference[n].numel(), generator=generator)
        flat = torch.zeros(reference[n].numel(), dtype=torch.bool)
        flat[order[:k]] = True
        new[n] = flat.view_as(reference[n])
    return Mask(new)


def level_fraction(sparsity: float, levels: int) -> float:
    """Fraction of survivors removed per level so that ``levels`` levels reach ``sparsity``."""
    return 1.0 - (1.0 - sparsity) ** (1.0 / levels)
