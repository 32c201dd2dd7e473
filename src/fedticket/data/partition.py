"""Partition a labels array among clients: pure functions returning index arrays.

Each function takes the labels (or their count) and a NumPy ``Generator`` and
returns one array of indices per client; together they never repeat an index.
:func:`partition_clients` picks one by ``spec.partition`` and rejects empty clients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from fedticket.errors import DataError

if TYPE_CHECKING:
    from fedticket.spec import DataSpec

# DirichletPartitioner of flwr-datasets re-samples at most this many times.
MAX_DIRICHLET_RETRIES = 10


def _check_enough(n: int, num_clients: int) -> None:
    if num_clients > n:
        raise DataError(
            f"{num_clients} clients but only {n} labeled samples; "
            "lower data.num_clients or raise data.train_size"
        )


def iid(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle ``range(n)`` and cut it into ``num_clients`` parts.

    Part sizes differ by at most one; the first ``n % num_clients`` parts get the
    extra sample (as ``datasets.Dataset.shard(contiguous=True)`` does).
    """
    _check_enough(n, num_clients)
    return np.array_split(rng.permutation(n), num_clients)


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    min_size: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Split every class among clients in Dirichlet(``alpha``) proportions.

    The same algorithm as flwr-datasets' ``DirichletPartitioner`` with
    ``self_balancing=False, shuffle=True``: for each class (in sorted order) draw
    proportions, cut the class's indices at ``floor(cumsum(p) * n_class)``; redo
    the whole draw while some client has fewer than ``min_size`` samples (at most
    :data:`MAX_DIRICHLET_RETRIES` times); finally shuffle each client's indices.
    Given a generator seeded like the partitioner's, the result is identical.

    Raises
    ------
    DataError
        If ``min_size`` is still not met after the last retry.
    """
    labels = np.asarray(labels)
    _check_enough(len(labels), num_clients)
    alphas = np.full(num_clients, float(alpha))
    by_class = [np.flatnonzero(labels == k) for k in np.unique(labels)]
    for _ in range(MAX_DIRICHLET_RETRIES + 1):
        chunks: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            cuts = (np.cumsum(rng.dirichlet(alphas)) * len(idx)).astype(int)[:-1]
            for client, piece in zip(chunks, np.split(idx, cuts), strict=True):
                client.append(piece)
        parts = [np.concatenate(c) for c in chunks]
        if min(len(p) for p in parts) >= min_size:
            break
    else:
        raise DataError(
            f"Dirichlet partition gave some client fewer than {min_size} samples in "
            f"{MAX_DIRICHLET_RETRIES + 1} draws; raise data.dirichlet_alpha (now {alpha}) "
            "or lower data.min_client_size"
        )
    for p in parts:
        rng.shuffle(p)
    return parts


def shards(
    labels: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """The FedAvg paper's pathological non-IID split.

    Sort the samples by label, cut them into ``num_clients * shards_per_client``
    equal shards and give every client ``shards_per_client`` random shards. When
    the count does not divide evenly, a random remainder of fewer than one sample
    per shard is left out. Each client's indices come back shuffled.
    """
    labels = np.asarray(labels)
    num_shards = num_clients * shards_per_client
    size = len(labels) // num_shards
    if size == 0:
        raise DataError(
            f"{len(labels)} labeled samples cannot fill {num_shards} shards "
            f"({num_clients} clients x {shards_per_client}); lower data.num_clients or "
            "data.shards_per_client, or raise data.train_size"
        )
    keep = rng.permutation(len(labels))[: num_shards * size]
    pieces = keep[np.argsort(labels[keep], kind="stable")].reshape(num_shards, size)
    owners = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [rng.permutation(pieces[row].ravel()) for row in owners]


Partitioner = Callable[[np.ndarray, "DataSpec", np.random.Generator], list[np.ndarray]]

PARTITIONERS: dict[str, Partitioner] = {
    "iid": lambda y, s, rng: iid(len(y), s.num_clients, rng),
    "dirichlet": lambda y, s, rng: dirichlet(
        y, s.num_clients, s.dirichlet_alpha, s.min_client_size, rng
    ),
    "shards": lambda y, s, rng: shards(y, s.num_clients, s.shards_per_client, rng),
}


def partition_clients(
    labels: np.ndarray, spec: DataSpec, rng: np.random.Generator
) -> list[np.ndarray]:
    """Partition ``labels`` as ``spec.partition`` says; every client gets >= 1 sample."""
    parts = PARTITIONERS[spec.partition](np.asarray(labels), spec, rng)
    empty = sum(len(p) == 0 for p in parts)
    if empty:
        raise DataError(
            f"{empty} of {spec.num_clients} clients get no samples under the "
            f"{spec.partition} partition; lower data.num_clients or raise data.train_size"
        )
    return parts
