"""Numbers in prose are data: every number a results sentence quotes must be one that its
committed summary gives, in the precision the sentence uses.

:func:`quotable` lists, for a study summary, every number a sentence may fairly quote:
each mean and spread of the tables, every saving and its 95% interval against `fedavg`
and `fedavg-dae` (as a percent, and as a factor "N x less"), final-accuracy differences
in points, and the grid times. :func:`unquoted` returns the numbers of a passage that are
neither among them nor among the passage's settings (targets, bars, sparsities, seeds:
typed beside each passage, since they are inputs, not results).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from fedticket.report.intervals import factor
from fedticket.study import COSTS, saving

NUMBER = re.compile(r"(?<![\w.])[-+−]?\d[\d,]*(?:\.\d+)?")
SCALES = {"traffic_bytes_to_target": 1e-6, "client_flops_to_target": 1e-9}
BASES = ("fedavg", "fedavg-dae")


def _add(out: set[str], x: float | None, fmts: Iterable[str]) -> None:
    if x is None:
        return
    for f in fmts:
        out.add(format(abs(x), f))
        out.add(format(abs(x), "," + f))


def _results(summary: dict) -> Iterable[dict]:
    for by in summary["results"].values():
        for value in by.values():
            if "methods" in value:
                yield value
            else:  # a sweep: variant -> target -> result
                yield from value.values()


def quotable(summary: dict) -> set[str]:
    """Every number the summary's tables give or a sentence can derive from them."""
    out: set[str] = set()
    for result in _results(summary):
        methods = result["methods"]
        for f in methods.values():
            for key, stat in f.items():
                scale = SCALES.get(key, 1.0)
                for k in ("mean", "std"):
                    if isinstance(stat, dict) and stat.get(k) is not None:
                        _add(out, stat[k] * scale, (".0f", ".1f", ".2f", ".3f"))
            for base_name in BASES:
                base = methods.get(base_name)
                if base is None:
                    continue
                for key in COSTS:
                    s = saving(f, base, key)
                    for k in ("mean", "lo", "hi"):
                        _add(out, s.get(k), (".0f", ".1f"))
                        _add(out, factor(s.get(k)), (".1f", ".2f"))
                a, b = f["final_accuracy"].get("mean"), base["final_accuracy"].get("mean")
                if a is not None and b is not None:
                    _add(out, 100 * (a - b), (".1f",))
    for by in summary["results"].values():  # a sweep: a method's change between variants
        variants = [v for v in by.values() if "methods" not in v]
        for a in variants:
            for b in variants:
                for target, result in a.items():
                    other = b.get(target, {}).get("methods", {})
                    for name, f in result["methods"].items():
                        if name not in other or name == "fedavg":
                            continue
                        for key in COSTS:
                            x, y = f[key].get("mean"), other[name][key].get("mean")
                            if x and y:
                                _add(out, 100 * (x / y - 1), (".1f",))
    for t in summary.get("timings", []):
        _add(out, t["wall_s"] / 60, (".1f",))
        out.update({str(t["runs"]), str(t["ran"])})
    return out


def numbers(text: str) -> list[str]:
    """The numbers of ``text`` as written, without sign (a change of -1.5% quotes 1.5)."""
    return [m.group().lstrip("+-−") for m in NUMBER.finditer(" ".join(text.split()))]


def unquoted(text: str, summaries: Iterable[dict], settings: Iterable[str]) -> list[str]:
    """The numbers of ``text`` that no summary gives and that are not ``settings``."""
    known = set(settings)
    for s in summaries:
        known |= quotable(s)
    def short(n: str) -> str:  # 0.80 is 0.8, 35.0 is 35
        return n.rstrip("0").rstrip(".") if "." in n else n

    return [n for n in numbers(text) if n not in known and short(n) not in known]
