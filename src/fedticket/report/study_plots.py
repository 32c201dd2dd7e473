"""Figures of the reproduction study, drawn from its committed summaries.

:func:`curves` reduces a partition's runs to mean accuracy curves (small enough to
commit in ``docs/results/``); :func:`plot_curves` and :func:`plot_sweep` draw them, so
every figure in docs/REPRODUCTION.md can be redrawn from the repository alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fedticket.report.plots import _save_atomic, common_rows
from fedticket.report.runs import Run, group_by_method

# curve key -> (metrics row -> value, axis label, what it is)
AXES: dict[str, tuple[Any, str, str]] = {
    "round": (lambda r: r["round"], "round", "rounds"),
    "traffic_mb": (lambda r: (r["cum_down_bytes"] + r["cum_up_bytes"]) / 1e6,
                   "cumulative traffic, down + up (MB = 10⁶ bytes)", "traffic"),
    "client_gflops": (lambda r: r["cum_client_flops"] / 1e9,
                      "cumulative client compute (GFLOPs)", "client FLOPs"),
    "client_wall_s": (lambda r: r["cum_client_wall_s"],
                      "cumulative client wall time (s, all clients, one thread each)",
                      "client wall time"),
}


def _round(values: np.ndarray, digits: int = 4) -> list[float]:
    return [float(f"{v:.{digits}g}") for v in values]


def curves(runs: list[Run]) -> dict[str, dict[str, list[float]]]:
    """Per method: the rounds every seed evaluated, the seeds' mean of each cost axis
    there, and the mean, min and max test accuracy."""
    out = {}
    for method, group in group_by_method(runs).items():
        rows = common_rows(group)
        acc = np.array([[r["test_accuracy"] for r in run] for run in rows], dtype=float)
        c = {key: _round(np.array([[f(r) for r in run] for run in rows], dtype=float).mean(0))
             for key, (f, _, _) in AXES.items()}
        c |= {"acc": _round(acc.mean(0)), "acc_min": _round(acc.min(0)),
              "acc_max": _round(acc.max(0)), "seeds": [len(group)]}
        out[method] = c
    return out


def provenance(summary: dict[str, Any]) -> str:
    """The commits a summary's runs were made at, for a figure's title."""
    commits = summary.get("run_commits") or ["?"]
    return "runs at " + ", ".join(c[:10] for c in commits)


def plot_curves(study: str, partition: str, by_method: dict[str, dict[str, list[float]]],
                targets: list[float], out_dir: Path, note: str = "") -> list[Path]:
    """``STUDY-PARTITION-accuracy_vs_{round,traffic_mb,client_gflops,client_wall_s}.png``;
    ``note`` (where the runs came from) goes under the title."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, (_, label, what) in AXES.items():
        fig = Figure(figsize=(6.4, 4.2), dpi=110, layout="constrained")
        ax = fig.add_subplot()
        for i, (method, c) in enumerate(by_method.items()):
            # ten colours; past ten methods the lines go dashed, then dotted, so no two
            # methods look the same
            (line,) = ax.plot(c[key], c["acc"], marker=".", markersize=3,
                              color=f"C{i % 10}", linestyle=("-", "--", ":")[i // 10 % 3],
                              label=f"{method} (n={c['seeds'][0]})")
            ax.fill_between(c[key], c["acc_min"], c["acc_max"], color=line.get_color(),
                            alpha=0.15, linewidth=0)
        for t in targets:
            ax.axhline(t, color="gray", linestyle="--", linewidth=0.8)
        if key != "round":
            ax.set_xscale("log")
        ax.set_ylim(0.4, 0.9)
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{study}, {partition}: accuracy vs {what}\n"
                     "(mean over seeds; band: min–max; dashed: targets)"
                     + (f"\n{note}" if note else ""), fontsize="medium")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", ncol=2)
        path = out_dir / f"{study}-{partition}-accuracy_vs_{key}.png"
        _save_atomic(fig, path)
        paths.append(path)
    return paths


def plot_sweep(summary: dict[str, Any], out_dir: Path) -> Path:
    """One figure per sweep: per partition, final accuracy (top), traffic and client CPU
    time to the high (last) target of each method across the variants, mean ± std over
    seeds (a cost only where every seed reached the target), with the baseline's as a dashed
    line."""
    parts, variants = summary["partitions"], list(summary["variants"])
    target = f"{summary['targets'][-1]:.2f}"  # the high target separates the variants
    n_seeds = len(summary["seeds"])  # a cost is drawn only where every seed reached it
    fig = Figure(figsize=(5.0 * len(parts), 9.0), dpi=110, layout="constrained")
    axes = fig.subplots(3, len(parts), squeeze=False)
    for j, part in enumerate(parts):
        results = summary["results"][part]
        # a method in other values is labelled dae-ticket+q8: one series per method
        labels = {v: {m.partition("+")[0]: m for m in r[target]["methods"]}
                  for v, r in results.items()}
        first = next(iter(results.values()))[target]
        baseline = first["baseline"]
        methods = list(dict.fromkeys(m for v in labels.values() for m in v if m != baseline))
        base = first["methods"][baseline]
        for i, (field, scale, label) in enumerate((
                ("final_accuracy", 1.0, "final test accuracy"),
                ("traffic_bytes_to_target", 1e-6, f"traffic to {target} (MB, log)"),
                ("client_cpu_s_to_target", 1.0, f"client CPU s to {target} (log)"))):
            ax = axes[i][j]
            for c, m in enumerate(methods):
                xs = [k for k, v in enumerate(variants) if v in results and m in labels[v]]
                stats = [results[variants[k]][target]["methods"][labels[variants[k]][m]]
                         .get(field) for k in xs]
                pts = [(k, s["mean"] * scale, (s["std"] or 0.0) * scale)
                       for k, s in zip(xs, stats, strict=True)
                       if s and s["mean"] is not None and s.get("n", n_seeds) == n_seeds]
                if pts:
                    k, mean, std = zip(*pts, strict=True)
                    # a line only joins neighbouring variants, never across another's
                    joined = list(k) == list(range(k[0], k[0] + len(k)))
                    ax.errorbar(k, mean, yerr=std, marker="o", capsize=3, label=m,
                                color=f"C{c}", linestyle="-" if joined else "none")
            if base.get(field) and base[field]["mean"] is not None:
                ax.axhline(base[field]["mean"] * scale, color="gray", linestyle="--",
                           linewidth=1, label=baseline)
            ax.set_xticks(range(len(variants)), variants, fontsize="small",
                          rotation=90 if len(variants) > 8 else 0)
            ax.set_ylabel(label)
            if field != "final_accuracy":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.set_title(f"{part}" if i == 0 else "", fontsize="medium")
            if i == 0 and j == 0:
                ax.legend(fontsize="x-small")
    return _finish(fig, summary, "mean ± std over seeds", out_dir / f"{summary['study']}.png")


def _finish(fig: Figure, summary: dict[str, Any], what: str, path: Path) -> Path:
    """Title ``fig`` with the study, ``what`` it shows and its provenance, and save it."""
    fig.suptitle(f"{summary['study']}: {what} {summary['seeds']} ({provenance(summary)})",
                 fontsize="medium")
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_atomic(fig, path)
    return path


def plot_pareto(summary: dict[str, Any], out_dir: Path, target: str = "0.80") -> Path:
    """Final accuracy against the whole run's traffic (log), one point per (variant,
    method) and partition, mean over seeds with the std of the accuracy; the baseline's a
    gray star, the Pareto front a line."""
    parts = summary["partitions"]
    fig = Figure(figsize=(6.0 * len(parts), 4.8), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(parts), squeeze=False)[0]
    marker = {"f32": "o", "f16": "s", "q8": "^", "q8-ef": "v", "q4": "D", "q4-ef": "P"}
    for ax, part in zip(axes, parts, strict=True):
        pts: list[tuple[float, float]] = []
        methods: list[str] = []
        for i, (variant, by_target) in enumerate(summary["results"][part].items()):
            baseline = by_target[target]["baseline"]
            for name, f in by_target[target]["methods"].items():
                run = f.get("traffic_bytes_run") or {}
                acc = f["final_accuracy"]
                if run.get("mean") is None or acc["mean"] is None or (name == baseline and i):
                    continue
                x, y = run["mean"] / 1e6, acc["mean"]
                pts.append((x, y))
                if name == baseline:
                    ax.plot(x, y, marker="*", markersize=12, color="gray", linestyle="none",
                            label=baseline)
                    continue
                name = name.partition("+")[0]  # dae-ticket+q8: the marker shows the values
                if name not in methods:
                    methods.append(name)
                values = variant.split(" ", 1)[-1]
                sparsity = variant.split(" ", 1)[0]
                ax.errorbar(x, y, yerr=acc.get("std") or 0.0, color=f"C{methods.index(name)}",
                            marker=marker.get(values, "o"), capsize=2, linestyle="none",
                            alpha={"80%": 0.45, "90%": 0.7}.get(sparsity, 1.0))
        front = sorted(p for p in pts if not any((b <= p[0] and a > p[1]) or
                                                 (b < p[0] and a >= p[1]) for b, a in pts))
        if front:
            ax.plot(*zip(*front, strict=True), color="black", linewidth=0.8, linestyle="--",
                    label="Pareto front")
        for c, m in enumerate(methods):
            ax.plot([], [], color=f"C{c}", marker="o", linestyle="none", label=m)
        for v, mk in marker.items():
            ax.plot([], [], color="black", marker=mk, linestyle="none", label=v)
        ax.set_xscale("log")
        ax.set_xlabel("traffic of the whole run (MB, log)")
        ax.set_ylabel("final test accuracy")
        ax.set_title(f"{part} (paler: 80%, 90% sparsity; darkest: 95%)", fontsize="medium")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", ncol=2)
    return _finish(fig, summary, "accuracy against bytes, mean over seeds",
                   out_dir / f"{summary['study']}-pareto.png")
