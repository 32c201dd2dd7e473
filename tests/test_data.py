"""Tests of fedticket.data: loaders, the pool/client/test split and the partitions."""

from __future__ import annotations

import gzip
import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fedticket.data import (
    Labeled,
    Unlabeled,
    dirichlet,
    fit_images,
    idx,
    iid,
    load_splits,
    partition,
    shards,
    sources,
)
from fedticket.errors import DataError
from fedticket.spec import DataSpec

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

needs_fashion = pytest.mark.skipif(
    not all((idx.DEBIAN_DIR / f"{name}.gz").exists() for name in idx.FILES),
    reason="Debian package dataset-fashion-mnist not installed",
)


# ------------------------------------------------------------------ helpers
def write_idx(path: Path, array: np.ndarray) -> Path:
    """An IDX file of unsigned bytes, gzipped when ``path`` ends in .gz."""
    a = np.asarray(array, dtype=np.uint8)
    blob = bytes((0, 0, 8, a.ndim)) + np.array(a.shape, dtype=">u4").tobytes() + a.tobytes()
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)
    return path


def fake_fashion(folder: Path, gz: bool = True, n_train: int = 40, n_test: int = 20) -> Path:
    """Four small IDX files with Fashion-MNIST's names; labels are ``i % 10``."""
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{split}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 6, 6)))
        write_idx(folder / f"{split}-labels-idx1-ubyte{ext}", np.arange(n) % 10)
    return folder


def tagged_images(ids: np.ndarray, size: int = 28) -> np.ndarray:
    """uint8 (N, size, size) images whose first two pixels encode ``ids`` (< 65536)."""
    x = np.random.default_rng(1).integers(0, 256, (len(ids), size, size), dtype=np.uint8)
    x[:, 0, 0], x[:, 0, 1] = ids % 256, ids // 256
    return x


def ids_of(x: torch.Tensor) -> np.ndarray:
    """Invert :func:`tagged_images` on converted (N, 1, H, W) tensors."""
    v = (x[:, 0, 0, :2] * 255).round().long().numpy()
    return v[:, 0] + 256 * v[:, 1]


@pytest.fixture
def tagged_npz(tmp_path: Path) -> Path:
    """600 train images (ids 0..599, label id % 10) and 100 test images (ids 600..699)."""
    train, test = np.arange(600), np.arange(600, 700)
    path = tmp_path / "tagged.npz"
    np.savez(
        path, x=tagged_images(train), y=train % 10, x_test=tagged_images(test), y_test=test % 10
    )
    return path


def flwr_dirichlet(labels: np.ndarray, n: int, alpha: float, min_size: int, seed: int):
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    p = DirichletPartitioner(
        num_partitions=n,
        partition_by="label",
        alpha=alpha,
        min_partition_size=min_size,
        self_balancing=False,
        shuffle=True,
        seed=seed,
    )
    p.dataset = Dataset.from_dict({"label": labels.tolist()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns on every re-draw
        p.load_partition(0)
    return [np.asarray(p._partition_id_to_indices[i]) for i in range(n)]


# ------------------------------------------------------------------ datasets
@needs_fashion
def test_fashion_mnist_from_debian_package() -> None:
    src = sources.load_source("fashion-mnist", "")
    assert src.x_train.shape == (60000, 1, 28, 28) and src.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(src.y_train).tolist() == [6000] * 10
    assert np.bincount(src.y_test).tolist() == [1000] * 10
    s = load_splits(DataSpec(pool_size=100, train_size=200, test_size=50, num_clients=4), 0)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10
    assert s.test.x.dtype == torch.float32 and s.test.y.dtype == torch.int64
    assert 0.0 <= float(s.pool.x.min()) and float(s.pool.x.max()) == 1.0
    assert (len(s.pool), [len(c) for c in s.clients], len(s.test)) == (100, [50] * 4, 50)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_gzipped_or_not(tmp_path: Path, gz: bool) -> None:
    src = sources.load_source("fashion-mnist", str(fake_fashion(tmp_path, gz=gz)))
    assert src.x_train.shape == (40, 1, 6, 6) and src.x_test.shape == (20, 1, 6, 6)
    assert src.y_train[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-5],  # truncated data
        lambda b: b"\x00\x00\x08\x02" + b[4:],  # wrong number of dims in the magic
        lambda b: b"\x00\x00\x0d\x03" + b[4:],  # float32 type byte
        lambda b: b"",
    ],
)
def test_corrupt_idx_names_the_file(tmp_path: Path, damage) -> None:
    fake_fashion(tmp_path, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(damage(bad.read_bytes()))
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        sources.load_source("fashion-mnist", str(tmp_path))


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    fake_fashion(tmp_path)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        sources.load_source("fashion-mnist", str(tmp_path))


def test_missing_folder_and_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found.*dataset-fashion-mnist"):
        load_splits(DataSpec(path=str(tmp_path / "nope")), 0)
    fake_fashion(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        sources.load_source("fashion-mnist", str(tmp_path))
    with pytest.raises(DataError, match="npz file not found"):
        load_splits(DataSpec(dataset="npz", path=str(tmp_path / "x.npz")), 0)


def test_download_fills_cache_and_checks_sha256(tmp_path: Path, monkeypatch) -> None:
    served = fake_fashion(tmp_path / "served")
    cache = tmp_path / "cache"
    monkeypatch.setattr(idx, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(idx, "CACHE_DIR", cache)
    sums = {
        n: hashlib.sha256(gzip.decompress((served / f"{n}.gz").read_bytes())).hexdigest()
        for n in idx.FILES
    }
    monkeypatch.setattr(idx, "SHA256", sums)
    urls: list[str] = []

    def fetch(url: str) -> bytes:
        urls.append(url)
        return (served / url.rsplit("/", 1)[1]).read_bytes()

    monkeypatch.setattr(idx, "fetch", fetch)
    assert sources.load_source("fashion-mnist", "").x_train.shape == (40, 1, 6, 6)
    assert urls == [f"{idx.BASE_URL}/{n}.gz" for n in idx.FILES]
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in idx.FILES)

    (cache / "t10k-images-idx3-ubyte.gz").unlink()
    sums["t10k-images-idx3-ubyte"] = "0" * 64
    with pytest.raises(DataError, match="checksum mismatch"):
        sources.load_source("fashion-mnist", "")
    assert len(list(cache.iterdir())) == 3  # nothing half-written

    def offline(url: str) -> bytes:
        raise OSError("no network")

    monkeypatch.setattr(idx, "fetch", offline)
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        sources.load_source("fashion-mnist", "")


def test_digits() -> None:
    src = sources.load_source("digits", "")
    assert (len(src.y_train), len(src.y_test)) == (1438, 359)  # 359 = round(0.2 * 1797)
    assert src.x_train.shape[1:] == (1, 8, 8)
    assert src.x_train.min() == 0.0 and src.x_train.max() == 1.0
    s = load_splits(DataSpec(dataset="digits", pool_size=300, train_size=500, num_clients=7), 3)
    assert len(s.pool) == 300 and len(s.test) == 359
    assert [len(c) for c in s.clients] == [72, 72, 72, 71, 71, 71, 71]
    assert s.input_shape == (1, 8, 8) and s.num_classes == 10


def test_the_digits_are_scikit_learns_read_without_importing_it() -> None:
    """fedticket reads scikit-learn's digits file itself (importing scikit-learn costs
    each process about 3 s); the 1797 images and labels are what load_digits gives."""
    from sklearn.datasets import load_digits

    d = load_digits()
    with gzip.open(sources.digits_file(), mode="rt") as f:
        data = np.loadtxt(f, delimiter=",")
    np.testing.assert_array_equal(data[:, :-1].reshape(-1, 8, 8), d.images)
    np.testing.assert_array_equal(data[:, -1].astype(int), d.target)
    src = sources.load_source("digits", "")
    x = np.concatenate([src.x_train, src.x_test])
    assert sorted(map(bytes, x)) == sorted(map(bytes, (d.images[:, None] / 16.0)
                                               .astype(np.float32)))


def test_npz_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 5, 7, 3), dtype=np.uint8)  # channels-last
    np.savez(tmp_path / "a.npz", x=x, y=np.arange(12) % 4)
    src = sources.load_source("npz", str(tmp_path / "a.npz"))
    assert src.x_train.shape == (10, 3, 5, 7) and len(src.y_test) == 2  # 2 = 12 / 6
    back = np.concatenate([src.x_train, src.x_test]).transpose(0, 2, 3, 1)
    assert sorted(map(bytes, back)) == sorted(map(bytes, x))
    assert src.num_classes == 4

    xf = rng.random((6, 4, 4)).astype(np.float64)  # 3-D float input
    np.savez(tmp_path / "b.npz", x=xf, y=np.zeros(6, int), x_test=xf[:2], y_test=np.ones(2, int))
    # class 1 is in the test split only: inferred, it would have no training image
    spec = DataSpec(dataset="npz", path=str(tmp_path / "b.npz"), pool_size=2, num_clients=2)
    with pytest.raises(DataError, match=r"1 have no training image \(1\)"):
        load_splits(spec, 0)
    s = load_splits(DataSpec(**{**spec.__dict__, "num_classes": 2}), 0)
    assert s.input_shape == (1, 4, 4) and len(s.test) == 2 and s.num_classes == 2
    assert torch.allclose(s.test.x[:, 0], torch.from_numpy(xf[:2]).float())

    np.savez(tmp_path / "c.npz", x=np.zeros((4, 3, 5, 5), np.uint8), y=np.arange(4))
    assert sources.load_source("npz", str(tmp_path / "c.npz")).x_train.shape[1:] == (3, 5, 5)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.full((4, 3, 3), 1.5), "y": np.arange(4)}, "outside"),
        ({"x": np.zeros((4, 3, 3), np.int32), "y": np.arange(4)}, "dtype int32"),
        ({"x": np.zeros((4, 3, 3), np.uint8), "y": np.arange(3)}, "integer labels"),
        ({"x": np.zeros((4, 3, 3), np.uint8)}, "lacks"),
        ({"x": np.zeros((4, 5, 5, 5), np.uint8), "y": np.arange(4)}, "1 or 3 channels"),
    ],
)
def test_npz_bad_input(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        sources.load_source("npz", str(path))


# ------------------------------------------------------------------ splits
def test_split_sizes_disjoint_and_deterministic(tagged_npz: Path) -> None:
    spec = DataSpec(
        dataset="npz",
        path=str(tagged_npz),
        pool_size=100,
        train_size=300,
        test_size=40,
        num_clients=6,
    )
    s = load_splits(spec, 5)
    assert (len(s.pool), sum(map(len, s.clients)), len(s.test)) == (100, 300, 40)
    assert not hasattr(s.pool, "y") and s.pool_labels is None
    with pytest.raises(AttributeError):
        s.pool.y = torch.zeros(100)  # type: ignore[attr-defined]
    pool, test = ids_of(s.pool.x), ids_of(s.test.x)
    client = np.concatenate([ids_of(c.x) for c in s.clients])
    assert len(set(pool) | set(client)) == 400 and max(max(pool), max(client)) < 600
    assert len(set(test)) == 40 and min(test) >= 600
    for c in s.clients:  # labels travel with their images
        assert (c.y.numpy() == ids_of(c.x) % 10).all()
    again = load_splits(spec, 5)
    assert torch.equal(again.pool.x, s.pool.x) and torch.equal(again.test.x, s.test.x)
    assert all(torch.equal(a.x, b.x) for a, b in zip(again.clients, s.clients, strict=True))
    assert not torch.equal(load_splits(spec, 6).pool.x, s.pool.x)


def test_pool_fraction_and_all_remaining(tagged_npz: Path) -> None:
    spec = DataSpec(dataset="npz", path=str(tagged_npz), pool_fraction=0.25, num_clients=9)
    s = load_splits(spec, 0)
    assert len(s.pool) == 150 and sum(map(len, s.clients)) == 450 and len(s.test) == 100


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pool_size": 601}, "needs 601 samples but npz has 600"),
        ({"pool_size": 500, "train_size": 101}, "needs 601 samples"),
        ({"pool_size": 600}, "leaving none"),
        ({"test_size": 101}, "exceeds the 100 test samples"),
        ({"pool_size": 595, "num_clients": 6}, "lower data.num_clients"),
    ],
)
def test_too_few_samples(tagged_npz: Path, kwargs: dict, message: str) -> None:
    spec = DataSpec(
        dataset="npz", path=str(tagged_npz), **{"num_clients": 2, "pool_size": 10, **kwargs}
    )
    with pytest.raises(DataError, match=message):
        load_splits(spec, 0)


def test_oracle_labels_are_the_pool_rows_labels(tagged_npz: Path) -> None:
    spec = DataSpec(dataset="npz", path=str(tagged_npz), pool_size=50, num_clients=3)
    s = load_splits(spec, 1, oracle_labels=True)
    assert s.pool_labels is not None and s.pool_labels.dtype == torch.int64
    assert s.pool_labels.tolist() == (ids_of(s.pool.x) % 10).tolist()
    assert torch.equal(s.pool.x, load_splits(spec, 1).pool.x)


def test_digits_pool_resized_for_a_28x28_run(tagged_npz: Path) -> None:
    spec = DataSpec(
        dataset="npz", path=str(tagged_npz), pool_dataset="digits", pool_size=100, num_clients=4
    )
    s = load_splits(spec, 0, oracle_labels=True)
    assert s.pool.x.shape == (100, 1, 28, 28) and s.input_shape == (1, 28, 28)
    assert float(s.pool.x.min()) >= 0.0 and float(s.pool.x.max()) <= 1.0
    assert sum(map(len, s.clients)) == 600  # the clients keep their whole training split
    digits = sources.load_source("digits", "")
    assert s.pool_labels is not None and set(s.pool_labels.tolist()) <= set(range(10))
    # the pooled digits, shrunk back to 8x8, are near the originals they came from
    small = torch.nn.functional.interpolate(s.pool.x, size=(8, 8), mode="area")
    originals = torch.tensor(digits.x_train).flatten(1)
    nearest = torch.cdist(small.flatten(1), originals)
    assert (digits.y_train[nearest.argmin(1).numpy()] == s.pool_labels.numpy()).mean() > 0.9


def test_fit_images_channels_and_size() -> None:
    gray = torch.full((2, 1, 8, 8), 0.5)
    assert torch.allclose(fit_images(gray, (1, 28, 28)), torch.full((2, 1, 28, 28), 0.5))
    assert fit_images(gray, (3, 8, 8)).shape == (2, 3, 8, 8)
    rgb = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert torch.allclose(fit_images(rgb, (1, 2, 2)), torch.full((1, 1, 2, 2), 0.4))
    assert fit_images(torch.zeros(0, 1, 8, 8), (1, 28, 28)).shape == (0, 1, 28, 28)


def test_containers_check_their_contents() -> None:
    with pytest.raises(DataError, match="int64"):
        Labeled(torch.zeros(3, 1, 2, 2), torch.zeros(3))
    with pytest.raises(DataError, match="float32"):
        Unlabeled(torch.zeros(3, 2, 2))
    assert len(Labeled(torch.zeros(3, 1, 2, 2), torch.zeros(3, dtype=torch.int64))) == 3


# ------------------------------------------------------------------ partitions
def test_iid_covers_every_index_once_and_matches_flwr() -> None:
    from datasets import Dataset
    from flwr_datasets.partitioner import IidPartitioner

    parts = iid(103, 10, np.random.default_rng(0))
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    assert [len(p) for p in parts] == [11, 11, 11, 10, 10, 10, 10, 10, 10, 10]
    flwr = IidPartitioner(num_partitions=10)
    flwr.dataset = Dataset.from_dict({"label": [0] * 103})
    assert [len(flwr.load_partition(i)) for i in range(10)] == [len(p) for p in parts]
    with pytest.raises(DataError, match="lower data.num_clients"):
        iid(3, 4, np.random.default_rng(0))


def test_shards_pathological_split() -> None:
    labels = np.repeat(np.arange(10), 30)  # 300 samples, 10 shards of 30 = one class each
    parts = shards(labels, 5, 2, np.random.default_rng(0))
    assert [len(p) for p in parts] == [60] * 5
    assert sorted(np.concatenate(parts).tolist()) == list(range(300))
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)
    uneven = shards(np.arange(305) % 10, 5, 2, np.random.default_rng(0))
    assert [len(p) for p in uneven] == [60] * 5  # 5 left out
    with pytest.raises(DataError, match="shards"):
        shards(np.zeros(9, int), 5, 2, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("num_clients", "alpha", "min_size", "seed"),
    # (10, 0.3, 40, 1) needs 5 re-draws before every client has >= 40 samples
    [(10, 0.5, 1, 0), (7, 0.1, 5, 3), (10, 0.3, 40, 1), (20, 1.0, 10, 42), (5, 100.0, 0, 7)],
)
def test_dirichlet_equals_flwr_datasets(num_clients, alpha, min_size, seed) -> None:
    labels = np.random.default_rng(99).integers(0, 10, 1000)
    mine = dirichlet(labels, num_clients, alpha, min_size, np.random.default_rng(seed))
    theirs = flwr_dirichlet(labels, num_clients, alpha, min_size, seed)
    for a, b in zip(mine, theirs, strict=True):
        assert a.tolist() == b.tolist()  # same indices in the same (shuffled) order
    assert sorted(np.concatenate(mine).tolist()) == list(range(1000))
    assert min(map(len, mine)) >= min_size


def test_dirichlet_gives_up_like_flwr() -> None:
    labels = np.arange(100) % 10
    with pytest.raises(DataError, match="raise data.dirichlet_alpha"):
        dirichlet(labels, 10, 0.05, 9, np.random.default_rng(0))
    with pytest.raises(ValueError, match="max number of attempts"):
        flwr_dirichlet(labels, 10, 0.05, 9, 0)


def test_empty_client_is_an_error() -> None:
    spec = DataSpec(num_clients=10, partition="dirichlet", dirichlet_alpha=0.01, min_client_size=0)
    with pytest.raises(DataError, match="get no samples"):
        partition.partition_clients(np.arange(30) % 3, spec, np.random.default_rng(0))


def test_load_splits_dirichlet_is_flwr_on_the_client_labels(tagged_npz: Path) -> None:
    spec = DataSpec(
        dataset="npz",
        path=str(tagged_npz),
        pool_size=100,
        train_size=400,
        num_clients=8,
        partition="dirichlet",
        dirichlet_alpha=0.3,
        min_client_size=5,
    )
    s = load_splits(spec, 11)
    client_ids = np.random.default_rng(11).permutation(600)[100:500]  # documented stream
    theirs = flwr_dirichlet(client_ids % 10, 8, 0.3, 5, 11)
    for c, b in zip(s.clients, theirs, strict=True):
        assert ids_of(c.x).tolist() == client_ids[b].tolist()


def test_a_pool_file_that_is_the_clients_data_under_another_path_does_not_overlap(
    tagged_npz: Path, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "copy-of-tagged.npz"
    shutil.copy(tagged_npz, copy)
    spec = DataSpec(dataset="npz", path=str(tagged_npz), pool_dataset="npz",
                    pool_path=str(copy), pool_size=200, num_clients=4)
    splits = load_splits(spec, 0)
    pool = set(ids_of(splits.pool.x).tolist())
    clients = set(np.concatenate([ids_of(c.x) for c in splits.clients]).tolist())
    assert len(pool) == 200 and not pool & clients
    assert len(pool) + len(clients) == 600  # all of the training set, each image once


def test_the_pool_does_not_depend_on_how_the_clients_are_split(tagged_npz: Path) -> None:
    """What the server stages' cache key leaves out (spec.CLIENT_SPLIT_FIELDS) must not
    change the pool."""
    from dataclasses import replace

    from fedticket.spec import CLIENT_SPLIT_FIELDS, ExperimentSpec

    base = DataSpec(dataset="npz", path=str(tagged_npz), pool_size=100, num_clients=4)
    pool = ids_of(load_splits(base, 3).pool.x)
    variants = [replace(base, partition="dirichlet", dirichlet_alpha=0.3, num_clients=5),
                replace(base, train_size=200, test_size=50, partition="shards",
                        shards_per_client=3, min_client_size=2)]
    for v in variants:
        assert (ids_of(load_splits(v, 3).pool.x) == pool).all()
        a, b = ExperimentSpec(data=base, seed=3), ExperimentSpec(data=v, seed=3)
        assert a.stage_hash("data", "pretrain") == b.stage_hash("data", "pretrain")
    assert {f for v in variants for f in CLIENT_SPLIT_FIELDS
            if getattr(v, f) != getattr(base, f)} == set(CLIENT_SPLIT_FIELDS)
    other = ExperimentSpec(data=replace(base, pool_size=99), seed=3)
    assert other.stage_hash("data") != ExperimentSpec(data=base, seed=3).stage_hash("data")
