"""`fedticket export`: the final global model of a finished run as ONNX or safetensors.

One tiny finished run per method (digits, the small CNN, 3 rounds) is made once for the
module; each export is then checked against what the run itself measured.
"""

import json
import struct

import numpy as np
import pytest
import torch

from fedticket.cli import main
from fedticket.data import load_splits
from fedticket.export import export_run
from fedticket.io import load_states
from fedticket.models import build
from fedticket.models.registry import REGISTRY
from fedticket.pruning.compact import Compact
from fedticket.pruning.mask import Mask, load_tensors
from fedticket.spec import spec_from_dict

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

pytestmark = pytest.mark.xdist_group("export")  # its module fixtures are shared

METHODS = ("fedavg", "dae-ticket-fast", "dae-ticket")
CONFIG = f"""
methods = {json.dumps(list(METHODS))}
seeds = [0]
[data]
dataset = "digits"
pool_size = 300
num_clients = 3
[model]
name = "cnn-digits"
[pretrain]
epochs = 1
batch_size = 16
[prune]
sparsity = 0.5
[federate]
rounds = 3
client_fraction = 1.0
local_epochs = 3
batch_size = 16
lr = 0.1
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for this module: the runs and exports are tiny, and on a shared
    machine a second spinning thread costs more than it gives."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    """{method: finished run folder} of one `fedticket run` of the config."""
    root = tmp_path_factory.mktemp("export")
    (root / "tiny.toml").write_text(CONFIG)
    out = root / "runs"
    assert main(["run", str(root / "tiny.toml"), "--out", str(out), "--quiet"]) == 0
    found = {json.loads((d / "summary.json").read_text())["method"]: d
             for d in out.iterdir() if (d / "summary.json").is_file()}
    assert set(found) == set(METHODS)
    return found


@pytest.fixture(scope="module")
def onnx_exports(runs, tmp_path_factory):
    """{method: (path, report)} of each run exported to ONNX."""
    folder = tmp_path_factory.mktemp("onnx")
    return {m: (folder / f"{m}.onnx", export_run(d, "onnx", folder / f"{m}.onnx"))
            for m, d in runs.items()}


def run_files(run):
    """(spec, splits, full-size model with the final state, mask, final state)."""
    spec = spec_from_dict(json.loads((run / "spec.json").read_text())["spec"])
    splits = load_splits(spec.data, spec.seed)
    model = build(spec.model, splits.input_shape, splits.num_classes).eval()
    state = load_states(run / "final.npz")["global"]
    load_tensors(model, state)
    return spec, splits, model, Mask.load(run / "mask.npz"), state


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def weight_shapes(path):
    """{name: shape} of the conv / linear weights (the 2-d and 4-d initializers)."""
    graph = onnx.load(str(path)).graph
    return {i.name: tuple(i.dims) for i in graph.initializer
            if i.name.endswith(".weight") and len(i.dims) in (2, 4)}


@pytest.mark.parametrize("method", METHODS)
def test_onnx_model_scores_the_runs_final_accuracy(method, runs, onnx_exports):
    path, report = onnx_exports[method]
    _, splits, model, mask, _ = run_files(runs[method])
    summary = json.loads((runs[method] / "summary.json").read_text())
    sess = session(path)
    [inp], [out] = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, out.name) == ("images", "logits")
    assert inp.shape[1:] == list(splits.input_shape) and isinstance(inp.shape[0], str)
    x, y = splits.test.x, splits.test.y
    [logits] = sess.run(None, {"images": x.numpy()})
    assert logits.shape == (len(y), splits.num_classes)
    accuracy = float((logits.argmax(1) == y.numpy()).mean())
    # the run evaluated on its training module (channels-last, the compact copy), this on
    # onnxruntime's kernels: the sums run in another order, so a near-tie could flip one
    # argmax; on this run none does, and the accuracy is the run's exactly
    assert abs(accuracy - summary["final_accuracy"]) <= 1 / len(y)
    assert accuracy == summary["final_accuracy"]
    # ...and the logits are the full-size model's under the mask, compact or not
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)
    # batch 1 works too (the batch dimension is dynamic)
    [one] = sess.run(None, {"images": x[:1].numpy()})
    np.testing.assert_allclose(one, want[:1], rtol=1e-4, atol=1e-4)
    expect_compact = not Compact(model, mask, splits.input_shape).is_identity
    assert report["compact"] is expect_compact
    assert report["compact"] is (method == "dae-ticket-fast")  # unstructured: no unit is gone
    assert report["bytes"] == path.stat().st_size
    assert report["max_abs_diff"] is not None and report["max_abs_diff"] < 1e-4
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["method"] == method and meta["run_name"] == summary["run_name"]
    assert json.loads(meta["input_shape"]) == list(splits.input_shape)
    assert meta["num_classes"] == "10" and json.loads(meta["compact"]) is report["compact"]
    assert "fedticket_version" in meta


def test_fast_onnx_model_is_physically_smaller(runs, onnx_exports):
    fast, _ = onnx_exports["dae-ticket-fast"]
    _, splits, model, _, _ = run_files(runs["dae-ticket-fast"])
    dense = {n: tuple(p.shape) for n, p in model.named_parameters() if p.dim() in (2, 4)}
    got = weight_shapes(fast)
    assert set(got) == set(dense)
    for name, shape in got.items():
        assert all(a <= b for a, b in zip(shape, dense[name], strict=True)), name
    # the structured layers lost output channels, fc1 the inputs they fed; the head keeps
    # its classes
    for name in ("body.conv1.weight", "body.conv2.weight"):
        assert got[name][0] < dense[name][0], name
    assert got["body.fc1.weight"][1] < dense["body.fc1.weight"][1]
    assert got["head.weight"][0] == splits.num_classes
    assert sum(map(np.prod, got.values())) < sum(map(np.prod, dense.values()))
    # the full-size exports keep the dense shapes
    assert weight_shapes(onnx_exports["fedavg"][0]) == dense
    assert weight_shapes(onnx_exports["dae-ticket"][0]) == dense
    assert fast.stat().st_size < onnx_exports["fedavg"][0].stat().st_size


@pytest.mark.skipif("resnet8" not in REGISTRY, reason="no resnet8 in the model registry")
def test_batchnorm_resnet_exports_compact_and_scores_the_run(tmp_path):
    """A residual network with BatchNorm: the running statistics travel in final.npz
    (``num_batches_tracked`` does not), the channels tied by residual adds go together."""
    config = CONFIG.replace('"cnn-digits"', '"resnet8"').replace(
        json.dumps(list(METHODS)), '["dae-ticket-fast"]').replace("rounds = 3", "rounds = 2")
    (tmp_path / "resnet.toml").write_text(config)
    assert main(["run", str(tmp_path / "resnet.toml"), "--out", str(tmp_path / "runs"),
                 "--quiet"]) == 0
    [run] = [d for d in (tmp_path / "runs").iterdir() if (d / "summary.json").is_file()]
    state = load_states(run / "final.npz")["global"]
    assert any(".running_mean" in n for n in state)
    assert not any("num_batches_tracked" in n for n in state)
    report = export_run(run, "onnx", tmp_path / "resnet.onnx")
    assert report["compact"] is True
    _, splits, model, _, _ = run_files(run)
    dense = {n: tuple(p.shape) for n, p in model.named_parameters() if p.dim() == 4}
    got = weight_shapes(tmp_path / "resnet.onnx")
    # BatchNorm may be folded into the convolutions; the conv weights keep their names
    smaller = [n for n in dense if n in got and got[n][0] < dense[n][0]]
    assert smaller, (got, dense)
    [logits] = session(tmp_path / "resnet.onnx").run(None, {"images": splits.test.x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(splits.test.x).numpy(), rtol=1e-4, atol=1e-4)
    accuracy = float((logits.argmax(1) == splits.test.y.numpy()).mean())
    summary = json.loads((run / "summary.json").read_text())
    assert abs(accuracy - summary["final_accuracy"]) <= 1 / len(splits.test)
    got_st = export_run(run, "safetensors", tmp_path / "resnet.safetensors")
    assert got_st["compact"] is True
    tensors = safetensors_numpy.load_file(str(tmp_path / "resnet.safetensors"))
    assert any(".running_var" in n for n in tensors)


def read_header(path):
    """(header JSON, byte length of the data after it): the safetensors layout is an
    8-byte little-endian header length, that many bytes of JSON, then raw arrays."""
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    return header, len(blob) - 8 - n


@pytest.mark.parametrize("method", ["dae-ticket-fast", "fedavg"])
def test_safetensors_holds_the_exported_state_and_no_pickle(method, runs, tmp_path, capsys):
    out = tmp_path / "model.safetensors"
    # through the command line, the format from the suffix
    assert main(["export", str(runs[method]), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert printed.err == "" and len(printed.out.splitlines()) == 1
    assert str(out) in printed.out and "safetensors" in printed.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temp left

    _, splits, model, mask, state = run_files(runs[method])
    compact = Compact(model, mask, splits.input_shape)
    want = compact.compact(state) if not compact.is_identity else state
    got = safetensors_numpy.load_file(str(out))
    assert set(got) == set(want)
    for name, t in want.items():
        assert got[name].shape == tuple(t.shape), name
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], t.numpy(), err_msg=name)
    if method == "dae-ticket-fast":
        assert got["body.conv1.weight"].shape[0] < state["body.conv1.weight"].shape[0]
    header, data_bytes = read_header(out)
    assert not out.read_bytes().startswith(b"\x80")  # a pickle starts with its protocol byte
    meta = header.pop("__metadata__")
    assert data_bytes == sum(v.nbytes for v in got.values())  # nothing but the arrays
    assert {k: (v["dtype"], v["shape"]) for k, v in header.items()} == {
        k: ("F32", list(v.shape)) for k, v in got.items()}
    assert meta["method"] == method and json.loads(meta["input_shape"]) == [1, 8, 8]
    assert meta["num_classes"] == "10"
    assert json.loads(meta["compact"]) is (method == "dae-ticket-fast")
    assert meta["run_name"] == runs[method].name and meta["fedticket_version"]


def test_full_size_flag_exports_the_dense_layout(runs, tmp_path, capsys):
    out = tmp_path / "full.safetensors"
    assert main(["export", str(runs["dae-ticket-fast"]), "--format", "safetensors",
                 "--out", str(out), "--full-size"]) == 0
    assert "full-size" in capsys.readouterr().out
    _, _, _, _, state = run_files(runs["dae-ticket-fast"])
    got = safetensors_numpy.load_file(str(out))
    for name, t in state.items():
        np.testing.assert_array_equal(got[name], t.numpy(), err_msg=name)


def one_error_line(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedticket: error: "), err
    return lines[0]


def test_bad_input_is_one_line_and_writes_nothing(runs, tmp_path, capsys):
    run = str(runs["fedavg"])
    out = tmp_path / "m.onnx"
    assert "not found" in one_error_line(capsys, ["export", str(tmp_path / "nope"),
                                                  "--format", "onnx", "--out", str(out)])
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "spec.json").write_text((runs["fedavg"] / "spec.json").read_text())
    line = one_error_line(capsys, ["export", str(unfinished), "--format", "onnx",
                                   "--out", str(out)])
    assert "not a finished run" in line and "summary.json" in line
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in runs["fedavg"].iterdir():
        (damaged / f.name).write_bytes(f.read_bytes()[:100] if f.name == "final.npz"
                                       else f.read_bytes())
    assert "damaged" in one_error_line(capsys, ["export", str(damaged), "--format",
                                                "safetensors", "--out", str(out)])
    line = one_error_line(capsys, ["export", run, "--format", "tflite", "--out", str(out)])
    assert "unknown export format 'tflite'" in line
    line = one_error_line(capsys, ["export", run, "--out", str(tmp_path / "m.bin")])
    assert "--format" in line
    folder = tmp_path / "folder"
    folder.mkdir()
    line = one_error_line(capsys, ["export", run, "--format", "onnx", "--out", str(folder)])
    assert "is a folder" in line
    line = one_error_line(capsys, ["export", run, "--format", "safetensors",
                                   "--out", str(tmp_path / "missing" / "m.safetensors")])
    assert "does not exist" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged", "folder", "unfinished"]
    assert list(folder.iterdir()) == [] and not (tmp_path / "missing").exists()
    assert sorted(p.name for p in unfinished.iterdir()) == ["spec.json"]
