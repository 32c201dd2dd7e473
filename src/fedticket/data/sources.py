"""Datasets by name: each loader returns a :class:`Source` of NumPy arrays.

Loaded sources are cached in-process (several runs in one process read the same
files), so their arrays are read-only; take subsets with fancy indexing, which
copies, and convert them with :func:`to_tensor`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedticket.data import idx
from fedticket.errors import DataError

# The held-out test share of datasets without an official test split, and the
# fixed seed of the permutation that picks it (independent of the run seed).
DIGITS_TEST_FRACTION = 0.2
NPZ_TEST_FRACTION = 1 / 6
HOLDOUT_SEED = 0


@dataclass(frozen=True, eq=False)
class Source:
    """A dataset's train and test splits.

    ``x_*`` are (N, C, H, W) arrays, either ``uint8`` (scaled by 1/255 on
    conversion) or ``float32`` already in [0, 1]; ``y_*`` are ``int64``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        for a in (self.x_train, self.y_train, self.x_test, self.y_test):
            a.flags.writeable = False


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """A float32 tensor in [0, 1]: ``uint8`` is divided by 255, floats are kept."""
    t = torch.from_numpy(np.array(x, dtype=np.float32))  # a copy, never the cached array
    return t / 255.0 if x.dtype == np.uint8 else t


def _holdout(name: str, x: np.ndarray, y: np.ndarray, fraction: float, num_classes: int) -> Source:
    order = np.random.default_rng(HOLDOUT_SEED).permutation(len(y))
    n_test = round(fraction * len(y))
    test, train = order[:n_test], order[n_test:]
    return Source(name, x[train], y[train], x[test], y[test], num_classes)


@functools.lru_cache(maxsize=4)
def _fashion_mnist(folder: str) -> Source:
    x_train, y_train, x_test, y_test = idx.read_fashion_mnist(Path(folder))
    return Source("fashion-mnist", x_train, y_train, x_test, y_test, 10)


def load_fashion_mnist(path: str) -> Source:
    """Fashion-MNIST: 60000 train / 10000 test uint8 images of shape (1, 28, 28)."""
    return _fashion_mnist(str(idx.fashion_mnist_dir(path).resolve()))


@functools.lru_cache(maxsize=1)
def _digits() -> Source:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[:, None] / 16.0).astype(np.float32)
    return _holdout("digits", x, d.target.astype(np.int64), DIGITS_TEST_FRACTION, 10)


def load_digits(path: str = "") -> Source:
    """scikit-learn's 1797 8x8 digits in [0, 1]; a fixed 20% (359) is the test split."""
    return _digits()


def _images(x: np.ndarray, where: str) -> np.ndarray:
    """(N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3} -> (N, C, H, W), checked."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[3] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(
            f"{where} has shape {x.shape}; save images as (N, H, W), "
            "(N, H, W, C) or (N, C, H, W) with 1 or 3 channels"
        )
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{where} has dtype {x.dtype}; save images as uint8 or floats in [0, 1]")
    if x.size and not np.isfinite(x).all():
        raise DataError(f"{where} holds pixel values that are not finite (nan or inf); "
                        "fix the file")
    if x.size and not (x.min() >= 0.0 and x.max() <= 1.0):
        raise DataError(
            f"{where} has float values outside [0, 1]; scale them to [0, 1] or save them as uint8"
        )
    return np.ascontiguousarray(x, dtype=np.float32)


def _labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"{where} must be {n} integer labels, got dtype {y.dtype} shape "
            f"{y.shape}; save one int label per image"
        )
    if len(y) and y.min() < 0:
        raise DataError(f"{where} has negative labels; number the classes 0, 1, 2, ...")
    return y.astype(np.int64)


@functools.lru_cache(maxsize=4)
def _npz(path: str, mtime_ns: int, size: int) -> Source:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path} as .npz ({e}); save it with numpy.savez") from None
    if "x" not in arrays or "y" not in arrays:
        raise DataError(
            f"{path} lacks arrays 'x' and 'y' (has {sorted(arrays)}); "
            "save it with numpy.savez(path, x=images, y=labels)"
        )
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path} has only one of 'x_test' and 'y_test'; save both or neither")
    x = _images(arrays["x"], f"{path}:x")
    y = _labels(arrays["y"], len(x), f"{path}:y")
    if "x_test" not in arrays:
        return _holdout("npz", x, y, NPZ_TEST_FRACTION, int(y.max(initial=-1)) + 1)
    x_test = _images(arrays["x_test"], f"{path}:x_test")
    y_test = _labels(arrays["y_test"], len(x_test), f"{path}:y_test")
    if x_test.shape[1:] != x.shape[1:]:
        raise DataError(
            f"{path}: x_test images are {x_test.shape[1:]} but x images are "
            f"{x.shape[1:]}; save both splits with the same image shape"
        )
    num_classes = int(max(y.max(initial=-1), y_test.max(initial=-1))) + 1
    return Source("npz", x, y, x_test, y_test, num_classes)


def load_npz(path: str) -> Source:
    """A user's ``.npz`` with ``x``, ``y`` and optionally ``x_test``, ``y_test``.

    Without a test split a fixed 1/6 of the samples is held out as test.
    """
    if not path:
        raise DataError("data.dataset = 'npz' needs a file; set data.path to your .npz file")
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise DataError(f"npz file not found: {p}; set data.path to an existing .npz file")
    st = p.stat()
    return _npz(str(p), st.st_mtime_ns, st.st_size)


LOADERS: dict[str, Callable[[str], Source]] = {
    "fashion-mnist": load_fashion_mnist,
    "digits": load_digits,
    "npz": load_npz,
}


def load_source(name: str, path: str) -> Source:
    """Load dataset ``name`` (a key of :data:`LOADERS`) from ``path``."""
    return LOADERS[name](path)
