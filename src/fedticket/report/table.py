"""Render a :func:`compare` result as a fixed-width text table or a markdown table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fedticket.report.records import TargetResult
    from fedticket.report.runs import Run

NULL = "—"

# (header, field, scale applied to mean and std, format)
COLUMNS: tuple[tuple[str, str, float, str], ...] = (
    ("density", "density", 1.0, ".3f"),
    ("final acc", "final_accuracy", 1.0, ".3f"),
    ("best acc", "best_accuracy", 1.0, ".3f"),
    ("rounds→target", "rounds_to_target", 1.0, ".1f"),
    ("rounds→held", "rounds_to_target_smoothed", 1.0, ".1f"),
    ("traffic MB→target", "traffic_bytes_to_target", 1e-6, ".3f"),
    ("GFLOPs→target", "client_flops_to_target", 1e-9, ".3f"),
    ("CPU s→target", "client_cpu_s_to_target", 1.0, ".2f"),
    ("traffic save %", "traffic_saving_pct", 1.0, ".1f"),
    ("GFLOPs save %", "client_flops_saving_pct", 1.0, ".1f"),
    ("CPU save %", "client_cpu_s_saving_pct", 1.0, ".1f"),
    ("rounds save %", "rounds_saving_pct", 1.0, ".1f"),
)

REACH_FIELD = "rounds_to_target"


def format_stat(stat: Mapping[str, Any] | None, scale: float = 1.0, fmt: str = ".3f",
                unit: str = "") -> str:
    """``mean±std`` (``mean`` alone when std is null or n == 1), ``mean [lo, hi]`` for a
    saving with an interval, or ``—`` when null; ``unit`` goes after the mean."""
    if not stat or stat.get("mean") is None:
        return NULL
    text = format(stat["mean"] * scale, fmt) + unit
    if stat.get("lo") is not None:
        return f"{text} [{stat['lo'] * scale:{fmt}}, {stat['hi'] * scale:{fmt}}]"
    if stat.get("std") is not None and stat.get("n", 0) >= 2:
        text += "±" + format(stat["std"] * scale, fmt)
    return text


def table_rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and one row of cells per method.

    ``n`` is the number of runs; ``reached`` is how many of them reached the target.
    MB are 10**6 bytes, GFLOPs 10**9 FLOPs.
    """
    header = ["method", "n", "reached"] + [c[0] for c in COLUMNS]
    rows = []
    oracles = set(result.get("oracles", ()))
    for method, fields in result["methods"].items():
        n = fields["final_accuracy"]["n"]
        label = f"{method} (oracle)" if method in oracles else method
        cells = [label, str(n), f"{fields[REACH_FIELD]['n']}/{n}"]
        cells += [format_stat(fields[f], scale, fmt) for _, f, scale, fmt in COLUMNS]
        rows.append(cells)
    return header, rows


def _title(result: Mapping[str, Any]) -> str:
    title = (
        f"target test accuracy {result['target']:.3f}, reached by a trained round (round >= 1);"
        f" savings vs {result['baseline']}, paired by seed: 100 x (1 - geometric mean of the"
        f" per-seed cost ratios) [95% t-interval; none with fewer than 3 seeds];"
        f" other columns mean±sample std over seeds"
    )
    if result.get("oracles"):
        title += "; (oracle): uses the server pool's labels, which the method does not have"
    return title


def _fixed_width(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([title, line(header), rule, *map(line, rows)])


def _markdown(title: str, header: list[str], rows: list[list[str]]) -> str:
    align = [":--"] + ["--:"] * (len(header) - 1)
    lines = [f"| {' | '.join(cells)} |" for cells in [header, align, *rows]]
    return "\n".join([title, "", *lines])


def format_table(result: TargetResult) -> str:
    """A fixed-width text table, one row per method, after a line naming the target."""
    return _fixed_width(_title(result), *table_rows(result))


def to_markdown(result: TargetResult) -> str:
    """The same table as GitHub markdown, after a line naming the target."""
    return _markdown(_title(result), *table_rows(result))


def layer_fractions(runs: list[Run]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per method and layer, the kept fraction of the layer's weights and of its training
    FLOPs, each the mean over seeds; layers in model order, ``all`` (the whole model) last."""
    methods: dict[str, list[Run]] = {}
    names: list[str] = []
    for run in runs:
        methods.setdefault(run.method, []).append(run)
        names += [n for n in run.layers if n not in names]
    names = [n for n in names if n != "all"] + (["all"] if "all" in names else [])
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for method, group in methods.items():
        out[method] = {}
        for name in names:
            pairs = [r.layers[name] for r in group if name in r.layers]
            if pairs:
                w, f = np.mean(pairs, axis=0)
                out[method][name] = (float(w), float(f))
    return out


def layer_rows(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """Per method and layer, ``weights/FLOPs``: the kept fraction of the layer's weights
    and of its training FLOPs, each the mean over seeds (:func:`layer_fractions`)."""
    fractions = layer_fractions(runs)
    names = list(dict.fromkeys(n for layers in fractions.values() for n in layers))
    names = [n for n in names if n != "all"] + (["all"] if "all" in names else [])
    rows = []
    for method, layers in fractions.items():
        rows.append([method] + [f"{layers[n][0]:.3f}/{layers[n][1]:.3f}" if n in layers
                                else NULL for n in names])
    return ["method", *names], rows


def _layers_title() -> str:
    return "kept fraction per layer, weights/training FLOPs (mean over seeds)"


def format_layers(runs: list[Run]) -> str:
    """:func:`layer_rows` as a fixed-width text table."""
    return _fixed_width(_layers_title(), *layer_rows(runs))


def layers_markdown(runs: list[Run]) -> str:
    """:func:`layer_rows` as a GitHub markdown table."""
    return _markdown(_layers_title(), *layer_rows(runs))
