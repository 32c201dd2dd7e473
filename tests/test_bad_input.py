"""Bad input, by class: one line on stderr naming the problem, exit status 2, no
traceback, and the run folder that was there before left exactly as it was."""

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from fedticket.cli import main
from shared import GOOD


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished run in ``out`` and a folder of broken data files."""
    root = tmp_path_factory.mktemp("bad")
    (root / "good.toml").write_text(GOOD)
    out = root / "runs"
    assert main(["run", str(root / "good.toml"), "--out", str(out), "--quiet"]) == 0
    files = root / "files"
    files.mkdir()
    make_data_files(files)
    return root, out


def idx_bytes(kind: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(">HBB", 0, kind, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + payload


def write_idx(folder: Path, n_train_images=60, n_train_labels=60, truncate=False):
    folder.mkdir()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (n_train_images, 28, 28), dtype=np.uint8).tobytes()
    if truncate:
        img = img[: len(img) // 2]
    parts = {
        "train-images-idx3-ubyte.gz": idx_bytes(8, (n_train_images, 28, 28), img),
        "train-labels-idx1-ubyte.gz": idx_bytes(
            8, (n_train_labels,), rng.integers(0, 10, n_train_labels, dtype=np.uint8).tobytes()),
        "t10k-images-idx3-ubyte.gz": idx_bytes(
            8, (20, 28, 28), rng.integers(0, 255, (20, 28, 28), dtype=np.uint8).tobytes()),
        "t10k-labels-idx1-ubyte.gz": idx_bytes(
            8, (20,), rng.integers(0, 10, 20, dtype=np.uint8).tobytes()),
    }
    for name, data in parts.items():
        with gzip.open(folder / name, "wb") as f:
            f.write(data)


def make_data_files(d: Path) -> None:
    write_idx(d / "idx-truncated", truncate=True)
    write_idx(d / "idx-counts", n_train_labels=50)
    write_idx(d / "idx-garbage")
    for name in ("train-images-idx3-ubyte.gz",):
        with gzip.open(d / "idx-garbage" / name, "wb") as f:
            f.write(b"\x00\x00\x08\x03garbage")
    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 40)
    (d / "not-an-archive.npz").write_text("x = [1, 2, 3]\n")
    np.savez(d / "no-labels.npz", x=x)
    np.savez(d / "pickled.npz", x=np.array([{"evil": 1}] * 40, dtype=object), y=y)
    bad = x.copy()
    bad[3, 0, 2, 2] = np.nan
    np.savez(d / "nan-pixels.npz", x=bad, y=y)
    np.savez(d / "few-labels.npz", x=x, y=y[:30])
    (d / "empty.toml").write_text("")
    (d / "comments.toml").write_text("# nothing here\n\n")
    (d / "invalid.toml").write_text("methods = [fedavg\n")
    (d / "binary.toml").write_bytes(b"\xff\xfe\x00methods\x80\x81")
    (d / "no-methods.toml").write_text(GOOD.replace('methods = ["fedavg"]', "methods = []"))
    (d / "typo-key.toml").write_text(GOOD.replace("seeds = [0]", "seeds = [0]\nrouns = 3"))
    (d / "typo-section.toml").write_text(GOOD.replace("[federate]", "[federat]"))
    (d / "typo-field.toml").write_text(GOOD.replace("rounds = 1", "rounds = 1\nlrr = 0.1"))
    (d / "typo-method.toml").write_text(GOOD.replace('["fedavg"]', '["fedavg", "dae-tiket"]'))
    (d / "wrong-type.toml").write_text(GOOD.replace("rounds = 1", 'rounds = "ten"'))
    (d / "wrong-seeds.toml").write_text(GOOD.replace("seeds = [0]", 'seeds = "0"'))
    (d / "inf-lr.toml").write_text(GOOD.replace("batch_size = 32", "batch_size = 32\nlr = inf"))
    (d / "nan-sparsity.toml").write_text(GOOD + "[prune]\nsparsity = nan\n")
    (d / "dir.toml").mkdir()


CASES = [
    # config files that are not what they claim
    (["missing.toml"], "config file not found"),
    (["{files}/empty.toml"], "nothing to run"),
    (["{files}/comments.toml"], "nothing to run"),
    (["{files}/invalid.toml"], "not valid toml"),
    (["{files}/binary.toml"], "not utf-8 text"),
    (["{files}/dir.toml"], "is a directory"),
    (["{files}/no-methods.toml"], "methods is empty"),
    (["{files}/typo-key.toml"], "unknown config key 'rouns'"),
    (["{files}/typo-section.toml"], "federat"),
    (["{files}/typo-field.toml"], "unknown config key 'federate.lrr'"),
    (["{files}/typo-method.toml"], "unknown method 'dae-tiket'"),
    (["{files}/wrong-type.toml"], "federate.rounds"),
    (["{files}/wrong-seeds.toml"], "seeds"),
    (["{good}", "--method", "dae-tiket"], "unknown method 'dae-tiket'"),
    (["{good}", "--set", "federate.lrr=0.1"], "unknown config key 'federate.lrr'"),
    (["{good}", "--set", "federate.rounds"], "section.key=value"),
    (["{good}", "--set", "federate.rounds=[1"], "federate.rounds"),
    # numbers: out of range, zero where positive, not finite (file and --set)
    (["{good}", "--set", "prune.sparsity=1.0"], "prune.sparsity must be in [0, 1)"),
    (["{good}", "--set", "prune.sparsity=-inf"], "prune.sparsity"),
    (["{good}", "--set", "federate.rounds=0"], "federate.rounds"),
    (["{good}", "--set", "federate.client_fraction=-0.1"], "federate.client_fraction"),
    (["{good}", "--set", "data.num_clients=0"], "data.num_clients"),
    (["{good}", "--set", "federate.lr=nan"], "federate.lr"),
    (["{good}", "--set", "pretrain.noise_level=nan"], "pretrain.noise_level"),
    (["{good}", "--set", "federate.trim_fraction=0.5"], "federate.trim_fraction"),
    (["{good}", "--set", "federate.targets=[nan]"], "federate.targets"),
    (["{files}/inf-lr.toml"], "federate.lr"),
    (["{files}/nan-sparsity.toml"], "prune.sparsity"),
    (["{good}", "--threads", "-1"], "--threads"),
    (["{good}", "--jobs", "0"], "--jobs"),
    # data
    (["{good}", "--set", 'data.dataset="fashion-mnist"', "--set",
      'data.path="{files}/idx-garbage"', "--set", 'model.name="mlp"'], "idx"),
    (["{good}", "--set", 'data.dataset="fashion-mnist"', "--set",
      'data.path="{files}/idx-truncated"', "--set", 'model.name="mlp"'], "truncated"),
    (["{good}", "--set", 'data.dataset="fashion-mnist"', "--set",
      'data.path="{files}/idx-counts"', "--set", 'model.name="mlp"'], "labels"),
    (["{good}", "--set", 'data.dataset="npz"', "--set",
      'data.path="{files}/not-an-archive.npz"'], "not-an-archive.npz"),
    (["{good}", "--set", 'data.dataset="npz"', "--set",
      'data.path="{files}/no-labels.npz"'], "lacks arrays 'x' and 'y'"),
    (["{good}", "--set", 'data.dataset="npz"', "--set",
      'data.path="{files}/pickled.npz"'], "pickled.npz"),
    (["{good}", "--set", 'data.dataset="npz"', "--set",
      'data.path="{files}/few-labels.npz"'], "must be 40 integer labels"),
    (["{good}", "--set", 'data.dataset="npz"', "--set",
      'data.path="{files}/nan-pixels.npz"'], "not finite"),
    (["{good}", "--set", "data.train_size=100000"], "data.train_size"),
    (["{good}", "--set", "data.num_clients=5000"], "clients"),
    (["{good}", "--set", "data.pool_size=100000"], "pool"),
    (["{good}", "--set", 'data.pool_dataset="digits"', "--set", "data.pool_size=5000"],
     "pool"),
]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("args, fragment", CASES, ids=[f"{i:02d}" for i in range(len(CASES))])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(world, capsys, args, fragment):
    root, out = world
    args = [a.replace("{files}", str(root / "files")).replace("{good}", str(root / "good.toml"))
            for a in args]
    if args[0] == "missing.toml":
        args[0] = str(root / "missing.toml")
    before = snapshot(out)
    capsys.readouterr()
    code = main(["run", *args, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("fedticket: error:") and "\n" not in err, err
    assert "Traceback" not in err
    assert fragment.lower() in err.lower(), err
    assert snapshot(out) == before


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30


class Payload:
    """Unpickling this runs a shell command that leaves a file behind."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_never_unpickled(tmp_path, capsys):
    """Weights, masks, checkpoints and data are read as plain arrays: an .npz whose
    object array would run code when unpickled is refused, and the code never runs."""
    from fedticket.checkpoint import load as load_checkpoint
    from fedticket.errors import FedticketError
    from fedticket.io import load_states
    from fedticket.pruning import Mask

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.npz"
    np.savez(evil, x=np.array([Payload(marker)], dtype=object), y=np.zeros(1, np.int64))
    states = tmp_path / "states.npz"
    np.savez(states, **{"global/w": np.array([Payload(marker)], dtype=object),
                        "meta/json": np.zeros(2, np.uint8)})
    assert not marker.exists()
    with pytest.raises(ValueError, match="allow_pickle"):
        load_states(states)
    with pytest.raises(ValueError, match="allow_pickle"):
        Mask.load(states)
    run = tmp_path / ".tmp-run"
    run.mkdir()
    (run / "checkpoint.npz").write_bytes(states.read_bytes())
    with pytest.raises(FedticketError, match="is damaged"):
        load_checkpoint(run, "run")
    (tmp_path / "c.toml").write_text(GOOD)
    code = main(["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "out"), "--quiet",
                 "--set", 'data.dataset="npz"', "--set", f'data.path="{evil}"'])
    assert code == 2 and "allow_pickle" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("damage, fragment", [
    (lambda run: (run / "metrics.jsonl").write_text('{"round": 0, "test_acc'), "metrics.jsonl"),
    (lambda run: (run / "summary.json").write_text("{not json"), "summary.json"),
    (lambda run: (run / "spec.json").unlink(), "spec.json"),
])
def test_a_damaged_run_folder_is_named_not_a_traceback(world, tmp_path, capsys, damage,
                                                        fragment):
    import shutil

    _, out = world
    [run] = [p for p in out.iterdir() if p.name.startswith("fedavg_")]
    copy = tmp_path / "runs" / run.name
    shutil.copytree(run, copy)
    damage(copy)
    before = snapshot(copy.parent)
    capsys.readouterr()
    code = main(["compare", str(copy.parent), "--no-plots"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("fedticket: error:") and "\n" not in err, err
    assert fragment in err and snapshot(copy.parent) == before
