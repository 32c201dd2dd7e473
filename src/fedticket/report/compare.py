"""Compare methods: accuracy, and the cost of reaching a target accuracy, over seeds."""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np

from fedticket.errors import FedticketError
from fedticket.report.intervals import paired_saving
from fedticket.report.records import (
    COST_FIELDS,
    RUN_FIELDS,
    SAVING_FIELDS,
    MethodResult,
    Stat,
    TargetResult,
)
from fedticket.report.runs import Run, group_by_method
from fedticket.spec import BASELINE, uses_labels


def _finite(x: Any) -> float | None:
    """``x`` as a float, or None when it is missing or not finite."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def aggregate(values: list[float | None]) -> Stat:
    """Mean and sample std (ddof=1; 0.0 for one value) over the non-null values.

    ``n`` counts the non-null values; mean and std are None when ``n == 0``.
    """
    kept = [v for v in values if v is not None]
    if not kept:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(kept, ddof=1)) if len(kept) >= 2 else 0.0
    return {"mean": float(np.mean(kept)), "std": std, "n": len(kept)}


def by_seed(stat: Stat, runs: list[Run], values: list[float | None]) -> Stat:
    """``stat`` with the value of every run keyed by its seed (``"seeds"``, what the
    paired intervals of :mod:`fedticket.report.intervals` need); left out when two runs
    share a seed, as they then cannot be paired."""
    seeds = [str(r.seed) for r in runs]
    if len(set(seeds)) < len(seeds):
        return stat
    return stat | {"seeds": dict(zip(seeds, values, strict=True))}


def saving_pct(
    method: Stat, baseline: Stat | None, method_runs: int | None = None,
    baseline_runs: int | None = None,
) -> Stat:
    """The saving of ``method`` against ``baseline`` in percent, with its 95% interval
    over seeds paired by seed (:func:`~fedticket.report.intervals.paired_saving`):
    ``{"mean", "lo", "hi", "std": None, "n"}``, n the paired seeds.

    The mean is None when some run of either never reached the target (when the run
    counts are given, a run with no value counts too), or a cost is not positive: a
    saving over only the seeds that got there would compare a method's lucky seeds with
    all of the baseline's. Without values per seed (runs that share a seed) it is
    ``100 * (1 - mean_method / mean_baseline)`` with no interval.
    """
    none: Stat = {"mean": None, "lo": None, "hi": None, "std": None, "n": 0}
    if baseline is None:
        return none
    missed = (method_runs is not None and method["n"] < method_runs) or (
        baseline_runs is not None and baseline["n"] < baseline_runs
    )
    if missed:
        return none | {"n": min(method["n"], baseline["n"])}
    if "seeds" in method and "seeds" in baseline:
        return cast(Stat, paired_saving(method["seeds"], baseline["seeds"]) | {"std": None})
    n = min(method["n"], baseline["n"])
    m, b = method["mean"], baseline["mean"]
    mean = None if m is None or b is None or b == 0 else 100.0 * (1.0 - m / b)
    return none | {"mean": mean, "n": n}


def is_oracle(method: str) -> bool:
    """Whether a method (a row label: ``dae-ticket+q8@flower``) uses what fedticket's
    method does without, the server pool's labels (its preset's pretraining does)."""
    return uses_labels(method.partition("@")[0].partition("+")[0])


def first_reaching(run: Run, target: float) -> dict[str, Any] | None:
    """The first evaluated metrics row of a trained round (round >= 1) with
    ``test_accuracy >= target``, or None. Round 0 is the starting model: a start that is
    already above the target reached it without any federated training, so it does not
    count as a reach."""
    for row in run.metrics:
        if row["round"] < 1:
            continue
        acc = _finite(row["test_accuracy"])
        if acc is not None and acc >= target:
            return row
    return None


SMOOTH_K = 3


def first_staying(run: Run, target: float, k: int = SMOOTH_K) -> dict[str, Any] | None:
    """The robust reach: the first evaluated trained round from which the mean of the
    last ``k`` evaluations (trained rounds only; fewer at the start) stays at or above
    ``target`` until the end of the run; None when it never does. Under non-IID data a
    single lucky round can pass a target the model does not hold."""
    rows = [r for r in run.metrics if r["round"] >= 1 and _finite(r["test_accuracy"]) is not None]
    means = []
    for i in range(len(rows)):
        window = rows[max(0, i - k + 1) : i + 1]
        means.append(sum(float(r["test_accuracy"]) for r in window) / len(window))
    found = None
    for row, mean in zip(reversed(rows), reversed(means), strict=True):
        if mean < target:
            break
        found = row
    return found


def _run_cost(run: Run, keys: tuple[str, ...]) -> float | None:
    last = run.metrics[-1] if run.metrics else {}
    return None if any(k not in last for k in keys) else float(sum(last[k] for k in keys))


def costs_to_target(run: Run, target: float, smooth: bool = False) -> dict[str, float | None]:
    """Each ``*_to_target`` cost of one run; all None if it never reaches ``target``.
    With ``smooth`` the reach is :func:`first_staying`'s, else :func:`first_reaching`'s."""
    row = first_staying(run, target) if smooth else first_reaching(run, target)
    return {
        name: None if row is None or any(k not in row for k in keys)
        else float(sum(row[k] for k in keys))
        for name, keys in COST_FIELDS.items()
    }


TARGET_FRACTION = 0.95


def default_target(runs: list[Run], baseline: str = BASELINE) -> float:
    """95% of the baseline's best accuracy (mean over its seeds), rounded down to 3 decimals.

    "Cost to reach 95% of what dense FedAvg reaches" is a question every method can be
    asked; methods that never get there show null costs instead of dragging the target
    down. Without baseline runs the target is the lowest ``best_accuracy`` of any run,
    so that every run has a cost to target.

    Raises
    ------
    FedticketError
        If there are no runs or a run has no finite ``best_accuracy``.
    """
    if not runs:
        raise FedticketError("no runs to compare; point at a directory of finished runs")
    bests: dict[str, list[float]] = {}
    for r in runs:
        best = _finite(r.summary.get("best_accuracy"))
        if best is None:
            raise FedticketError(f"{r.name} has no best_accuracy in summary.json; pass --target")
        bests.setdefault(r.method, []).append(best)
    if baseline in bests:
        value = TARGET_FRACTION * sum(bests[baseline]) / len(bests[baseline])
    else:
        value = min(min(v) for v in bests.values())
    # round(..., 6) first so that e.g. 0.29 * 1000 = 289.99999999999997 floors to 290
    return math.floor(round(value * 1000, 6)) / 1000


def compare(runs: list[Run], target: float | None = None,
            baseline: str = BASELINE) -> TargetResult:
    """Per-method mean, std and count over seeds of accuracy and cost to ``target``.

    For each run the first evaluated trained round (round >= 1) with ``test_accuracy >=
    target`` gives ``rounds_to_target`` (that round), ``traffic_bytes_to_target``
    (cumulative down + up bytes), ``client_flops_to_target``, ``client_cpu_s_to_target``
    and ``client_wall_s_to_target``; a run that never reaches the target contributes
    null. ``traffic_bytes_run`` and ``client_cpu_s_run`` are the whole run's (its last
    metrics row), a lower bound on the cost of a target it missed; ``mask_bytes_run`` is
    the mask messages' part of its traffic. The same fields
    with ``_smoothed`` use the robust reach of
    :func:`first_staying` instead (the mean of the last 3 evaluations stays at or
    above the target from that round to the end). ``n`` counts the non-null values; mean
    and sample std (ddof=1, 0.0 when n == 1) are over those, and null when n == 0.
    ``density`` comes from the mask reports.

    Every field also holds ``seeds``, its value per seed (unless two runs of a method
    share a seed). The ``*_saving_pct`` fields compare the method with ``baseline``
    seed by seed (:func:`saving_pct`): the saving from the geometric mean of the
    per-seed cost ratios, with ``lo`` and ``hi``, its 95% t-interval on the log ratios
    (null with fewer than 3 seeds); null when the baseline is absent or some run of the
    method or of the baseline never reached the target (the table shows how many did).
    Positive means cheaper than the baseline.

    Parameters
    ----------
    runs : list of Run
        From :func:`load_runs`.
    target : float, optional
        Target test accuracy; defaults to :func:`default_target`.
    baseline : str
        Method the savings are measured against.

    Returns
    -------
    dict
        ``{"target": float, "baseline": str, "oracles": [method], "methods": {method:
        {field: stat}}}``, methods in the preset table's order; JSON-serialisable (no NaN).
        ``oracles`` names the methods that use labels the method does without.
    """
    target = default_target(runs, baseline) if target is None else float(target)
    if not math.isfinite(target):
        raise FedticketError(f"target accuracy {target} is not finite; pass a number in [0, 1]")
    methods: dict[str, dict[str, Any]] = {}
    for method, group in group_by_method(runs).items():
        def stat(values: list[float | None], group: list[Run] = group) -> Stat:
            return by_seed(aggregate(values), group, values)

        costs = [costs_to_target(r, target) for r in group]
        fields: dict[str, Any] = {
            key: stat([_finite(r.summary.get(key)) for r in group])
            for key in ("final_accuracy", "best_accuracy")
        }
        fields |= {name: stat([c[name] for c in costs]) for name in COST_FIELDS}
        smoothed = [costs_to_target(r, target, smooth=True) for r in group]
        fields |= {f"{name}_smoothed": stat([c[name] for c in smoothed])
                   for name in COST_FIELDS}
        fields |= {name: stat([_run_cost(r, keys) for r in group])
                   for name, keys in RUN_FIELDS.items()}
        fields["density"] = aggregate([_finite(r.density) for r in group])
        methods[method] = fields
    base = methods.get(baseline)
    groups = group_by_method(runs)
    base_runs = len(groups.get(baseline, []))
    for method, fields in methods.items():
        for saving, cost in SAVING_FIELDS.items():
            fields[saving] = saving_pct(
                fields[cost], None if base is None else base[cost], len(groups[method]),
                base_runs,
            )
    oracles = [m for m in methods if is_oracle(m)]
    return {"target": target, "baseline": baseline, "oracles": oracles,
            "methods": cast(dict[str, MethodResult], methods)}
