"""Export the final global model of a finished run: ``fedticket export``.

The exported model takes what the run's clients and test set fed the model: float32
images of shape ``(N, C, H, W)`` with values in [0, 1] (the data sources scale pixels
to [0, 1]; fedticket applies no other preprocessing to client or test images, see
:mod:`fedticket.data.splits`) and returns ``(N, num_classes)`` logits.

When the run's mask removes whole units (``dae-ticket-fast``), the model is exported
*compact*: the removed conv channels and hidden units are physically gone
(:class:`~fedticket.pruning.compact.Compact`), which computes what the full-size model
computes under the mask. Otherwise the full-size model is exported with the final
state, its pruned weights exact zeros.

Two formats:

- ``onnx``: the graph from ``torch.onnx.export`` (the ``torch.export``-based exporter),
  input ``images`` with a dynamic batch dimension, output ``logits``;
- ``safetensors``: the model's tensors under their parameter names
  (``body.conv1.weight``), a JSON header and raw little-endian arrays, no pickle.

Both carry the same metadata (method, run name, input shape, classes, fedticket
version, whether compact): ONNX ``metadata_props``, the safetensors header's
``__metadata__``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedticket import paths
from fedticket._version import __version__
from fedticket.errors import ConfigError, FedticketError
from fedticket.io import atomic_write_bytes, load_states, read_json_object
from fedticket.pruning.mask import Mask, load_tensors

FORMATS = ("onnx", "safetensors")
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
INPUT_DOC = "float32 images (N, C, H, W), values in [0, 1], no other preprocessing"
CHECK_IMAGES = 16
"""Test images the exported ONNX model is checked on against the PyTorch model."""
CHECK_TOLERANCE = 1e-4
"""Largest logit difference (relative to the logits' scale) the check accepts."""

State = dict[str, torch.Tensor]


@dataclass
class ExportedModel:
    """The model of a finished run, ready to export.

    Attributes
    ----------
    net
        The module to export, in eval mode: the compact copy or the full-size model.
    state
        Its tensors (parameters and floating-point buffers), on the full model's names.
    metadata
        String metadata written into the file.
    compact
        Whether ``net`` is the compact model.
    input_shape
        ``(C, H, W)`` of one image.
    num_classes
        Number of logits per image.
    test_images
        A few of the run's test images, for checking an export.
    """

    net: nn.Module
    state: State
    metadata: dict[str, str]
    compact: bool
    input_shape: tuple[int, int, int]
    num_classes: int
    test_images: torch.Tensor


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, "the run folder is damaged, run it again")


def check_run_dir(run_dir: Path) -> None:
    """Raise :class:`FedticketError` unless ``run_dir`` is a finished run folder."""
    if not run_dir.exists():
        raise FedticketError(f"run folder not found: {run_dir}; give a folder written by "
                             "`fedticket run` (e.g. runs/fedavg_s0_HASH)")
    if not run_dir.is_dir():
        raise FedticketError(f"{run_dir} is not a folder; give a run folder written by "
                             "`fedticket run`")
    needed = (paths.SUMMARY, paths.FINAL, paths.SPEC, paths.MASK)
    missing = [name for name in needed if not (run_dir / name).is_file()]
    if missing:
        raise FedticketError(f"{run_dir} is not a finished run (no {', '.join(missing)}); "
                             "give a run folder of a run that finished, or run it to the end")


def check_output(out: Path, fmt: str) -> None:
    """Raise :class:`FedticketError` for an unknown format or an unusable output path."""
    if fmt not in FORMATS:
        raise FedticketError(f"unknown export format {fmt!r}; choose from: {', '.join(FORMATS)}")
    if out.is_dir():
        raise FedticketError(f"--out {out} is a folder; give a file name, e.g. "
                             f"{out / ('model.' + fmt)}")
    if not out.parent.is_dir():
        raise FedticketError(f"the folder of --out {out} does not exist; create "
                             f"{out.parent} first")


def load_run_model(run_dir: Path, compact: bool = True) -> ExportedModel:
    """Rebuild the final global model of the finished run in ``run_dir``.

    Parameters
    ----------
    run_dir
        A run folder written by ``fedticket run`` (spec.json, mask.npz, final.npz,
        summary.json).
    compact
        Build the compact model when the mask removes whole units (the default);
        ``False`` always gives the full-size model.

    Returns
    -------
    ExportedModel
        The model in eval mode with the final state loaded, and its metadata.

    Raises
    ------
    FedticketError
        If the folder is not a finished run, or its files do not fit together.
    """
    from fedticket.data import load_splits
    from fedticket.models import build
    from fedticket.spec import spec_from_dict

    check_run_dir(run_dir)
    provenance = _read_json(run_dir / paths.SPEC)
    summary = _read_json(run_dir / paths.SUMMARY)
    if not isinstance(provenance.get("spec"), dict):
        raise FedticketError(f"{run_dir / paths.SPEC} holds no spec; the run folder is "
                             "damaged, run it again")
    spec = spec_from_dict(provenance["spec"])
    path = run_dir / paths.MASK
    try:
        mask = Mask.load(path)
        path = run_dir / paths.FINAL
        states = load_states(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise FedticketError(f"cannot read {path} ({e}); the run folder is damaged, "
                             "run it again") from None
    if "global" not in states:
        raise FedticketError(f"{run_dir / paths.FINAL} holds no global model; the run "
                             "folder is damaged, run it again")
    state = states["global"]
    splits = load_splits(spec.data, spec.seed)
    shape = tuple(int(d) for d in splits.input_shape)
    input_shape = (shape[0], shape[1], shape[2])
    model = build(spec.model, input_shape, splits.num_classes)
    mask.check_matches(model)
    return exported_model(model, mask, input_shape, splits.num_classes, state,
                          splits.test.x[:CHECK_IMAGES].clone(), {
                              "method": str(summary.get("method", spec.method)),
                              "run_name": str(summary.get("run_name", spec.run_name())),
                              "seed": str(spec.seed),
                              "model": spec.model.name,
                              "final_accuracy": json.dumps(summary.get("final_accuracy")),
                          }, compact)


def exported_model(model: nn.Module, mask: Mask, input_shape: tuple[int, int, int],
                   num_classes: int, state: Mapping[str, torch.Tensor],
                   test_images: torch.Tensor, metadata: Mapping[str, str],
                   compact: bool = True) -> ExportedModel:
    """``model`` holding ``state``, ready to export: the compact copy when ``compact`` and
    the mask removes whole units, else ``model`` itself (loaded in place); in eval mode,
    with the format's metadata added to ``metadata``."""
    from fedticket.pruning.compact import Compact

    load_tensors(model, state)
    net: nn.Module = model
    net_state: State = dict(state)
    is_compact = False
    if compact:
        try:
            c = Compact(model, mask, input_shape)
        except ConfigError:  # no channel graph for this model: nothing to cut away
            c = None
        if c is not None and not c.is_identity:
            net_state = c.compact(state)
            net = c.net
            load_tensors(net, net_state)
            is_compact = True
    net.eval()
    meta = {
        "format": "fedticket-export-1",
        **metadata,
        "input_shape": json.dumps(list(input_shape)),
        "input": INPUT_DOC,
        "num_classes": str(num_classes),
        "compact": json.dumps(is_compact),
        "fedticket_version": __version__,
    }
    return ExportedModel(net, {k: v.detach().contiguous() for k, v in net_state.items()},
                         meta, is_compact, input_shape, num_classes, test_images)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's progress lines, registry notes and deprecation warnings off."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def onnx_bytes(model: ExportedModel) -> bytes:
    """The model as a serialized ONNX ``ModelProto`` (dynamic batch dimension).

    Uses the ``torch.export``-based exporter (``dynamo=True``, PyTorch's default since
    2.9; the TorchScript exporter is deprecated), which runs offline with onnxscript.
    """
    try:
        import onnx  # noqa: F401  (the exporter needs it; fail here with the fix)
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise FedticketError(f"ONNX export needs {e.name}; install it with: "
                             "pip install 'fedticket[export]'") from None
    example = torch.zeros(2, *model.input_shape)
    batch = torch.export.Dim("batch")
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            model.net, (example,), dynamo=True, verbose=False,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
        )
    assert program is not None
    proto = program.model_proto
    _strip_debug_info(proto.graph)
    proto.doc_string = (f"fedticket {model.metadata.get('method', '')} run "
                        f"{model.metadata.get('run_name', '')}: {INPUT_DOC} -> logits")
    for key, value in model.metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return bytes(proto.SerializeToString())


def _strip_debug_info(graph: Any) -> None:
    """Drop the exporter's per-node debug notes (source stack traces with this machine's
    paths, FX node text): they are half of a small model's file and say nothing about
    what it computes."""
    for node in graph.node:
        del node.metadata_props[:]
        for attr in node.attribute:
            if attr.HasField("g"):
                _strip_debug_info(attr.g)
            for sub in attr.graphs:
                _strip_debug_info(sub)
    for values in (graph.input, graph.output, graph.value_info, graph.initializer):
        for v in values:
            del v.metadata_props[:]


def check_onnx(data: bytes, model: ExportedModel) -> float | None:
    """Largest difference between the ONNX model's logits and the PyTorch model's on a
    few test images, in onnxruntime (``None`` when onnxruntime is not installed).

    Raises
    ------
    FedticketError
        If the difference is larger than :data:`CHECK_TOLERANCE` (relative).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    x = model.test_images
    [got] = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
    with torch.no_grad():
        want = model.net(x).numpy()
    diff = float(np.abs(got - want).max()) if len(x) else 0.0
    scale = max(1.0, float(np.abs(want).max()) if len(x) else 0.0)
    if not diff <= CHECK_TOLERANCE * scale:
        raise FedticketError(f"the ONNX model's logits differ from PyTorch's by {diff:.3g}; "
                             "this is a bug in the export, please report it")
    return diff


def safetensors_bytes(model: ExportedModel) -> bytes:
    """The model's tensors as a safetensors file (JSON header with ``__metadata__``)."""
    from safetensors.torch import save

    return bytes(save(model.state, metadata=model.metadata))


def export_run(run_dir: Path | str, fmt: str, out: Path | str, compact: bool = True
               ) -> dict[str, Any]:
    """Write the final global model of the finished run in ``run_dir`` to ``out``.

    Parameters
    ----------
    run_dir
        A finished run folder written by ``fedticket run``.
    fmt
        ``"onnx"`` or ``"safetensors"``.
    out
        The file to write (atomically: a temp file beside it, fsync, rename). Its folder
        must exist.
    compact
        Export the compact model when the mask removes whole units (the default).

    Returns
    -------
    dict
        ``format``, ``path``, ``bytes``, ``compact``, ``params`` (parameters of the
        exported model), ``nonzero_params``, ``input_shape``, ``num_classes`` and, for
        ONNX, ``max_abs_diff`` (to PyTorch's logits on a few test images; ``None``
        without onnxruntime).

    Raises
    ------
    FedticketError
        On bad input (no finished run, unknown format, unusable output path); nothing
        is written then.
    """
    run_dir, out = Path(run_dir), Path(out)
    check_output(out, fmt)
    check_run_dir(run_dir)
    return write(load_run_model(run_dir, compact=compact), fmt, out)


def write(model: ExportedModel, fmt: str, out: Path) -> dict[str, Any]:
    """Encode ``model`` as ``fmt``, check an ONNX file in onnxruntime, and write it to
    ``out`` atomically; the report of :func:`export_run`."""
    check_output(out, fmt)
    report: dict[str, Any] = {}
    if fmt == "onnx":
        data = onnx_bytes(model)
        report["max_abs_diff"] = check_onnx(data, model)
    else:
        data = safetensors_bytes(model)
    check_output(out, fmt)  # still usable after the export's seconds
    atomic_write_bytes(out, data)
    params = list(model.net.parameters())
    return {
        "format": fmt,
        "path": str(out),
        "bytes": len(data),
        "compact": model.compact,
        "params": sum(p.numel() for p in params),
        "nonzero_params": sum(int(p.count_nonzero()) for p in params),
        "input_shape": list(model.input_shape),
        "num_classes": model.num_classes,
    } | report


def describe(report: Mapping[str, Any]) -> str:
    """One line about an export, for the command line."""
    kind = "compact" if report["compact"] else "full-size"
    return (f"{report['path']}: {report['format']}, {report['bytes']:,} bytes, {kind} model, "
            f"{report['params']:,} parameters ({report['nonzero_params']:,} nonzero), "
            f"input float32 (N, {', '.join(map(str, report['input_shape']))}) in [0, 1]")
