"""Summarising a study: the small JSON file its tables, verdicts and figures are made
from, read and written with provenance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedticket.errors import FedticketError
from fedticket.io import git_commit, versions
from fedticket.paths import is_finished
from fedticket.report.compare import compare
from fedticket.report.records import KEPT_FIELDS, TargetResult
from fedticket.report.runs import Run, load_run
from fedticket.report.study_plots import (
    curves,
    plot_curves,
    plot_pareto,
    plot_sweep,
    provenance,
)
from fedticket.study.load import BASE, Study, variant_cells
from fedticket.study.questions import questions_of
from fedticket.study.run import timings

PROBE_TOLERANCE = 0.6
"""How far apart (relative) the speed probes of two runs whose CPU times are paired may
be. Set from the probe's spread on this machine, idle: 20 probes (each the fastest of 5)
ran from 44.7 to 67.2 ms, 50% apart, within one minute (docs/REPRODUCTION.md, "The
speed probe"). A tolerance below that refuses runs for the host's noise alone; 60% still
catches the 63% drift once seen between two days, with little margin."""


def check_probes(runs: list[Run], baseline: str, where: str,
                 tolerance: float = PROBE_TOLERANCE) -> dict[str, Any] | None:
    """The spread of the runs' speed probes (:func:`fedticket.environment.speed_probe`);
    a :class:`FedticketError` naming both runs if a run's probe and its baseline run's
    (the same seed) differ by more than ``tolerance``. Runs made before the probe
    existed have none and are not checked."""
    base = {r.seed: r for r in runs if r.method == baseline}
    for r in runs:
        b = base.get(r.seed)
        p, q = r.summary.get("speed_probe_s"), b.summary.get("speed_probe_s") if b else None
        if b is None or r is b or p is None or q is None:
            continue
        apart = max(p, q) / min(p, q) - 1
        if apart > tolerance:
            raise FedticketError(
                f"{where}: runs {r.name} (speed probe {p * 1e3:.0f} ms) and {b.name} "
                f"({q * 1e3:.0f} ms) ran on a machine {apart:.0%} apart in speed, more than "
                f"{tolerance:.0%}: their CPU times cannot be paired; run one again (or "
                f"summarise with a larger --probe-tolerance, which the summary records)")
    probes = [float(r.summary["speed_probe_s"]) for r in runs if "speed_probe_s" in r.summary]
    if not probes:
        return None
    return {"runs": len(probes), "min_s": min(probes), "max_s": max(probes),
            "spread": max(probes) / min(probes) - 1}


def _slim(result: TargetResult) -> dict[str, Any]:
    """A compare result with only the fields the study's tables use (savings are
    recomputed from the means when rendering)."""
    return dict(result) | {"methods": {m: {k: f[k] for k in KEPT_FIELDS}  # type: ignore[literal-required]
                                       for m, f in result["methods"].items()}}


def summarize(study: Study, folder: Path, probe_tolerance: float | None = None
              ) -> dict[str, Any]:
    """What the tables need: per partition (and variant, for a sweep) and target,
    ``compare``'s result against the study's baseline over the grid's finished runs,
    plus the provenance of the runs and the study's questions. Runs are found by the
    names the grid's specs give them, so other studies' runs in a shared folder never
    enter."""
    grid = variant_cells(study)
    baseline = study.questions.baseline
    probe_tolerance = PROBE_TOLERANCE if probe_tolerance is None else probe_tolerance
    parts: dict[str, Any] = {}
    curve_data: dict[str, Any] = {}
    probes: dict[str, Any] = {}
    used = []
    for name, by_variant in grid.items():
        runs = {v: [load_run(folder / s.run_name()) for s in specs
                    if is_finished(folder / s.run_name())]
                for v, specs in by_variant.items()}
        if not any(runs.values()):
            continue
        for group in runs.values():
            used += group
        everything = [r for group in runs.values() for r in group]
        spread = check_probes(everything, baseline, name, probe_tolerance)
        if spread is not None:
            probes[name] = spread
        if not study.variants:
            parts[name] = {f"{t:.2f}": _slim(compare(runs[BASE], target=t, baseline=baseline))
                           for t in study.targets}
            curve_data[name] = curves(runs[BASE])
            continue
        parts[name] = {v: {f"{t:.2f}": _slim(compare(runs[BASE] + runs[v], target=t,
                                                     baseline=baseline))
                           for t in study.targets}
                       for v, _, _ in study.variants if runs[v]}
    summary: dict[str, Any] = {
        "study": study.name,
        "config": study.config.name,
        "partitions": list(parts),
        "seeds": list(study.seeds),
        "targets": list(study.targets),
        "overrides": list(study.overrides),
        "questions": study.questions.as_dict(),
        "git": git_commit(),
        "run_commits": sorted({str((r.spec.get("git") or {}).get("commit", "?"))[:10]
                               + ("+dirty" if (r.spec.get("git") or {}).get("dirty") else "")
                               for r in used}),
        "versions": versions(),
        "timings": [{k: r[k] for k in ("started", "partitions", "runs", "ran", "jobs",
                                         "workers", "cores", "wall_s", "stopped") if k in r}
                    for r in timings(folder, study.name)],
        "results": parts,
    }
    if curve_data:
        summary["curves"] = curve_data
    if probes:
        summary["probes"] = probes
        summary["probe_tolerance"] = probe_tolerance
    if study.variants:
        summary["methods"] = list(study.methods)
        summary["variants"] = {v: {"set": list(items), "methods": list(m or study.methods)}
                               for v, items, m in study.variants}
    return summary



def write_summary(summary: dict[str, Any], path: Path) -> None:
    from fedticket.io import atomic_write_json

    atomic_write_json(path, summary)


def read_summary(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def plot_summary(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """The study's figures from its summary: accuracy curves per partition for a grid,
    one panel figure for a sweep."""
    if "variants" in summary:
        extra = [plot_pareto(summary, out_dir)] if questions_of(summary).pareto else []
        return [plot_sweep(summary, out_dir), *extra]
    return [p for part, by_method in summary.get("curves", {}).items()
            for p in plot_curves(summary["study"], part, by_method, summary["targets"], out_dir,
                                 note=provenance(summary))]
