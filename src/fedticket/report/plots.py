"""Accuracy curves against rounds, traffic and client compute, one line per method.

Figures are built with :class:`matplotlib.figure.Figure` rather than pyplot, so no
GUI backend is needed and importing this module does not change the global backend.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fedticket.errors import FedticketError
from fedticket.io import atomic_write
from fedticket.report.runs import Run, group_by_method

Row = dict[str, Any]

# file name -> (what x is, x label, x value of a metrics row); costs go on a log axis, so
# a sparse method's curve is not squeezed against zero beside dense FedAvg's
X_AXES: dict[str, tuple[str, str, Callable[[Row], float]]] = {
    "accuracy_vs_round.png": ("round", "round", lambda r: r["round"]),
    "accuracy_vs_traffic.png": (
        "traffic",
        "cumulative traffic, down + up (MB = 10⁶ bytes, log)",
        lambda r: (r["cum_down_bytes"] + r["cum_up_bytes"]) / 1e6,
    ),
    "accuracy_vs_flops.png": (
        "client compute",
        "cumulative client compute (GFLOPs, log)",
        lambda r: r["cum_client_flops"] / 1e9,
    ),
}


def common_rows(group: list[Run]) -> list[list[Row]]:
    """Per run, its metrics rows at the rounds every run of ``group`` evaluated."""
    rounds = set.intersection(*({r["round"] for r in run.metrics} for run in group))
    if not rounds:
        raise FedticketError(
            f"runs of {group[0].method} share no evaluated round; rerun them with the same spec"
        )
    return [[row for row in run.metrics if row["round"] in rounds] for run in group]


def curve(group: list[Run], x_of: Callable[[Row], float]) -> tuple[np.ndarray, ...]:
    """``(x mean, accuracy mean, accuracy min, accuracy max)`` over seeds per round."""
    rows = common_rows(group)
    x = np.array([[x_of(r) for r in run] for run in rows], dtype=float)
    acc = np.array([[r["test_accuracy"] for r in run] for run in rows], dtype=float)
    return x.mean(0), acc.mean(0), acc.min(0), acc.max(0)


def _save_atomic(fig: Figure, path: Path) -> None:
    """Write ``fig`` as PNG, atomically (:func:`fedticket.io.atomic_write`)."""
    with atomic_write(path) as f:
        fig.savefig(f, format="png")


def figure(groups: dict[str, list[Run]], axis: tuple[str, str, Callable[[Row], float]],
           target: float | None = None) -> Figure:
    """One of :func:`plot`'s figures: accuracy against the ``axis`` of :data:`X_AXES`."""
    what, xlabel, x_of = axis
    fig = Figure(figsize=(6.4, 4.2), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    log = what != "round"
    for method, group in groups.items():
        x, mean, lo, hi = curve(group, x_of)
        if log:  # round 0 costs nothing: it has no place on a log axis
            keep = x > 0
            x, mean, lo, hi = x[keep], mean[keep], lo[keep], hi[keep]
        (line,) = ax.plot(x, mean, marker=".", label=f"{method} (n={len(group)})")
        if len(group) > 1:
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    if log:
        ax.set_xscale("log")
    if target is not None:
        ax.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target {target}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (fraction)")
    ax.set_title(f"Test accuracy vs {what}\n(mean over seeds; band: min–max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot(runs: list[Run], out_dir: Path, target: float | None = None) -> list[Path]:
    """Write ``accuracy_vs_{round,traffic,flops}.png`` into ``out_dir``.

    One line per method: mean test accuracy over seeds at each round evaluated by all
    its seeds (x is the seeds' mean cost at that round), with a band from the min to
    the max over seeds when there is more than one seed. Traffic and compute are on log
    axes, from round 1 (round 0 costs nothing).

    Parameters
    ----------
    runs : list of Run
        From :func:`load_runs`.
    out_dir : Path
        Created if missing.
    target : float, optional
        Drawn as a dashed horizontal line.

    Returns
    -------
    list of Path
        The three PNG files.
    """
    if not runs:
        raise FedticketError("no runs to plot; point at a directory of finished runs")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_by_method(runs)
    paths = []
    for name, axis in X_AXES.items():
        path = out_dir / name
        _save_atomic(figure(groups, axis, target), path)
        paths.append(path)
    return paths
