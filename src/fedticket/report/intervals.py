"""Savings over seeds with 95% intervals, paired by seed, and verdicts in three words.

The runs of one seed see the same clients, the same sampling sequence and the same batch
orders whatever the method, so a method's cost is compared with the baseline's *of the
same seed*: the per-seed ratio ``r_s = cost_method(s) / cost_baseline(s)``. Over the
``n`` seeds both have:

- the saving is ``100 * (1 - g)``, ``g = exp(mean_s log r_s)`` (the geometric mean of the
  per-seed ratios; for one seed, the ratio itself);
- its 95% interval is Student's t-interval of ``mean_s log r_s`` (``n - 1`` degrees of
  freedom), mapped back the same way. Costs are positive and their ratios multiply, so
  the log scale is where a mean and a symmetric interval make sense; a factor such as
  "25x less traffic" is ``1 / g`` with the interval mapped alike.
- Accuracy differences are compared on their own scale (method minus baseline, a
  t-interval of the per-seed differences).

With fewer than :data:`MIN_SEEDS` paired seeds there is no interval. A seed on which
either run never reached the target gives no saving at all: a saving over only the seeds
that got there would compare a method's lucky seeds with all of the baseline's.

A verdict against a bar is ``yes`` when the whole interval clears it, ``no`` when the
whole interval is on the wrong side, and ``inconclusive`` when it straddles the bar (or
there is no interval). :func:`seeds_to_settle` says how many seeds would settle an
inconclusive one if the mean and the spread held.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

LEVEL = 0.95
MIN_SEEDS = 3
YES, NO, INCONCLUSIVE = "yes", "no", "inconclusive"

Values = Mapping[str, float | None]
"""A field's value per seed (JSON keys: the seed as a string); None: not reached."""


def t_quantile(df: int, level: float = LEVEL) -> float:
    """The two-sided Student t quantile for ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def _mean_interval(xs: Sequence[float]) -> tuple[float, float | None, float | None]:
    """Mean and 95% t-interval of ``xs`` (no interval below :data:`MIN_SEEDS` values)."""
    n = len(xs)
    mean = sum(xs) / n
    if n < MIN_SEEDS:
        return mean, None, None
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def pairs(method: Values, baseline: Values) -> tuple[list[str], bool]:
    """The seeds both have, and whether every one of them has a value in both."""
    seeds = sorted(set(method) & set(baseline), key=lambda s: (len(s), s))
    complete = all(method[s] is not None and baseline[s] is not None for s in seeds)
    return seeds, complete and bool(seeds)


def paired_saving(method: Values, baseline: Values) -> dict[str, Any]:
    """``{"mean", "lo", "hi", "n"}``: the saving in percent of ``method`` against
    ``baseline`` (module docstring); mean None when some paired seed has no value or a
    cost is not positive, lo and hi None without an interval."""
    seeds, complete = pairs(method, baseline)
    out: dict[str, Any] = {"mean": None, "lo": None, "hi": None, "n": len(seeds)}
    if not complete:
        return out
    ratios = [float(method[s]) / float(baseline[s])  # type: ignore[arg-type]
              if float(baseline[s]) > 0 else math.nan for s in seeds]  # type: ignore[arg-type]
    if not all(r > 0 for r in ratios):  # nan (a zero baseline) fails this too
        return out
    mean, lo, hi = _mean_interval([math.log(r) for r in ratios])
    out["mean"] = 100.0 * (1.0 - math.exp(mean))
    if lo is not None and hi is not None:
        out["lo"], out["hi"] = 100.0 * (1.0 - math.exp(hi)), 100.0 * (1.0 - math.exp(lo))
    return out


def paired_difference(method: Values, baseline: Values) -> dict[str, Any]:
    """``{"mean", "lo", "hi", "n"}`` of ``method - baseline`` over the paired seeds."""
    seeds, complete = pairs(method, baseline)
    out: dict[str, Any] = {"mean": None, "lo": None, "hi": None, "n": len(seeds)}
    if complete:
        mean, lo, hi = _mean_interval([float(method[s]) - float(baseline[s])  # type: ignore[arg-type]
                                       for s in seeds])
        out |= {"mean": mean, "lo": lo, "hi": hi}
    return out


def factor(saving_pct: float | None) -> float | None:
    """How many times cheaper a saving of ``saving_pct`` percent is (80 -> 5.0)."""
    if saving_pct is None or saving_pct >= 100:
        return None
    return 1.0 / (1.0 - saving_pct / 100.0)


def against(stat: Mapping[str, Any], bar: float) -> str:
    """``yes`` if the interval ``[lo, hi]`` is at or above ``bar``, ``no`` if it is below,
    else ``inconclusive`` (also when there is no interval)."""
    if stat.get("mean") is None or stat.get("lo") is None:
        return INCONCLUSIVE
    if stat["lo"] >= bar:
        return YES
    if stat["hi"] < bar:
        return NO
    return INCONCLUSIVE


def all_of(answers: Sequence[str]) -> str:
    """Every bar must be cleared: ``no`` if one is failed, ``yes`` if all are cleared."""
    if NO in answers:
        return NO
    return YES if answers and all(a == YES for a in answers) else INCONCLUSIVE


def any_of(answers: Sequence[str]) -> str:
    """One candidate is enough: ``yes`` if one clears, ``no`` if all fail."""
    if YES in answers:
        return YES
    return NO if answers and all(a == NO for a in answers) else INCONCLUSIVE


def seeds_to_settle(stat: Mapping[str, Any], bar: float, log_scale: bool = True,
                    most: int = 200) -> int | None:
    """The fewest seeds whose 95% interval would clear or miss ``bar`` if the mean and the
    spread of ``stat`` held (None: not within ``most`` seeds, or no spread to go on).

    ``stat`` is a :func:`paired_saving` (``log_scale``) or :func:`paired_difference`
    result with an interval."""
    if stat.get("lo") is None or stat.get("mean") is None or stat["n"] < 2:
        return None
    to = (lambda s: math.log(1.0 - s / 100.0)) if log_scale else (lambda s: s)
    mean, lo = to(stat["mean"]), to(stat["lo"])
    n = stat["n"]
    half = abs(lo - mean)  # the half-width on the scale the interval was made on
    sd = half * math.sqrt(n) / t_quantile(n - 1)
    gap = abs(mean - to(bar))
    if sd == 0 or gap == 0:
        return None
    for m in range(max(n, MIN_SEEDS), most + 1):
        if t_quantile(m - 1) * sd / math.sqrt(m) < gap:
            return m
    return None
