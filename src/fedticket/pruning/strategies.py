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
    return Mask(new)


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
