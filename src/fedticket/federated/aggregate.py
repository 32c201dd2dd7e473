"""Pure aggregation and client sampling, shared by every driver: how the round's checked
updates are combined (:data:`AGGREGATORS`, ``federate.aggregation``) and which of them
may take part (:func:`norm_bounds`, ``federate.max_update_norm`` and
``federate.norm_factor``)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import torch

from fedticket.registry import Registry


def fedavg(updates: Sequence[tuple[Mapping[str, torch.Tensor], int]]) -> dict[str, torch.Tensor]:
    """Sample-weighted mean ``sum_k (n_k / n) w_k`` (McMahan et al. 2017, Algorithm 1).

    Entries that are zero in every update (pruned weights) stay exactly zero.
    """
    if not updates:
        raise ValueError("fedavg needs at least one update")
    total = sum(n for _, n in updates)
    if total <= 0:
        raise ValueError("fedavg needs a positive number of examples")
    names = list(updates[0][0])
    out: dict[str, torch.Tensor] = {}
    for name in names:
        acc = torch.zeros_like(updates[0][0][name], dtype=torch.float32)
        for state, n in updates:
            acc.add_(state[name], alpha=n / total)
        out[name] = acc
    return out


def coordinate_median(updates: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Coordinate-wise median of the updates, unweighted (Yin et al. 2018); with an even
    count, the mean of the two middle values. Entries zero in every update stay zero."""
    if not updates:
        raise ValueError("the median needs at least one update")
    return {name: _median(updates, name) for name in updates[0]}


def _median(updates: Sequence[Mapping[str, torch.Tensor]], name: str) -> torch.Tensor:
    stacked = torch.stack([u[name] for u in updates]).float()
    lo = stacked.kthvalue((len(updates) + 1) // 2, dim=0).values
    hi = stacked.kthvalue(len(updates) // 2 + 1, dim=0).values
    return (lo + hi) / 2


def trimmed_mean(
    updates: Sequence[Mapping[str, torch.Tensor]], trim: float
) -> dict[str, torch.Tensor]:
    """Coordinate-wise mean after dropping the ``floor(trim * k)`` largest and smallest of
    the ``k`` values at each coordinate, unweighted (Yin et al. 2018)."""
    if not updates:
        raise ValueError("the trimmed mean needs at least one update")
    k = len(updates)
    cut = int(trim * k)
    if 2 * cut >= k:
        cut = (k - 1) // 2
    out = {}
    for name in updates[0]:
        stacked = torch.stack([u[name] for u in updates]).float()
        kept = stacked.sort(dim=0).values[cut: k - cut]
        out[name] = kept.mean(0)
    return out


Updates = Sequence[tuple[Mapping[str, torch.Tensor], int]]
"""The round's checked updates with their clients' example counts."""


class Aggregator(Protocol):
    def __call__(self, updates: Updates, trim_fraction: float) -> dict[str, torch.Tensor]: ...


AGGREGATORS: Registry[Aggregator] = Registry("federate.aggregation")
"""How the surviving updates become the global model (``federate.aggregation``)."""
AGGREGATORS.add("fedavg", lambda updates, trim: fedavg(updates))
AGGREGATORS.add("median", lambda updates, trim: coordinate_median([s for s, _ in updates]))
AGGREGATORS.add("trimmed-mean",
                lambda updates, trim: trimmed_mean([s for s, _ in updates], trim))


def update_norm(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]
                ) -> float:
    """L2 norm of ``state - reference`` over all tensors, summed in float64 so that huge
    but finite values give a huge norm, not an overflow."""
    return math.sqrt(sum(float(((state[k].double() - reference[k].double()) ** 2).sum())
                         for k in reference))


def norm_bounds(states: Sequence[Mapping[str, torch.Tensor]],
                reference: Mapping[str, torch.Tensor], bound: float, factor: float
                ) -> list[str | None]:
    """For each update, None if its distance from ``reference`` is within ``bound``
    (0: none) and ``factor`` times the round's median distance (0: none), else why it
    is left out."""
    if not (bound or factor) or not states:
        return [None] * len(states)
    norms = [update_norm(state, reference) for state in states]
    limit, why = math.inf, ""
    if bound:
        limit, why = bound, "federate.max_update_norm"
    if factor and factor * statistics.median(norms) < limit:
        limit = factor * statistics.median(norms)
        why = f"{factor:g} x the round's median update norm"
    return [None if norm <= limit else f"update norm {norm:.4g} is above {limit:.4g} ({why})"
            for norm in norms]


def sample_clients(num_clients: int, fraction: float, rng: np.random.Generator) -> list[int]:
    """``max(1, round(fraction * num_clients))`` distinct client ids, sorted."""
    m = max(1, round(fraction * num_clients))
    return sorted(int(i) for i in rng.choice(num_clients, size=m, replace=False))


def client_seed(seed: int, round_: int, client: int) -> int:
    """Seed of one client's batch order in one round: independent of who else was sampled."""
    return int(np.random.SeedSequence([seed, round_, client]).generate_state(1)[0])
