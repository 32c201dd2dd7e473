"""Pruning is a pure function: (scores, current mask) -> new mask.

A strategy only says how to score the surviving weights; :func:`prune_lowest`
removes the lowest-scored fraction of them, over all prunable tensors at once
(``global``) or tensor by tensor (``layer``). Like
``torch.nn.utils.prune.global_unstructured`` the count removed is
``round(fraction * surviving)`` and ties go as ``torch.topk`` breaks them.
"""

from __future__ import annotations

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
    else:
        raise ValueError(f"unknown pruning scope {scope!r}")
    return Mask(new)


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
