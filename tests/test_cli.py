"""End to end: `fedticket run` and `fedticket compare` on real (tiny) data."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedticket.accounting import maskcode
from fedticket.cli import main

CONFIG = """
methods = ["fedavg", "dae-ticket", "dae-ticket-rewind"]
seeds = [0]
[data]
dataset = "digits"
pool_size = 400
num_clients = 5
[model]
name = "cnn-digits"
[pretrain]
epochs = 2
batch_size = 32
[prune]
sparsity = 0.5
[federate]
rounds = 3
client_fraction = 0.4
local_epochs = 2
batch_size = 16
lr = 0.05
momentum = 0.9
"""

METRIC_FIELDS = {"round", "test_accuracy", "test_loss", "cum_down_bytes", "cum_up_bytes",
                 "cum_client_flops", "cum_client_wall_s"}
COMPARE_FIELDS = {"final_accuracy", "best_accuracy", "rounds_to_target",
                  "traffic_bytes_to_target", "client_flops_to_target",
                  "client_wall_s_to_target"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    cfg = root / "tiny.toml"
    cfg.write_text(CONFIG)
    out = root / "runs"
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    return cfg, out


def read(folder: Path, name: str):
    text = (folder / name).read_text()
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines()]
    return json.loads(text)


def run_folders(out: Path) -> dict[str, Path]:
    return {p.name.split("_")[0]: p for p in out.iterdir() if (p / "spec.json").is_file()}


def test_run_writes_one_complete_folder_per_method(finished):
    _, out = finished
    folders = run_folders(out)
    assert set(folders) == {"fedavg", "dae-ticket", "dae-ticket-rewind"}
    for method, f in folders.items():
        spec = read(f, "spec.json")
        assert spec["spec"]["method"] == method and spec["versions"]["torch"]
        assert "commit" in spec["git"]
        rows = read(f, "metrics.jsonl")
        assert [r["round"] for r in rows] == [0, 1, 2, 3]
        assert METRIC_FIELDS <= set(rows[0])
        assert rows[0]["cum_down_bytes"] == 0 and rows[-1]["cum_client_flops"] > 0
        summary = read(f, "summary.json")
        assert summary["final_accuracy"] == rows[-1]["test_accuracy"]
        assert summary["best_accuracy"] == max(r["test_accuracy"] for r in rows)
        assert len(read(f, "clients.jsonl")) == 3 * 2  # 3 rounds, round(0.4 * 5) = 2 clients each
    # the two DAE methods share one pretraining
    assert len(list((out / "_cache").glob("pretrain-*.npz"))) == 1


def test_traffic_is_the_payload_arithmetic(finished):
    _, out = finished
    folders = run_folders(out)
    ticket = folders["dae-ticket"]
    report = read(ticket, "mask_report.json")
    nnz, numel = report["nnz"], report["numel"]
    prunable = report["prunable_density"]
    assert abs(prunable - 0.5) < 1e-3
    last = read(ticket, "metrics.jsonl")[-1]
    assert last["cum_up_bytes"] == 3 * 2 * 4 * nnz
    clients = read(ticket, "clients.jsonl")
    first_timers = len({c["client"] for c in clients})
    mask_msg = report["wire"]["mask_message_bytes"]
    with np.load(ticket / "mask.npz") as m:  # the cheapest of the three mask codes
        entropy = len(maskcode.encode([m[k] for k in m.files]))
    assert mask_msg == min(1 + (numel + 7) // 8, 1 + 4 * nnz, entropy) == entropy
    assert last["cum_down_bytes"] == 3 * 2 * 4 * nnz + first_timers * mask_msg
    dense = read(folders["fedavg"], "metrics.jsonl")[-1]
    assert dense["cum_up_bytes"] == 3 * 2 * 4 * numel


def test_compare_json_has_every_field(finished, capsys):
    _, out = finished
    capsys.readouterr()
    assert main(["compare", str(out), "--json", "--target", "0.3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["target"] == 0.3
    assert set(result["methods"]) == {"fedavg", "dae-ticket", "dae-ticket-rewind"}
    for stats in result["methods"].values():
        assert COMPARE_FIELDS <= set(stats)
        assert set(stats["final_accuracy"]) == {"mean", "std", "n", "seeds"}
        assert set(stats["traffic_saving_pct"]) == {"mean", "lo", "hi", "std", "n"}
    assert result["methods"]["fedavg"]["traffic_saving_pct"]["mean"] == 0.0
    # where the runs came from: each run's commit, and the versions they ran with
    runs = result["provenance"]["runs"]
    assert len(runs) == 3 and all(len(c.removesuffix("+dirty")) == 10 for c in runs.values())
    assert '"torch"' in result["provenance"]["versions"][0]
    for name in ("accuracy_vs_round", "accuracy_vs_traffic", "accuracy_vs_flops"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_rerun_skips_finished_runs(finished, capsys):
    cfg, out = finished
    before = {p: (p / "summary.json").stat().st_mtime_ns for p in run_folders(out).values()}
    assert main(["run", str(cfg), "--out", str(out)]) == 0
    assert "finished already" in capsys.readouterr().err
    after = {p: (p / "summary.json").stat().st_mtime_ns for p in run_folders(out).values()}
    assert before == after


def test_same_spec_same_numbers(finished, tmp_path):
    cfg, out = finished
    assert main(["run", str(cfg), "--out", str(tmp_path), "--method", "dae-ticket",
                 "--quiet"]) == 0
    again = read(run_folders(tmp_path)["dae-ticket"], "metrics.jsonl")
    first = read(run_folders(out)["dae-ticket"], "metrics.jsonl")
    def timeless(rows):  # wall and CPU seconds are measurements, not results
        return [{k: v for k, v in r.items() if not k.endswith(("wall_s", "cpu_s"))}
                for r in rows]

    assert timeless(again) == timeless(first)


def corrupt_idx(folder: Path) -> Path:
    folder.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(folder / name, "wb") as f:
            f.write(b"\x00\x00\x08\x03garbage")
    return folder


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--method", "dae-tiket"], "unknown method 'dae-tiket'"),
        (["--set", "prune.sparsity=1.0"], "prune.sparsity must be in [0, 1)"),
        (["--set", "federate.lrr=0.1"], "unknown config key 'federate.lrr'"),
        (["--set", "data.dataset=\"npz\"", "--set", "data.path=\"/nonexistent/x.npz\""],
         "/nonexistent/x.npz"),
        (["--set", "model.name=\"vgg\""], "unknown model.name 'vgg'"),
        (["--set", "data.dataset=\"fashion-mnist\"", "--set", "data.path=\"{bad}\"",
          "--set", "model.name=\"cnn-fedavg\""], "idx"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_touches_nothing(finished, tmp_path, capsys, args,
                                                          fragment):
    cfg, out = finished
    bad = corrupt_idx(tmp_path / "bad")
    args = [a.replace("{bad}", str(bad)) for a in args]
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    code = main(["run", str(cfg), "--out", str(out), "--method", "dae-ticket",
                 "--set", "data.num_clients=4", "--quiet", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("fedticket: error:") and "\n" not in err
    assert fragment.lower() in err.lower()
    assert sorted(p.name for p in out.iterdir()) == before


def test_divergence_exits_1_and_leaves_no_finished_run_folder(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG)
    out = tmp_path / "runs"
    code = main(["run", str(cfg), "--out", str(out), "--method", "fedavg",
                 "--set", "federate.lr=1e30", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "diverged" in err and "\n" not in err
    # only the hidden folder with the last good checkpoint (tests/test_resume.py)
    assert [p.name[:5] for p in out.iterdir() if not p.name.startswith("_")] == [".tmp-"]


def test_compare_on_empty_dir_is_an_error(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("fedticket: error:")


def test_console_script_runs():
    exe = Path(sys.executable).with_name("fedticket")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "fedticket.cli"]
    res = subprocess.run([*cmd, "run", "nope.toml"], capture_output=True, text=True,
                         env=os.environ | {"PYTHONPATH": "src"}, timeout=120)
    assert res.returncode == 2 and "config file not found: nope.toml" in res.stderr


def test_stale_temporary_folder_of_a_dead_process_is_removed(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG.replace("rounds = 3", "rounds = 1"))
    out = tmp_path / "runs"
    from fedticket.spec import load_config

    spec = load_config(cfg).specs()[0]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = out / f".tmp-{spec.run_name()}-{dead}"
    stale.mkdir(parents=True)
    (stale / "metrics.jsonl").write_text("half a line")
    assert main(["run", str(cfg), "--out", str(out), "--method", spec.method, "--quiet"]) == 0
    assert not stale.exists() and (out / spec.run_name() / "summary.json").is_file()


def test_other_models_partitions_and_pools_run_end_to_end(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    npz = tmp_path / "rgb.npz"
    np.savez(npz, x=rng.integers(0, 256, (240, 32, 32, 3), dtype=np.uint8),
             y=rng.integers(0, 4, 240))
    cases = {
        "cifar": ["--set", f'data.path="{npz}"', "--set", 'data.dataset="npz"',
                  "--set", "data.pool_size=80", "--set", 'model.name="cnn-cifar"',
                  "--set", 'data.partition="shards"', "--set", "data.shards_per_client=2"],
        "mlp": ["--set", 'model.name="mlp"', "--set", "model.hidden=[32]",
                "--set", 'data.partition="dirichlet"', "--set", "data.dirichlet_alpha=1.0",
                "--set", "prune.levels=2", "--set", 'prune.scope="layer"'],
        "digits-pool-from-npz": ["--set", 'data.pool_dataset="npz"',
                                 "--set", f'data.pool_path="{npz}"', "--set", "data.pool_size=50"],
    }
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG.replace("rounds = 3", "rounds = 1"))
    for name, extra in cases.items():
        out = tmp_path / name
        code = main(["run", str(cfg), "--out", str(out), "--method", "dae-ticket",
                     "--seed", "1", "--quiet", *extra])
        assert code == 0, name
        (folder,) = [p for p in out.iterdir() if (p / "summary.json").is_file()]
        summary = read(folder, "summary.json")
        assert summary["seed"] == 1 and summary["rounds"] == 1
        assert abs(summary["prunable_density"] - 0.5) < 0.01, name


def test_interrupted_run_keeps_its_checkpoint_and_rerun_gives_the_uninterrupted_result(
    finished, tmp_path, monkeypatch, capsys
):
    cfg, out = finished
    from fedticket import runner

    original = runner.Progress.on_round

    def interrupt_at_round_2(self, log):
        if log.round == 2:
            raise KeyboardInterrupt
        original(self, log)

    monkeypatch.setattr(runner.Progress, "on_round", interrupt_at_round_2)
    fresh = tmp_path / "runs"
    assert main(["run", str(cfg), "--out", str(fresh), "--method", "dae-ticket"]) == 130
    assert "run the same command to resume" in capsys.readouterr().err
    [tmp] = [p for p in fresh.iterdir() if not p.name.startswith("_")]
    assert tmp.name.startswith(".tmp-") and (tmp / "checkpoint.npz").is_file()
    monkeypatch.setattr(runner.Progress, "on_round", original)
    assert main(["run", str(cfg), "--out", str(fresh), "--method", "dae-ticket",
                 "--quiet"]) == 0
    assert "resuming from the checkpoint after round 2" in capsys.readouterr().err
    again = read(run_folders(fresh)["dae-ticket"], "metrics.jsonl")
    first = read(run_folders(out)["dae-ticket"], "metrics.jsonl")
    assert [r["test_accuracy"] for r in again] == [r["test_accuracy"] for r in first]
    assert [r["cum_up_bytes"] for r in again] == [r["cum_up_bytes"] for r in first]


def test_compare_prints_kept_weights_and_flops_per_layer(finished, capsys):
    _, out = finished
    capsys.readouterr()
    assert main(["compare", str(out), "--no-plots", "--target", "0.3"]) == 0
    text = capsys.readouterr().out
    layers = text.split("kept fraction per layer")[1].splitlines()
    header = layers[1].split()
    assert header == ["method", "body.conv1", "body.conv2", "body.fc1", "head", "all"]
    rows = {line.split()[0]: line.split()[1:] for line in layers[3:] if line.strip()}
    assert rows["fedavg"] == ["1.000/1.000"] * 5
    report = read(run_folders(out)["dae-ticket"], "mask_report.json")
    flops = report["flops"]
    whole = f"{report['density']:.3f}/" + (
        f"{flops['sparse_train_flops_per_sample'] / flops['dense_train_flops_per_sample']:.3f}")
    assert rows["dae-ticket"][-1] == whole
    assert rows["dae-ticket"][3] == "1.000/1.000"  # the head is not prunable by default


def test_jobs_split_the_cores_and_give_the_numbers_of_one_thread_runs(tmp_path):
    """--jobs 2 on this package's runs equals running them one by one with the threads
    each job gets (cores // 2; at least 1)."""
    from fedticket.runner import cores

    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG)
    threads = max(1, cores() // 2)
    env = dict(os.environ)
    base = [sys.executable, "-m", "fedticket.cli", "run", str(cfg), "--quiet",
            "--method", "fedavg", "--method", "dae-ticket", "--seed", "0"]
    par = subprocess.run([*base, "--out", str(tmp_path / "par"), "--jobs", "2"], env=env,
                         capture_output=True, text=True, timeout=600)
    seq = subprocess.run([*base, "--out", str(tmp_path / "seq"), "--threads", str(threads)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert par.returncode == 0 and seq.returncode == 0, par.stderr + seq.stderr
    names = sorted(p.name for p in (tmp_path / "par").iterdir() if not p.name.startswith("_"))
    assert len(names) == 2  # one run for each of the two jobs
    for name in names:
        a = read(tmp_path / "par" / name, "metrics.jsonl")
        b = read(tmp_path / "seq" / name, "metrics.jsonl")
        assert [r["test_accuracy"] for r in a] == [r["test_accuracy"] for r in b]
        assert read(tmp_path / "par" / name, "summary.json")["threads"] == threads


def test_a_run_being_written_by_a_live_process_is_refused(tmp_path):
    from fedticket.errors import FedticketError
    from fedticket.run_folder import in_run_folder

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tmp = tmp_path / ".tmp-x"
        tmp.mkdir()
        (tmp / "owner.pid").write_text(str(other.pid))
        with pytest.raises(FedticketError, match=f"being written by process {other.pid}"):
            in_run_folder(tmp_path, "x", lambda folder: None, None, "x")
        assert (tmp / "owner.pid").read_text() == str(other.pid)
    finally:
        other.kill()
        other.wait()
    # once that process is gone, the run starts afresh in the same folder
    assert in_run_folder(tmp_path, "x", lambda folder: (folder / "summary.json").write_text("{}"),
                         None, "x") == tmp_path / "x"
