"""Datasets by name: each loader returns a :class:`Source` of NumPy arrays.

Loaded sources are cached in-process (several runs in one process read the same
files), so their arrays are read-only; take subsets with fancy indexing, which
copies, and convert them with :func:`to_tensor`.
"""

from __future__ import annotations

import functools
import os
import struct
import zipfile
import zlib
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


def digits_file() -> Path:
    """scikit-learn's ``datasets/data/digits.csv.gz``, found without importing
    scikit-learn (which takes about 3 s, in every process that loads the digits: each
    Flower ClientApp is one)."""
    import importlib.util

    found = importlib.util.find_spec("sklearn")
    if found is None or not found.submodule_search_locations:
        raise DataError("the digits come with scikit-learn: pip install scikit-learn")
    return Path(list(found.submodule_search_locations)[0]) / "datasets" / "data" / \
        "digits.csv.gz"


@functools.lru_cache(maxsize=1)
def _digits() -> Source:
    """What ``sklearn.datasets.load_digits()`` reads, read the way it reads it (a test
    checks the arrays are equal)."""
    import gzip

    with gzip.open(digits_file(), mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    images = data[:, :-1].reshape(-1, 8, 8)
    x = (images[:, None] / 16.0).astype(np.float32)
    return _holdout("digits", x, data[:, -1].astype(np.int64), DIGITS_TEST_FRACTION, 10)


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
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
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


# An image folder's listing: per split ("" when the folder has no train/ and test/),
# per class (sorted names), the images as (path, mtime_ns, size) -- the cache key.
_Files = tuple[tuple[str, int, int], ...]
_Classes = tuple[tuple[str, _Files], ...]
_Layout = tuple[tuple[str, _Classes], ...]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_DECODE_ERRORS = (OSError, ValueError, EOFError, SyntaxError, struct.error, zlib.error)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _class_files(folder: Path) -> _Files:
    """The images under one class folder (recursively, sorted; hidden entries skipped)."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if _is_image(name):
                found.append(os.path.join(root, name))
    files = []
    for f in sorted(found):
        st = os.stat(f)
        files.append((f, st.st_mtime_ns, st.st_size))
    return tuple(files)


def _scan_classes(folder: Path) -> _Classes:
    entries = sorted(e for e in os.listdir(folder) if not e.startswith("."))
    classes = [e for e in entries if (folder / e).is_dir()]
    loose = [e for e in entries if _is_image(e) and (folder / e).is_file()]
    if not classes:
        hint = f" (it holds images such as {loose[0]} directly)" if loose else ""
        raise DataError(
            f"image folder {folder} has no class sub-folders{hint}; put each class's "
            "images in a sub-folder named after the class"
        )
    if loose:
        raise DataError(
            f"image folder {folder} holds images such as {loose[0]} beside its class "
            "sub-folders; move them into the sub-folder of their class"
        )
    listed = tuple((c, _class_files(folder / c)) for c in classes)
    if not any(files for _, files in listed):
        raise DataError(
            f"image folder {folder} has no .png, .jpg or .jpeg images in its class "
            f"sub-folders ({', '.join(classes)}); add images to them"
        )
    for c, files in listed:
        if not files:
            raise DataError(
                f"class folder {folder / c} has no .png, .jpg or .jpeg images; add "
                "images to it or remove it"
            )
    return listed


def _scan_folder(root: Path) -> _Layout:
    has_train, has_test = (root / "train").is_dir(), (root / "test").is_dir()
    if has_train != has_test:
        there, missing = ("train", "test") if has_train else ("test", "train")
        raise DataError(
            f"image folder {root} has {there}/ but no {missing}/; add {missing}/ with the "
            f"same class sub-folders, or rename {there}/ if it is a class"
        )
    if not has_train:
        return (("", _scan_classes(root)),)
    train, test = _scan_classes(root / "train"), _scan_classes(root / "test")
    names_train, names_test = [c for c, _ in train], [c for c, _ in test]
    if names_train != names_test:
        only_train = sorted(set(names_train) - set(names_test))
        only_test = sorted(set(names_test) - set(names_train))
        raise DataError(
            f"image folder {root}: train/ and test/ have different classes (only in "
            f"train/: {', '.join(only_train) or '-'}; only in test/: "
            f"{', '.join(only_test) or '-'}); give both the same class sub-folders"
        )
    return (("train", train), ("test", test))


def _decode(path: str) -> np.ndarray:
    """One image as uint8 (C, H, W): C = 1 for grayscale modes, 3 (RGB) for colour."""
    from PIL import Image

    try:
        with Image.open(path, formats=("PNG", "JPEG")) as im:
            im.load()
            mode = im.mode
            if mode in ("1", "L", "LA", "La"):
                a = np.asarray(im.convert("L"))
            elif mode.startswith("I"):  # 16- or 32-bit grayscale: scale 0..65535 to 0..255
                v = np.asarray(im).astype(np.float64)
                a = np.rint(np.clip(v, 0, 65535) / 257.0).astype(np.uint8)
            elif mode in ("P", "PA"):
                rgb = np.asarray(im.convert("RGB"))
                gray = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
                a = rgb[..., 0] if gray else rgb
            else:
                a = np.asarray(im.convert("RGB"))
    except Image.UnidentifiedImageError:
        raise DataError(
            f"cannot read image {path}: not a PNG or JPEG file, or damaged; re-save it as "
            "PNG or JPEG or remove it"
        ) from None
    except Image.DecompressionBombError as e:
        raise DataError(f"image {path} is too large to decode safely ({e}); "
                        "resize it") from None
    except _DECODE_ERRORS as e:
        raise DataError(
            f"cannot read image {path} ({e}); re-save it as PNG or JPEG or remove it"
        ) from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _stack(classes: _Classes) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    images, labels, paths = [], [], []
    for label, (_, files) in enumerate(classes):
        for path, _, _ in files:
            images.append(_decode(path))
            labels.append(label)
            paths.append(path)
    return images, np.array(labels, dtype=np.int64), paths


def _uniform(images: list[np.ndarray], paths: list[str]) -> np.ndarray:
    """Stack (C, H, W) images of one size into (N, C, H, W); 1-channel ones become RGB
    when any image is in colour."""
    first = images[0].shape[1:]
    for a, p in zip(images, paths, strict=True):
        if a.shape[1:] != first:
            raise DataError(
                f"images differ in size: {paths[0]} is {first[1]}x{first[0]} but {p} is "
                f"{a.shape[2]}x{a.shape[1]} (width x height); resize all images to one size"
            )
    c = max(a.shape[0] for a in images)
    x = np.empty((len(images), c, *first), dtype=np.uint8)
    for i, a in enumerate(images):
        x[i] = a  # broadcasts a 1-channel image to all 3 channels, as Pillow's L -> RGB
    return x


@functools.lru_cache(maxsize=4)
def _folder(root: str, layout: _Layout) -> Source:
    num_classes = len(layout[0][1])
    decoded = [_stack(classes) for _, classes in layout]
    images = [a for im, _, _ in decoded for a in im]
    paths = [p for _, _, ps in decoded for p in ps]
    x = _uniform(images, paths)
    del images
    if len(layout) == 1:
        return _holdout("folder", x, decoded[0][1], NPZ_TEST_FRACTION, num_classes)
    n_train = len(decoded[0][1])
    return Source("folder", x[:n_train], decoded[0][1], x[n_train:], decoded[1][1], num_classes)


def load_folder(path: str) -> Source:
    """A folder of PNG/JPEG images in torchvision's ImageFolder layout.

    One sub-folder per class (label = index of its name in sorted order; images
    found recursively; names starting with "." skipped), or ``train/`` and
    ``test/`` sub-folders each in that layout with the same classes (other
    sub-folders, e.g. ``val/``, are then ignored). Without ``train/``/``test/`` a
    fixed 1/6 of the images is held out as test, as for ``.npz``. All images must
    have one size; grayscale ones load as 1 channel, colour ones as RGB (and all
    as RGB when both kinds occur). Alpha is dropped.
    """
    if not path:
        raise DataError(
            "data.dataset = 'folder' needs a folder; set data.path to a folder with one "
            "sub-folder of images per class"
        )
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise DataError(f"image folder not found: {p}; set data.path to an existing folder")
    if not p.is_dir():
        raise DataError(
            f"data.path {p} is a file, not a folder; for data.dataset = 'folder' set it to "
            "a folder with one sub-folder of images per class"
        )
    try:
        layout = _scan_folder(p)
    except OSError as e:
        raise DataError(f"cannot list image folder {p} ({e}); check its permissions") from None
    return _folder(str(p), layout)


LOADERS: dict[str, Callable[[str], Source]] = {
    "fashion-mnist": load_fashion_mnist,
    "digits": load_digits,
    "npz": load_npz,
    "folder": load_folder,
}


def load_source(name: str, path: str) -> Source:
    """Load dataset ``name`` (a key of :data:`LOADERS`) from ``path``."""
    return LOADERS[name](path)
