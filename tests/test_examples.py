"""examples/your-model/ as a user runs it: a model that is not in the registry, an image
folder made by a script, the config through `fedticket run` and `fedticket export`, and
the Python API script."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "your-model"
BIN = Path(sys.executable).parent


def sh(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    out = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                         env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    work = tmp_path_factory.mktemp("your-model")
    for f in ("mymodel.py", "make_images.py", "config.toml", "ticket.py"):
        shutil.copy(EXAMPLE / f, work / f)
    out = sh([sys.executable, "make_images.py", "images"], work)
    assert "1797 images in 10 classes" in out.stdout
    return work


def test_the_config_runs_exports_and_the_onnx_file_scores_what_the_run_reported(folder):
    ort = pytest.importorskip("onnxruntime", reason="needs the export extra (make test has it)")
    # the example's config as it is, but 2 of its 4 rounds (the mechanism, in half the time)
    sh([BIN / "fedticket", "run", "config.toml", "--out", "runs", "--threads", "1", "--quiet",
        "--set", "federate.rounds=2"], folder)
    runs = {p.name.split("_")[0]: p for p in (folder / "runs").iterdir() if "_s0_" in p.name}
    assert set(runs) == {"fedavg", "dae-ticket", "dae-ticket-fast"}
    fast = runs["dae-ticket-fast"]
    summary = json.loads((fast / "summary.json").read_text())
    assert summary["compute"] == "structured" and summary["rounds"] == 2
    report = json.loads((fast / "mask_report.json").read_text())
    assert report["layers"]["body.stem_bn.running_var"]["prunable"] is False
    sh([BIN / "fedticket", "export", fast, "--format", "onnx", "--out", "fast.onnx"], folder)
    # the test split of the folder, as fedticket reads it
    from fedticket.data import load_source

    src = load_source("folder", str(folder / "images"))
    x = (src.x_test.astype(np.float32) / 255.0)
    sess = ort.InferenceSession(str(folder / "fast.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    accuracy = float((logits.argmax(1) == src.y_test).mean())
    assert abs(accuracy - summary["final_accuracy"]) <= 1 / len(x)
    # the compact model: fewer channels in the stem than the 16 of mymodel.py
    import onnx

    shapes = {i.name: list(i.dims) for i in onnx.load(str(folder / "fast.onnx")).graph.initializer}
    stem = next(s for n, s in shapes.items() if "stem" in n and len(s) == 4)
    assert stem[0] < 16


def test_the_python_api_script_runs_the_whole_path(folder):
    pytest.importorskip("flwr", reason="Flower is not installed: pip install -e '.[flower]'")
    pytest.importorskip("onnxruntime", reason="needs the export extra (make test has it)")
    out = sh([sys.executable, "ticket.py", "images", "--rounds", "2", "--out", "api.onnx"],
             folder)
    lines = out.stdout.splitlines()
    assert lines[0].startswith("kept channels: {'body.stem':")
    assert any(line.startswith("simulator: test accuracy") for line in lines)
    assert any(line.startswith("flower: test accuracy") for line in lines)
    assert (folder / "api.onnx").stat().st_size > 0


def test_the_users_model_and_folder_run_on_a_real_flower_deployment(folder):
    """`fedticket deploy` from the example's folder: the SuperNodes import mymodel.py and
    read the image folder themselves; the run matches the simulator's bytes."""
    pytest.importorskip("flwr", reason="Flower is not installed: pip install -e '.[flower]'")
    small = ["--method", "dae-ticket-fast", "--set", "data.num_clients=2",
             "--set", "federate.rounds=1", "--set", "federate.client_fraction=1.0",
             "--set", "pretrain.epochs=1"]
    # the simulator first, into the same folder: the ServerApp finds its server stages
    # in the cache there (one DAE for both engines, as for two methods of one study)
    sh([BIN / "fedticket", "run", "config.toml", "--out", "both", "--threads", "1", "--quiet",
        *small], folder)
    sh([BIN / "fedticket", "deploy", "config.toml", "--out", "both", "--nodes", "2", *small],
       folder)
    [dep] = list((folder / "both").glob("dae-ticket-fast_s0_*_flower"))
    [sim] = [p for p in (folder / "both").glob("dae-ticket-fast_s0_*") if p != dep]
    a, b = (json.loads((p / "summary.json").read_text()) for p in (sim, dep))
    assert b["engine"] == "flower" and b["compute"] == a["compute"] == "structured"
    assert a["server"]["cached"] is False and b["server"]["cached"] is True
    for key in ("total_down_bytes", "total_up_bytes", "total_mask_bytes", "total_client_flops"):
        assert a[key] == b[key], key
    assert abs(a["final_accuracy"] - b["final_accuracy"]) <= 1e-4
