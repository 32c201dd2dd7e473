"""Fashion-MNIST IDX files: find them, download them, parse and validate them.

The folder is ``data.path`` when set; else Debian's ``dataset-fashion-mnist``
folder; else a cache folder that is filled from the Zalando mirror when a
network exists. Downloads are checked against the SHA-256 of the decompressed
content and written atomically.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from fedticket.errors import DataError
from fedticket.io import atomic_write_bytes

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path.home() / ".cache" / "fedticket" / "fashion-mnist"
BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"

# SHA-256 of the decompressed files.
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FILES = tuple(SHA256)
_HINT = "set data.path to a folder with the IDX files or install Debian's dataset-fashion-mnist"
_UBYTE = 0x08


def find_file(folder: Path, name: str) -> Path | None:
    """``folder/name.gz`` or else ``folder/name``, whichever exists first."""
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def _complete(folder: Path) -> bool:
    return all(find_file(folder, name) is not None for name in FILES)


def fetch(url: str) -> bytes:
    """The bytes at ``url`` (a seam for tests)."""
    with urllib.request.urlopen(url, timeout=60) as response:
        return bytes(response.read())


def download(name: str, folder: Path) -> Path:
    """Download ``name``.gz into ``folder``, check its SHA-256, write it atomically."""
    url = f"{BASE_URL}/{name}.gz"
    try:
        blob = fetch(url)
    except (OSError, http.client.HTTPException) as e:
        raise DataError(
            f"Fashion-MNIST not found locally and downloading {url} failed ({e}); {_HINT}"
        ) from None
    try:
        digest = hashlib.sha256(gzip.decompress(blob)).hexdigest()
    except (OSError, EOFError, zlib.error):
        digest = "not a gzip file"
    if digest != SHA256[name]:
        raise DataError(
            f"checksum mismatch for {url}: got {digest}, expected {SHA256[name]}; "
            f"retry the download or {_HINT}"
        )
    dest = folder / f"{name}.gz"
    atomic_write_bytes(dest, blob)
    return dest


def fashion_mnist_dir(path: str) -> Path:
    """The folder that holds (or now holds, after a download) the four IDX files."""
    if path:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise DataError(f"Fashion-MNIST folder not found: {folder}; {_HINT}")
        return folder
    if _complete(DEBIAN_DIR):
        return DEBIAN_DIR
    for name in FILES:
        if find_file(CACHE_DIR, name) is None:
            download(name, CACHE_DIR)
    return CACHE_DIR


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes with ``ndim`` dimensions (gzipped or not).

    Returns a read-only ``uint8`` array of the stored shape.

    Raises
    ------
    DataError
        If the file cannot be decompressed, has the wrong magic number, or its
        length does not match the dimensions in its header.
    """
    fix = f"replace the file or {_HINT}"
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read IDX file {path} ({e}); {fix}") from None
    head = 4 + 4 * ndim
    if len(raw) < head or raw[:4] != bytes((0, 0, _UBYTE, ndim)):
        raise DataError(
            f"bad IDX magic number in {path} (expected unsigned bytes with "
            f"{ndim} dims, got {raw[:4].hex() or 'an empty file'}); {fix}"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(dims))
    if len(raw) - head != size:
        raise DataError(
            f"IDX file {path} holds {len(raw) - head} data bytes but its header "
            f"{dims} needs {size} (truncated or corrupt); {fix}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


def read_fashion_mnist(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: images uint8 (N, 1, 28, 28), labels int64."""
    arrays = []
    for split in ("train", "t10k"):
        images, labels = (
            find_file(folder, f"{split}-{kind}")
            for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
        )
        if images is None or labels is None:
            missing = (
                f"{split}-images-idx3-ubyte" if images is None else f"{split}-labels-idx1-ubyte"
            )
            raise DataError(f"Fashion-MNIST file not found: {folder / missing}(.gz); {_HINT}")
        x, y = read_idx(images, 3), read_idx(labels, 1)
        if len(x) != len(y):
            raise DataError(
                f"{images} has {len(x)} images but {labels} has {len(y)} labels; {_HINT}"
            )
        arrays += [x[:, None], y.astype(np.int64)]
    x_train, y_train, x_test, y_test = arrays
    return x_train, y_train, x_test, y_test
