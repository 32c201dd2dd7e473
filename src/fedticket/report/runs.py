"""Read finished run folders from a results directory.

A run folder is finished when it holds ``summary.json``; it also holds ``spec.json``,
``metrics.jsonl`` (one evaluated round per line) and optionally ``mask_report.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedticket.errors import FedticketError
from fedticket.io import read_json_object
from fedticket.paths import MASK_REPORT as MASK_REPORT_FILE
from fedticket.paths import METRICS as METRICS_FILE
from fedticket.paths import SPEC as SPEC_FILE
from fedticket.paths import SUMMARY as SUMMARY_FILE
from fedticket.spec import METHODS

METRIC_KEYS = (
    "round",
    "test_accuracy",
    "cum_down_bytes",
    "cum_up_bytes",
    "cum_client_flops",
    "cum_client_wall_s",
)



@dataclass(frozen=True)
class Run:
    """One finished (method, seed) run as read from its folder.

    Attributes
    ----------
    name : str
        Folder name, e.g. ``dae-ticket_s0_3fa2b1c9d0``.
    method, seed : str, int
        From ``summary.json``.
    path : Path
        The run folder.
    metrics : list of dict
        Rows of ``metrics.jsonl``, rounds strictly increasing.
    summary, spec : dict
        Contents of ``summary.json`` and ``spec.json``.
    density : float or None
        Mask density from ``mask_report.json``; None when that file is absent.
    """

    name: str
    method: str
    seed: int
    path: Path
    metrics: list[dict[str, Any]] = field(repr=False)
    summary: dict[str, Any] = field(repr=False)
    spec: dict[str, Any] = field(repr=False)
    density: float | None = None
    layers: dict[str, tuple[float, float]] = field(default_factory=dict)


def method_label(method: str, engine: str = "simulator", values: str = "f32") -> str:
    """The row name of a method: ``dae-ticket`` in the simulator, ``dae-ticket@flower`` on
    Flower, ``dae-ticket+q8`` with 8-bit values, so that such runs in one folder stay
    apart in every table."""
    label = method if values == "f32" else f"{method}+{values}"
    return label if engine == "simulator" else f"{label}@{engine}"


def method_order(methods: set[str] | list[str]) -> list[str]:
    """The presets in the order of the preset table (:data:`~fedticket.spec.METHODS`),
    then any others alphabetically."""
    present = set(methods)
    rank = {m: i for i, m in enumerate(METHODS)}

    def key(label: str) -> tuple[int, str, str]:
        base, _, engine = label.partition("@")
        method = base.partition("+")[0]
        return (rank.get(method, len(rank)), base, engine)

    return sorted(present, key=key)


def group_by_method(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by method, in the preset table's order, each group sorted by seed."""
    order = method_order([r.method for r in runs])
    return {m: sorted((r for r in runs if r.method == m), key=lambda r: r.seed) for m in order}


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, "rerun that run or delete its folder")


def _why(e: BaseException) -> str:
    return "nested too deeply" if isinstance(e, RecursionError) else str(e)


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except FileNotFoundError:
        raise FedticketError(f"missing {path}; rerun that run or delete its folder") from None
    except UnicodeDecodeError as e:
        raise FedticketError(f"{path} is not UTF-8 text ({e}); rerun that run") from None
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise FedticketError(
                f"{path} line {i} is not valid JSON ({_why(e)}); rerun that run"
            ) from None
        if not isinstance(row, dict):
            raise FedticketError(f"{path} line {i} is not a JSON object; rerun that run")
        missing = [k for k in METRIC_KEYS if k not in row]
        if missing:
            raise FedticketError(f"{path} line {i} lacks {missing}; rerun that run")
        rows.append(row)
    if not rows:
        raise FedticketError(f"{path} has no evaluated rounds; rerun that run")
    rounds = [r["round"] for r in rows]
    if any(b <= a for a, b in zip(rounds, rounds[1:], strict=False)):
        raise FedticketError(f"{path} rounds are not strictly increasing; rerun that run")
    return rows


def load_run(path: Path) -> Run:
    """Read one finished run folder.

    Raises
    ------
    FedticketError
        If a file is missing or malformed.
    """
    summary = _read_json(path / SUMMARY_FILE)
    for key in ("method", "seed"):
        if key not in summary:
            raise FedticketError(f"{path / SUMMARY_FILE} lacks '{key}'; rerun that run")
    spec = _read_json(path / SPEC_FILE)
    mask_path = path / MASK_REPORT_FILE
    mask_report = _read_json(mask_path) if mask_path.exists() else {}
    density = mask_report.get("density")
    return Run(
        name=path.name,
        method=method_label(str(summary["method"]), str(summary.get("engine", "simulator")),
                            str(((spec.get("spec") or {}).get("federate") or {}).get("values",
                                                                                     "f32"))),
        seed=int(summary["seed"]),
        path=path,
        metrics=_read_metrics(path / METRICS_FILE),
        summary=summary,
        spec=spec,
        density=None if density is None else float(density),
        layers=layer_fractions(mask_report),
    )


def layer_fractions(mask_report: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Per conv / linear layer: (kept fraction of its weights, of its training FLOPs),
    and under ``"all"`` the same for the whole model (all parameters, all FLOPs).

    Read from ``mask_report.json``; empty when the report has no per-layer FLOPs.
    """
    out: dict[str, tuple[float, float]] = {}
    for layer in mask_report.get("flops", {}).get("layers", []):
        if "dense_train_flops" not in layer or not layer.get("weights"):
            continue
        flops = layer["train_flops"] / layer["dense_train_flops"]
        out[layer["name"]] = (layer["nnz_weights"] / layer["weights"], flops)
    flops = mask_report.get("flops", {})
    if out and flops.get("dense_train_flops_per_sample"):
        out["all"] = (
            float(mask_report["density"]),
            flops["sparse_train_flops_per_sample"] / flops["dense_train_flops_per_sample"],
        )
    return out


def load_runs(root: str | Path) -> list[Run]:
    """Read every finished run folder directly under ``root``.

    Entries whose name starts with ``.`` or ``_`` and folders without ``summary.json``
    (unfinished runs) are skipped. Only immediate subfolders are searched.

    Parameters
    ----------
    root : str or Path
        A results directory holding one folder per (method, seed).

    Returns
    -------
    list of Run
        In the preset table's order, then by seed.

    Raises
    ------
    FedticketError
        If ``root`` is not a directory, holds no finished run, or holds two runs with
        the same (method, seed) (results of different experiments mixed in one folder).
    """
    root = Path(root)
    if not root.is_dir():
        raise FedticketError(f"results directory {root} does not exist; pass the folder of runs")
    folders = sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith((".", "_")) and (p / SUMMARY_FILE).is_file()
    )
    if not folders:
        raise FedticketError(
            f"{root} holds no finished run folders (with {SUMMARY_FILE}); run an experiment first"
        )
    runs = [load_run(p) for p in folders]
    seen: dict[tuple[str, int], str] = {}
    for r in runs:
        key = (r.method, r.seed)
        if key in seen:
            raise FedticketError(
                f"{root} holds two runs of {r.method} seed {r.seed} ({seen[key]}, {r.name}); "
                "keep one experiment per results directory"
            )
        seen[key] = r.name
    return [r for group in group_by_method(runs).values() for r in group]
