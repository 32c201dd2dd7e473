"""Pure aggregation and client sampling, shared by every driver."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch


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


def sample_clients(num_clients: int, fraction: float, rng: np.random.Generator) -> list[int]:
    """``max(1, round(fraction * num_clients))`` distinct client ids, sorted."""
    m = max(1, round(fraction * num_clients))
    return sorted(int(i) for i in rng.choice(num_clients, size=m, replace=False))


def client_seed(seed: int, round_: int, client: int) -> int:
    """Seed of one client's batch order in one round: independent of who else was sampled."""
    return int(np.random.SeedSequence([seed, round_, client]).generate_state(1)[0])
