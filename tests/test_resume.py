"""A run killed with SIGKILL and started again with the same command continues from its
last checkpoint and ends exactly where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedticket.cli import main

pytestmark = pytest.mark.xdist_group("resume")  # its module fixtures are shared

CONFIG = """
methods = ["dae-ticket"]
seeds = [0]
[data]
dataset = "digits"
pool_size = 400
num_clients = 5
[model]
name = "cnn-digits"
[pretrain]
epochs = 3
batch_size = 32
[prune]
sparsity = 0.5
[federate]
rounds = 8
client_fraction = 0.4
local_epochs = 2
batch_size = 16
lr = 0.05
momentum = 0.9
eval_every = 2
targets = [0.5]
"""


def command(cfg: Path, out: Path) -> list[str]:
    exe = Path(sys.executable).with_name("fedticket")
    head = [str(exe)] if exe.exists() else [sys.executable, "-m", "fedticket.cli"]
    return [*head, "run", str(cfg), "--out", str(out), "--threads", "1"]


def timeless(rows):
    return [{k: v for k, v in r.items() if not k.endswith(("wall_s", "cpu_s"))} for r in rows]


def rows(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def finished(out: Path) -> Path:
    [run] = [p for p in out.iterdir() if not p.name.startswith((".", "_"))]
    return run


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    cfg = root / "c.toml"
    cfg.write_text(CONFIG)
    res = subprocess.run(command(cfg, root / "ref"), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    return cfg, finished(root / "ref")


def kill_when(cmd, out: Path, ready, timeout=300) -> str:
    """Start ``cmd``, SIGKILL it as soon as ``ready(stderr so far, out)``; its stderr."""
    log = out.with_suffix(".log")
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while not ready(log.read_text(), out):
                assert proc.poll() is None, "the run ended before it could be killed"
                assert time.monotonic() < deadline, "the moment to kill never came"
                time.sleep(0.02)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return log.read_text()


def last_round(out: Path) -> int:
    """The last round in the running run's metrics (-1 before round 0 is written)."""
    found = list(out.glob(".tmp-*/metrics.jsonl"))
    done = [json.loads(line)["round"] for line in
            (found[0].read_text().splitlines() if found else []) if line.endswith("}")]
    return max(done, default=-1)


@pytest.mark.parametrize("moment", ["pretraining", "after round 2", "after round 6"])
def test_a_killed_run_resumes_and_ends_like_an_uninterrupted_one(reference, tmp_path, moment):
    cfg, ref = reference
    out = tmp_path / "out"
    if moment == "pretraining":
        ready = lambda err, out: "server dae epoch 1" in err  # noqa: E731
    else:
        rounds = int(moment.rsplit(" ", 1)[1])
        ready = lambda err, out: last_round(out) >= rounds  # noqa: E731
    kill_when(command(cfg, out), out, ready)
    assert not any(p.name.startswith("dae") for p in out.iterdir())  # nothing finished
    res = subprocess.run(command(cfg, out), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    run = finished(out)
    trained = [int(line.split("round", 1)[1].split("/")[0]) for line in res.stderr.splitlines()
               if " round " in line and "/8" in line]
    if moment == "pretraining":  # no checkpoint yet: the run starts over
        assert "resuming" not in res.stderr and trained[0] == 0
    else:
        resumed = [line for line in res.stderr.splitlines() if "resuming" in line]
        assert len(resumed) == 1, res.stderr
        after = int(resumed[0].split("after round ")[1].split(";")[0])
        # round R's metrics are written just before its checkpoint
        assert after >= rounds - 1 and f"the first training round is {after + 1}" in resumed[0]
        assert trained[0] > after  # no finished round was trained again
        assert json.loads((run / "summary.json").read_text())["resumed_after_round"] == after
    for name in ("metrics.jsonl", "clients.jsonl"):
        assert timeless(rows(run / name)) == timeless(rows(ref / name)), name
    with np.load(run / "final.npz") as a, np.load(ref / "final.npz") as b:
        assert a.files == b.files
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])
    assert not (run / "checkpoint.npz").exists() and not (run / "owner.pid").exists()


DELTA = 'values = "q4"\nupload = "change"\nerror_feedback = true\ndownload = "change"\n'


@pytest.mark.parametrize("method, kept, extra", [
    ("topk-ef", "residual", ""), ("feddst", "mask", ""), ("dae-ticket", "holds", DELTA)])
def test_what_clients_keep_survives_a_kill(tmp_path, method, kept, extra):
    """What simulated clients keep between rounds is on disk beside the checkpoint (the
    error-feedback residual of top-k uploads; the mask each client holds, and the
    global mask, while FedDST changes it; the model each client holds, and the
    server's copy of it, under delta downloads), so a resumed run's clients carry
    exactly what they held."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG.replace('methods = ["dae-ticket"]', f'methods = ["{method}"]')
                   .replace("client_fraction = 0.4", "client_fraction = 0.6") + extra)
    res = subprocess.run(command(cfg, tmp_path / "ref"), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    ref = finished(tmp_path / "ref")
    out = tmp_path / "out"

    def held(err, out):  # a checkpoint that names residual files
        return last_round(out) >= 4 and any(out.glob(".tmp-*/memory/*.npy"))

    kill_when(command(cfg, out), out, held)
    [tmp] = list(out.glob(".tmp-*"))
    files = sorted(p.name for p in (tmp / "memory").glob("*.npy"))
    clients = {name.split("-")[1] for name in files if name.startswith(f"{kept}-")}
    assert len(clients) >= 3  # 3 of the 5 clients a round: most have a residual by now
    res = subprocess.run(command(cfg, out), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "resuming" in res.stderr, res.stderr
    run = finished(out)
    for name in ("metrics.jsonl", "clients.jsonl"):
        assert timeless(rows(run / name)) == timeless(rows(ref / name)), name
    with np.load(run / "final.npz") as a, np.load(ref / "final.npz") as b:
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])
    assert not (run / "memory").exists()  # the residuals go with the checkpoint


def test_divergence_exits_1_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG.replace('methods = ["dae-ticket"]', 'methods = ["fedavg"]'))
    out = tmp_path / "runs"
    code = main(["run", str(cfg), "--out", str(out), "--set", "federate.lr=1e30", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "diverged" in err and "\n" not in err
    assert "the checkpoint after round 0 is kept in" in err
    [tmp] = [p for p in out.iterdir() if not p.name.startswith("_")]
    assert tmp.name.startswith(".tmp-") and (tmp / "checkpoint.npz").is_file()
    # damaged, then foreign checkpoints: one line, exit 2, the folder left as it is
    ckpt = tmp / "checkpoint.npz"
    good = ckpt.read_bytes()
    for damage, message in ((good[: len(good) // 2], "is damaged"), (None, "belongs to run")):
        if damage is None:  # a checkpoint of another run
            other = tmp_path / "other"
            main(["run", str(cfg), "--out", str(other), "--set", "federate.lr=1e31", "--quiet"])
            [o] = [p for p in other.iterdir() if not p.name.startswith("_")]
            damage = (o / "checkpoint.npz").read_bytes()
        ckpt.write_bytes(damage)
        capsys.readouterr()
        code = main(["run", str(cfg), "--out", str(out), "--set", "federate.lr=1e30",
                     "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and "\n" not in err, err
        assert ckpt.read_bytes() == damage


def test_a_run_stopped_between_its_summary_and_the_rename_keeps_its_checkpoint(
        reference, tmp_path, monkeypatch, capsys):
    """The last moment of a run: final.npz and summary.json are written, the folder is
    not yet renamed into place. A stop there keeps the checkpoint, and the next start
    resumes after the last round instead of training all 8 again."""
    import fedticket.run_folder as rf

    cfg, ref = reference
    out = tmp_path / "out"
    real = os.replace

    def stop_at_the_rename(src, dst):
        if Path(src).name.startswith(".tmp-"):
            assert (Path(src) / "summary.json").is_file()
            raise KeyboardInterrupt
        return real(src, dst)

    import torch

    from fedticket.runner import run_one
    from fedticket.spec import load_config

    monkeypatch.setattr(rf.os, "replace", stop_at_the_rename)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the reference's --threads 1: the same sums
    try:
        with pytest.raises(KeyboardInterrupt):
            [spec] = load_config(cfg).specs()
            run_one(spec, out, None)
    finally:
        torch.set_num_threads(threads)
    [tmp] = list(out.glob(".tmp-*"))
    assert (tmp / "checkpoint.npz").is_file()  # kept: the run need not start over
    monkeypatch.setattr(rf.os, "replace", real)
    try:
        assert main(["run", str(cfg), "--out", str(out), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)  # --threads sets the whole process's
    err = capsys.readouterr().err
    assert "resuming from the checkpoint after round 8" in err
    assert not [line for line in err.splitlines() if " round " in line and "/8" in line
                and "resuming" not in line]  # no round trained again
    run = finished(out)
    assert timeless(rows(run / "metrics.jsonl")) == timeless(rows(ref / "metrics.jsonl"))
    assert not (run / "checkpoint.npz").exists()
