"""Exported `dae-ticket-fast` model against the dense one in onnxruntime (target p6).

For the FedAvg CNN (`cnn-fedavg`, 1x28x28, 10 classes), a residual network when the
model registry has one, and two networks of the test suite's zoo (`tests/zoo.py`: the
MobileNetV2-style depthwise-separable one and the small vision transformer), a
`dae-ticket-fast`-style subnetwork is made without a federated run: the model with
random weights (seed 0; what is timed does not depend on
the values), the pipeline's pruning stage (`fedticket.stages.prune_model`: FLOP-aware
channel pruning from `fedticket.pruning.structured`, then magnitude pruning to the
target sparsity), and `fedticket.pruning.compact.Compact` for the physically smaller
model. Both are written by the code `fedticket export` runs (`fedticket.export`),
and timed in onnxruntime on one thread at batch 1 and batch 64: warm-up calls first,
then dense and compact in turn, the median wall time of each.

Printed: size on disk, latency, the forward FLOP ratio (`layer_costs`: the compact
model as onnxruntime runs it, dense kernels, and the ticket's surviving weights only),
the CPU model, and last `p6_export_latency_ratio_b1` and `p6_export_size_ratio`
(compact / dense, for the CNN).

    .venv/bin/python benchmarks/export.py [--quick] [--repeats 50] [--sparsity 0.8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from _timing import cpu_model

from fedticket.errors import FedticketWarning
from fedticket.export import ExportedModel, onnx_bytes
from fedticket.flops import layer_costs
from fedticket.models import Classifier, build, prunable_names
from fedticket.models.registry import REGISTRY
from fedticket.pruning import Mask
from fedticket.pruning.compact import Compact
from fedticket.pruning.mask import load_tensors, model_tensors
from fedticket.spec import ExperimentSpec, ModelSpec, with_method
from fedticket.stages import prune_model

SHAPE = (1, 28, 28)
ZOO_FAMILIES = ("depthwise", "vit")
"""tests/zoo.py's MobileNetV2-style network and its small vision transformer."""
CLASSES = 10
BATCHES = (1, 64)


@dataclass
class Variant:
    label: str
    path: Path
    size: int
    fwd_flops: int


def registry_model(name: str) -> Classifier:
    return build(ModelSpec(name=name), SHAPE, CLASSES)


def zoo_model(family: str) -> Classifier:
    """A network of the test suite's zoo (tests/zoo.py), taken over as a user's model."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fedticket.models.adapt import from_module
    from zoo import build as build_zoo

    torch.manual_seed(0)
    return from_module(build_zoo(family, SHAPE, CLASSES), SHAPE, CLASSES)


def ticket(make: Callable[[], Classifier], sparsity: float) -> tuple[Classifier, Mask, Compact]:
    """The model (random weights, pruned entries zeroed), its mask and its compact copy."""
    torch.manual_seed(0)
    model = make().eval()
    spec = with_method(ExperimentSpec(), "dae-ticket-fast")
    prune = replace(spec.prune, sparsity=sparsity)
    names = prunable_names(model, include_head=prune.include_head,
                           include_biases=prune.include_biases)
    mask, _ = prune_model(prune, model, SHAPE, names, None, seed=0)
    load_tensors(model, {k: v * mask.float(k) for k, v in model_tensors(model).items()})
    return model, mask, Compact(model, mask, SHAPE)


def export(net: torch.nn.Module, label: str, compact: bool, folder: Path) -> Variant:
    net.eval()
    state = {k: v.detach() for k, v in model_tensors(net).items()}
    meta = {"method": "benchmark", "run_name": label, "compact": str(compact).lower()}
    data = onnx_bytes(ExportedModel(net, state, meta, compact, SHAPE, CLASSES,
                                    torch.rand(4, *SHAPE)))
    path = folder / f"{label}.onnx"
    path.write_bytes(data)
    flops = sum(c.forward_flops for c in layer_costs(net, SHAPE))
    return Variant(label, path, path.stat().st_size, flops)


def latencies(variants: list[Variant], repeats: int, warmup: int) -> dict[tuple[str, int], float]:
    """Median wall seconds per (variant, batch) call, one onnxruntime thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    sessions = {v.label: ort.InferenceSession(str(v.path), options,
                                              providers=["CPUExecutionProvider"])
                for v in variants}
    rng = np.random.default_rng(0)
    inputs = {b: rng.random((b, *SHAPE), dtype=np.float32) for b in BATCHES}
    out: dict[tuple[str, int], float] = {}
    for b in BATCHES:
        feed = {"images": inputs[b]}
        for s in sessions.values():
            for _ in range(warmup):
                s.run(None, feed)
        times: dict[str, list[float]] = {label: [] for label in sessions}
        for _ in range(repeats):
            for label, s in sessions.items():  # in turn: both see the same machine noise
                start = time.perf_counter()
                s.run(None, feed)
                times[label].append(time.perf_counter() - start)
        out |= {(label, b): statistics.median(t) for label, t in times.items()}
    return out


def bench(model_name: str, sparsity: float, repeats: int, warmup: int, folder: Path,
          make: Callable[[], Classifier] | None = None) -> dict[str, float]:
    make = make or (lambda: registry_model(model_name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FedticketWarning)  # groups left whole: in the FLOPs
        model, mask, compact = ticket(make, sparsity)
    if compact.is_identity:
        raise SystemExit(f"{model_name}: the mask removes no whole unit; nothing to compare")
    torch.manual_seed(0)
    dense = export(make(), f"{model_name}-dense", False, folder)
    fast = export(compact.net, f"{model_name}-fast", True, folder)
    lat = latencies([dense, fast], repeats, warmup)
    dense_flops = sum(c.forward_flops for c in layer_costs(model, SHAPE))
    ticket_flops = sum(c.forward_flops for c in layer_costs(model, SHAPE, mask))
    print(f"\n{model_name} ({SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}, {CLASSES} classes), "
          f"dae-ticket-fast-style at sparsity {sparsity}, density {mask.density:.3f}")
    print(f"{'model':24} {'bytes':>10} {'fwd MFLOPs':>10} " + " ".join(
        f"{f'b{b} ms':>9}" for b in BATCHES))
    for v in (dense, fast):
        print(f"{v.label:24} {v.size:10,} {v.fwd_flops / 1e6:10.2f} " + " ".join(
            f"{lat[(v.label, b)] * 1e3:9.3f}" for b in BATCHES))
    ratios = {
        "size": fast.size / dense.size,
        "flops": fast.fwd_flops / dense.fwd_flops,
        "ticket_flops": ticket_flops / dense_flops,
    } | {f"latency_b{b}": lat[(fast.label, b)] / lat[(dense.label, b)] for b in BATCHES}
    print(f"compact / dense: size {ratios['size']:.3f}, forward FLOPs {ratios['flops']:.3f} "
          f"as run (dense kernels; {ratios['ticket_flops']:.3f} counting surviving weights "
          f"only), latency " + ", ".join(f"b{b} {ratios[f'latency_b{b}']:.3f}"
                                        for b in BATCHES))
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="3 repeats after 1 warm-up call: checks the script runs, times nothing")
    ap.add_argument("--repeats", type=int, default=50, help="timed calls per variant and batch")
    ap.add_argument("--warmup", type=int, default=5, help="untimed calls first")
    ap.add_argument("--sparsity", type=float, default=0.8,
                    help="prune.sparsity of the ticket (default 0.8, as client_update's s80)")
    args = ap.parse_args()
    repeats, warmup = (3, 1) if args.quick else (args.repeats, args.warmup)
    torch.set_num_threads(1)
    print(f"CPU: {cpu_model()}; onnxruntime 1 thread, torch {torch.__version__}; "
          f"{repeats} repeats after {warmup} warm-up call(s), median wall time")
    with tempfile.TemporaryDirectory() as tmp:
        cnn = bench("cnn-fedavg", args.sparsity, repeats, warmup, Path(tmp))
        resnet = sorted(name for name in REGISTRY if "resnet" in name)
        if resnet:
            bench(resnet[0], args.sparsity, repeats, warmup, Path(tmp))
        else:
            print(f"\nresidual network: skipped, the model registry has none "
                  f"({', '.join(REGISTRY)})")
        for family in ZOO_FAMILIES:  # a depthwise-separable network and a transformer
            bench(f"zoo-{family}", args.sparsity, repeats, warmup, Path(tmp),
                  lambda family=family: zoo_model(family))
    print(f"p6_export_latency_ratio_b1: {cnn['latency_b1']:.3f}")
    print(f"p6_export_size_ratio: {cnn['size']:.3f}")


if __name__ == "__main__":
    main()
