"""A machine that fails under a run: a full disk, a read-only folder. The run stops with
one line and exit status 1, keeps its last checkpoint, leaves nothing under a finished
name, and the same command resumes once the cause is gone. Also: every file reaches the
disk (fsync) before it takes its name, and an error nobody expected says it is a bug."""

import errno
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from fedticket.cli import main

CONFIG = """
methods = ["fedavg"]
seeds = [0]
[data]
dataset = "digits"
pool_size = 200
num_clients = 4
[model]
name = "mlp"
hidden = [512]
[pretrain]
epochs = 1
[federate]
rounds = 4
client_fraction = 0.5
local_epochs = 1
batch_size = 32
"""


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # --threads 1 below: every run of the test sums alike
    yield
    torch.set_num_threads(threads)


def run(cfg: Path, out: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["run", str(cfg), "--out", str(out), "--threads", "1"])
    return code, capsys.readouterr().err


def timeless(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not k.endswith(("wall_s", "cpu_s"))}
            for line in path.read_text().splitlines()]


def finished(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if not p.name.startswith((".", "_"))]


def check_stopped_then_resumed(cfg, out, ref, code, err, capsys, fragment):
    lines = [line for line in err.strip().splitlines() if line.startswith("fedticket:")]
    assert code == 1 and len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err and "run the same command to resume" in lines[0]
    assert not finished(out)  # nothing under a finished name
    [tmp] = list(out.glob(".tmp-*"))
    assert (tmp / "checkpoint.npz").is_file()  # the last checkpoint is kept
    return tmp


def resume_and_compare(cfg, out, ref, capsys):
    code, err = run(cfg, out, capsys)
    assert code == 0, err
    assert "resuming from the checkpoint after round" in err
    [done] = finished(out)
    for name in ("metrics.jsonl", "clients.jsonl"):
        assert timeless(done / name) == timeless(ref / name), name
    with np.load(done / "final.npz") as a, np.load(ref / "final.npz") as b:
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])


@pytest.fixture
def reference(tmp_path, capsys, one_thread):
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG)
    code, err = run(cfg, tmp_path / "ref", capsys)
    assert code == 0, err
    [ref] = finished(tmp_path / "ref")
    return cfg, ref


def test_a_full_disk_stops_the_run_and_freeing_space_resumes_it(reference, tmp_path, capsys):
    """A real 2 MiB tmpfs, filled so that the checkpoint after round 0 fits and the next
    does not (a checkpoint of this model is about 150 kB, and the next one is written
    beside it before it replaces it)."""
    cfg, ref = reference
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"this machine does not allow mounting a tmpfs ({mounted.stderr.strip()}); "
                    "test_a_read_only_folder_stops_the_run_and_resumes covers the same path "
                    "with a faked error")
    try:
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        model_bytes = (ref / "final.npz").stat().st_size
        filler = disk / "filler"
        # room for the files before round 0 (tens of kB) and one checkpoint, not two
        filler.write_bytes(b"\0" * (free - int(1.5 * model_bytes) - 60 * 1024))
        out = disk / "runs"
        code, err = run(cfg, out, capsys)
        check_stopped_then_resumed(cfg, out, ref, code, err, capsys, "No space left on device")
        filler.unlink()  # free the space; the same command resumes
        resume_and_compare(cfg, out, ref, capsys)
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_read_only_folder_stops_the_run_and_resumes(reference, tmp_path, capsys,
                                                      monkeypatch):
    """The folder turns read-only while the run writes its checkpoint after round 2
    (faked: EROFS from the checkpoint's write)."""
    import fedticket.checkpoint as checkpoint

    cfg, ref = reference
    real, calls = checkpoint.save_states, []

    def read_only_at_the_third(path, states):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, states)

    monkeypatch.setattr(checkpoint, "save_states", read_only_at_the_third)
    out = tmp_path / "out"
    code, err = run(cfg, out, capsys)
    tmp = check_stopped_then_resumed(cfg, out, ref, code, err, capsys, "Read-only file system")
    assert "make the folder writable" in err
    with np.load(tmp / "checkpoint.npz") as z:  # the one after round 1: intact
        meta = json.loads(bytes(z["meta/json"]).decode())
    assert meta["round"] == 1
    monkeypatch.setattr(checkpoint, "save_states", real)
    resume_and_compare(cfg, out, ref, capsys)


def test_every_file_of_a_run_is_fsynced_before_the_folder_takes_its_name(
        tmp_path, capsys, monkeypatch, one_thread):
    import fedticket.io as fio
    import fedticket.run_folder as rf

    synced: list[str] = []
    renamed: list[tuple[str, list[str]]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    def replace(src, dst):
        if Path(src).name.startswith(".tmp-"):  # the run folder: what was synced by now
            renamed.append((str(dst), list(synced)))
        return real_replace(src, dst)

    monkeypatch.setattr(fio.os, "fsync", fsync)
    monkeypatch.setattr(rf.os, "fsync", fsync)
    monkeypatch.setattr(rf.os, "replace", replace)
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG.replace("rounds = 4", "rounds = 2"))
    code, err = run(cfg, tmp_path / "out", capsys)
    assert code == 0, err
    [(final, before)] = renamed
    tmp = Path(final).with_name(".tmp-" + Path(final).name)
    files = sorted(p.name for p in Path(final).iterdir())
    assert {"metrics.jsonl", "clients.jsonl", "final.npz", "summary.json", "spec.json",
            "mask.npz"} <= set(files)
    for name in files:
        assert str(tmp / name) in before, f"{name} was not fsynced before the rename"
    assert str(tmp) in before  # and the folder itself


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    from fedticket.io import atomic_write

    path = tmp_path / "a.json"
    path.write_text("old")
    with pytest.raises(OSError), atomic_write(path) as f:
        f.write(b"new, half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert path.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["a.json"]
    with atomic_write(path) as f:
        f.write(b"new")
    assert path.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["a.json"]


def test_an_unexpected_error_says_it_is_a_bug_and_logs_its_traceback(tmp_path, capsys,
                                                                      monkeypatch):
    import fedticket.cli as cli

    def broken(args):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(cli, "_compare", broken)
    code = main(["compare", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 3 and "\n" not in err and "this is a bug" in err, err
    log = Path(err.split("its traceback is in ")[1].split(";")[0])
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in broken" in text
    log.unlink()
