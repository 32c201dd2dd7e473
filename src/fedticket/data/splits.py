"""The server's unlabeled pool, the clients' labeled parts and the test set.

:func:`load_splits` is deterministic in ``(spec, seed)``. Random streams:

- ``default_rng(seed)`` shuffles the training split (pool first, then clients);
- a fresh ``default_rng(seed)`` partitions the clients' labels, so a Dirichlet
  split equals flwr-datasets' ``DirichletPartitioner(seed=seed)`` on those labels;
- ``default_rng([seed, 1])`` picks the test subset and ``default_rng([seed, 2])``
  the pool when it comes from another dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from fedticket.data.partition import partition_clients
from fedticket.data.sources import Source, load_source, to_tensor
from fedticket.errors import DataError

if TYPE_CHECKING:
    from fedticket.spec import DataSpec

_TEST_STREAM = 1
_POOL_STREAM = 2


def _check_images(x: torch.Tensor, what: str) -> None:
    if x.ndim != 4 or x.dtype != torch.float32:
        raise DataError(
            f"{what} images must be a float32 (N, C, H, W) tensor, "
            f"got {x.dtype} {tuple(x.shape)}; convert them first"
        )


@dataclass(frozen=True, eq=False)
class Labeled:
    """Images ``x`` (float32, (N, C, H, W), values in [0, 1]) and labels ``y`` (int64, (N,))."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        _check_images(self.x, "labeled")
        if self.y.dtype != torch.int64 or tuple(self.y.shape) != (len(self.x),):
            raise DataError(
                f"labels must be an int64 tensor of shape ({len(self.x)},), got "
                f"{self.y.dtype} {tuple(self.y.shape)}; give one label per image"
            )

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True, eq=False)
class Unlabeled:
    """The server pool: images only (float32, (N, C, H, W), values in [0, 1]), no labels."""

    x: torch.Tensor

    def __post_init__(self) -> None:
        _check_images(self.x, "pool")

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True, eq=False)
class Splits:
    """Everything a run needs from the data.

    ``pool_labels`` holds the true labels of the pool's samples only when asked
    for (the supervised oracle); otherwise it is ``None``.
    """

    pool: Unlabeled
    clients: tuple[Labeled, ...]
    test: Labeled
    num_classes: int
    input_shape: tuple[int, int, int]
    pool_labels: torch.Tensor | None = None


def fit_images(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Resize (N, C, H, W) images to ``shape`` = (C', H', W').

    Height and width by antialiased bilinear interpolation; channels 1 -> 3 by
    repetition and 3 -> 1 by the mean.
    """
    c, h, w = shape
    if tuple(x.shape[1:]) == shape:
        return x
    if x.shape[1] != c:
        if (x.shape[1], c) == (1, 3):
            x = x.repeat(1, 3, 1, 1)
        elif (x.shape[1], c) == (3, 1):
            x = x.mean(dim=1, keepdim=True)
        else:
            raise DataError(
                f"cannot convert {x.shape[1]}-channel pool images to {c} channels; "
                "use 1- or 3-channel data"
            )
    if tuple(x.shape[2:]) != (h, w):
        if len(x) == 0:
            return x.new_zeros((0, c, h, w))
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0.0, 1.0).contiguous()


def _pool_count(spec: DataSpec, n: int, name: str) -> int:
    count = round(spec.pool_fraction * n) if spec.pool_fraction > 0 else spec.pool_size
    if count > n:
        raise DataError(
            f"the pool needs {count} samples but {name} has {n} training samples; "
            "lower data.pool_size or data.pool_fraction"
        )
    return count


def _client_indices(order: np.ndarray, start: int, train_size: int, name: str) -> np.ndarray:
    rest = len(order) - start
    if train_size > rest:
        raise DataError(
            f"data.train_size ({train_size}) plus a pool of {start} needs "
            f"{train_size + start} samples but {name} has {len(order)} training "
            "samples; lower data.train_size or data.pool_size"
        )
    if rest == 0:
        raise DataError(
            f"the pool of {start} takes all {len(order)} training samples of {name}, "
            "leaving none for the clients; lower data.pool_size or data.pool_fraction"
        )
    return order[start : start + (train_size or rest)]


def _test_indices(spec: DataSpec, n: int, seed: int, name: str) -> np.ndarray:
    if spec.test_size > n:
        raise DataError(
            f"data.test_size ({spec.test_size}) exceeds the {n} test samples of "
            f"{name}; lower data.test_size (0 = all)"
        )
    if n == 0:
        raise DataError(f"{name} has no test samples; add more samples or x_test/y_test arrays")
    if spec.test_size == 0:
        return np.arange(n)
    return np.random.default_rng([seed, _TEST_STREAM]).permutation(n)[: spec.test_size]


def _external_pool(spec: DataSpec) -> bool:
    """Whether the pool comes from a dataset other than the clients'."""
    if not spec.pool_dataset:
        return False
    return spec.pool_dataset != spec.dataset or spec.pool_path not in ("", spec.path)


def _same_images(a: Source, b: Source) -> bool:
    """Whether two sources hold the same training images (e.g. one file under two paths)."""
    return a.x_train.shape == b.x_train.shape and bool(np.array_equal(a.x_train, b.x_train))


def _labeled(src: Source, indices: np.ndarray, test: bool = False) -> Labeled:
    x, y = (src.x_test, src.y_test) if test else (src.x_train, src.y_train)
    return Labeled(to_tensor(x[indices]), torch.from_numpy(y[indices]))


def class_count(src: Source, declared: int = 0) -> int:
    """The number of classes: ``declared`` when set (it must exceed every label), else
    inferred as the largest label + 1, which must leave no class without a training
    image and give at least two (a stray label far above the rest would make a head of
    hundreds of classes that never train). Raises DataError naming the labels and their
    counts."""
    labels = np.concatenate([src.y_train, src.y_test]).astype(np.int64)
    top = int(labels.max(initial=-1)) + 1
    if declared:
        if top > declared:
            raise DataError(f"{src.name}: label {top - 1} is not below data.num_classes = "
                            f"{declared}; raise data.num_classes or fix the labels")
        return declared
    counts = np.bincount(src.y_train.astype(np.int64), minlength=max(top, 1))
    shown = ", ".join(f"{i}: {int(n)}" for i, n in enumerate(counts) if n) or "none"
    empty = [i for i, n in enumerate(counts) if n == 0]
    if top < 2:
        raise DataError(f"{src.name} has one class only (training labels and counts: "
                        f"{shown}); a classifier needs two or more classes")
    if empty:
        few = ", ".join(map(str, empty[:5])) + (", ..." if len(empty) > 5 else "")
        raise DataError(f"{src.name}: {top} classes are inferred (the largest label + 1) but "
                        f"{len(empty)} have no training image ({few}); training labels and "
                        f"counts: {shown}; fix the labels or set data.num_classes")
    return top


def load_splits(spec: DataSpec, seed: int, *, oracle_labels: bool = False) -> Splits:
    """Load ``spec.dataset`` and split it into pool, client parts and test set.

    Parameters
    ----------
    spec
        Which data and how to split it.
    seed
        The run seed (>= 0); the same ``(spec, seed)`` gives the same splits.
    oracle_labels
        Also return the true labels of the pool (for the supervised oracle).

    Returns
    -------
    Splits
        ``len(clients) == spec.num_clients``; ``input_shape`` is the clients' (C, H, W).

    Raises
    ------
    DataError
        If the data is missing or malformed, or too small for the requested sizes.
    """
    if seed < 0:
        raise DataError(f"the seed must be >= 0, got {seed}; use a non-negative seed")
    src = load_source(spec.dataset, spec.path)
    num_classes = class_count(src, spec.num_classes)
    order = np.random.default_rng(seed).permutation(len(src.y_train))
    pool_src = load_source(spec.pool_dataset, spec.pool_path) if _external_pool(spec) else src
    if pool_src is not src and _same_images(pool_src, src):
        pool_src = src  # the same data under another name: carve a disjoint pool from it
    if pool_src is not src:
        n = len(pool_src.y_train)
        pool_rng = np.random.default_rng([seed, _POOL_STREAM])
        pool_idx = pool_rng.permutation(n)[: _pool_count(spec, n, pool_src.name)]
        client_idx = _client_indices(order, 0, spec.train_size, src.name)
    else:
        pool_idx = order[: _pool_count(spec, len(order), src.name)]
        client_idx = _client_indices(order, len(pool_idx), spec.train_size, src.name)

    c, h, w = src.x_train.shape[1:]
    shape = (int(c), int(h), int(w))
    pool_x = fit_images(to_tensor(pool_src.x_train[pool_idx]), shape)
    parts = partition_clients(src.y_train[client_idx], spec, np.random.default_rng(seed))
    test_idx = _test_indices(spec, len(src.y_test), seed, src.name)
    return Splits(
        pool=Unlabeled(pool_x),
        clients=tuple(_labeled(src, client_idx[p]) for p in parts),
        test=_labeled(src, test_idx, test=True),
        num_classes=num_classes,
        input_shape=shape,
        pool_labels=torch.from_numpy(pool_src.y_train[pool_idx]) if oracle_labels else None,
    )
